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
//! `ca.pem` is a bundle: every CA in it is trusted, and the first one signs (its key is
//! `ca.key`). Every node keeps the CA key so that whichever node leads can issue a joining
//! node's certificate.
//!
//! Rotation (`wharf cluster rotate-certs`) goes through overlapping bundles, one step on every
//! node before the next: trust the new CA as well ([`trusting_also`]); sign with it, each node
//! re-issuing its own certificate ([`signing_with`], [`settle`]); and with `--finish`, trust
//! only the signing CA ([`trusting_only_signer`]). A node swaps its configuration in place
//! ([`ClusterTls::replace`]): new connections use the new one.

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
    // Unique per CA, so that a certificate's issuer names the CA that signed it when a bundle
    // holds an old and a new one.
    let minted = time::OffsetDateTime::now_utc().unix_timestamp();
    let tag: u32 = rand::random();
    dn.push(
        DnType::CommonName,
        format!("wharf cluster {cluster_id} CA {minted}-{tag:08x}"),
    );
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

/// Writes the files into `<data_dir>/tls/` durably (keys 0600), replacing what was there as one
/// step: they are written to `tls.new/`, synced, then swapped in by renames. A crash between
/// the renames leaves a complete `tls.new/`, which [`load`] finishes installing.
pub fn store(data_dir: &Path, files: &TlsFiles) -> Result<(), TlsError> {
    let dir = data_dir.join("tls");
    let staged = data_dir.join("tls.new");
    let retired = data_dir.join("tls.old");
    if staged.exists() {
        std::fs::remove_dir_all(&staged)?;
    }
    std::fs::create_dir_all(&staged)?;
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
            .open(staged.join(name))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::File::open(&staged)?.sync_all()?;
    if retired.exists() {
        std::fs::remove_dir_all(&retired)?;
    }
    if dir.exists() {
        std::fs::rename(&dir, &retired)?;
    }
    std::fs::rename(&staged, &dir)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    if retired.exists() {
        std::fs::remove_dir_all(&retired)?;
    }
    Ok(())
}

/// Reads `<data_dir>/tls/`, if the node has certificates.
pub fn load(data_dir: &Path) -> Result<Option<TlsFiles>, TlsError> {
    let dir = data_dir.join("tls");
    let staged = data_dir.join("tls.new");
    if !dir.join("node.pem").exists() && staged.join("node.pem").exists() {
        // A store was interrupted after retiring the old files: the staged ones are complete.
        std::fs::rename(&staged, &dir)?;
        std::fs::File::open(data_dir)?.sync_all()?;
    }
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

/// The certificates of a PEM bundle, each as its own PEM text, in order.
fn split_bundle(pem: &str) -> Result<Vec<String>, TlsError> {
    Ok(certs(pem)?.iter().map(|der| pem_of(der.as_ref())).collect())
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// `first` followed by the others, each once.
fn bundle_of(first: &str, others: &[String]) -> String {
    let mut out = vec![first.to_string()];
    for cert in others {
        if !out.contains(cert) {
            out.push(cert.clone());
        }
    }
    out.concat()
}

/// Rotation step 1: `files`' bundle with `new_ca_pem` trusted as well; the signer is unchanged.
pub fn trusting_also(files: &TlsFiles, new_ca_pem: &str) -> Result<(String, String), TlsError> {
    let mut bundle = split_bundle(&files.ca_pem)?;
    let signer = bundle.remove(0);
    bundle.extend(split_bundle(new_ca_pem)?);
    Ok((bundle_of(&signer, &bundle), files.ca_key_pem.clone()))
}

/// Rotation step 2: `new_ca_pem` (with its key) signs, and everything `files` trusted still is.
pub fn signing_with(
    files: &TlsFiles,
    new_ca_pem: &str,
    new_ca_key_pem: &str,
) -> Result<(String, String), TlsError> {
    let signer = split_bundle(new_ca_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no CA certificate".into()))?;
    let bundle = bundle_of(&signer, &split_bundle(&files.ca_pem)?);
    Ok((bundle, new_ca_key_pem.to_string()))
}

/// Rotation step 3 (`--finish`): only the signing CA stays trusted.
pub fn trusting_only_signer(files: &TlsFiles) -> Result<(String, String), TlsError> {
    let signer = split_bundle(&files.ca_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Pem("no CA certificate".into()))?;
    Ok((signer, files.ca_key_pem.clone()))
}

/// How many CAs `files` trusts.
pub fn trusted_cas(files: &TlsFiles) -> Result<usize, TlsError> {
    Ok(certs(&files.ca_pem)?.len())
}

/// A node's files once it takes `ca_pem` (bundle, signer first) and `ca_key_pem` (the
/// signer's key): its certificate is kept if the signer issued it, else re-issued by the signer.
pub fn settle(
    current: &TlsFiles,
    cluster_id: &str,
    node_id: NodeId,
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<TlsFiles, TlsError> {
    let signer = first_cert_der(ca_pem)?;
    let issued_by_signer = issued_by(&first_cert_der(&current.node_pem)?, &signer)?;
    let (node_pem, node_key_pem) = if issued_by_signer {
        (current.node_pem.clone(), current.node_key_pem.clone())
    } else {
        issue_node_cert(ca_pem, ca_key_pem, cluster_id, node_id)?
    };
    let next = TlsFiles {
        ca_pem: ca_pem.to_string(),
        ca_key_pem: ca_key_pem.to_string(),
        node_pem,
        node_key_pem,
    };
    // Refuse files this node could not use (a key that is not the signer's, say) before
    // anything is written.
    ClusterTls::new(next.clone())?;
    if !issued_by(&first_cert_der(&next.node_pem)?, &signer)? {
        return Err(TlsError::Pem(
            "the CA key does not belong to the first CA of the bundle".into(),
        ));
    }
    Ok(next)
}

/// Whether the certificate `cert` names `ca` as its issuer and carries its signature.
fn issued_by(cert: &[u8], ca: &[u8]) -> Result<bool, TlsError> {
    let parse = |der| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c)
            .map_err(|e| TlsError::Pem(format!("certificate: {e}")))
    };
    let (cert, ca) = (parse(cert)?, parse(ca)?);
    Ok(cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok())
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

/// A node's TLS: its files and the rustls configurations of its listener and its client,
/// replaceable in place by a certificate rotation.
pub struct ClusterTls {
    current: std::sync::RwLock<Arc<Loaded>>,
}

struct Loaded {
    files: TlsFiles,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    /// Unix time after which the node certificate is no longer valid.
    not_after: i64,
}

impl ClusterTls {
    pub fn new(files: TlsFiles) -> Result<ClusterTls, TlsError> {
        Ok(ClusterTls {
            current: std::sync::RwLock::new(Arc::new(Loaded::new(files)?)),
        })
    }

    fn loaded(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The files in use.
    pub fn files(&self) -> TlsFiles {
        self.loaded().files.clone()
    }

    /// Unix time after which this node's certificate is no longer valid.
    pub fn not_after(&self) -> i64 {
        self.loaded().not_after
    }

    pub(crate) fn server(&self) -> Arc<rustls::ServerConfig> {
        self.loaded().server.clone()
    }

    pub(crate) fn client(&self) -> Arc<rustls::ClientConfig> {
        self.loaded().client.clone()
    }

    /// Uses `files` from now on (for new connections); nothing changes if they are unusable.
    pub fn replace(&self, files: TlsFiles) -> Result<(), TlsError> {
        let loaded = Arc::new(Loaded::new(files)?);
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(())
    }
}

impl Loaded {
    fn new(files: TlsFiles) -> Result<Loaded, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&files.ca_pem)? {
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let chain = certs(&files.node_pem)?;
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
        Ok(Loaded {
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
pub fn names_node(leaf: &CertificateDer<'_>, cluster_id: &str, node_id: NodeId) -> bool {
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
        assert!(tls.not_after() > time::OffsetDateTime::now_utc().unix_timestamp());
        let (node2, _) = issue_node_cert(&files.ca_pem, &files.ca_key_pem, "c1", 2).unwrap();
        let leaf = CertificateDer::from(first_cert_der(&node2).unwrap());
        assert!(names_node(&leaf, "c1", 2));
        assert!(!names_node(&leaf, "c1", 1), "another node id");
        assert!(!names_node(&leaf, "c2", 2), "another cluster");
    }
}
