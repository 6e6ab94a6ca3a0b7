//! Binding, accepting and graceful shutdown.
//!
//! One worker thread per core, each with its own single-threaded runtime
//! accepting from the one listening socket, and its own upstream connection
//! pool (the nginx and Envoy model): a connection and its upstream requests
//! never change threads, so there is no work stealing and no cross-thread
//! wake-up on the request path. The session store is shared.
//!
//! The socket is bound once and shared (not `SO_REUSEPORT`): a second
//! instance on the same port must fail to start, not silently split the
//! traffic and, with the memory store, the sessions.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::ProxyError;
use crate::proxy::{Peer, Proxy};
use crate::session::SessionStore;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start a worker thread")]
    Thread(#[source] io::Error),
    /// The proxy could not be built.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// A running server: its bound address and the handle to stop it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    workers: Vec<oneshot::Receiver<()>>,
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
    /// Binds `config.listen` (port 0 picks a free port) once per worker and
    /// starts serving; returns once every listener is bound.
    pub fn start(
        config: &Config,
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let listener = bind(config.listen).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let mut listeners = Vec::with_capacity(config.workers);
        for _ in 1..config.workers {
            listeners.push(listener.try_clone().map_err(bind_error)?);
        }
        listeners.push(listener);

        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let proxy = Arc::new(Proxy::new(config, store.clone(), clock.clone())?);
            let (done, finished) = oneshot::channel();
            let stopped = stopped.clone();
            let grace = config.shutdown_grace;
            let tls = config
                .tls
                .as_ref()
                .map(|t| TlsAcceptor::from(t.server.clone()));
            std::thread::Builder::new()
                .name(format!("sessionward-{i}"))
                .spawn(move || {
                    run_worker(listener, proxy, tls, grace, stopped);
                    let _ = done.send(());
                })
                .map_err(StartError::Thread)?;
            workers.push(finished);
        }
        Ok(Server {
            local_addr,
            stop,
            workers,
        })
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
        self.wait().await;
    }

    /// Waits until every worker has stopped (after a [`StopHandle::stop`]).
    pub async fn wait(self) {
        for worker in self.workers {
            // An error means the worker thread is gone already.
            let _ = worker.await;
        }
    }
}

/// The listening socket, with a backlog sized for bursts of new connections.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Rebinding right after a restart must not wait for TIME_WAIT to clear.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn run_worker(
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    grace: Duration,
    stopped: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => accept_loop(listener, proxy, tls, grace, stopped).await,
            Err(e) => error!(error = %e, "cannot register the listener"),
        }
    });
}

/// How long a client gets to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
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
        let (proxy, builder, watcher) = (proxy.clone(), builder.clone(), graceful.watcher());
        match &tls {
            None => serve_connection(stream, Peer::new(addr, false), proxy, builder, watcher),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, Peer::new(addr, true), proxy, builder, watcher)
                        }
                        Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    let open = graceful.count();
    debug!(open_connections = open, grace = ?grace, "stopped accepting; draining");
    tokio::select! {
        _ = graceful.shutdown() => debug!("all connections drained"),
        _ = tokio::time::sleep(grace) => warn!("grace period over with connections still open; closing them"),
    }
}

/// Serves HTTP/1.1 or HTTP/2 (detected from the first bytes) on one
/// connection, tracked for graceful shutdown.
fn serve_connection<I>(
    io: I,
    peer: Peer,
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
    });
    tokio::spawn(async move {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(e) = watcher.watch(conn.into_owned()).await {
            debug!(%addr, error = %e, "connection ended with an error");
        }
    });
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means every sender is gone: nobody can stop us any more, so stop now.
    let _ = stopped.wait_for(|s| *s).await;
}
