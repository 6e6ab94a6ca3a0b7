//! An upstream on a Unix socket (`upstream: unix:/path`), as a PHP-FPM-style
//! app in the same pod would listen.

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::Harness;
use http::Response;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;

#[tokio::test]
async fn requests_reach_an_app_on_a_unix_socket_with_their_token() {
    let dir = std::env::temp_dir().join(format!("sessionward-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("app.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let token = req.headers().contains_key("x-session");
                    let resp = Response::builder()
                        .header("x-got-token", if token { "yes" } else { "no" })
                        .header("x-session-update", r#"{"via":"unix"}"#)
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let path = socket.display().to_string();
    let h = Harness::with(|c| c.upstream = Some(format!("unix:{path}"))).await;
    let r = h.client.get("/").send().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-got-token"], "yes");
    assert!(
        r.session_cookie().is_some(),
        "the update from the socket app was applied"
    );
    assert!(
        h.upstream.requests().is_empty(),
        "nothing went to the TCP upstream"
    );

    let admin = h.server.as_ref().unwrap().admin_addr().unwrap();
    let mut conn = tokio::net::TcpStream::connect(admin).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
}
