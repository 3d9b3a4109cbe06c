//! Manifest scenarios: tagged GET/HEAD as containers/image sends them, and manifest writes.

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use sha2::{Digest, Sha256};

use super::blob::{self, Source};
use crate::client::{self, Conn, ReqBody};
use crate::prng;

/// The media type pushed and expected back.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// containers/image (skopeo, podman, buildah) sends each of these as a separate `Accept` line.
pub const ACCEPT: [&str; 6] = [
    OCI_MANIFEST,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
];

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A config blob and one layer, pushed once; manifests refer to them.
pub struct Fixture {
    config: (String, u64),
    layer: (String, u64),
}

impl Fixture {
    /// Pushes (or finds) the config and a layer of `layer_size` bytes in `name`. The contents do
    /// not depend on the seed, so the `bench` manifest is identical across runs.
    pub async fn setup(conn: &mut Conn, name: &str, layer_size: u64) -> anyhow::Result<Self> {
        let state = prng::stream_seed(0x1A7E_0000, layer_size);
        let layer_digest = prng::digest_of(state, layer_size);
        blob::push(
            conn,
            name,
            &Source::Prng {
                state,
                len: layer_size,
            },
            &layer_digest,
            true,
            blob::Pusher::ContainersImage,
        )
        .await
        .context("setup: pushing the layer")?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        }))?;
        let config_digest = sha256(&config);
        let config_len = config.len() as u64;
        blob::push(
            conn,
            name,
            &Source::Bytes(Bytes::from(config)),
            &config_digest,
            true,
            blob::Pusher::ContainersImage,
        )
        .await
        .context("setup: pushing the config")?;
        Ok(Self {
            config: (config_digest, config_len),
            layer: (layer_digest, layer_size),
        })
    }

    /// The manifest bytes; `unique` goes into an annotation to make the digest new.
    pub fn manifest(&self, unique: Option<&str>) -> anyhow::Result<Bytes> {
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.config.0,
                "size": self.config.1,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": self.layer.0,
                "size": self.layer.1,
            }],
        });
        if let (Some(u), Some(obj)) = (unique, m.as_object_mut()) {
            obj.insert(
                "annotations".into(),
                serde_json::json!({ "org.wharf.bench.id": u }),
            );
        }
        Ok(Bytes::from(serde_json::to_vec(&m)?))
    }
}

/// PUTs `body` as `reference`; expects 201, `Location` and the digest header.
pub async fn put(
    conn: &mut Conn,
    name: &str,
    reference: &str,
    body: &Bytes,
    digest: &str,
) -> anyhow::Result<()> {
    let path = format!("/v2/{name}/manifests/{reference}");
    let what = format!("PUT {path}");
    let req = conn
        .request(Method::PUT, &path)
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .header(header::CONTENT_LENGTH, body.len())
        .body(ReqBody::Full(Some(body.clone())))?;
    let resp = client::expect_status(conn.send(req).await?, StatusCode::CREATED, &what).await?;
    client::expect_header(resp.headers(), "docker-content-digest", digest, &what)?;
    client::header_str(resp.headers(), "location", &what)?;
    client::drain(resp, &what).await?;
    Ok(())
}

/// `manifest-get` / `manifest-head` of the tag `bench`.
pub struct Tagged {
    path: String,
    body: Bytes,
    digest: String,
    head: bool,
}

impl Tagged {
    /// Pushes the fixture and tags its manifest `bench`.
    pub async fn setup(
        conn: &mut Conn,
        name: &str,
        layer_size: u64,
        head: bool,
    ) -> anyhow::Result<Self> {
        let fixture = Fixture::setup(conn, name, layer_size).await?;
        let body = fixture.manifest(None)?;
        let digest = sha256(&body);
        put(conn, name, "bench", &body, &digest)
            .await
            .context("setup: tagging the manifest")?;
        Ok(Self {
            path: format!("/v2/{name}/manifests/bench"),
            body,
            digest,
            head,
        })
    }

    /// Length of the manifest in bytes.
    pub fn len(&self) -> u64 {
        self.body.len() as u64
    }

    /// One GET or HEAD with the six Accept lines; checks status, headers and (GET) the bytes.
    pub async fn op(&self, conn: &mut Conn) -> anyhow::Result<u64> {
        let method = if self.head { Method::HEAD } else { Method::GET };
        let what = format!("{method} {}", self.path);
        let mut req = conn.request(method, &self.path);
        for a in ACCEPT {
            req = req.header(header::ACCEPT, a);
        }
        let resp = conn.send(req.body(ReqBody::Empty)?).await?;
        let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
        let h = resp.headers();
        client::expect_header(h, "docker-content-digest", &self.digest, &what)?;
        client::expect_header(h, "content-type", OCI_MANIFEST, &what)?;
        client::expect_header(h, "content-length", &self.body.len().to_string(), &what)?;
        if self.head {
            client::drain(resp, &what).await?;
        } else {
            let got = client::collect(resp, &what).await?;
            anyhow::ensure!(
                got == self.body,
                "{what}: body differs from the manifest pushed ({} bytes)",
                got.len()
            );
        }
        Ok(0)
    }
}

/// `tag-commit`: op `i` PUTs a unique manifest as tag `t-<seed>-<i>`; `tag-only`: op `i` PUTs
/// the same manifest as tag `t-<seed>-<i>`.
pub struct TagCommit {
    name: String,
    /// (tag, body, digest) per op index, built before timing.
    manifests: Vec<(String, Bytes, String)>,
}

impl TagCommit {
    /// Pushes the blobs and prepares `count` manifests.
    pub async fn setup(
        conn: &mut Conn,
        name: &str,
        layer_size: u64,
        seed: u64,
        count: u64,
        unique: bool,
    ) -> anyhow::Result<Self> {
        let fixture = Fixture::setup(conn, name, layer_size).await?;
        let shared = format!("shared-{seed}");
        let manifests = (0..count)
            .map(|i| {
                let tag = format!("t-{seed}-{i}");
                let body = fixture.manifest(Some(if unique { &tag } else { &shared }))?;
                let digest = sha256(&body);
                Ok((tag, body, digest))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            name: name.to_owned(),
            manifests,
        })
    }

    /// Length of the first manifest (they differ by a few digits at most).
    pub fn len(&self) -> u64 {
        self.manifests.first().map_or(0, |m| m.1.len() as u64)
    }

    /// PUTs manifest `i`.
    pub async fn op(&self, conn: &mut Conn, i: u64) -> anyhow::Result<u64> {
        let (tag, body, digest) = self
            .manifests
            .get(i as usize)
            .context("op index beyond the prepared manifests")?;
        put(conn, &self.name, tag, body, digest).await?;
        Ok(0)
    }
}
