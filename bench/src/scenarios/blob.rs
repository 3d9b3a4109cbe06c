//! Blob scenarios: push (containers/image's or docker's sequence), pull with byte comparison,
//! HEAD.

use anyhow::{Context as _, bail};
use http::{Method, StatusCode, header};
use http_body_util::BodyExt;

use crate::client::{self, Conn, ReqBody};
use crate::prng::{self, Comparer, PrngStream};

const DIGEST: &str = "docker-content-digest";

/// A blob body to upload: its length and a fresh body each time it is sent.
pub enum Source {
    /// `len` bytes of the stream seeded with `state`.
    Prng {
        /// Stream state (from [`prng::stream_seed`]).
        state: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Literal bytes (the image config).
    Bytes(bytes::Bytes),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Prng { len, .. } => *len,
            Source::Bytes(b) => b.len() as u64,
        }
    }

    fn body(&self) -> ReqBody {
        match self {
            Source::Prng { state, len } => ReqBody::Prng {
                stream: PrngStream::new(*state),
                remaining: *len,
            },
            Source::Bytes(b) => ReqBody::Full(Some(b.clone())),
        }
    }
}

/// Whose request sequence a push follows (`../shared/docs/clients.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pusher {
    /// skopeo, podman, buildah: the PATCH carries `Content-Length`.
    ContainersImage,
    /// docker 20.10: the PATCH is `Transfer-Encoding: chunked`, and the blob is HEADed again
    /// after the PUT.
    Docker,
}

/// Uploads `src` as `digest` the way `pusher` does: HEAD (404 expected unless
/// `allow_existing`, in which case a 200 ends the push), POST, one PATCH with the whole body,
/// PUT `?digest=` (and for docker, HEAD again). Returns whether it uploaded.
pub async fn push(
    conn: &mut Conn,
    name: &str,
    src: &Source,
    digest: &str,
    allow_existing: bool,
    pusher: Pusher,
) -> anyhow::Result<bool> {
    let len = src.len();
    let blob_path = format!("/v2/{name}/blobs/{digest}");
    let what = format!("HEAD {blob_path}");
    let resp = conn.send_empty(Method::HEAD, &blob_path).await?;
    match resp.status() {
        StatusCode::NOT_FOUND => {
            client::drain(resp, &what).await?;
        }
        StatusCode::OK if allow_existing => {
            client::expect_header(resp.headers(), "content-length", &len.to_string(), &what)?;
            client::drain(resp, &what).await?;
            return Ok(false);
        }
        StatusCode::OK => bail!(
            "{what}: blob already exists (200); blob-push needs new blobs: pass another --seed or use a fresh registry"
        ),
        _ => {
            client::expect_status(resp, StatusCode::NOT_FOUND, &what).await?;
        }
    }

    let start_path = format!("/v2/{name}/blobs/uploads/");
    let what = format!("POST {start_path}");
    let resp = conn.send_empty(Method::POST, &start_path).await?;
    let resp = client::expect_status(resp, StatusCode::ACCEPTED, &what).await?;
    let location = client::location_path(client::header_str(resp.headers(), "location", &what)?)?;
    client::drain(resp, &what).await?;

    let what = format!("PATCH {location}");
    let req = conn
        .request(Method::PATCH, &location)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let req = match pusher {
        Pusher::ContainersImage => req.header(header::CONTENT_LENGTH, len),
        // hyper frames the body in chunks when the header says so, whatever its size hint.
        Pusher::Docker => req.header(header::TRANSFER_ENCODING, "chunked"),
    }
    .body(src.body())?;
    let resp = client::expect_status(conn.send(req).await?, StatusCode::ACCEPTED, &what).await?;
    if let Some(range) = resp.headers().get("range") {
        let want = format!("0-{}", len - 1);
        if range.as_bytes() != want.as_bytes() {
            bail!("{what}: Range is {range:?}, expected {want:?} after sending {len} bytes");
        }
    }
    let location = client::location_path(client::header_str(resp.headers(), "location", &what)?)?;
    client::drain(resp, &what).await?;

    let put_path = client::with_digest(&location, digest);
    let what = format!("PUT {put_path}");
    let req = conn
        .request(Method::PUT, &put_path)
        .header(header::CONTENT_LENGTH, 0)
        .body(ReqBody::Empty)?;
    let resp = client::expect_status(conn.send(req).await?, StatusCode::CREATED, &what).await?;
    client::expect_header(resp.headers(), DIGEST, digest, &what)?;
    client::header_str(resp.headers(), "location", &what)?;
    client::drain(resp, &what).await?;

    if pusher == Pusher::Docker {
        let what = format!("HEAD {blob_path} (after the upload)");
        let resp = conn.send_empty(Method::HEAD, &blob_path).await?;
        let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
        client::expect_header(resp.headers(), "content-length", &len.to_string(), &what)?;
        client::expect_header(resp.headers(), DIGEST, digest, &what)?;
        client::drain(resp, &what).await?;
    }
    Ok(true)
}

/// Digests of the blobs for op indices `0..count`, hashed on all cores before timing starts.
pub fn digests(seed: u64, count: u64, size: u64) -> Vec<String> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u64)
        .min(count.max(1));
    let mut out = vec![String::new(); usize::try_from(count).unwrap_or(usize::MAX)];
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t..count)
                        .step_by(threads as usize)
                        .map(|i| (i, prng::digest_of(prng::stream_seed(seed, i), size)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            // A panic in a hashing thread is a bug in this program, not a run error.
            for (i, d) in h.join().expect("hashing thread panicked") {
                out[i as usize] = d;
            }
        }
    });
    out
}

/// `blob-push`: one new blob of `size` per op.
pub struct Push {
    /// Repository.
    pub name: String,
    /// Blob size.
    pub size: u64,
    /// Run seed; op `i` pushes stream `stream_seed(seed, i)`.
    pub seed: u64,
    /// Precomputed digest per op index (warmup ones first).
    pub digests: Vec<String>,
    /// Whose request sequence each push follows.
    pub pusher: Pusher,
}

impl Push {
    /// Pushes blob `i`.
    pub async fn op(&self, conn: &mut Conn, i: u64) -> anyhow::Result<u64> {
        let digest = self
            .digests
            .get(i as usize)
            .context("op index beyond the precomputed digests")?;
        let src = Source::Prng {
            state: prng::stream_seed(self.seed, i),
            len: self.size,
        };
        push(conn, &self.name, &src, digest, false, self.pusher).await?;
        Ok(self.size)
    }
}

/// A blob pushed during setup, shared by the pull and HEAD scenarios.
pub struct Stored {
    /// Repository.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Stream state of its contents.
    pub state: u64,
    /// Its digest.
    pub digest: String,
}

impl Stored {
    /// Makes sure the fixture blob of `size` exists (contents depend on the size only, so repeated
    /// runs against one registry reuse it).
    pub async fn setup(conn: &mut Conn, name: &str, size: u64) -> anyhow::Result<Self> {
        Self::setup_from(conn, name, size, prng::stream_seed(0x5E70_0000, size)).await
    }

    /// Makes sure the blob of `size` bytes from stream state `state` exists.
    pub async fn setup_from(
        conn: &mut Conn,
        name: &str,
        size: u64,
        state: u64,
    ) -> anyhow::Result<Self> {
        let digest = tokio::task::spawn_blocking(move || prng::digest_of(state, size)).await?;
        push(
            conn,
            name,
            &Source::Prng { state, len: size },
            &digest,
            true,
            Pusher::ContainersImage,
        )
        .await
        .context("setup: pushing the fixture blob")?;
        Ok(Self {
            name: name.to_owned(),
            size,
            state,
            digest,
        })
    }

    /// Sends `method` for the blob and checks status 200, `Content-Length` and the digest
    /// header; returns the response (body unread) and a description for messages.
    async fn fetch(
        &self,
        conn: &mut Conn,
        method: Method,
    ) -> anyhow::Result<(hyper::Response<hyper::body::Incoming>, String)> {
        let path = format!("/v2/{}/blobs/{}", self.name, self.digest);
        let what = format!("{method} {path}");
        let resp = conn.send_empty(method, &path).await?;
        let resp = client::expect_status(resp, StatusCode::OK, &what).await?;
        client::expect_header(
            resp.headers(),
            "content-length",
            &self.size.to_string(),
            &what,
        )?;
        client::expect_header(resp.headers(), DIGEST, &self.digest, &what)?;
        Ok((resp, what))
    }

    /// `blob-pull`: GET, check headers, compare the body as it streams.
    pub async fn get(&self, conn: &mut Conn) -> anyhow::Result<u64> {
        let (resp, what) = self.fetch(conn, Method::GET).await?;
        let mut cmp = Comparer::new(self.state);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .with_context(|| format!("{what}: reading body after {} bytes", cmp.offset()))?;
            if let Some(d) = frame.data_ref() {
                if cmp.offset() + d.len() as u64 > self.size {
                    bail!("{what}: body longer than {} bytes", self.size);
                }
                cmp.check(d).map_err(|m| anyhow::anyhow!("{what}: {m}"))?;
            }
        }
        if cmp.offset() != self.size {
            bail!(
                "{what}: body ended after {} of {} bytes",
                cmp.offset(),
                self.size
            );
        }
        Ok(self.size)
    }

    /// `blob-head`: HEAD, check length and digest.
    pub async fn head(&self, conn: &mut Conn) -> anyhow::Result<u64> {
        let (resp, what) = self.fetch(conn, Method::HEAD).await?;
        client::drain(resp, &what).await?;
        Ok(0)
    }
}
