//! Connections between nodes: plain TCP on loopback-only clusters, otherwise mutual TLS under
//! the cluster CA ([`crate::tls`]). The listener hands tonic a stream of accepted connections
//! (handshakes run concurrently, each with a timeout) that carry the peer's certificate chain;
//! clients connect through a connector that dials TCP and runs the TLS handshake expecting the
//! target node's name.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::tls::ClusterTls;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain a peer presented (empty on plaintext or an unauthenticated join).
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerCerts(pub(crate) Arc<Vec<CertificateDer<'static>>>);

/// An accepted connection.
pub(crate) enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerCerts;

    fn connect_info(&self) -> PeerCerts {
        match self {
            PeerStream::Plain(_) => PeerCerts::default(),
            PeerStream::Tls(tls) => PeerCerts(Arc::new(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
            )),
        }
    }
}

macro_rules! delegate_io {
    ($t:ty, $($variant:ident),+) => {
        impl AsyncRead for $t {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_read(cx, buf),)+ }
            }
        }
        impl AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_write(cx, buf),)+ }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_flush(cx),)+ }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_shutdown(cx),)+ }
            }
            fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
                match self.get_mut() { $(Self::$variant(s) => Pin::new(s).poll_write_vectored(cx, bufs),)+ }
            }
            fn is_write_vectored(&self) -> bool {
                match self { $(Self::$variant(s) => s.is_write_vectored(),)+ }
            }
        }
    };
}

delegate_io!(PeerStream, Plain, Tls);

/// A connection this node opened.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

delegate_io!(ClientStream, Plain, Tls);

/// Accepts connections on `listener` (TLS handshakes in their own tasks) and yields them.
/// With `tls`, each handshake uses the configuration current at accept time, so a rotated
/// certificate takes effect for the next connection.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ClusterTls>>,
) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // The server dropping the stream ends the loop and closes the listener, so the
            // port is free again once the node has shut down.
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("cluster listener accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Nagle's algorithm with delayed ACKs would add ~40 ms to small raft messages.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY on a cluster connection: {e}");
            }
            match &tls {
                None => {
                    if tx.send(Ok(PeerStream::Plain(tcp))).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(PeerStream::Tls(Box::new(tls)))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, "cluster TLS handshake failed: {e}")
                            }
                            Err(_) => tracing::warn!(%peer, "cluster TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The client side of a TLS connection.
#[derive(Clone)]
pub(crate) enum ClientTls {
    /// A joining node's: trusts the CA in its token, presents nothing.
    Fixed(Arc<rustls::ClientConfig>),
    /// A member's: whatever its [`ClusterTls`] holds when it dials.
    Member(Arc<ClusterTls>),
}

impl ClientTls {
    fn current(&self) -> Arc<rustls::ClientConfig> {
        match self {
            ClientTls::Fixed(config) => config.clone(),
            ClientTls::Member(tls) => tls.client(),
        }
    }
}

/// Dials `addr` and, with `tls`, runs a handshake that expects the certificate name
/// `server_name`.
pub(crate) async fn dial(
    addr: String,
    tls: Option<(ClientTls, String)>,
) -> io::Result<hyper_util::rt::TokioIo<ClientStream>> {
    let tcp = TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let stream = match tls {
        None => ClientStream::Plain(tcp),
        Some((config, name)) => {
            let name = ServerName::try_from(name)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let connector = tokio_rustls::TlsConnector::from(config.current());
            let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            ClientStream::Tls(Box::new(tls))
        }
    };
    Ok(hyper_util::rt::TokioIo::new(stream))
}

/// A lazily connecting tonic channel to `addr` (TLS when `tls` is given).
pub(crate) fn channel(
    addr: &str,
    tls: Option<(ClientTls, String)>,
    connect_timeout: Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let addr = addr.to_string();
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_uri: http::Uri| {
            dial(addr.clone(), tls.clone())
        })),
    )
}
