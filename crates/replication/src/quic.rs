//! The QUIC endpoint's TLS and transport settings.
//!
//! On a TLS cluster both sides present their node certificate, issued by the cluster CA: the
//! client dials the peer's node name (so the handshake proves the peer's id and cluster, like
//! the gRPC transport), and the server requires a client certificate under the CA and checks
//! the id each request claims against it. A loopback cluster without a CA (`wharf dev`) uses a
//! throwaway self-signed certificate and checks nothing, like its plaintext gRPC: DESIGN.md §2
//! allows that only when every address is loopback.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use wharf_cluster::{ClusterTls, TlsFiles};
use wharf_types::NodeId;

use crate::protocol::ALPN;

/// Name a loopback node's throwaway certificate carries.
const LOOPBACK_NAME: &str = "wharf-loopback";

/// Flow-control windows and limits of the endpoint.
#[derive(Debug, Clone)]
pub struct Windows {
    pub stream: u64,
    pub connection: u64,
}

/// Why the endpoint's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum QuicTlsError {
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate: {0}")]
    Pem(String),
    #[error("{0}")]
    Quic(String),
}

/// How this node authenticates blob transfers.
#[derive(Clone)]
pub enum Security {
    /// Mutual TLS under the cluster CA.
    Cluster {
        cluster_id: String,
        tls: Arc<ClusterTls>,
    },
    /// Loopback cluster without a CA: encrypted, not authenticated.
    Loopback {
        cert: CertificateDer<'static>,
        key: Arc<PrivatePkcs8KeyDer<'static>>,
    },
}

impl Security {
    /// A fresh throwaway identity for a loopback cluster.
    pub fn loopback() -> Result<Security, QuicTlsError> {
        let certified = rcgen::generate_simple_self_signed(vec![LOOPBACK_NAME.to_string()])
            .map_err(|e| QuicTlsError::Pem(e.to_string()))?;
        Ok(Security::Loopback {
            cert: certified.cert.der().clone(),
            key: Arc::new(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            )),
        })
    }

    /// The name to dial peer `id` by.
    pub fn server_name(&self, id: NodeId) -> String {
        match self {
            Security::Cluster { cluster_id, .. } => wharf_cluster::tls::node_name(cluster_id, id),
            Security::Loopback { .. } => LOOPBACK_NAME.to_string(),
        }
    }

    /// Whether the peer of `connection` is node `id` (always true on loopback).
    pub fn peer_is(&self, connection: &quinn::Connection, id: NodeId) -> bool {
        let Security::Cluster { cluster_id, .. } = self else {
            return true;
        };
        let Some(identity) = connection.peer_identity() else {
            return false;
        };
        let Ok(chain) = identity.downcast::<Vec<CertificateDer<'static>>>() else {
            return false;
        };
        chain
            .first()
            .is_some_and(|leaf| wharf_cluster::tls::names_node(leaf, cluster_id, id))
    }

    /// The certificate files in use on a TLS cluster (to notice a rotation).
    pub fn files(&self) -> Option<TlsFiles> {
        match self {
            Security::Cluster { tls, .. } => Some(tls.files()),
            Security::Loopback { .. } => None,
        }
    }

    pub fn server_config(&self, windows: &Windows) -> Result<quinn::ServerConfig, QuicTlsError> {
        let mut tls = match self {
            Security::Cluster { tls, .. } => {
                let files = tls.files();
                let roots = Arc::new(roots(&files)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                        .build()
                        .map_err(|e| QuicTlsError::Quic(e.to_string()))?;
                rustls::ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain(&files.node_pem)?, key(&files.node_key_pem)?)?
            }
            Security::Loopback { cert, key } => {
                rustls::ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_no_client_auth()
                    .with_single_cert(vec![cert.clone()], PrivateKeyDer::Pkcs8(key.clone_key()))?
            }
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicServerConfig::try_from(tls).map_err(|e| QuicTlsError::Quic(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport(windows)?));
        Ok(config)
    }

    pub fn client_config(&self, windows: &Windows) -> Result<quinn::ClientConfig, QuicTlsError> {
        let mut tls = match self {
            Security::Cluster { tls, .. } => {
                let files = tls.files();
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_root_certificates(roots(&files)?)
                    .with_client_auth_cert(chain(&files.node_pem)?, key(&files.node_key_pem)?)?
            }
            Security::Loopback { .. } => rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
                .with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| QuicTlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport(windows)?));
        Ok(config)
    }
}

/// Windows sized for long fat links, keep-alives so an idle connection survives NATs and
/// notices a dead peer.
fn transport(windows: &Windows) -> Result<quinn::TransportConfig, QuicTlsError> {
    let varint = |n: u64| quinn::VarInt::from_u64(n).map_err(|e| QuicTlsError::Quic(e.to_string()));
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(varint(windows.stream)?);
    t.receive_window(varint(windows.connection)?);
    t.send_window(windows.connection);
    t.max_concurrent_bidi_streams(varint(1024)?);
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10))
            .map_err(|e| QuicTlsError::Quic(e.to_string()))?,
    ));
    Ok(t)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, QuicTlsError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QuicTlsError::Pem(e.to_string()))
}

fn roots(files: &TlsFiles) -> Result<rustls::RootCertStore, QuicTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in pem_certs(&files.ca_pem)? {
        roots.add(ca)?;
    }
    Ok(roots)
}

fn chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, QuicTlsError> {
    pem_certs(pem)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, QuicTlsError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| QuicTlsError::Pem(e.to_string()))
}

/// Loopback only: accepts any server certificate (still checking the handshake signature).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
