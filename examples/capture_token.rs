//! Produces a real session token through the real proxy over real sockets and
//! prints it, so that an independent JWT library (PyJWT in `.ci/verify_token.sh`)
//! can check that what sessionward signs is a standard HS256 JWT.
//!
//! ```text
//! cargo run --quiet --example capture_token
//! SECRET=<the signing secret>
//! TOKEN=<the x-session header the app received on GET /check?x=1>
//! ```
//!
//! Steps: a tiny upstream app on 127.0.0.1:0 records the `x-session` header of
//! every request and answers `POST /login` with
//! `x-session-update: {"user":"ci","n":1}`; the proxy starts in front of it with
//! a random secret; `POST /login` creates the session, and `GET /check?x=1`
//! with the returned cookie makes the proxy send the session's token upstream.
//! Only the library's public API is used.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::{SecureRandom as _, SystemRandom};
use sessionward::clock::SystemClock;
use sessionward::config::{Config, RawConfig};
use tokio::net::TcpListener;

/// The session update the upstream sends on `POST /login`.
const LOGIN_UPDATE: &str = r#"{"user":"ci","n":1}"#;

/// How long any one request may take before the example gives up.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the upstream saw: method, path and query, and the `x-session` header.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    token: Option<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let log: Log = Arc::default();
    let (upstream_addr, upstream) = start_upstream(log.clone()).await?;

    let secret = random_secret()?;
    let mut raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        upstream: Some(format!("http://{upstream_addr}")),
        // Set explicitly: the derived `RawConfig::default()` leaves it at 0,
        // which validation refuses (the YAML default is 25).
        shutdown_grace: 5.0,
        ..Default::default()
    };
    raw.signing.secret = Some(secret.clone());
    // Everything here is plain http, like a browser on http:// would need.
    raw.cookie.secure = false;
    let config = Config::try_from(raw).context("building the proxy configuration")?;
    let server = sessionward::start(&config, Arc::new(SystemClock))
        .await
        .context("starting the proxy")?;
    let proxy = server.local_addr();

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    // 1. Log in: the upstream writes {"user":"ci","n":1}, so the proxy creates
    //    the session and sets the cookie.
    let (status, headers) = send(&client, proxy, Method::POST, "/login", None).await?;
    ensure!(status == StatusCode::OK, "POST /login answered {status}");
    let set_cookie = headers
        .get(header::SET_COOKIE)
        .ok_or_else(|| anyhow!("POST /login set no cookie (headers: {headers:?})"))?
        .to_str()
        .context("set-cookie is not text")?;
    // "sessionid=KEY; HttpOnly; ..." -> "sessionid=KEY"
    let cookie = set_cookie
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    ensure!(
        cookie.starts_with(&format!("{}=", config.cookie.name)),
        "unexpected set-cookie {set_cookie:?}"
    );

    // 2. Come back with the cookie: the upstream receives the session's token.
    let (status, _) = send(&client, proxy, Method::GET, "/check?x=1", Some(&cookie)).await?;
    ensure!(status == StatusCode::OK, "GET /check?x=1 answered {status}");

    let seen = log
        .lock()
        .map_err(|_| anyhow!("upstream log poisoned"))?
        .clone();
    let check = seen
        .iter()
        .rev()
        .find(|s| s.method == Method::GET && s.path == "/check?x=1")
        .ok_or_else(|| anyhow!("the upstream never received GET /check?x=1 (saw {seen:?})"))?;
    let token = check.token.clone().ok_or_else(|| {
        anyhow!("GET /check?x=1 reached the upstream without an x-session header")
    })?;

    println!("SECRET={secret}");
    println!("TOKEN={token}");

    server.shutdown().await;
    upstream.abort();
    Ok(())
}

/// 36 random bytes as base64url: a 48-character (48-byte) secret that is safe
/// to pass on a command line.
fn random_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 36];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the OS random generator failed"))?;
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    debug_assert_eq!(secret.len(), 48);
    Ok(secret)
}

/// The tiny app behind the proxy: records every request, answers `POST /login`
/// with a session update and everything else with a plain 200.
async fn start_upstream(log: Log) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the upstream")?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(app(req, &log)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

fn app(req: Request<Incoming>, log: &Log) -> Response<Full<Bytes>> {
    let seen = Seen {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".into(), |p| p.to_string()),
        token: req
            .headers()
            .get("x-session")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let login = seen.method == Method::POST && seen.path == "/login";
    if let Ok(mut log) = log.lock() {
        log.push(seen);
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
    if login {
        resp.headers_mut().insert(
            "x-session-update",
            http::HeaderValue::from_static(LOGIN_UPDATE),
        );
    }
    resp
}

/// Sends one request to the proxy and reads the whole response.
async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    proxy: SocketAddr,
    method: Method,
    path: &str,
    cookie: Option<&str>,
) -> anyhow::Result<(StatusCode, http::HeaderMap)> {
    let mut builder = Request::builder()
        .method(&method)
        .uri(format!("http://{proxy}{path}"));
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    let req = builder.body(Full::new(Bytes::new()))?;
    let exchange = async {
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        body.collect().await?;
        anyhow::Ok((parts.status, parts.headers))
    };
    match tokio::time::timeout(DEADLINE, exchange).await {
        Ok(result) => result.with_context(|| format!("{method} {path} through the proxy")),
        Err(_) => bail!("{method} {path} through the proxy took longer than {DEADLINE:?}"),
    }
}
