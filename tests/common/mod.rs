//! Shared test harness: a recording upstream, the proxy started in-process
//! from a config struct, and a client with a cookie jar. All on 127.0.0.1:0.
#![allow(dead_code)]
pub mod redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessionward::clock::{Clock, ManualClock, SystemClock};
use sessionward::config::{Config, RawConfig};
use sessionward::server::Server;
use sessionward::session::SessionStore;
use sessionward::token::{Signer, VerifiedClaims};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// The signing secret every test proxy uses.
pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

/// How long any wait in a test may take before it counts as a hang.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Body type the test upstream answers with.
pub type UpBody = BoxBody<Bytes, Infallible>;

/// Builds a full body.
pub fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

// ---------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
}

/// An async handler the upstream runs for each request after recording it.
pub type Handler = Arc<
    dyn Fn(
            Request<Incoming>,
            Arc<UpstreamState>,
        ) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// State shared by the upstream and the test.
#[derive(Default)]
pub struct UpstreamState {
    pub requests: Mutex<Vec<Recorded>>,
    arrived: Notify,
    gates: Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl UpstreamState {
    /// Blocks until the named gate is opened.
    pub async fn gate(&self, name: &str) {
        let mut rx = self.gate_sender(name).subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }

    fn gate_sender(&self, name: &str) -> watch::Sender<bool> {
        self.gates
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(false).0)
            .clone()
    }
}

/// A real hyper server on 127.0.0.1:0 that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream that answers with [`echo_reply`].
    pub async fn start() -> Upstream {
        Self::with_handler(Arc::new(|req, state| Box::pin(echo_reply(req, state)))).await
    }

    /// Starts an upstream with a custom handler.
    pub async fn with_handler(handler: Handler) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        let handler = handler.clone();
                        async move {
                            st.requests.lock().unwrap().push(Recorded {
                                method: req.method().clone(),
                                path: req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: req.headers().clone(),
                            });
                            st.arrived.notify_waiters();
                            Ok::<_, Infallible>(handler(req, st).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Upstream { addr, state, task }
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: usize) {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.state.arrived.notified();
                if self.state.requests.lock().unwrap().len() >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("upstream requests did not arrive in time");
    }

    /// Opens a gate that `x-reply-gate: NAME` requests wait on.
    pub fn open_gate(&self, name: &str) {
        let _ = self.state.gate_sender(name).send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default upstream: the test says what to answer through request headers.
/// `x-reply-status: N` sets the status, `x-reply-gate: NAME` waits for the gate,
/// every `x-reply-header: name: value` becomes a response header, and the body
/// is the request body's length.
pub async fn echo_reply(req: Request<Incoming>, state: Arc<UpstreamState>) -> Response<UpBody> {
    let headers = req.headers().clone();
    if let Some(gate) = headers.get("x-reply-gate") {
        state.gate(gate.to_str().unwrap()).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut resp = Response::new(full(format!("received {} bytes", body.len())));
    if let Some(s) = headers.get("x-reply-status") {
        *resp.status_mut() = StatusCode::from_bytes(s.as_bytes()).unwrap();
    }
    for h in headers.get_all("x-reply-header") {
        // Raw UTF-8 is allowed: apps do send it in header values.
        let (name, value) = std::str::from_utf8(h.as_bytes())
            .unwrap()
            .split_once(':')
            .unwrap();
        resp.headers_mut().append(
            HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            HeaderValue::from_bytes(value.trim().as_bytes()).unwrap(),
        );
    }
    resp
}

// ---------------------------------------------------------------------------
// Proxy
// ---------------------------------------------------------------------------

/// A raw config for a proxy in front of `upstream`, on 127.0.0.1:0, plain-http cookies.
pub fn raw_config(upstream: SocketAddr) -> RawConfig {
    let mut raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(format!("http://{upstream}")),
        ..Default::default()
    };
    raw.signing.secret = Some(SECRET.into());
    // Tests run side by side: no fixed admin port.
    raw.admin.listen = Some("127.0.0.1:0".into());
    // The test client talks plain http; Secure is checked in unit tests.
    raw.cookie.secure = false;
    raw
}

/// A proxy, its upstream, a client and a controllable clock.
pub struct Harness {
    pub upstream: Upstream,
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub config: Config,
    pub store: Arc<dyn SessionStore>,
    pub clock: Arc<ManualClock>,
    pub signer: Signer,
    pub client: Client,
}

impl Harness {
    /// Default config, echo upstream.
    pub async fn start() -> Harness {
        Self::with(|_| {}).await
    }

    /// Echo upstream, config adjusted by `adjust`.
    pub async fn with(adjust: impl FnOnce(&mut RawConfig)) -> Harness {
        Self::build(Upstream::start().await, adjust, None).await
    }

    /// Everything explicit: upstream, config and optionally a store.
    pub async fn build(
        upstream: Upstream,
        adjust: impl FnOnce(&mut RawConfig),
        store: Option<Arc<dyn SessionStore>>,
    ) -> Harness {
        let mut raw = raw_config(upstream.addr);
        adjust(&mut raw);
        let config = Config::try_from(raw).expect("test config is valid");
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let store = store.unwrap_or_else(|| {
            sessionward::build_store(&config, clock.clone()).expect("the configured store opens")
        });
        let server = Server::start(&config, store.clone(), clock.clone()).unwrap();
        let addr = server.local_addr();
        Harness {
            signer: Signer::from_config(&config.signing),
            client: Client::new(addr),
            upstream,
            server: Some(server),
            addr,
            config,
            store,
            clock,
        }
    }

    /// Verifies the token the upstream received on its last request.
    pub fn last_claims(&self) -> VerifiedClaims {
        self.claims_of(&self.upstream.last())
    }

    /// Verifies the token of one recorded request.
    pub fn claims_of(&self, rec: &Recorded) -> VerifiedClaims {
        let token = rec
            .headers
            .get("x-session")
            .expect("no token upstream")
            .to_str()
            .unwrap();
        self.signer
            .verify(token, self.clock.now())
            .expect("token verifies")
    }

    /// Live sessions in the store.
    pub async fn sessions(&self) -> u64 {
        self.store.count().await.unwrap()
    }

    /// A second client with its own cookie jar.
    pub fn new_client(&self) -> Client {
        Client::new(self.addr)
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// An HTTP/1.1 client with a cookie jar, aimed at the proxy.
#[derive(Clone)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base: SocketAddr,
    pub jar: Arc<Mutex<HashMap<String, String>>>,
}

/// A response, body read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// All `Set-Cookie` values.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    /// The `Set-Cookie` for the session cookie, if any.
    pub fn session_cookie(&self) -> Option<String> {
        self.set_cookies()
            .into_iter()
            .find(|c| c.starts_with("sessionid="))
    }
}

impl Client {
    /// A client for the proxy at `base`.
    pub fn new(base: SocketAddr) -> Client {
        Client {
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
            base,
            jar: Default::default(),
        }
    }

    /// Starts a GET.
    pub fn get(&self, path: &str) -> Req {
        self.request(Method::GET, path)
    }

    /// Starts a POST.
    pub fn post(&self, path: &str) -> Req {
        self.request(Method::POST, path)
    }

    /// Starts any request.
    pub fn request(&self, method: Method, path: &str) -> Req {
        Req {
            client: self.clone(),
            builder: Request::builder()
                .method(method)
                .uri(format!("http://{}{}", self.base, path)),
            body: Bytes::new(),
            use_jar: true,
        }
    }

    /// The session cookie's value in the jar.
    pub fn session_key(&self) -> Option<String> {
        self.jar.lock().unwrap().get("sessionid").cloned()
    }

    /// Puts a cookie in the jar by hand.
    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar.lock().unwrap().insert(name.into(), value.into());
    }

    fn store_cookies(&self, headers: &HeaderMap) {
        let mut jar = self.jar.lock().unwrap();
        for v in headers.get_all("set-cookie") {
            let c = cookie::Cookie::parse(v.to_str().unwrap().to_string()).unwrap();
            if c.max_age() == Some(time::Duration::ZERO) {
                jar.remove(c.name());
            } else {
                jar.insert(c.name().to_string(), c.value().to_string());
            }
        }
    }
}

/// A request being built.
pub struct Req {
    client: Client,
    builder: http::request::Builder,
    body: Bytes,
    use_jar: bool,
}

impl Req {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    /// Asks the echo upstream to answer with this header.
    pub fn reply(self, name: &str, value: &str) -> Self {
        self.header("x-reply-header", &format!("{name}: {value}"))
    }

    /// Asks the echo upstream to send a merge patch.
    pub fn update(self, json: &str) -> Self {
        self.reply("x-session-update", json)
    }

    /// Asks the echo upstream to send `x-session-action`.
    pub fn action(self, action: &str) -> Self {
        self.reply("x-session-action", action)
    }

    /// Asks the echo upstream to send `x-session-expiry`.
    pub fn expiry(self, expiry: &str) -> Self {
        self.reply("x-session-expiry", expiry)
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends no cookies from the jar.
    pub fn without_jar(mut self) -> Self {
        self.use_jar = false;
        self
    }

    /// Sends the request, reads the whole response and updates the jar.
    pub async fn send(self) -> Reply {
        let mut builder = self.builder;
        if self.use_jar {
            let jar = self.client.jar.lock().unwrap().clone();
            if !jar.is_empty() {
                let line: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
                builder = builder.header("cookie", line.join("; "));
            }
        }
        let req = builder.body(Full::new(self.body)).unwrap();
        let resp = tokio::time::timeout(DEADLINE, self.client.http.request(req))
            .await
            .expect("response in time")
            .expect("request sent");
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .expect("body in time")
            .unwrap()
            .to_bytes();
        if self.use_jar {
            self.client.store_cookies(&parts.headers);
        }
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// A TCP server on 127.0.0.1:0 that reads a request head and answers with
/// fixed raw bytes, then closes: a broken upstream.
pub async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// Raw sockets
// ---------------------------------------------------------------------------

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    /// Every byte read.
    pub bytes: Vec<u8>,
    /// Whether the proxy closed the connection (end of stream or a reset)
    /// before the wait ran out.
    pub closed: bool,
}

impl RawAnswer {
    /// The bytes as text, for assertions and messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of every response in the bytes, in order, `100
    /// Continue` included.
    pub fn statuses(&self) -> Vec<u16> {
        let text = self.text();
        let mut found = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("HTTP/1.") {
            let after = &rest[i..];
            if let Some(code) = after.get(9..12).and_then(|c| c.parse().ok()) {
                found.push(code);
            }
            rest = &after[7..];
        }
        found
    }
}

/// Writes `request` on a new connection to `addr`, then reads until the
/// other side closes it or `wait` has passed. A write the other side cut
/// short is not an error: what it answered before closing is still read.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(request).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    RawAnswer { bytes, closed }
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from a raw
/// connection: the head (status line and headers, lower-cased) and the body.
pub async fn read_response<S>(io: &mut S) -> (String, Vec<u8>)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(DEADLINE, async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            io.read_exact(&mut byte).await.expect("a response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().expect("a numeric content-length"));
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await.expect("the response body");
        (head, body)
    })
    .await
    .expect("a response in time")
}

// ---------------------------------------------------------------------------
// HTTP/2 frames by hand, for what a well-behaved client library refuses to send
// ---------------------------------------------------------------------------

/// The client connection preface followed by an empty SETTINGS frame.
pub fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(H2_SETTINGS, 0, 0, &[]));
    out
}

pub const H2_DATA: u8 = 0;
pub const H2_HEADERS: u8 = 1;
pub const H2_RST_STREAM: u8 = 3;
pub const H2_SETTINGS: u8 = 4;
pub const H2_PING: u8 = 6;
pub const H2_GOAWAY: u8 = 7;
pub const H2_END_STREAM: u8 = 1;
pub const H2_END_HEADERS: u8 = 4;

/// One frame: 24-bit length, type, flags, stream id, payload.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Appends a header as an HPACK literal without indexing, name and value
/// raw (no Huffman): any bytes at all, valid or not.
pub fn hpack_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    fn int(out: &mut Vec<u8>, mut v: usize) {
        if v < 127 {
            out.push(v as u8);
            return;
        }
        out.push(127);
        v -= 127;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }
    block.push(0);
    int(block, name.len());
    block.extend_from_slice(name);
    int(block, value.len());
    block.extend_from_slice(value);
}

/// A HEADERS frame for a request with these pseudo-headers and headers.
pub fn h2_request(
    stream: u32,
    flags: u8,
    method: &str,
    path: &[u8],
    headers: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, b":method", method.as_bytes());
    hpack_literal(&mut block, b":scheme", b"http");
    hpack_literal(&mut block, b":path", path);
    hpack_literal(&mut block, b":authority", b"app.test");
    for (name, value) in headers {
        hpack_literal(&mut block, name, value);
    }
    h2_frame(H2_HEADERS, flags | H2_END_HEADERS, stream, &block)
}

/// A frame read back: type, flags, stream id and payload.
#[derive(Debug, Clone)]
pub struct H2Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Reads the next frame; `None` once the connection is closed.
pub async fn read_h2_frame<S>(io: &mut S) -> Option<H2Frame>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    Some(H2Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}
