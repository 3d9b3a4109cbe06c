//! The raft network of a node: openraft's RPCs over tonic (`proto/raft.proto`).
//!
//! openraft's request and response types travel in Wharf's versioned encoding
//! ([`wharf_meta::encode`]). Appends use one bidirectional gRPC stream per replication
//! session (responses come back in order); snapshots are streamed in CRC-checked chunks on the
//! bulk lane, each chunk under its own timeout.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use wharf_meta::raft_types::NodeInfo;
use wharf_meta::state_machine::SnapshotFile;
use wharf_meta::{TypeConfig, decode, encode};
use wharf_proto::raft as pb;
use wharf_proto::raft::raft_client::RaftClient;
use wharf_types::NodeId;

use crate::peers::{Lane, Peers};

/// Bytes per snapshot chunk.
pub(crate) const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Builds a [`GrpcNetwork`] per replication target.
pub(crate) struct GrpcNetworkFactory {
    pub(crate) peers: Arc<Peers>,
    pub(crate) snapshot_chunk_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        GrpcNetwork {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            snapshot_chunk_timeout: self.snapshot_chunk_timeout,
        }
    }
}

/// The raft client for one target node.
pub(crate) struct GrpcNetwork {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
    snapshot_chunk_timeout: Duration,
}

type Error = RPCError<TypeConfig>;

fn unreachable(e: impl std::fmt::Display) -> Error {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

fn network(e: impl std::fmt::Display) -> Error {
    RPCError::Network(NetworkError::from_string(e.to_string()))
}

/// A failed call: a peer that cannot be reached backs off; anything else is retried at once.
fn status_error(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => unreachable(status),
        _ => network(status),
    }
}

fn body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    encode(value).map_err(network)
}

fn unbody<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode(bytes).map_err(network)
}

impl GrpcNetwork {
    fn client(&self, lane: Lane) -> Result<RaftClient<tonic::transport::Channel>, Error> {
        let channel = self
            .peers
            .channel(self.target, &self.addr, lane)
            .map_err(unreachable)?;
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// One unary call under the RPC's soft deadline.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        ttl: Duration,
        message: Req,
        call: F,
    ) -> Result<Resp, Error>
    where
        F: FnOnce(RaftClient<tonic::transport::Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.peers.link_to(self.target).await.map_err(unreachable)?;
        let client = self.client(Lane::Rpc)?;
        let request = self.peers.request(self.target, message);
        match tokio::time::timeout(ttl, call(client, request)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status_error(status)),
            Err(_) => Err(unreachable(format!(
                "node {} did not answer within {ttl:?}",
                self.target
            ))),
        }
    }

    /// Opens the append stream: the transport half of [`RaftNetworkV2::stream_append`].
    async fn start_stream_append<'s, S>(
        &'s mut self,
        input: S,
    ) -> Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, Error>>, Error>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        self.peers.link_to(self.target).await.map_err(unreachable)?;
        let mut client = self.client(Lane::Rpc)?;
        // A request that cannot be encoded ends the stream (skipping it would pair later
        // responses with the wrong requests); openraft then starts a new session.
        let outgoing = input
            .map(|rpc| match encode(&rpc) {
                Ok(body) => Some(pb::AppendEntriesRequest { body }),
                Err(e) => {
                    tracing::error!("cannot encode an append request: {e}");
                    None
                }
            })
            .take_while(|m| std::future::ready(m.is_some()))
            .filter_map(std::future::ready);
        let request = self.peers.request(self.target, outgoing);
        let responses = client
            .stream_append(request)
            .await
            .map_err(status_error)?
            .into_inner();
        let output = responses.map(|item| {
            let response = item.map_err(status_error)?;
            unbody::<StreamAppendResult<TypeConfig>>(&response.body)
        });
        Ok(Box::pin(output) as BoxStream<'s, _>)
    }
}

impl RaftNetworkV2<TypeConfig> for GrpcNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, Error> {
        let message = pb::AppendEntriesRequest { body: body(&rpc)? };
        let response = self
            .unary(option.soft_ttl(), message, |mut c, r| async move {
                c.append_entries(r).await
            })
            .await?;
        unbody(&response.body)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, Error>>, Error>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        // A stream that cannot even start reports only after a heartbeat period: openraft
        // applies its backoff inside the request stream, which a call failing before it sends
        // anything never polls, so a leader cut off from a follower restarted the session
        // thousands of times a second (found by the jepsen harness: 7,000 sessions/s, a busy
        // core and a 60 MB log during a partition).
        let pause = option.soft_ttl();
        Box::pin(async move {
            let started = self.start_stream_append(input).await;
            if started.is_err() {
                tokio::time::sleep(pause).await;
            }
            started
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, Error> {
        let message = pb::VoteRequest { body: body(&rpc)? };
        let response = self
            .unary(option.soft_ttl(), message, |mut c, r| async move {
                c.vote(r).await
            })
            .await?;
        unbody(&response.body)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, Error> {
        let message = pb::VoteRequest { body: body(&rpc)? };
        let response = self
            .unary(option.soft_ttl(), message, |mut c, r| async move {
                c.pre_vote(r).await
            })
            .await?;
        unbody(&response.body)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let streaming = |e: Error| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        };
        self.peers
            .link_to(self.target)
            .await
            .map_err(|e| streaming(unreachable(e)))?;
        let mut client = self.client(Lane::Bulk).map_err(streaming)?;
        let header = pb::SnapshotHeader {
            vote: body(&vote).map_err(streaming)?,
            meta: body(&snapshot.meta).map_err(streaming)?,
            size: 0,
        };
        let file = snapshot.snapshot.into_file();
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let header = pb::SnapshotHeader { size, ..header };

        // Chunks are read on a blocking thread; a pump hands each one to the gRPC stream and
        // gives the peer `snapshot_chunk_timeout` to take it, so a stalled peer is noticed.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(2);
        let (wire_tx, wire_rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(1);
        let chunk_timeout = self.snapshot_chunk_timeout;
        let target = self.target;
        let reader = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let send = |chunk: pb::SnapshotChunk| {
                tx.blocking_send(chunk)
                    .map_err(|_| "the snapshot stream closed".to_string())
            };
            send(pb::SnapshotChunk {
                part: Some(pb::snapshot_chunk::Part::Header(header)),
            })?;
            let mut file = std::io::BufReader::new(file);
            let mut offset = 0u64;
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let n = read_full(&mut file, &mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                let crc32 = crc32fast::hash(&buf);
                send(pb::SnapshotChunk {
                    part: Some(pb::snapshot_chunk::Part::Data(pb::SnapshotData {
                        offset,
                        data: buf,
                        crc32,
                    })),
                })?;
                offset += n as u64;
            }
        });
        let pump = async move {
            while let Some(chunk) = rx.recv().await {
                match tokio::time::timeout(chunk_timeout, wire_tx.send(chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err("node closed the snapshot stream".to_string()),
                    Err(_) => {
                        return Err(format!("node took no chunk within {chunk_timeout:?}"));
                    }
                }
            }
            // Dropping `wire_tx` here ends the stream.
            Ok(())
        };
        let request = self
            .peers
            .request(target, tokio_stream::wrappers::ReceiverStream::new(wire_rx));
        let call = async {
            let (pumped, response) = tokio::join!(pump, client.install_snapshot(request));
            let failed = |what: String| {
                StreamingError::Network(NetworkError::from_string(format!(
                    "snapshot to node {target}: {what}"
                )))
            };
            match reader.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(failed(format!("reading it: {e}"))),
                Err(e) => return Err(failed(e.to_string())),
            }
            pumped.map_err(failed)?;
            let response = response.map_err(|s| streaming(status_error(s)))?;
            unbody::<SnapshotResponse<TypeConfig>>(&response.into_inner().body).map_err(streaming)
        };
        tokio::select! {
            result = call => result,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, Error> {
        let message = pb::TransferLeaderRequest { body: body(&req)? };
        let response = self
            .unary(option.soft_ttl(), message, |mut c, r| async move {
                c.transfer_leader(r).await
            })
            .await?;
        unbody(&response.body)
    }
}

/// Fills `buf` as far as the reader allows; returns how many bytes were read (0 at the end).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
