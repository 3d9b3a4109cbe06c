//! Forwarding a client request to another node over the blob-transfer connection: upload
//! sessions are node-local, so a request for another node's session (behind a non-sticky load
//! balancer, say) is run by its owner (DESIGN.md §4 "Upload sessions").
//!
//! ```text
//! forward → (client) request body bytes, finish → Forwarded{status, headers} · response body
//! ```

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use wharf_types::NodeId;

use crate::protocol::{self, Request, Response};
use crate::transfer::peer_error;
use crate::{ReplicationError, Replicator};

/// How long the owner of an upload session may take to answer a forwarded request.
const FORWARD_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A streamed body.
pub type ForwardBody = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// A client request as the owner node runs it.
pub struct ForwardRequest {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: ForwardBody,
}

/// The owner's response.
pub struct Forwarded {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ForwardBody,
}

/// Runs a forwarded request on this node (its HTTP routes).
pub type ForwardHandler =
    Arc<dyn Fn(ForwardRequest) -> BoxFuture<'static, Forwarded> + Send + Sync>;

/// Bytes of `recv` until the sender finishes.
fn body_of(recv: quinn::RecvStream) -> ForwardBody {
    Box::pin(futures::stream::unfold(recv, |mut recv| async move {
        match recv.read_chunk(1024 * 1024, true).await {
            Ok(Some(chunk)) => Some((Ok(chunk.bytes), recv)),
            Ok(None) => None,
            Err(e) => Some((
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
                recv,
            )),
        }
    }))
}

/// Copies `body` into `send`, then finishes it (or resets it if the body fails).
async fn pump(mut body: ForwardBody, mut send: quinn::SendStream) {
    while let Some(piece) = body.next().await {
        match piece {
            Ok(bytes) => {
                if send.write_chunk(bytes).await.is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = send.reset(quinn::VarInt::from_u32(3));
                return;
            }
        }
    }
    let _ = send.finish();
}

impl Replicator {
    /// Sets what runs requests forwarded to this node (once; later calls are ignored).
    pub fn set_forward_handler(&self, handler: ForwardHandler) {
        let _ = self.forward_handler.set(handler);
    }

    /// Runs `request` on node `owner` and returns its response, streamed.
    pub async fn forward(
        &self,
        owner: NodeId,
        request: ForwardRequest,
    ) -> Result<Forwarded, ReplicationError> {
        let header = Request::Forward {
            from: self.node_id,
            method: request.method,
            uri: request.uri,
            headers: request.headers,
        };
        let (send, mut recv) = self.open_request(owner, &header).await?;
        tokio::spawn(pump(request.body, send));
        // The owner answers once its handler is done (a PATCH has stored the whole body, a PUT
        // has copied the blob to min_copies members): no short deadline here.
        match crate::transfer::read_frame_within::<Response>(&mut recv, FORWARD_ANSWER_TIMEOUT)
            .await
            .map_err(|e| peer_error(owner, e))?
        {
            Response::Forwarded { status, headers } => Ok(Forwarded {
                status,
                headers,
                body: body_of(recv),
            }),
            Response::Error { code, message } => {
                Err(peer_error(owner, format!("{code}: {message}")))
            }
            other => Err(peer_error(owner, format!("unexpected answer {other:?}"))),
        }
    }

    /// The owner's side of [`Self::forward`].
    pub(crate) async fn serve_forward(
        &self,
        method: String,
        uri: String,
        headers: Vec<(String, String)>,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let Some(handler) = self.forward_handler.get().cloned() else {
            let response = crate::transfer::error_response(
                wharf_types::ErrorCode::Unsupported,
                "this node does not take forwarded requests yet",
            );
            let _ = send.write_all(&protocol::encode_response(&response)).await;
            let _ = send.finish();
            return;
        };
        let response = handler(ForwardRequest {
            method,
            uri,
            headers,
            body: body_of(recv),
        })
        .await;
        let head = Response::Forwarded {
            status: response.status,
            headers: response.headers,
        };
        if send
            .write_all(&protocol::encode_response(&head))
            .await
            .is_err()
        {
            return;
        }
        pump(response.body, send).await;
    }
}
