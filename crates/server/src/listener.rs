//! The client listener: plain HTTP/1.1, or TLS with HTTP/2 and HTTP/1.1 by ALPN from
//! `[http.tls]`. Both stop accepting on shutdown and let in-flight requests finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::Service;
use wharf_config::{Config, TlsConfig};

use crate::ServerError;

/// How long in-flight requests get after shutdown was asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The client listener, bound (and its TLS certificate read) before the node starts its cluster
/// work, so that a taken port or a bad certificate stops the node before it joins anything.
/// Connections that arrive before [`serve`] wait in the kernel's backlog.
pub(crate) struct Bound {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

pub(crate) async fn bind(config: &Config) -> Result<Bound, ServerError> {
    let tls = config.http.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener = TcpListener::bind(config.server.listen).await?;
    Ok(Bound { listener, tls })
}

pub(crate) async fn serve(
    bound: Bound,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Bound { listener, tls } = bound;
    tracing::info!(addr = %listener.local_addr()?, tls = tls.is_some(), "listening");
    match tls {
        None => {
            // Graceful: stop accepting, let in-flight requests finish, but not for ever.
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let server = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = stop_tx.send(());
            });
            let drain_deadline = async {
                if stop_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            };
            tokio::select! {
                served = server.into_future() => served?,
                () = drain_deadline => {
                    tracing::warn!("requests still running {DRAIN_TIMEOUT:?} after shutdown; closing them");
                }
            }
            Ok(())
        }
        Some(acceptor) => serve_tls(listener, acceptor, app, shutdown).await,
    }
}

fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    let read = |p: &std::path::Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| ServerError::Tls(format!("{}: {e}", p.display())))
    };
    let certs = rustls_pemfile::certs(&mut read(&tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.cert.display())))?;
    let key = rustls_pemfile::private_key(&mut read(&tls.key)?)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", tls.key.display())))?
        .ok_or_else(|| ServerError::Tls(format!("{}: no private key found", tls.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let graceful = GracefulShutdown::new();
    let mut make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(service) = make_service.call(peer).await;
        let acceptor = acceptor.clone();
        let builder = auto::Builder::new(TokioExecutor::new());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(service);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open {DRAIN_TIMEOUT:?} after shutdown; closing them");
    }
    Ok(())
}
