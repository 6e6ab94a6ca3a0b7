//! Binding, accepting and graceful shutdown.
//!
//! One worker thread per core, each with its own single-threaded runtime and
//! its own upstream connection pool (the nginx and Envoy model): a connection
//! and its upstream requests never change threads, so there is no work
//! stealing and no cross-thread wake-up on the request path. The session
//! store is shared.
//!
//! One socket is bound (so a second instance on the same port fails to
//! start instead of silently splitting traffic and, with the memory store,
//! sessions) and one acceptor hands each new connection to the worker with
//! the fewest open ones: a cross-thread hand-off per connection, none per
//! request, and keep-alive connections spread evenly.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, warn};

use crate::admin::{self, Admin};
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ProxyError;
use crate::framing::{Answers, Screened};
use crate::metrics::Metrics;
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
    /// The session store could not be opened.
    #[error(transparent)]
    Store(crate::session::StoreError),
}

/// How often the TLS files are checked for a new certificate.
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// A running server: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    certificates: Option<Arc<crate::tls::Certificates>>,
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
    /// Binds `config.listen` (port 0 picks a free port) and starts the
    /// workers; returns once the socket is bound.
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
        let admin_listener = match config.admin {
            Some(addr) => {
                let err = |source| StartError::Bind { addr, source };
                let l = admin::bind(addr).map_err(err)?;
                let bound = l.local_addr().map_err(err)?;
                Some((l, bound))
            }
            None => None,
        };

        let (stop, stopped) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        let tls = config
            .tls
            .as_ref()
            .map(|t| TlsAcceptor::from(t.server.clone()));
        let mut inboxes = Vec::with_capacity(config.workers);
        let mut listener = Some(listener);
        let mut workers = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let (inbox, queue) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            metrics.track_open(open.clone());
            inboxes.push((inbox, open.clone()));
            let worker = Worker {
                limits: config.limits,
                proxy: Arc::new(Proxy::new(
                    config,
                    store.clone(),
                    clock.clone(),
                    metrics.clone(),
                )?),
                tls: tls.clone(),
                metrics: metrics.clone(),
                queue,
                open,
                grace: config.shutdown_grace,
                stopped: stopped.clone(),
            };
            // The last worker also runs the acceptor: by then every inbox exists.
            let acceptor = if i + 1 == config.workers {
                listener.take().map(|listener| Acceptor {
                    listener,
                    inboxes: std::mem::take(&mut inboxes),
                    stopped: stopped.clone(),
                    max_connections: config.limits.max_connections,
                })
            } else {
                None
            };
            let (done, finished) = oneshot::channel();
            std::thread::Builder::new()
                .name(format!("sessionward-{i}"))
                .spawn(move || {
                    run_worker(worker, acceptor);
                    let _ = done.send(());
                })
                .map_err(StartError::Thread)?;
            workers.push(finished);
        }
        let admin_addr = match admin_listener {
            Some((listener, bound)) => {
                let admin = Admin {
                    metrics,
                    store,
                    upstream: match &config.upstream_socket {
                        Some(path) => path.display().to_string(),
                        None => admin::authority_of(&config.upstream),
                    },
                    upstream_socket: config.upstream_socket.clone(),
                    jwks: crate::token::Signer::from_config(&config.signing).jwks(),
                };
                admin
                    .spawn(listener, stopped.clone())
                    .map_err(StartError::Thread)?;
                Some(bound)
            }
            None => None,
        };
        let certificates = config.tls.as_ref().map(|t| t.certificates.clone());
        if let Some(certs) = certificates.clone() {
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .name("sessionward-tls-watch".into())
                .spawn(move || {
                    // Polling the modification times: no inotify dependency,
                    // and it works on the mounted Secrets of Kubernetes,
                    // which are swapped by a symlink.
                    while !*stopped.borrow() {
                        std::thread::sleep(TLS_WATCH_INTERVAL);
                        certs.reload_if_changed();
                    }
                })
                .map_err(StartError::Thread)?;
        }
        Ok(Server {
            local_addr,
            admin_addr,
            certificates,
            stop,
            workers,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The TLS certificate store, for a reload on SIGHUP.
    pub fn certificates(&self) -> Option<Arc<crate::tls::Certificates>> {
        self.certificates.clone()
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

/// A worker's inbox: where the acceptor drops new connections, and how many
/// connections the worker has open.
type Inbox = (
    mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    Arc<AtomicUsize>,
);

/// Accepts connections and hands each to the least busy worker.
struct Acceptor {
    listener: std::net::TcpListener,
    inboxes: Vec<Inbox>,
    stopped: watch::Receiver<bool>,
    max_connections: usize,
}

/// One thread's share of the work: its proxy (and upstream pool) and its
/// queue of connections to serve.
struct Worker {
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    limits: crate::config::Limits,
    metrics: Arc<Metrics>,
    queue: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    grace: Duration,
    stopped: watch::Receiver<bool>,
}

thread_local! {
    static ON_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is a server worker: its current-thread runtime lives
/// as long as the thread, so a store may keep per-thread connections on it.
pub fn on_worker_thread() -> bool {
    ON_WORKER.with(|w| w.get())
}

fn run_worker(worker: Worker, acceptor: Option<Acceptor>) {
    ON_WORKER.with(|w| w.set(true));
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
        if let Some(acceptor) = acceptor {
            tokio::spawn(accept_loop(acceptor));
        }
        serve_loop(worker).await;
    });
}

async fn accept_loop(mut acceptor: Acceptor) {
    let listener = match TcpListener::from_std(acceptor.listener) {
        Ok(l) => l,
        Err(e) => {
            error!(error = %e, "cannot register the listener");
            return;
        }
    };
    loop {
        let (stream, addr) = tokio::select! {
            biased;
            _ = until_stopped(&mut acceptor.stopped) => break,
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
        let open_now: usize = acceptor
            .inboxes
            .iter()
            .map(|(_, open)| open.load(Ordering::Relaxed))
            .sum();
        if open_now >= acceptor.max_connections {
            // Closed at once: the client retries or goes elsewhere, and the
            // connections being served keep their file descriptors and memory.
            debug!(%addr, open = open_now, "connection limit reached; closed");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let Some((inbox, open)) = acceptor
            .inboxes
            .iter()
            .min_by_key(|(_, open)| open.load(Ordering::Relaxed))
        else {
            return;
        };
        match stream.into_std() {
            Ok(stream) => {
                open.fetch_add(1, Ordering::Relaxed);
                if inbox.send((stream, addr)).is_err() {
                    open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) => debug!(%addr, error = %e, "cannot hand the connection over"),
        }
    }
    // Dropping the listener here closes the port: new clients are refused.
}

async fn serve_loop(mut worker: Worker) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let limits = worker.limits;
    // hyper's header read timeout runs from the moment a connection waits for
    // a request: it cuts off slowloris clients and idle keep-alive alike.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    // hyper's 16 KB default would refuse the cookie store's own chunked
    // cookies (up to 4 x 3,800 bytes) next to the app's cookies; HTTP/1
    // already allows more.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        // Rapid reset (CVE-2023-44487): few streams a client may open and
        // cancel before they are even served.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024);
    let serving = Serving {
        proxy: worker.proxy.clone(),
        builder,
        limits,
        metrics: worker.metrics.clone(),
        stopped: worker.stopped.clone(),
    };
    let drained = Arc::new(Notify::new());
    loop {
        let (stream, addr) = tokio::select! {
            biased;
            _ = until_stopped(&mut worker.stopped) => break,
            handed = worker.queue.recv() => match handed {
                Some(conn) => conn,
                None => break,
            },
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                worker.open.fetch_sub(1, Ordering::Relaxed);
                debug!(%addr, error = %e, "cannot take the connection over");
                continue;
            }
        };
        worker.metrics.connection();
        let open = OpenGuard(worker.open.clone(), drained.clone());
        let serving = serving.clone();
        match &worker.tls {
            None => serve_connection(stream, Peer::new(addr, false), serving, open),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, Peer::new(addr, true), serving, open)
                        }
                        Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    // Connections handed over but never taken: nobody will serve them.
    worker.queue.close();
    while let Ok((stream, _)) = worker.queue.try_recv() {
        drop(stream);
        worker.open.fetch_sub(1, Ordering::Relaxed);
    }
    let open = worker.open.load(Ordering::Relaxed);
    debug!(open_connections = open, grace = ?worker.grace, "stopped accepting; draining");
    // Every connection saw the stop and is closing (GOAWAY, or
    // `Connection: close` on its last answer); wait for them, up to the grace.
    let deadline = tokio::time::Instant::now() + worker.grace;
    while worker.open.load(Ordering::Relaxed) > 0 {
        if tokio::time::Instant::now() >= deadline {
            warn!("grace period over with connections still open; closing them");
            return;
        }
        // A closing connection notifies; the re-check every 100 ms covers a
        // hand-over the acceptor took back, which does not.
        let notified = drained.notified();
        let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
    }
    debug!("all connections drained");
}

/// Counts a connection as open until it ends, for the acceptor's balancing
/// and the drain at shutdown.
struct OpenGuard(Arc<AtomicUsize>, Arc<Notify>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.notify_one();
    }
}

/// How long a client gets to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker gives every connection it serves.
#[derive(Clone)]
struct Serving {
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    limits: crate::config::Limits,
    metrics: Arc<Metrics>,
    stopped: watch::Receiver<bool>,
}

/// Serves HTTP/1.1 or HTTP/2 (detected from the first bytes) on one
/// connection until the client leaves, it stays idle past
/// `limits.idle_timeout`, or the server stops. HTTP/1 bytes are screened
/// for ambiguous framing before hyper reads them.
fn serve_connection<I>(io: I, peer: Peer, serving: Serving, open: OpenGuard)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let Serving {
        proxy,
        builder,
        limits,
        metrics,
        mut stopped,
    } = serving;
    let activity = Arc::new(Activity::new());
    let answers = Arc::new(Answers::default());
    let (requests, answered) = (activity.clone(), answers.clone());
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let peer = peer.clone();
        // Taken in the order hyper hands requests over, before any await.
        let number = answered.take();
        let in_flight = requests.begin(answered.clone());
        async move {
            let resp = proxy.handle(req, peer).await;
            in_flight.answers.decide(
                number,
                resp.status() == http::StatusCode::SWITCHING_PROTOCOLS,
            );
            // In flight until the last byte of the answer is out.
            Ok::<_, Infallible>(resp.map(|body| Tracked {
                inner: body,
                _in_flight: in_flight,
            }))
        }
    });
    tokio::spawn(async move {
        let io = Screened::new(
            io,
            answers,
            limits.max_header_bytes,
            limits.header_read_timeout,
            addr,
            metrics,
        );
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        debug!(%addr, error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = until_stopped(&mut stopped), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = activity.idle_for(limits.idle_timeout), if !closing => {
                    debug!(%addr, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
        drop(open);
    });
}

/// A connection's requests in flight and when the last one ended. Read by
/// a timer, never signalled: a request costs two atomic counts and a clock
/// read, and no wake-up of the connection's task.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds from `born` to the end of the last request.
    last_end: AtomicU64,
    born: tokio::time::Instant,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
        }
    }

    /// A request starts; it ends when the returned guard drops.
    fn begin(self: &Arc<Self>, answers: Arc<Answers>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            activity: self.clone(),
            answers,
        }
    }

    /// Returns once no request has been in flight for `timeout`. Checks
    /// when the connection could first have been idle that long, so it ends
    /// at most `timeout` after the last request (busy: a `timeout` later).
    async fn idle_for(&self, timeout: Duration) {
        let mut wait = timeout;
        loop {
            tokio::time::sleep(wait).await;
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                wait = timeout;
                continue;
            }
            let ended = Duration::from_millis(self.last_end.load(Ordering::Relaxed));
            let idle = self.born.elapsed().saturating_sub(ended);
            if idle >= timeout {
                return;
            }
            wait = timeout - idle;
        }
    }
}

/// One request in flight on a connection; its answer is complete when this drops.
#[derive(Debug)]
struct InFlight {
    activity: Arc<Activity>,
    answers: Arc<Answers>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.activity;
        let now = u64::try_from(a.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.last_end.store(now, Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.answers.finish();
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means every sender is gone: nobody can stop us any more, so stop now.
    let _ = stopped.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_requests_is_idle_after_the_timeout() {
        let activity = Arc::new(Activity::new());
        let start = Instant::now();
        activity.idle_for(TIMEOUT).await;
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_idle_and_the_clock_restarts_at_its_end() {
        let activity = Arc::new(Activity::new());
        let start = Instant::now();
        let request = activity.begin(Arc::new(Answers::default()));
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(TIMEOUT).await }
        });
        // Three timeouts with the request open: still not idle.
        tokio::time::sleep(3 * TIMEOUT + Duration::from_secs(3)).await;
        assert!(!idle.is_finished());
        drop(request);
        let ended = Instant::now();
        idle.await.unwrap();
        assert!(
            ended.elapsed() >= TIMEOUT,
            "idle {:?} after the end",
            ended.elapsed()
        );
        assert!(ended.elapsed() <= TIMEOUT + Duration::from_millis(1000));
        assert!(start.elapsed() >= 4 * TIMEOUT);
    }
}
