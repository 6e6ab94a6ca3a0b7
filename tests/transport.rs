//! The proxy as a transport: streaming bodies, WebSocket upgrades, HTTP/2
//! from clients, graceful shutdown. Real sockets throughout.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{DEADLINE, Harness, UpBody, Upstream, full, read_response};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// An upstream whose `/stream` answers with a first chunk, then waits for the
/// "rest" gate before the second: a buffering proxy could not deliver the first.
/// Reads what is left of a response body, within the test deadline.
async fn rest_of(body: hyper::body::Incoming) -> Bytes {
    timeout(DEADLINE, body.collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes()
}

fn streaming_upstream() -> common::Handler {
    Arc::new(|req, state| {
        Box::pin(async move {
            if req.uri().path() == "/upload" {
                // Answers once the first request chunk arrived, before the body ends.
                let mut body = req.into_body();
                let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
                let (mut tx, rx) =
                    http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
                tokio::spawn(async move {
                    let _ = tx
                        .send_data(Bytes::from(format!(
                            "first chunk: {}\n",
                            String::from_utf8_lossy(&first)
                        )))
                        .await;
                    let mut rest = 0;
                    while let Some(Ok(frame)) = body.frame().await {
                        rest += frame.into_data().map(|d| d.len()).unwrap_or(0);
                    }
                    let _ = tx
                        .send_data(Bytes::from(format!("rest: {rest} bytes\n")))
                        .await;
                });
                return Response::new(rx.boxed());
            }
            let (mut tx, rx) =
                http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"one ")).await;
                state.gate("rest").await;
                let _ = tx.send_data(Bytes::from_static(b"two")).await;
            });
            Response::new(rx.boxed())
        })
    })
}

#[tokio::test]
async fn response_bodies_stream_without_buffering() {
    let h = Harness::build(
        Upstream::with_handler(streaming_upstream()).await,
        |_| {},
        None,
    )
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{}/stream", h.addr))
        .body(Full::default())
        .unwrap();
    let resp = timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let first = timeout(DEADLINE, body.frame())
        .await
        .expect("first chunk before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "one ");
    h.upstream.open_gate("rest");
    let rest = rest_of(body).await;
    assert_eq!(rest, "two");
}

#[tokio::test]
async fn request_bodies_stream_without_buffering() {
    let h = Harness::build(
        Upstream::with_handler(streaming_upstream()).await,
        |_| {},
        None,
    )
    .await;
    let client = Client::builder(TokioExecutor::new()).build_http::<UpBody>();
    let (mut tx, rx) = http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
    tx.send_data(Bytes::from_static(b"hello")).await.unwrap();
    let req = Request::post(format!("http://{}/upload", h.addr))
        .body(rx.boxed())
        .unwrap();
    // The upstream answers after the first chunk while the client is still sending.
    let resp = timeout(DEADLINE, client.request(req))
        .await
        .expect("upstream saw the first chunk")
        .unwrap();
    let mut body = resp.into_body();
    let first = timeout(DEADLINE, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "first chunk: hello\n");
    tx.send_data(Bytes::from(vec![b'x'; 100_000]))
        .await
        .unwrap();
    drop(tx);
    let rest = rest_of(body).await;
    assert_eq!(rest, "rest: 100000 bytes\n");
}

#[tokio::test]
async fn large_bodies_pass_intact_both_ways() {
    let h = Harness::start().await;
    let payload = vec![7u8; 3 * 1024 * 1024];
    let r = h.client.post("/big").body(payload).send().await;
    assert_eq!(r.body, format!("received {} bytes", 3 * 1024 * 1024));
}

fn websocket_upstream() -> common::Handler {
    Arc::new(|mut req, _state| {
        Box::pin(async move {
            if req.headers().get("upgrade").map(|v| v == "websocket") != Some(true) {
                let mut r = Response::new(full("expected an upgrade"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                // Echo, upper-cased, until the client closes.
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                    if io.write_all(&up).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(""))
                .unwrap()
        })
    })
}

/// A proxy in front of [`websocket_upstream`], and a connection to it.
async fn websocket_harness() -> (Harness, TcpStream) {
    let upstream = Upstream::with_handler(websocket_upstream()).await;
    let h = Harness::build(upstream, |_| {}, None).await;
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    (h, tcp)
}

/// Reads a response head byte by byte, so nothing after it is consumed.
async fn read_head(tcp: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(DEADLINE, tcp.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    head
}

#[tokio::test]
async fn websocket_upgrade_tunnels_with_the_session_token() {
    let (h, mut tcp) = websocket_harness().await;
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Session: forged\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tcp).await;
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("sec-websocket-accept"),
        "{head}"
    );

    tcp.write_all(b"hello tunnel").await.unwrap();
    let mut echoed = [0u8; 12];
    timeout(DEADLINE, tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"HELLO TUNNEL");

    let rec = h.upstream.last();
    assert_eq!(rec.headers["upgrade"], "websocket");
    assert_eq!(rec.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    let claims = h.claims_of(&rec);
    assert_eq!(claims.path, "/ws");
}

#[tokio::test]
async fn websocket_upgrade_behind_a_pipelined_request_still_tunnels() {
    // The request before the upgrade gets its own answer (400 from this
    // upstream); only the upgrade's 101 hands the connection over, and the
    // tunnel bytes the client sent early pass through as they are.
    let (_proxy, mut tcp) = websocket_harness().await;
    tcp.write_all(
        b"GET /before HTTP/1.1\r\nHost: app\r\n\r\n\
          GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
          hello\ntunnel",
    )
    .await
    .unwrap();
    let (first, _) = read_response(&mut tcp).await;
    assert!(first.starts_with("http/1.1 400"), "{first}");
    let head = read_head(&mut tcp).await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut echoed = [0u8; 12];
    timeout(DEADLINE, tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"HELLO\nTUNNEL");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let h = Harness::start().await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(format!("http://{}/h2?x=1", h.addr))
        .header("x-reply-header", r#"x-session-update: {"via":"h2"}"#)
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let resp = timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("sessionid="));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "received 3 bytes");
    let rec = h.upstream.last();
    let claims = h.claims_of(&rec);
    assert_eq!(
        (claims.method.as_str(), claims.path.as_str()),
        ("POST", "/h2?x=1")
    );
    assert_eq!(rec.headers["x-forwarded-host"], h.addr.to_string());
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut h = Harness::start().await;
    let in_flight = {
        let c = h.client.clone();
        tokio::spawn(async move { c.get("/slow").header("x-reply-gate", "finish").send().await })
    };
    h.upstream.wait_for_requests(1).await;
    let server = h.server.take().unwrap();
    let stop = server.stop_handle();
    let done = tokio::spawn(server.wait());
    stop.stop();

    // New connections are refused once the listener is closed.
    timeout(DEADLINE, async {
        while TcpStream::connect(h.addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener closed");

    assert!(!done.is_finished(), "still draining the in-flight request");
    h.upstream.open_gate("finish");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "received 0 bytes");
    timeout(DEADLINE, done)
        .await
        .expect("server stopped after draining")
        .unwrap();
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let mut h = Harness::with(|c| c.shutdown_grace = 0.2).await;
    let c = h.client.clone();
    let stuck =
        tokio::spawn(async move { c.get("/stuck").header("x-reply-gate", "never").send().await });
    h.upstream.wait_for_requests(1).await;
    let server = h.server.take().unwrap();
    timeout(DEADLINE, server.shutdown())
        .await
        .expect("shutdown returns after the grace period");
    stuck.abort();
}

fn trailer_upstream() -> common::Handler {
    Arc::new(|_req, _state| {
        Box::pin(async move {
            let (mut tx, rx) =
                http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
            tokio::spawn(async move {
                let _ = tx.send_data(Bytes::from_static(b"body")).await;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-session-update", r#"{"late":true}"#.parse().unwrap());
                trailers.insert("x-checksum", "abc".parse().unwrap());
                let _ = tx.send_trailers(trailers).await;
            });
            let mut resp = Response::new(rx.boxed());
            // hyper sends only the trailer fields announced up front.
            resp.headers_mut()
                .insert("trailer", "x-session-update, x-checksum".parse().unwrap());
            resp
        })
    })
}

#[tokio::test]
async fn protocol_headers_in_trailers_never_reach_the_client() {
    let h = Harness::build(
        Upstream::with_handler(trailer_upstream()).await,
        |_| {},
        None,
    )
    .await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{}/t", h.addr))
        .body(Full::default())
        .unwrap();
    let resp = timeout(DEADLINE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert!(
        resp.headers().get("set-cookie").is_none(),
        "a trailer is not an update"
    );
    let collected = timeout(DEADLINE, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers relayed");
    assert_eq!(trailers["x-checksum"], "abc");
    assert!(trailers.get("x-session-update").is_none(), "{trailers:?}");
    assert_eq!(collected.to_bytes(), "body");
    assert_eq!(h.sessions().await, 0);
}

#[tokio::test]
async fn http2_cookie_fields_reach_the_app_as_one_header() {
    let h = Harness::start().await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let send = |cookies: Vec<String>| {
        let mut req = Request::get(format!("http://{}/", h.addr));
        for c in cookies {
            req = req.header("cookie", c);
        }
        client.request(req.body(Full::default()).unwrap())
    };
    timeout(DEADLINE, send(vec!["a=1".into(), "b=2".into()]))
        .await
        .unwrap()
        .unwrap();
    let cookies: Vec<_> = h
        .upstream
        .last()
        .headers
        .get_all("cookie")
        .iter()
        .cloned()
        .collect();
    assert_eq!(cookies, vec!["a=1; b=2"]);

    let key = {
        let r = h.client.post("/").update(r#"{"u":1}"#).send().await;
        assert_eq!(r.status, 200);
        h.client.session_key().unwrap()
    };
    let fields = vec!["a=1".into(), format!("sessionid={key}"), "b=2".into()];
    timeout(DEADLINE, send(fields)).await.unwrap().unwrap();
    let rec = h.upstream.last();
    let cookies: Vec<_> = rec.headers.get_all("cookie").iter().cloned().collect();
    assert_eq!(cookies, vec!["a=1; b=2"]);
    assert!(
        !h.claims_of(&rec).new,
        "the session cookie among several fields is found"
    );
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled_and_connect_is_refused() {
    let h = Harness::start().await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(
        b"GET /h2c HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 512];
    let n = timeout(DEADLINE, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let rec = h.upstream.last();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert!(
            rec.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }

    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    tcp.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let n = timeout(DEADLINE, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 405"));
    assert_eq!(
        h.upstream.requests().len(),
        1,
        "CONNECT never reaches the upstream"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_address_fails_to_start() {
    let h = Harness::start().await;
    let mut raw = common::raw_config(h.upstream.addr);
    raw.listen = Some(h.addr.to_string());
    let config = sessionward::config::Config::try_from(raw).unwrap();
    let clock = Arc::new(sessionward::clock::SystemClock);
    let err = sessionward::start(&config, clock).await.unwrap_err();
    match err {
        sessionward::StartError::Bind { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        other => panic!("expected a bind error, got {other}"),
    }
    assert_eq!(
        h.client.get("/").send().await.status,
        200,
        "the first one keeps serving"
    );
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_cancels_the_upstream_call() {
    // An app that reads the request, never answers, and reports when the
    // proxy hangs up on it. The upstream timeout (60 s) is far away: only
    // noticing that the client left can end the call within the deadline.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let (got_request, request_seen) = tokio::sync::oneshot::channel();
    let (hung_up, proxy_hung_up) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = app.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = got_request.send(());
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = hung_up.send(());
    });
    let h = Harness::with(|c| c.upstream = Some(format!("http://{app_addr}"))).await;
    let mut client = TcpStream::connect(h.addr).await.unwrap();
    client
        .write_all(b"GET /never HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    timeout(DEADLINE, request_seen).await.unwrap().unwrap();
    drop(client);
    timeout(DEADLINE, proxy_hung_up)
        .await
        .expect("the proxy gave up the upstream call when its client left")
        .unwrap();
}
