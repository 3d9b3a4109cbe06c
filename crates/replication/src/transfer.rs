//! Both ends of a transfer: the endpoint's request handlers (have, fetch, push) and this node's
//! requests to peers (push copies until `min_copies`, fetch into the local store, read through).

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use wharf_blob::{BlobError, BlobInfo, BlobReader, CorruptBlob};
use wharf_meta::HeldBlob;
use wharf_meta::records::BlobRecord;
use wharf_types::planted::{self, PlantedBug};
use wharf_types::{Digest, ErrorCode, NodeId};

use crate::placement::{self, Peer};
use crate::protocol::{self, Request, Response};
use crate::verify::{ChunkVerifier, chunk_root};
use crate::{PERMIT_BYTES, ReplicationError, Replicator, lock};

/// How long dialing a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may stay silent in the middle of a transfer (QUIC's idle timeout also
/// catches a dead peer; this bounds a live but stuck one).
const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a pushed-to peer may take to say whether it wants the bytes.
const PUSH_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Stream reset code: the sender's own copy failed its check, or could not be read.
const RESET_UNREADABLE: u32 = 1;
/// Bytes one receiving transfer may buffer (a chunk being verified plus a write batch).
pub(crate) const TRANSFER_BUFFER: u64 = 2 * wharf_blob::CHUNK_SIZE;

/// A change of this node's own holdings, reported through Raft in batches.
#[derive(Debug, Clone)]
pub enum HoldingChange {
    Add(HeldBlob),
    Remove(Digest),
}

/// State of a fill (a fetch into the local store) that readers may wait for.
#[derive(Debug, Clone)]
pub(crate) enum FillStatus {
    Running,
    Done(Result<(), String>),
}

type Tee = tokio::sync::mpsc::Sender<io::Result<Bytes>>;

pub(crate) fn peer_error(peer: NodeId, message: impl std::fmt::Display) -> ReplicationError {
    ReplicationError::Peer {
        peer,
        message: message.to_string(),
    }
}

pub(crate) async fn read_frame<T: for<'de> serde::Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
) -> Result<T, String> {
    read_frame_within(recv, STALL_TIMEOUT).await
}

/// [`read_frame`] with its own deadline (for answers that follow long work on the peer).
pub(crate) async fn read_frame_within<T: for<'de> serde::Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
    within: Duration,
) -> Result<T, String> {
    let read = async {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let len = protocol::check_length(u32::from_be_bytes(len)).map_err(|e| e.to_string())?;
        // Grown as bytes arrive: a peer announcing a large frame costs only what it sends.
        let mut body = Vec::with_capacity(len.min(64 * 1024));
        while body.len() < len {
            let want = len - body.len();
            match recv.read_chunk(want, true).await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err("stream ended inside a frame".to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
        protocol::decode(&body).map_err(|e| e.to_string())
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

/// Writes `bytes`, failing if the peer takes none of it for [`STALL_TIMEOUT`].
pub(crate) async fn write_or_stall(
    send: &mut quinn::SendStream,
    bytes: Bytes,
) -> Result<(), String> {
    match tokio::time::timeout(STALL_TIMEOUT, send.write_chunk(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the peer stopped reading".to_string()),
    }
}

/// How long the copies of an upload may take before one more member is asked for a copy:
/// a second, plus the time the bytes take at 100 MB/s.
fn hedge_after(size: u64) -> Duration {
    Duration::from_secs(1) + Duration::from_millis(size / 100_000)
}

/// How long a peer may take to fsync and place `size` bytes it has received (at 20 MB/s, the
/// slowest disk worth waiting for, plus the usual stall allowance).
fn fsync_allowance(size: u64) -> Duration {
    STALL_TIMEOUT + Duration::from_secs(size / (20 * 1024 * 1024))
}

async fn respond(send: &mut quinn::SendStream, response: &Response) {
    if let Err(e) = send.write_all(&protocol::encode_response(response)).await {
        tracing::debug!(error = %e, "could not answer a blob-transfer request");
    }
}

pub(crate) fn error_response(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code: code.as_str().to_string(),
        message: message.into(),
    }
}

/// Receives the bytes of a transfer as verified chunks, each with the offset just past it.
/// The stream ends after the last byte (checked complete) or after its first error: a chunk
/// that fails verification is [`io::ErrorKind::InvalidData`] and nothing of it is yielded.
fn verified_chunks(
    recv: quinn::RecvStream,
    verifier: ChunkVerifier,
) -> impl Stream<Item = io::Result<(u64, Bytes)>> + Send + Unpin {
    struct State {
        recv: quinn::RecvStream,
        verifier: ChunkVerifier,
        ready: VecDeque<(u64, Bytes)>,
        ended: bool,
    }
    let state = State {
        recv,
        verifier,
        ready: VecDeque::new(),
        ended: false,
    };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        loop {
            if let Some(item) = s.ready.pop_front() {
                return Some((Ok(item), Some(s)));
            }
            if s.ended {
                return None;
            }
            let read = tokio::time::timeout(STALL_TIMEOUT, s.recv.read_chunk(1024 * 1024, true));
            let failure = match read.await {
                Err(_) => io::Error::new(io::ErrorKind::TimedOut, "peer stalled"),
                Ok(Err(e)) => io::Error::new(io::ErrorKind::ConnectionAborted, e),
                Ok(Ok(None)) => match s.verifier.finish() {
                    Ok(()) => {
                        s.ended = true;
                        continue;
                    }
                    Err(e) => io::Error::new(io::ErrorKind::UnexpectedEof, e),
                },
                Ok(Ok(Some(chunk))) => {
                    let start = s.verifier.verified_up_to();
                    match s.verifier.push(chunk.bytes) {
                        Ok(done) => {
                            let mut end = start;
                            for piece in done {
                                end += piece.len() as u64;
                                s.ready.push_back((end, piece));
                            }
                            continue;
                        }
                        Err(e) => io::Error::new(io::ErrorKind::InvalidData, e),
                    }
                }
            };
            // Chunks verified before the failure still go out first.
            s.ready.clear();
            return Some((Err(failure), None));
        }
    }))
}

/// The endpoint's accept loop: one task per connection, one per request stream.
pub(crate) async fn serve(me: Weak<Replicator>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let me = me.clone();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "blob-transfer handshake failed");
                    return;
                }
            };
            while let Ok((send, recv)) = connection.accept_bi().await {
                let Some(replicator) = me.upgrade() else {
                    return;
                };
                let connection = connection.clone();
                tokio::spawn(async move { replicator.handle(connection, send, recv).await });
            }
        });
    }
}

impl Replicator {
    /// Whether `id` is a member of the configuration this node knows.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.cluster.members().iter().any(|(m, _)| *m == id)
    }

    /// Members with their region and the measured RTT of an open connection.
    fn peers(&self) -> Vec<Peer> {
        let connections = self
            .connections
            .try_lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        self.cluster
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.node_id)
            .map(|(id, info)| Peer {
                id,
                region: info.region,
                rtt: connections
                    .get(&id)
                    .filter(|c| c.close_reason().is_none())
                    .map(|c| c.rtt()),
            })
            .collect()
    }

    /// The regions the members of the configuration are in.
    pub fn member_regions(&self) -> BTreeSet<String> {
        self.cluster
            .members()
            .into_iter()
            .map(|(_, info)| info.region)
            .collect()
    }

    /// The nearest other member in one of `regions` that is known to be up (on a follower:
    /// any member), to run a write of a residency-pinned repository.
    pub fn nearest_in(&self, regions: &BTreeSet<String>) -> Option<NodeId> {
        let live = self.cluster.live_members();
        let candidates: Vec<Peer> = self
            .peers()
            .into_iter()
            .filter(|p| regions.contains(&p.region) && live.contains(&p.id))
            .collect();
        placement::nearest_first(&candidates, &self.region)
            .first()
            .copied()
    }

    /// Members other than this node that hold `record`, nearest first.
    pub(crate) fn holders_nearest(&self, record: &BlobRecord) -> Vec<NodeId> {
        let holders: Vec<Peer> = self
            .peers()
            .into_iter()
            .filter(|p| record.holders.contains(&p.id))
            .collect();
        placement::nearest_first(&holders, &self.region)
    }

    async fn handle(
        self: Arc<Self>,
        connection: quinn::Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) {
        let mut version = [0u8; 1];
        if recv.read_exact(&mut version).await.is_err() {
            return;
        }
        if let Err(e) = protocol::check_version(version[0]) {
            respond(
                &mut send,
                &error_response(ErrorCode::Unsupported, e.to_string()),
            )
            .await;
            let _ = send.finish();
            return;
        }
        let request: Request = match read_frame(&mut recv).await {
            Ok(r) => r,
            Err(e) => {
                respond(&mut send, &error_response(ErrorCode::BadRequest, e)).await;
                let _ = send.finish();
                return;
            }
        };
        let from = request.from();
        if !self.security.peer_is(&connection, from) || !self.is_member(from) {
            tracing::warn!(
                from,
                "blob-transfer request refused: not a member, or not who its certificate names"
            );
            let message =
                format!("node {from} is not a member, or its certificate does not name it");
            respond(&mut send, &error_response(ErrorCode::Denied, message)).await;
            let _ = send.finish();
            return;
        }
        match request {
            Request::Have { digests, .. } => {
                let mut held = Vec::with_capacity(digests.len());
                for digest in &digests {
                    held.push(matches!(self.blobs.stat(digest).await, Ok(Some(_))));
                }
                respond(&mut send, &Response::Have { held }).await;
            }
            Request::Fetch { digest, offset, .. } => {
                self.serve_fetch(from, &digest, offset, &mut send).await;
            }
            Request::Push {
                digest,
                size,
                chunk_size,
                chunk_hashes,
                ..
            } => {
                let response = self
                    .take_push(&digest, size, chunk_size, &chunk_hashes, &mut send, recv)
                    .await;
                respond(&mut send, &response).await;
            }
            Request::Forward {
                method,
                uri,
                headers,
                ..
            } => {
                return self.serve_forward(method, uri, headers, send, recv).await;
            }
            Request::Copy { digest, .. } => {
                let response = self.copy_here(&digest).await;
                respond(&mut send, &response).await;
            }
        }
        let _ = send.finish();
    }

    /// A blob's record in this node's state, if it can be read.
    fn local_record(&self, digest: &Digest) -> Option<BlobRecord> {
        use redb::ReadableDatabase as _;
        let db = self.meta.state();
        db.begin_read()
            .ok()
            .and_then(|t| wharf_meta::query::blob(&t, digest).ok().flatten())
    }

    /// Serves [`Request::Copy`]: fetches `digest` into this node's store, if its record lets
    /// this node's region keep it.
    async fn copy_here(self: &Arc<Self>, digest: &Digest) -> Response {
        let record = self.local_record(digest);
        let Some(record) = record else {
            return error_response(
                ErrorCode::BlobUnknown,
                format!("this node has no record of {digest} (yet)"),
            );
        };
        if !record.stores_in(&self.region) {
            return error_response(
                ErrorCode::Denied,
                format!("{digest} may not be stored in region {}", self.region),
            );
        }
        match self.ensure_local(digest, &record).await {
            Ok(()) => Response::Stored { size: record.size },
            Err(e) => error_response(e.code(), e.to_string()),
        }
    }

    /// Asks `peer` to fetch `digest` into its own store ([`Request::Copy`]); Ok once it holds
    /// verified, fsync'd bytes.
    pub(crate) async fn ask_to_copy(
        &self,
        peer: NodeId,
        digest: &Digest,
        size: u64,
    ) -> Result<(), ReplicationError> {
        let request = Request::Copy {
            from: self.node_id,
            digest: digest.clone(),
        };
        let (mut send, mut recv) = self.open_request(peer, &request).await?;
        let _ = send.finish();
        let wait = PUSH_READY_TIMEOUT + fsync_allowance(size) + STALL_TIMEOUT;
        let answer = read_frame_within::<Response>(&mut recv, wait)
            .await
            .map_err(|e| peer_error(peer, e))?;
        expect_stored(peer, answer)
    }

    async fn serve_fetch(
        self: &Arc<Self>,
        from: NodeId,
        digest: &Digest,
        offset: u64,
        send: &mut quinn::SendStream,
    ) {
        let chunks = match self.blobs.chunk_list(digest).await {
            Ok(c) => c,
            Err(BlobError::NotFound) => {
                let message = format!("{digest} is not stored on this node");
                return respond(send, &error_response(ErrorCode::BlobUnknown, message)).await;
            }
            Err(e) => {
                if matches!(e, BlobError::Corrupt(_)) {
                    self.drop_corrupt(digest).await;
                }
                return respond(send, &error_response(e.code(), e.to_string())).await;
            }
        };
        let size = chunks.blob_size;
        if offset > size || (!offset.is_multiple_of(chunks.chunk_size) && offset != size) {
            let message = format!("offset {offset} is not a chunk boundary of {digest}");
            return respond(send, &error_response(ErrorCode::BadRequest, message)).await;
        }
        let header = Response::Fetch {
            size,
            chunk_size: chunks.chunk_size,
            chunk_hashes: protocol::hashes_to_hex(&chunks.hashes),
        };
        respond(send, &header).await;
        if offset == size {
            return;
        }
        let mut reader = match self
            .blobs
            .read_for_peer(digest, Some((offset, size - 1)))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                let _ = send.reset(quinn::VarInt::from_u32(RESET_UNREADABLE));
                tracing::warn!(%digest, error = %e, "cannot read a blob a peer asked for");
                return;
            }
        };
        while let Some(piece) = reader.stream.next().await {
            match piece {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    if write_or_stall(send, bytes).await.is_err() {
                        let _ = send.reset(quinn::VarInt::from_u32(RESET_UNREADABLE));
                        return;
                    }
                    self.count_bytes(from, 0, n);
                }
                Err(e) => {
                    // Never send a byte that failed its check: the peer sees a reset and asks
                    // another holder; this copy is dropped and fetched again.
                    let _ = send.reset(quinn::VarInt::from_u32(RESET_UNREADABLE));
                    if is_corrupt(&e) {
                        self.drop_corrupt(digest).await;
                    }
                    return;
                }
            }
        }
    }

    async fn take_push(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
        chunk_size: u64,
        chunk_hashes: &[String],
        send: &mut quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Response {
        // A copy already here counts only once it is re-checked: a damaged one is replaced.
        if let Ok(Some(info)) = self.blobs.info(digest).await
            && info.size == size
            && let Ok(info) = self.blobs.verify(digest).await
        {
            self.report(HoldingChange::Add(held(&info)));
            return Response::PushReady { already_held: true };
        }
        let verifier = match protocol::hashes_from_hex(chunk_hashes)
            .map_err(|e| e.to_string())
            .and_then(|h| ChunkVerifier::new(h, chunk_size, size, 0).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => return error_response(ErrorCode::BadRequest, e),
        };
        let Ok(_permit) = self
            .in_flight
            .clone()
            .acquire_many_owned(transfer_permits())
            .await
        else {
            return error_response(ErrorCode::Internal, "shutting down");
        };
        let session = match self.blobs.create_upload().await {
            Ok(s) => s,
            Err(e) => return error_response(e.code(), e.to_string()),
        };
        respond(
            send,
            &Response::PushReady {
                already_held: false,
            },
        )
        .await;
        let body = verified_chunks(recv, verifier).map(|item| item.map(|(_, bytes)| bytes));
        if let Err(e) = self.blobs.append(&session, Some(0), body).await {
            let _ = self.blobs.cancel(&session).await;
            self.fatal_check(&e);
            return error_response(e.code(), e.to_string());
        }
        match self
            .blobs
            .commit_from_peer(&session, digest, Some(size))
            .await
        {
            Ok(info) => {
                self.report(HoldingChange::Add(held(&info)));
                Response::Stored { size: info.size }
            }
            Err(e) => {
                self.fatal_check(&e);
                error_response(e.code(), e.to_string())
            }
        }
    }

    /// A connection to `peer`, reused while it stays open.
    pub(crate) async fn connection(
        &self,
        peer: NodeId,
    ) -> Result<quinn::Connection, ReplicationError> {
        if let Some(c) = self.connections.lock().await.get(&peer)
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let info = self
            .cluster
            .members()
            .into_iter()
            .find(|(id, _)| *id == peer)
            .map(|(_, info)| info)
            .ok_or_else(|| peer_error(peer, "not a member"))?;
        let text = info.blob_addr();
        let addr = tokio::net::lookup_host(&text)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| peer_error(peer, format!("cannot resolve {text}")))?;
        let config = self
            .security
            .client_config(&self.windows)
            .map_err(|e| ReplicationError::Setup(e.to_string()))?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, &self.security.server_name(peer))
            .map_err(|e| peer_error(peer, e))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| peer_error(peer, format!("no QUIC handshake with {addr} in time")))?
            .map_err(|e| peer_error(peer, e))?;
        self.connections
            .lock()
            .await
            .insert(peer, connection.clone());
        Ok(connection)
    }

    /// Opens a stream to `peer` and sends `request` on it.
    pub(crate) async fn open_request(
        &self,
        peer: NodeId,
        request: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ReplicationError> {
        let connection = self.connection(peer).await?;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| peer_error(peer, e))?;
        send.write_all(&protocol::encode_request(request))
            .await
            .map_err(|e| peer_error(peer, e))?;
        Ok((send, recv))
    }

    /// Asks `peer` for `digest` from `offset` and checks its chunk list against the record.
    async fn open_fetch(
        &self,
        peer: NodeId,
        digest: &Digest,
        record: &BlobRecord,
        offset: u64,
    ) -> Result<(quinn::RecvStream, ChunkVerifier), ReplicationError> {
        let request = Request::Fetch {
            from: self.node_id,
            digest: digest.clone(),
            offset,
        };
        let (mut send, mut recv) = self.open_request(peer, &request).await?;
        let _ = send.finish();
        let header: Response = read_frame(&mut recv)
            .await
            .map_err(|e| peer_error(peer, e))?;
        let (size, chunk_size, hashes) = match header {
            Response::Fetch {
                size,
                chunk_size,
                chunk_hashes,
            } => (size, chunk_size, chunk_hashes),
            Response::Error { code, message } => {
                return Err(peer_error(peer, format!("{code}: {message}")));
            }
            other => return Err(peer_error(peer, format!("unexpected answer {other:?}"))),
        };
        let hashes = protocol::hashes_from_hex(&hashes).map_err(|e| peer_error(peer, e))?;
        // planted bug skip-peer-digest-verify: any chunk list the peer sends is taken
        let root_differs = chunk_root(&hashes) != record.chunk_root
            && !planted::active(PlantedBug::SkipPeerDigestVerify);
        if size != record.size || root_differs {
            self.counters
                .verify_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(peer_error(
                peer,
                format!("its chunk list of {digest} differs from the one committed"),
            ));
        }
        let verifier = ChunkVerifier::new(hashes, chunk_size, size, offset)
            .map_err(|e| peer_error(peer, e))?;
        Ok((recv, verifier))
    }

    /// Fetches `digest` from the nearest holders into the local store: verified chunk by chunk,
    /// resumed from the last verified chunk on another holder after a failure, fsync'd and
    /// reported as held. `tee` gets each verified chunk as it arrives; the last one only after
    /// the whole blob was committed, so a reader never sees a complete body that does not
    /// match its digest.
    async fn fill(
        self: &Arc<Self>,
        digest: &Digest,
        record: &BlobRecord,
        tee: Option<Tee>,
    ) -> Result<BlobInfo, ReplicationError> {
        let reader = Arc::new(std::sync::Mutex::new(tee));
        let result = self.fill_inner(digest, record, &reader).await;
        let tee = lock(&reader).take();
        if let (Err(e), Some(tee)) = (&result, tee) {
            // A reader that stopped reading may have a full channel: never wait for it.
            let _ = tee.try_send(Err(io::Error::other(e.to_string())));
        }
        result
    }

    async fn fill_inner(
        self: &Arc<Self>,
        digest: &Digest,
        record: &BlobRecord,
        reader: &Arc<std::sync::Mutex<Option<Tee>>>,
    ) -> Result<BlobInfo, ReplicationError> {
        let holders = self.holders_nearest(record);
        if holders.is_empty() {
            return Err(ReplicationError::NoHolder(digest.clone()));
        }
        let _permit = self
            .in_flight
            .clone()
            .acquire_many_owned(transfer_permits())
            .await
            .map_err(|e| ReplicationError::Setup(e.to_string()))?;
        let session = self.blobs.create_upload().await?;
        let last_chunk = Arc::new(std::sync::Mutex::new(None::<Bytes>));
        let mut offset = 0u64;
        let mut failures = Vec::new();
        let mut complete = false;
        'holders: for _round in 0..2 {
            for &peer in &holders {
                let (recv, verifier) = match self.open_fetch(peer, digest, record, offset).await {
                    Ok(opened) => opened,
                    Err(e) => {
                        failures.push(e.to_string());
                        continue;
                    }
                };
                let size = record.size;
                let me = Arc::clone(self);
                let reader = Arc::clone(reader);
                let last = Arc::clone(&last_chunk);
                let body = verified_chunks(recv, verifier).then(move |item| {
                    let (me, reader, last) =
                        (Arc::clone(&me), Arc::clone(&reader), Arc::clone(&last));
                    async move {
                        let (end, bytes) = item?;
                        me.count_bytes(peer, bytes.len() as u64, 0);
                        if end == size {
                            *lock(&last) = Some(bytes.clone());
                        } else {
                            tee_to(&reader, bytes.clone()).await;
                        }
                        Ok::<_, io::Error>(bytes)
                    }
                });
                match self
                    .blobs
                    .append(&session, Some(offset), Box::pin(body))
                    .await
                {
                    Ok(_) => {
                        complete = true;
                        break 'holders;
                    }
                    Err(BlobError::Body(reason)) => {
                        if reason.contains("does not match") {
                            self.counters
                                .verify_failures
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::info!(%digest, peer, %reason, "fetch interrupted; resuming from another holder");
                        failures.push(format!("node {peer}: {reason}"));
                        offset = self.blobs.upload_size(&session).await?;
                    }
                    Err(e) => {
                        let _ = self.blobs.cancel(&session).await;
                        self.fatal_check(&e);
                        return Err(e.into());
                    }
                }
            }
        }
        if !complete {
            let _ = self.blobs.cancel(&session).await;
            return Err(peer_error(
                holders[0],
                format!("no holder could send {digest}: {}", failures.join("; ")),
            ));
        }
        let info = match self
            .blobs
            .commit_from_peer(&session, digest, Some(record.size))
            .await
        {
            Ok(info) => info,
            Err(e) => {
                self.fatal_check(&e);
                return Err(e.into());
            }
        };
        let last = lock(&last_chunk).take();
        if let Some(bytes) = last {
            tee_to(reader, bytes).await;
        }
        self.report(HoldingChange::Add(held(&info)));
        Ok(info)
    }

    /// Starts a fill of `digest` unless one is under way; returns a receiver of its status,
    /// and a stream of its verified chunks if this call started it and asked for one.
    pub(crate) fn start_fill(
        self: &Arc<Self>,
        digest: &Digest,
        record: &BlobRecord,
        want_stream: bool,
    ) -> (
        tokio::sync::watch::Receiver<FillStatus>,
        Option<tokio::sync::mpsc::Receiver<io::Result<Bytes>>>,
    ) {
        let mut fills = lock(&self.fills);
        if let Some(running) = fills.get(digest) {
            return (running.clone(), None);
        }
        let (status, watch) = tokio::sync::watch::channel(FillStatus::Running);
        fills.insert(digest.clone(), watch.clone());
        drop(fills);
        let (tee, stream) = if want_stream {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let me = Arc::clone(self);
        let (digest, record) = (digest.clone(), record.clone());
        tokio::spawn(async move {
            // Even if the fill panics, its entry goes (and waiters see the channel close).
            struct Forget(Arc<Replicator>, Digest);
            impl Drop for Forget {
                fn drop(&mut self) {
                    lock(&self.0.fills).remove(&self.1);
                }
            }
            let _forget = Forget(Arc::clone(&me), digest.clone());
            let result = me.fill(&digest, &record, tee).await;
            if let Err(e) = &result {
                tracing::warn!(%digest, error = %e, "fetching a blob from its holders failed");
            }
            lock(&me.fills).remove(&digest);
            let _ = status.send(FillStatus::Done(
                result.map(|_| ()).map_err(|e| e.to_string()),
            ));
        });
        (watch, stream)
    }

    /// Fetches `digest` into the local store (or waits for the fetch under way) and returns
    /// once it is stored.
    pub async fn ensure_local(
        self: &Arc<Self>,
        digest: &Digest,
        record: &BlobRecord,
    ) -> Result<(), ReplicationError> {
        let (mut status, _) = self.start_fill(digest, record, false);
        let done = status
            .wait_for(|s| matches!(s, FillStatus::Done(_)))
            .await
            .map(|s| s.clone());
        match done {
            Ok(FillStatus::Done(Ok(()))) => Ok(()),
            Ok(FillStatus::Done(Err(message))) => Err(ReplicationError::Peer { peer: 0, message }),
            _ => Err(ReplicationError::Setup("the fetch stopped".into())),
        }
    }

    /// Reads a blob this node does not hold: streamed from the nearest holder while a verified
    /// local copy is written (DESIGN.md §1.4, "read-through"). Concurrent reads of one digest
    /// share one fetch: the first streams it, the others wait for the local copy. A `range` is
    /// served from the local copy once the fetch is done.
    pub async fn read_through(
        self: &Arc<Self>,
        digest: &Digest,
        record: &BlobRecord,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader, ReplicationError> {
        if range.is_none() {
            let (_, stream) = self.start_fill(digest, record, true);
            if let Some(rx) = stream {
                let stream = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                });
                return Ok(BlobReader {
                    size: record.size,
                    start: 0,
                    len: record.size,
                    stream: Box::pin(stream),
                });
            }
        }
        self.ensure_local(digest, record).await?;
        Ok(self.blobs.read(digest, range).await?)
    }

    /// Reads a blob this node may not keep (data residency: its region is not one of the
    /// blob's): streamed from the nearest holders, verified chunk by chunk, and written nowhere
    /// (DESIGN.md §4 "Pull"). A holder that fails mid-way is replaced by the next one from the
    /// first byte not yet sent. The first holder is asked before this returns, so that a blob
    /// no holder can send is an error response, not an aborted body.
    pub async fn stream_through(
        self: &Arc<Self>,
        digest: &Digest,
        record: &BlobRecord,
        range: Option<(u64, u64)>,
    ) -> Result<BlobReader, ReplicationError> {
        let last = record.size.saturating_sub(1);
        let (start, len) = match range {
            Some((start, end)) => (start, end.min(last).saturating_sub(start) + 1),
            None => (0, record.size),
        };
        let holders = self.holders_nearest(record);
        let permit = self
            .in_flight
            .clone()
            .acquire_many_owned(transfer_permits())
            .await
            .map_err(|e| ReplicationError::Setup(e.to_string()))?;
        let mut passing = PassThrough {
            me: Arc::clone(self),
            digest: digest.clone(),
            record: record.clone(),
            holders: holders.into_iter().collect(),
            failures: Vec::new(),
            next: start,
            end: start + len,
        };
        let first = passing.open_next().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = passing.send_all(first, &tx).await {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(BlobReader {
            size: record.size,
            start,
            len,
            stream: Box::pin(stream),
        })
    }

    /// Pushes copies of a blob stored here until `min_copies` members of the configuration
    /// hold verified, fsync'd bytes (DESIGN.md §1.2); returns how many do. Members already
    /// recorded as holders count without a transfer.
    ///
    /// `regions` (data residency; empty: anywhere) limits the members that may take a copy.
    pub async fn ensure_copies(
        self: &Arc<Self>,
        info: &BlobInfo,
        recorded_holders: &BTreeSet<NodeId>,
        regions: &BTreeSet<String>,
    ) -> Result<usize, ReplicationError> {
        self.ensure_copies_without(info, recorded_holders, regions, None)
            .await
    }

    /// [`Self::ensure_copies`] counting only members other than `leaving` (a member about to
    /// leave neither counts nor takes a copy).
    pub(crate) async fn ensure_copies_without(
        self: &Arc<Self>,
        info: &BlobInfo,
        recorded_holders: &BTreeSet<NodeId>,
        regions: &BTreeSet<String>,
        leaving: Option<NodeId>,
    ) -> Result<usize, ReplicationError> {
        let stores_in = |region: &str| regions.is_empty() || regions.contains(region);
        let mut members = self.cluster.members();
        members.retain(|(id, _)| Some(*id) != leaving);
        let needed = placement::min_copies(self.min_copies, members.len());
        let eligible: Vec<NodeId> = members
            .iter()
            .filter(|(_, info)| stores_in(&info.region))
            .map(|(id, _)| *id)
            .collect();
        let mut have: BTreeSet<NodeId> = eligible
            .iter()
            .copied()
            .filter(|id| recorded_holders.contains(id))
            .collect();
        if Some(self.node_id) != leaving {
            have.insert(self.node_id);
        }
        if have.len() >= needed {
            return Ok(have.len());
        }
        let peers: Vec<Peer> = self
            .peers()
            .into_iter()
            .filter(|p| stores_in(&p.region) && Some(p.id) != leaving)
            .collect();
        let mut targets = placement::push_targets(&peers, &have, &self.region).into_iter();
        let mut running = FuturesUnordered::new();
        let mut failures = Vec::new();
        while have.len() + running.len() < needed {
            let Some(peer) = targets.next() else { break };
            running.push(self.push_to(peer, info));
        }
        let hedge_after = hedge_after(info.size);
        while have.len() < needed {
            let (peer, result) = match tokio::time::timeout(hedge_after, running.next()).await {
                Ok(Some(done)) => done,
                Ok(None) => break,
                // The copies under way take longer than a healthy peer would (one may be cut
                // off or paused, and would hold the upload until the stall timeout): push to
                // one more member at once; whichever copies complete first count.
                Err(_slow) => {
                    if let Some(next) = targets.next() {
                        tracing::info!(digest = %info.digest, next, "a copy is slow; pushing to one more member");
                        running.push(self.push_to(next, info));
                    }
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    have.insert(peer);
                }
                Err(e) => {
                    tracing::warn!(digest = %info.digest, peer, error = %e, "pushing a copy failed");
                    failures.push(e.to_string());
                    if let Some(next) = targets.next() {
                        running.push(self.push_to(next, info));
                    }
                }
            }
        }
        if have.len() >= needed {
            return Ok(have.len());
        }
        let reason = if !failures.is_empty() {
            failures.join("; ")
        } else if regions.is_empty() {
            format!("the configuration has {} member(s)", members.len())
        } else {
            format!(
                "the repository keeps its bytes in region(s) {}, which have {} member(s)",
                regions.iter().cloned().collect::<Vec<_>>().join(", "),
                eligible.len()
            )
        };
        Err(ReplicationError::NotEnoughCopies {
            have: have.len(),
            needed,
            reason,
        })
    }

    /// Pushes one copy to `peer`; Ok once it has the bytes verified and fsync'd.
    async fn push_to(
        self: &Arc<Self>,
        peer: NodeId,
        info: &BlobInfo,
    ) -> (NodeId, Result<(), ReplicationError>) {
        (peer, self.push_inner(peer, info).await)
    }

    async fn push_inner(
        self: &Arc<Self>,
        peer: NodeId,
        info: &BlobInfo,
    ) -> Result<(), ReplicationError> {
        let digest = &info.digest;
        let chunks = self.blobs.chunk_list(digest).await?;
        let request = Request::Push {
            from: self.node_id,
            digest: digest.clone(),
            size: chunks.blob_size,
            chunk_size: chunks.chunk_size,
            chunk_hashes: protocol::hashes_to_hex(&chunks.hashes),
        };
        let (mut send, mut recv) = self.open_request(peer, &request).await?;
        // The peer may first wait for receive buffers or re-check a copy it has.
        match read_frame_within::<Response>(&mut recv, PUSH_READY_TIMEOUT)
            .await
            .map_err(|e| peer_error(peer, e))?
        {
            Response::PushReady { already_held: true } => return Ok(()),
            Response::PushReady {
                already_held: false,
            } => {}
            Response::Error { code, message } => {
                return Err(peer_error(peer, format!("{code}: {message}")));
            }
            other => return Err(peer_error(peer, format!("unexpected answer {other:?}"))),
        }
        let mut reader = self.blobs.read_for_peer(digest, None).await?;
        while let Some(piece) = reader.stream.next().await {
            match piece {
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    write_or_stall(&mut send, bytes)
                        .await
                        .map_err(|e| peer_error(peer, e))?;
                    self.count_bytes(peer, 0, n);
                }
                Err(e) => {
                    let _ = send.reset(quinn::VarInt::from_u32(RESET_UNREADABLE));
                    if is_corrupt(&e) {
                        self.drop_corrupt(digest).await;
                    }
                    return Err(ReplicationError::Blob(BlobError::Io(e)));
                }
            }
        }
        send.finish().map_err(|e| peer_error(peer, e))?;
        let answer = read_frame_within::<Response>(&mut recv, fsync_allowance(chunks.blob_size))
            .await
            .map_err(|e| peer_error(peer, e))?;
        expect_stored(peer, answer)
    }

    /// A local copy failed its check: it leaves this node's holdings (before anything else
    /// happens to the file) and a verified copy is fetched from a holder, replacing it. Returns
    /// whether it was dropped (not when no other member holds the blob).
    pub async fn drop_corrupt(self: &Arc<Self>, digest: &Digest) -> bool {
        let record = self.local_record(digest);
        let Some(record) = record.filter(|r| !self.holders_nearest(r).is_empty()) else {
            // No other copy to fetch: deleting this one would lose its intact chunks too. Reads
            // of the damaged chunk keep failing (never served) until an operator acts.
            tracing::error!(%digest, "the only copy of this blob is corrupt; keeping it (its intact chunks are still served)");
            return false;
        };
        self.counters
            .corrupt_dropped
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(%digest, "stored copy is corrupt; dropping it from this node's holdings and fetching a good one");
        if let Err(e) = self.remove_holding_now(digest).await {
            tracing::warn!(%digest, error = %e, "could not record the dropped copy yet; the resync worker retries");
        }
        // Gone from disk, so nothing counts it again until a verified copy replaces it.
        if let Err(e) = self.blobs.delete(digest).await {
            self.fatal_check(&e);
            tracing::warn!(%digest, error = %e, "could not remove a corrupt copy");
        }
        if record.stores_in(&self.region) {
            self.start_fill(digest, &record, false);
        }
        true
    }

    /// Stops the node on a storage error it cannot recover from (an fsync failed).
    fn fatal_check(&self, e: &BlobError) {
        if e.is_fatal() {
            (self.on_fatal)(&e.to_string());
        }
    }
}

/// Hands a verified chunk to the reader streaming a fill, if it still reads. A reader gone, or
/// one that takes nothing for [`STALL_TIMEOUT`], is let go (its response ends short, so its
/// client sees an error): the fill goes on without it.
/// One read streamed through this node: the holders left to ask and the bytes still owed.
struct PassThrough {
    me: Arc<Replicator>,
    digest: Digest,
    record: BlobRecord,
    holders: VecDeque<NodeId>,
    failures: Vec<String>,
    /// The first byte the reader has not been sent.
    next: u64,
    /// Just past the last byte the reader wants.
    end: u64,
}

type Opened = (NodeId, quinn::RecvStream, ChunkVerifier);

impl PassThrough {
    /// Asks the next holders, nearest first, for the chunks from the one holding `next`.
    async fn open_next(&mut self) -> Result<Opened, ReplicationError> {
        let aligned = self.next - self.next % wharf_blob::CHUNK_SIZE;
        while let Some(peer) = self.holders.pop_front() {
            match self
                .me
                .open_fetch(peer, &self.digest, &self.record, aligned)
                .await
            {
                Ok((recv, verifier)) => return Ok((peer, recv, verifier)),
                Err(e) => self.failures.push(e.to_string()),
            }
        }
        if self.failures.is_empty() {
            return Err(ReplicationError::NoHolder(self.digest.clone()));
        }
        Err(ReplicationError::Peer {
            peer: 0,
            message: format!(
                "no holder could send {}: {}",
                self.digest,
                self.failures.join("; ")
            ),
        })
    }

    /// Sends the wanted bytes of each verified chunk to `tx`, moving to the next holder when
    /// one fails; returns when everything was sent or the reader went away.
    async fn send_all(
        &mut self,
        first: Opened,
        tx: &tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    ) -> Result<(), ReplicationError> {
        let mut opened = first;
        loop {
            let (peer, recv, verifier) = opened;
            let mut chunks = verified_chunks(recv, verifier);
            while let Some(item) = chunks.next().await {
                let (chunk_end, bytes) = match item {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::info!(digest = %self.digest, peer, error = %e, "streaming through interrupted; resuming from another holder");
                        self.failures.push(format!("node {peer}: {e}"));
                        break;
                    }
                };
                self.me.count_bytes(peer, bytes.len() as u64, 0);
                let chunk_start = chunk_end - bytes.len() as u64;
                let from = self.next.max(chunk_start);
                let to = chunk_end.min(self.end);
                if from < to {
                    let piece = bytes.slice(
                        usize::try_from(from - chunk_start).unwrap_or(usize::MAX)
                            ..usize::try_from(to - chunk_start).unwrap_or(usize::MAX),
                    );
                    // A reader that stops reading is let go: it must not hold the transfer
                    // permits (shared with fills and pushes) for ever.
                    if tx.send_timeout(Ok(piece), STALL_TIMEOUT).await.is_err() {
                        return Ok(());
                    }
                    self.next = to;
                }
                if self.next >= self.end {
                    return Ok(());
                }
            }
            if self.next >= self.end {
                return Ok(());
            }
            opened = self.open_next().await?;
        }
    }
}

/// A peer's answer to a push or a copy request: Ok once it holds verified, fsync'd bytes.
fn expect_stored(peer: NodeId, answer: Response) -> Result<(), ReplicationError> {
    match answer {
        Response::Stored { .. } => Ok(()),
        Response::Error { code, message } => Err(peer_error(peer, format!("{code}: {message}"))),
        other => Err(peer_error(peer, format!("unexpected answer {other:?}"))),
    }
}

async fn tee_to(reader: &std::sync::Mutex<Option<Tee>>, bytes: Bytes) {
    let Some(tee) = lock(reader).clone() else {
        return;
    };
    if tee.send_timeout(Ok(bytes), STALL_TIMEOUT).await.is_err() {
        tracing::info!(
            "a reader stopped reading a blob being fetched; the fetch goes on without it"
        );
        lock(reader).take();
    }
}

fn is_corrupt(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<CorruptBlob>().is_some())
}

fn held(info: &BlobInfo) -> HeldBlob {
    HeldBlob {
        digest: info.digest.clone(),
        size: info.size,
        chunk_root: info.chunk_root.clone(),
    }
}

fn transfer_permits() -> u32 {
    u32::try_from(TRANSFER_BUFFER / PERMIT_BYTES).unwrap_or(u32::MAX)
}
