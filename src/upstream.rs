//! The upstream app: a keep-alive connection pool on hyper's HTTP/1
//! client connections, and the timeouts around it.
//!
//! Every worker owns its own [`Upstream`] (see `server.rs`), and there is one
//! upstream, so the pool is a plain stack of idle connections behind a mutex
//! nobody else takes: no keyed map to hash into, no checkout futures, no
//! cross-thread hand-off. The stack is last in, first out, so the connection
//! reused is the one idle for the shortest time, the least likely to have
//! been closed by the upstream's own idle timeout.

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tracing::debug;

use crate::body::Relayed;
use crate::config::Timeouts;
use crate::error::ProxyError;

/// Idle connections kept per worker; more are closed once their response ends.
const MAX_IDLE: usize = 256;
/// How long a connection may sit idle before it is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// TCP keep-alive probes start after this long without traffic: an upstream
/// host that vanished without closing is noticed instead of kept forever.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A pooled HTTP/1.1 client bound to one upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<Relayed>,
}

impl Upstream {
    /// A client for `base` (scheme and authority, validated by config).
    pub fn new(
        base: &Uri,
        socket: Option<&std::path::Path>,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            client: Client::new(base, socket, tls, timeouts),
        }
    }

    /// The upstream URI for a downstream request: its path and query in
    /// origin form (shared, not copied). The authority travels in `Host`,
    /// which [`Upstream::send`] fills in when the request has none.
    pub fn uri_for(&self, downstream: &Uri) -> Result<Uri, ProxyError> {
        Ok(Uri::from(
            downstream
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ))
    }

    /// Sends the request and waits for the response headers; the body streams later.
    pub async fn send(&self, req: Request<Relayed>) -> Result<Response<Incoming>, ProxyError> {
        self.client.send(req).await
    }
}

/// The client proper, generic over the request body so that the tests can
/// drive it with bodies of their own (an `Incoming` only comes off a socket).
struct Client<B> {
    pool: Arc<Pool<B>>,
    connector: Connector,
    /// `Host` for requests that arrive without one: the upstream authority.
    host: HeaderValue,
    response_timeout: Duration,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Self {
            pool: Arc::clone(&self.pool),
            connector: self.connector.clone(),
            host: self.host.clone(),
            response_timeout: self.response_timeout,
        }
    }
}

impl<B> fmt::Debug for Client<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("pool", &self.pool)
            .field("connector", &self.connector)
            .field("response_timeout", &self.response_timeout)
            .finish_non_exhaustive()
    }
}

impl<B> Client<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn new(
        base: &Uri,
        socket: Option<&std::path::Path>,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeouts: Timeouts,
    ) -> Self {
        let authority = base
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("127.0.0.1"));
        // Cannot fail: an `Authority` only holds bytes that are valid in a header.
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("127.0.0.1"));
        Self {
            pool: Arc::new(Pool::default()),
            connector: Connector::new(authority, socket, timeouts.upstream_connect).with_tls(tls),
            host,
            response_timeout: timeouts.upstream_response,
        }
    }

    /// Sends `req`, on an idle connection if there is one, and waits for the
    /// response headers at most the response timeout (connecting included).
    async fn send(&self, mut req: Request<B>) -> Result<Response<Incoming>, ProxyError> {
        // hyper's connection-level client writes the request as given, and
        // HTTP/1.1 requires `Host`: a client that sent none (HTTP/1.0) gets the
        // upstream's authority, as the legacy client used to fill in.
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let limit = self.response_timeout;
        match tokio::time::timeout(limit, self.exchange(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
            Ok(result) => result,
        }
    }

    async fn exchange(&self, req: Request<B>) -> Result<Response<Incoming>, ProxyError> {
        let req = match self.pool.checkout() {
            None => req,
            Some(mut sender) => match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.pool.recycle(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // The connection closed while idle (the upstream's idle
                    // timeout) and hyper noticed before writing a byte: the app
                    // never saw the request, so a new connection may carry it.
                    Some(req) => {
                        debug!(error = %e.error(), "idle upstream connection was closed; retrying on a new one");
                        req
                    }
                    // The request may have reached the app: sending it again
                    // could repeat a side effect, so the client gets a 502.
                    None => return Err(failed(e.error())),
                },
            },
        };
        let mut sender = self.connector.connect().await?;
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.pool.recycle(sender);
                Ok(resp)
            }
            // One retry only: a fresh connection that fails is an upstream problem.
            Err(e) => Err(failed(e.error())),
        }
    }
}

/// Where and how new connections are opened.
#[derive(Debug, Clone)]
struct Connector {
    /// The host as the resolver takes it (IPv6 without brackets).
    host: Arc<str>,
    port: u16,
    /// For error messages.
    authority: Authority,
    /// A Unix socket to connect to instead of `host:port`.
    socket: Option<std::path::PathBuf>,
    /// TLS for an https:// upstream, and the name its certificate must carry.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        Option<rustls::pki_types::ServerName<'static>>,
    )>,
    timeout: Duration,
    http1: http1::Builder,
}

impl Connector {
    fn new(authority: Authority, socket: Option<&std::path::Path>, timeout: Duration) -> Self {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        Self {
            host: host.into(),
            port: authority.port_u16().unwrap_or(80),
            authority,
            socket: socket.map(ToOwned::to_owned),
            tls: None,
            timeout,
            http1: http1::Builder::new(),
        }
    }

    /// Speaks TLS to the upstream with `client` (port 443 unless given).
    fn with_tls(mut self, client: Option<Arc<rustls::ClientConfig>>) -> Self {
        if let Some(client) = client {
            if self.authority.port_u16().is_none() {
                self.port = 443;
            }
            let name = rustls::pki_types::ServerName::try_from(self.host.to_string()).ok();
            self.tls = Some((client, name));
        }
        self
    }

    /// A new connection, its protocol task spawned on the current runtime
    /// (the worker's, so it never changes threads).
    async fn connect<B>(&self) -> Result<http1::SendRequest<B>, ProxyError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        if let Some(path) = &self.socket {
            let connect = tokio::net::UnixStream::connect(path);
            let stream = match tokio::time::timeout(self.timeout, connect).await {
                Err(_) => return Err(ProxyError::UpstreamTimeout(self.timeout)),
                Ok(Err(e)) => {
                    return Err(ProxyError::UpstreamUnreachable(format!(
                        "connect to {}: {}",
                        path.display(),
                        chain(&e)
                    )));
                }
                Ok(Ok(stream)) => stream,
            };
            return self.handshake(stream).await;
        }
        let connect = TcpStream::connect((&*self.host, self.port));
        let stream = match tokio::time::timeout(self.timeout, connect).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout(self.timeout)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(ProxyError::UpstreamTimeout(self.timeout));
            }
            Ok(Err(e)) => {
                return Err(ProxyError::UpstreamUnreachable(format!(
                    "connect to {}: {}",
                    self.authority,
                    chain(&e)
                )));
            }
            Ok(Ok(stream)) => stream,
        };
        // Requests and responses are small and written whole: no Nagle delay.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY on the upstream connection");
        }
        let keepalive = TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        if let Err(e) = SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            debug!(error = %e, "cannot enable TCP keep-alive on the upstream connection");
        }
        if let Some((client, name)) = &self.tls {
            let Some(name) = name.clone() else {
                return Err(ProxyError::UpstreamUnreachable(format!(
                    "{} is not a name a TLS certificate can carry",
                    self.authority
                )));
            };
            let handshake = tokio_rustls::TlsConnector::from(client.clone()).connect(name, stream);
            let stream = match tokio::time::timeout(self.timeout, handshake).await {
                Err(_) => return Err(ProxyError::UpstreamTimeout(self.timeout)),
                Ok(Err(e)) => {
                    return Err(ProxyError::UpstreamUnreachable(format!(
                        "TLS with {}: {}",
                        self.authority,
                        chain(&e)
                    )));
                }
                Ok(Ok(stream)) => stream,
            };
            return self.handshake(stream).await;
        }
        self.handshake(stream).await
    }

    /// HTTP/1.1 over a connected stream, its protocol task on this runtime.
    async fn handshake<B, I>(&self, stream: I) -> Result<http1::SendRequest<B>, ProxyError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = self
            .http1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                ProxyError::UpstreamUnreachable(format!(
                    "handshake with {}: {}",
                    self.authority,
                    chain(&e)
                ))
            })?;
        // `with_upgrades`: after a 101 the socket is handed to the WebSocket tunnel.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Idle connections, most recently used on top.
struct Pool<B> {
    idle: Mutex<Vec<Idle<B>>>,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    /// When it went back to the pool; entries are in this order, oldest first.
    since: Instant,
}

impl<B> Default for Pool<B> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<B> fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `try_lock`: formatting must never wait on (or deadlock with) the pool.
        let mut d = f.debug_struct("Pool");
        match self.idle.try_lock() {
            Ok(idle) => d.field("idle", &idle.len()),
            Err(_) => d.field("idle", &"locked"),
        };
        d.finish()
    }
}

impl<B> Pool<B> {
    fn lock(&self) -> MutexGuard<'_, Vec<Idle<B>>> {
        // A panic elsewhere cannot leave a Vec of connections inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that can take a request now.
    fn checkout(&self) -> Option<http1::SendRequest<B>> {
        let now = Instant::now();
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if now.saturating_duration_since(entry.since) >= IDLE_TIMEOUT {
                // Every entry below the top has been idle longer still.
                idle.clear();
                return None;
            }
            // Ready: the previous response was read to the end and hyper
            // waits for the next request. Closed ones are dropped here.
            if entry.sender.is_ready() && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Puts an idle connection on top of the stack, dropping the ones at the
    /// bottom that have been idle too long.
    fn put(&self, sender: http1::SendRequest<B>) {
        let now = Instant::now();
        let expired = |e: &Idle<B>| now.saturating_duration_since(e.since) >= IDLE_TIMEOUT;
        let mut idle = self.lock();
        if idle.first().is_some_and(expired) {
            let n = idle.partition_point(expired);
            idle.drain(..n);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }
}

impl<B: Send + 'static> Pool<B> {
    /// Returns a connection whose response headers have arrived. It is
    /// reusable once its response body has been read to the end: at once for
    /// small responses (hyper read the whole response with the headers),
    /// otherwise a task waits for that so the request path does not.
    fn recycle(self: &Arc<Self>, mut sender: http1::SendRequest<B>) {
        if sender.is_ready() {
            self.put(sender);
            return;
        }
        if sender.is_closed() {
            return;
        }
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            // An error means the connection closed (or was upgraded): drop it.
            if sender.ready().await.is_ok() {
                pool.put(sender);
            }
        });
    }
}

/// A request that failed after it was handed to a connection.
fn failed(e: &hyper::Error) -> ProxyError {
    ProxyError::UpstreamUnreachable(chain(e))
}

/// An error and its causes on one line, for the log.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::net::TcpListener;

    use super::*;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// What the test upstream does on each connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Behaviour {
        /// Answers every request.
        KeepAlive,
        /// Answers one request, then closes without having said so (as an
        /// upstream's idle timeout does).
        CloseAfterFirst,
        /// Answers one request, reads the next, then closes without answering.
        DropSecond,
        /// Reads requests and never answers.
        Silent,
    }

    /// A raw HTTP/1.1 upstream on 127.0.0.1:0; it counts accepted connections
    /// and keeps the request heads it read.
    struct TestUpstream {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
    }

    impl TestUpstream {
        async fn start(behaviour: Behaviour) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let heads = Arc::new(Mutex::new(Vec::new()));
            let (count, seen) = (accepted.clone(), heads.clone());
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    count.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(stream, behaviour, seen.clone()));
                }
            });
            Self {
                addr,
                accepted,
                heads,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        fn client(&self) -> Client<Empty<Bytes>> {
            client_for(self.addr, Duration::from_secs(10))
        }
    }

    fn client_for(addr: SocketAddr, response: Duration) -> Client<Empty<Bytes>> {
        let base: Uri = format!("http://{addr}").parse().unwrap();
        Client::new(
            &base,
            None,
            None,
            Timeouts {
                upstream_connect: Duration::from_secs(10),
                upstream_response: response,
            },
        )
    }

    /// Reads one request head (the test requests have no body); `None` at EOF.
    async fn read_head<S: AsyncReadExt + Unpin>(
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                return Some(String::from_utf8(head).unwrap());
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn serve(mut stream: TcpStream, behaviour: Behaviour, heads: Arc<Mutex<Vec<String>>>) {
        let mut buf = Vec::new();
        let mut answered = 0;
        while let Some(head) = read_head(&mut stream, &mut buf).await {
            heads.lock().unwrap().push(head);
            match behaviour {
                Behaviour::Silent => continue,
                Behaviour::DropSecond if answered == 1 => return,
                _ => {}
            }
            // One write: the client reads head and body in one go.
            stream.write_all(RESPONSE).await.unwrap();
            answered += 1;
            if behaviour == Behaviour::CloseAfterFirst {
                return;
            }
        }
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::get(path).body(Empty::new()).unwrap()
    }

    /// Sends a request and reads the response body to the end.
    async fn fetch(client: &Client<Empty<Bytes>>, path: &str) -> Result<Bytes, ProxyError> {
        let resp = client.send(get(path)).await?;
        assert_eq!(resp.status(), 200);
        Ok(resp.into_body().collect().await.unwrap().to_bytes())
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let up = TestUpstream::start(Behaviour::KeepAlive).await;
        let client = up.client();
        for _ in 0..3 {
            assert_eq!(fetch(&client, "/").await.unwrap(), "ok");
        }
        assert_eq!(up.accepted(), 1);
    }

    #[tokio::test]
    async fn a_connection_returns_to_the_pool_once_a_late_body_is_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        // The second byte of each body waits for the gate: the response
        // headers reach the client while the body is still unfinished.
        let gate = Arc::new(tokio::sync::Notify::new());
        let (count, open) = (accepted.clone(), gate.clone());
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while read_head(&mut stream, &mut buf).await.is_some() {
                        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no";
                        stream.write_all(head).await.unwrap();
                        open.notified().await;
                        stream.write_all(b"k").await.unwrap();
                    }
                });
            }
        });
        let client = client_for(addr, Duration::from_secs(10));
        for _ in 0..2 {
            let resp = client.send(get("/")).await.unwrap();
            assert!(client.pool.lock().is_empty(), "busy until the body is read");
            gate.notify_one();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            // The connection goes back from a task of its own; wait for it.
            let back = async {
                while client.pool.lock().is_empty() {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), back)
                .await
                .unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn requests_go_out_in_origin_form_with_a_host() {
        let up = TestUpstream::start(Behaviour::KeepAlive).await;
        let client = up.client();
        fetch(&client, "/a/b?c=1").await.unwrap();
        let mut req = get("/d");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("app.example"));
        client.send(req).await.unwrap();
        let heads = up.heads.lock().unwrap().clone();
        assert!(
            heads[0].starts_with("GET /a/b?c=1 HTTP/1.1\r\n"),
            "{heads:?}"
        );
        let own = format!("host: {}\r\n", up.addr);
        assert!(
            heads[0].contains(&own),
            "the upstream's authority: {heads:?}"
        );
        assert!(
            heads[1].contains("host: app.example\r\n"),
            "the client's Host is kept: {heads:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_replaced() {
        let up = TestUpstream::start(Behaviour::CloseAfterFirst).await;
        let client = up.client();
        assert_eq!(fetch(&client, "/").await.unwrap(), "ok");
        assert_eq!(fetch(&client, "/").await.unwrap(), "ok");
        assert_eq!(up.accepted(), 2);
    }

    /// Answers one request on `far`, the upstream end of an in-memory connection.
    async fn answer_one(far: &mut DuplexStream) {
        let mut buf = Vec::new();
        read_head(far, &mut buf).await.unwrap();
        far.write_all(RESPONSE).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_on_a_stale_idle_connection_is_retried_on_a_new_one() {
        let up = TestUpstream::start(Behaviour::KeepAlive).await;
        let client = up.client();
        // An idle pooled connection whose upstream end closes while the pool
        // still sees it ready: in memory, so that the close is seen exactly
        // when the connection task next runs, after the request was queued.
        let (near, mut far) = tokio::io::duplex(4096);
        let (mut sender, conn) = http1::handshake(TokioIo::new(near)).await.unwrap();
        tokio::spawn(conn);
        let (resp, ()) = tokio::join!(sender.send_request(get("/")), answer_one(&mut far));
        resp.unwrap().into_body().collect().await.unwrap();
        assert!(sender.is_ready());
        client.pool.put(sender);
        drop(far);

        assert_eq!(fetch(&client, "/").await.unwrap(), "ok");
        assert_eq!(up.accepted(), 1, "the retry went to a new connection");
    }

    #[tokio::test]
    async fn a_request_that_may_have_reached_the_app_is_not_resent() {
        let up = TestUpstream::start(Behaviour::DropSecond).await;
        let client = up.client();
        fetch(&client, "/").await.unwrap();
        let err = client.send(get("/pay")).await.unwrap_err();
        assert!(matches!(err, ProxyError::UpstreamUnreachable(_)), "{err}");
        assert_eq!(err.status(), 502);
        assert_eq!(up.accepted(), 1);
        assert_eq!(up.heads.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn connect_refused_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = client_for(addr, Duration::from_secs(10))
            .send(get("/"))
            .await
            .unwrap_err();
        let ProxyError::UpstreamUnreachable(msg) = &err else {
            panic!("{err:?}");
        };
        assert!(msg.contains(&addr.to_string()), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    #[tokio::test]
    async fn no_response_headers_in_time_is_a_timeout() {
        let up = TestUpstream::start(Behaviour::Silent).await;
        let limit = Duration::from_millis(200);
        let err = client_for(up.addr, limit).send(get("/")).await.unwrap_err();
        assert!(
            matches!(err, ProxyError::UpstreamTimeout(d) if d == limit),
            "{err}"
        );
        assert_eq!(err.status(), 504);
    }

    #[test]
    fn uri_is_origin_form() {
        let timeouts = Timeouts {
            upstream_connect: Duration::from_secs(1),
            upstream_response: Duration::from_secs(1),
        };
        let up = Upstream::new(&"http://app:8000/".parse().unwrap(), None, None, timeouts);
        let uri = up
            .uri_for(&"http://client.example/a?b=1".parse().unwrap())
            .unwrap();
        assert_eq!(uri, "/a?b=1");
        assert_eq!(up.uri_for(&"*".parse().unwrap()).unwrap(), "*");
    }

    #[test]
    fn connector_takes_host_and_port_from_the_authority() {
        let c = Connector::new(
            Authority::from_static("[::1]:8080"),
            None,
            Duration::from_secs(1),
        );
        assert_eq!((&*c.host, c.port), ("::1", 8080));
        let c = Connector::new(Authority::from_static("app"), None, Duration::from_secs(1));
        assert_eq!((&*c.host, c.port), ("app", 80));
    }
}
