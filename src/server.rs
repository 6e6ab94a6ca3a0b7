//! Binding, accepting and graceful shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::proxy::{Peer, Proxy};

/// A running server: its bound address and the handle to stop it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Ends a running server from elsewhere (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    /// Stops accepting and starts draining.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving `proxy`.
    pub async fn start(addr: SocketAddr, proxy: Arc<Proxy>, grace: Duration) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(listener, proxy, grace))
    }

    /// Serves `proxy` on an already bound listener.
    pub fn serve(listener: TcpListener, proxy: Arc<Proxy>, grace: Duration) -> Server {
        let local_addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, proxy, grace, stopped));
        Server {
            local_addr,
            stop,
            task,
        }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops this server.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// Stops accepting and waits for in-flight requests (bounded by the grace period).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server has stopped (after a [`StopHandle::stop`]).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    grace: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, addr) = tokio::select! {
            biased;
            _ = until_stopped(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer = Peer { addr, tls: false };
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    info!(open_connections = open, grace = ?grace, "stopped accepting; draining");
    tokio::select! {
        _ = graceful.shutdown() => info!("all connections drained"),
        _ = tokio::time::sleep(grace) => warn!("grace period over with connections still open; closing them"),
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means every sender is gone: nobody can stop us any more, so stop now.
    let _ = stopped.wait_for(|s| *s).await;
}
