//! The server side of `wharf.raft.v1`: hands each RPC to this node's openraft instance.
//!
//! A snapshot arrives as a header and CRC-checked chunks; it is written to
//! `<data_dir>/raft/incoming/`, fsync'd, and only then given to openraft, whose state machine
//! verifies the snapshot's own checksums and installs it atomically.

use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::alias::VoteOf;
use tonic::{Request, Response, Status, Streaming};
use wharf_meta::raft_types::SnapshotMeta;
use wharf_meta::state_machine::SnapshotFile;
use wharf_meta::{TypeConfig, decode, encode};
use wharf_proto::raft as pb;

use crate::Raft;
use crate::peers::Identity;

/// Implements [`pb::raft_server::Raft`].
pub(crate) struct RaftService {
    pub(crate) raft: Raft,
    pub(crate) identity: Identity,
    pub(crate) incoming_dir: PathBuf,
    pub(crate) chunk_timeout: Duration,
    pub(crate) next_incoming: AtomicU64,
    /// Told whenever a leader reaches this node.
    pub(crate) core: std::sync::Arc<crate::core::Core>,
}

fn bad_body(e: std::io::Error) -> Status {
    Status::invalid_argument(format!("undecodable body: {e}"))
}

fn encoded<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    encode(value).map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
}

fn raft_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft: {e}"))
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::StreamAppendResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        self.identity.check(&request)?;
        self.core.heard_from_leader();
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&request.into_inner().body).map_err(bad_body)?;
        let response = self.raft.append_entries(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(pb::AppendEntriesResponse {
            body: encoded(&response)?,
        }))
    }

    type StreamAppendStream = ResponseStream;

    async fn stream_append(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        let from = self.identity.check(&request)?;
        let identity = self.identity.clone();
        let core = self.core.clone();
        // An injected partition cuts a stream that is already open, too.
        let delays = identity.clone();
        let input = request
            .into_inner()
            .take_while(move |_| {
                let open = identity.allows_from(from);
                async move { open }
            })
            .then(move |item| {
                let delay = delays.delay_from(from);
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    item
                }
            });
        // A request that does not decode, or a broken stream, ends the input: skipping one
        // would pair later responses with the wrong requests. The leader starts a new stream.
        let input = input
            .map(move |item| match item {
                Ok(message) => match decode::<AppendEntriesRequest<TypeConfig>>(&message.body) {
                    Ok(rpc) => {
                        core.heard_from_leader();
                        Some(rpc)
                    }
                    Err(e) => {
                        tracing::warn!("undecodable append request: {e}");
                        None
                    }
                },
                Err(status) => {
                    tracing::debug!("append stream ended: {status}");
                    None
                }
            })
            .take_while(|rpc| std::future::ready(rpc.is_some()))
            .filter_map(std::future::ready);
        let output = self
            .raft
            .stream_append(Box::pin(input))
            .map(|item| match item {
                Ok(result) => Ok(pb::StreamAppendResponse {
                    body: encoded(&result)?,
                }),
                Err(fatal) => Err(raft_failed(fatal)),
            });
        Ok(Response::new(Box::pin(output)))
    }

    async fn vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.identity.check(&request)?;
        let rpc: VoteRequest<TypeConfig> = decode(&request.into_inner().body).map_err(bad_body)?;
        let response = self.raft.vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(pb::VoteResponse {
            body: encoded(&response)?,
        }))
    }

    async fn pre_vote(
        &self,
        request: Request<pb::VoteRequest>,
    ) -> Result<Response<pb::VoteResponse>, Status> {
        self.identity.check(&request)?;
        let rpc: VoteRequest<TypeConfig> = decode(&request.into_inner().body).map_err(bad_body)?;
        let response = self.raft.pre_vote(rpc).await.map_err(raft_failed)?;
        Ok(Response::new(pb::VoteResponse {
            body: encoded(&response)?,
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.identity.check(&request)?;
        let rpc: TransferLeaderRequest<TypeConfig> =
            decode(&request.into_inner().body).map_err(bad_body)?;
        let response = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(pb::TransferLeaderResponse {
            body: encoded(&response)?,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        self.identity.check(&request)?;
        let mut stream = request.into_inner();
        let timeout = self.chunk_timeout;
        let Some(pb::snapshot_chunk::Part::Header(header)) =
            next_part(&mut stream, timeout).await?
        else {
            return Err(Status::invalid_argument(
                "a snapshot stream starts with its header",
            ));
        };
        let vote: VoteOf<TypeConfig> = decode(&header.vote).map_err(bad_body)?;
        let meta: SnapshotMeta = decode(&header.meta).map_err(bad_body)?;

        let n = self.next_incoming.fetch_add(1, Ordering::Relaxed);
        let path = self.incoming_dir.join(format!("snapshot-{n}.part"));
        let incoming = Incoming::create(path).map_err(storage_failed)?;
        let mut offset = 0u64;
        while let Some(part) = next_part(&mut stream, timeout).await? {
            let pb::snapshot_chunk::Part::Data(chunk) = part else {
                return Err(Status::invalid_argument("a second snapshot header"));
            };
            if chunk.offset != offset {
                return Err(Status::invalid_argument(format!(
                    "snapshot chunk at offset {}, expected {offset}",
                    chunk.offset
                )));
            }
            if crc32fast::hash(&chunk.data) != chunk.crc32 {
                return Err(Status::data_loss(format!(
                    "snapshot chunk at offset {offset} fails its CRC"
                )));
            }
            offset += chunk.data.len() as u64;
            let file = incoming.file.try_clone().map_err(storage_failed)?;
            tokio::task::spawn_blocking(move || (&file).write_all(&chunk.data))
                .await
                .map_err(storage_failed)?
                .map_err(storage_failed)?;
        }
        if offset != header.size {
            return Err(Status::data_loss(format!(
                "snapshot ended after {offset} of {} bytes",
                header.size
            )));
        }
        let file = incoming.finish().map_err(storage_failed)?;
        let snapshot = openraft::Snapshot {
            meta,
            snapshot: SnapshotFile::from_file(file),
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(raft_failed)?;
        Ok(Response::new(pb::SnapshotResponse {
            body: encoded(&response)?,
        }))
    }
}

/// The next part of a snapshot stream, or `None` at its end; each must arrive within
/// `timeout`.
async fn next_part(
    stream: &mut Streaming<pb::SnapshotChunk>,
    timeout: Duration,
) -> Result<Option<pb::snapshot_chunk::Part>, Status> {
    match tokio::time::timeout(timeout, stream.next()).await {
        Ok(Some(Ok(chunk))) => Ok(chunk.part),
        Ok(Some(Err(status))) => Err(status),
        Ok(None) => Ok(None),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no snapshot chunk within {timeout:?}"
        ))),
    }
}

fn storage_failed(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("storing the snapshot: {e}"))
}

/// A snapshot being received; the file is removed when this is dropped, complete or not
/// (the state machine keeps its own copy once installed).
struct Incoming {
    path: PathBuf,
    file: std::fs::File,
}

impl Incoming {
    fn create(path: PathBuf) -> std::io::Result<Incoming> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(Incoming { path, file })
    }

    /// fsyncs the file and returns a handle positioned at its start.
    fn finish(self) -> std::io::Result<std::fs::File> {
        self.file.sync_all()?;
        std::fs::File::open(&self.path)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
