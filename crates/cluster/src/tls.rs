//! The cluster's certificates (DESIGN.md §1.8) and the rustls configurations built from them.
//!
//! `wharf cluster init` creates a cluster CA; every node gets a certificate from it whose names
//! bind its node id and the cluster id — `node-<id>.<cluster>.wharf` — plus the shared
//! `cluster.<cluster>.wharf` that a joining node, which knows no node id yet, checks. A client
//! dials a peer expecting `node-<target>.<cluster>.wharf`, so a handshake with the wrong node or
//! another cluster fails; the listener requires a client certificate from the same CA for every
//! call except a join, and checks that it names the node id the call claims to come from.
//!
//! ```text
//! <data_dir>/tls/ca.pem  ca.key  node.pem  node.key     (keys 0600)
//! ```
//!
//! Every node keeps the CA key so that whichever node leads can issue a joining node's
//! certificate. Rotation (`wharf cluster rotate-certs`) is not built yet.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use wharf_types::NodeId;

/// How long a node certificate is valid.
const NODE_CERT_DAYS: i64 = 365;
/// How long the cluster CA is valid.
const CA_DAYS: i64 = 3650;

/// Why certificates could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Pem(String),
    #[error("cluster TLS files: {0}")]
    Io(#[from] std::io::Error),
}

/// The PEM files of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub node_pem: String,
    pub node_key_pem: String,
}

/// The name in node `node_id`'s certificate that binds it and the cluster.
pub fn node_name(cluster_id: &str, node_id: NodeId) -> String {
    format!("node-{node_id}.{cluster_id}.wharf")
}

/// The name every node certificate of the cluster also carries (checked by joining nodes).
pub fn cluster_name(cluster_id: &str) -> String {
    format!("cluster.{cluster_id}.wharf")
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// A new cluster CA: `(ca.pem, ca.key)`.
pub fn create_ca(cluster_id: &str) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("wharf cluster {cluster_id} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A certificate for `node_id` signed by the CA: `(node.pem, node.key)`.
pub fn issue_node_cert(
    ca_pem: &str,
    ca_key_pem: &str,
    cluster_id: &str,
    node_id: NodeId,
) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        node_name(cluster_id, node_id),
        cluster_name(cluster_id),
    ])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name(cluster_id, node_id));
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, NODE_CERT_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA and a first node certificate for a new cluster.
pub fn new_cluster_files(cluster_id: &str, node_id: NodeId) -> Result<TlsFiles, TlsError> {
    let (ca_pem, ca_key_pem) = create_ca(cluster_id)?;
    let (node_pem, node_key_pem) = issue_node_cert(&ca_pem, &ca_key_pem, cluster_id, node_id)?;
    Ok(TlsFiles {
        ca_pem,
        ca_key_pem,
        node_pem,
        node_key_pem,
    })
}

const FILES: [&str; 4] = ["ca.pem", "ca.key", "node.pem", "node.key"];

/// Writes the files into `<data_dir>/tls/` durably; keys are 0600.
pub fn store(data_dir: &Path, files: &TlsFiles) -> Result<(), TlsError> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    let contents = [
        &files.ca_pem,
        &files.ca_key_pem,
        &files.node_pem,
        &files.node_key_pem,
    ];
    for (name, text) in FILES.iter().zip(contents) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::File::open(&dir)?.sync_all()?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

/// Reads `<data_dir>/tls/`, if the node has certificates.
pub fn load(data_dir: &Path) -> Result<Option<TlsFiles>, TlsError> {
    let dir = data_dir.join("tls");
    if !dir.join("node.pem").exists() {
        return Ok(None);
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    Ok(Some(TlsFiles {
        ca_pem: read("ca.pem")?,
        ca_key_pem: read("ca.key")?,
        node_pem: read("node.pem")?,
        node_key_pem: read("node.key")?,
    }))
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(format!("certificate: {e}")))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The DER of the first certificate in `pem`.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    certs(pem)?
        .into_iter()
        .next()
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| TlsError::Pem("no certificate".into()))
}

/// A node's TLS: its files and the rustls configs of its listener and its client.
pub struct ClusterTls {
    pub files: TlsFiles,
    pub(crate) server: Arc<rustls::ServerConfig>,
    pub(crate) client: Arc<rustls::ClientConfig>,
    /// Unix time after which the node certificate is no longer valid.
    pub not_after: i64,
}

impl ClusterTls {
    pub fn new(files: TlsFiles) -> Result<ClusterTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&files.ca_pem)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let mut chain = certs(&files.node_pem)?;
        chain.extend(certs(&files.ca_pem)?);
        let key = PrivateKeyDer::from_pem_slice(files.node_key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("node key: {e}")))?;

        // A join comes without a client certificate; every other call is checked against it.
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![b"h2".to_vec()];

        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.alpn_protocols = vec![b"h2".to_vec()];

        let not_after = rcgen_not_after(&files.node_pem)?;
        Ok(ClusterTls {
            files,
            server: Arc::new(server),
            client: Arc::new(client),
            not_after,
        })
    }
}

/// The not-after time of the first certificate in `pem` (unix seconds).
fn rcgen_not_after(pem: &str) -> Result<i64, TlsError> {
    let der = first_cert_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::Pem(format!("node certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The client config of a joining node: trusts only the CA carried in its join token and
/// presents no certificate.
pub fn joiner_client_config(ca_der: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec()))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(client))
}

/// Whether `leaf` (already verified against the CA by the handshake) is node `node_id`'s
/// certificate in cluster `cluster_id`.
pub(crate) fn names_node(leaf: &CertificateDer<'_>, cluster_id: &str, node_id: NodeId) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(node_name(cluster_id, node_id)) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_bind_node_and_cluster() {
        let files = new_cluster_files("c1", 1).unwrap();
        let tls = ClusterTls::new(files.clone()).unwrap();
        assert!(tls.not_after > time::OffsetDateTime::now_utc().unix_timestamp());
        let (node2, _) = issue_node_cert(&files.ca_pem, &files.ca_key_pem, "c1", 2).unwrap();
        let leaf = CertificateDer::from(first_cert_der(&node2).unwrap());
        assert!(names_node(&leaf, "c1", 2));
        assert!(!names_node(&leaf, "c1", 1), "another node id");
        assert!(!names_node(&leaf, "c2", 2), "another cluster");
    }
}
