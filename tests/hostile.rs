//! Bad input from both sides: broken upstreams and malformed clients get a
//! clear status, and the proxy keeps serving everyone else.

mod common;

use common::{DEADLINE, Harness, Upstream, raw_upstream};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

async fn proxy_in_front_of(upstream: std::net::SocketAddr) -> Harness {
    Harness::build(
        Upstream::start().await,
        |c| c.upstream = Some(format!("http://{upstream}")),
        None,
    )
    .await
}

#[tokio::test]
async fn broken_upstream_answers_are_502_and_the_proxy_survives() {
    let answers: &[&'static [u8]] = &[
        b"NOT HTTP AT ALL\r\n\r\n",
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-session-update: {\"a\":1}\r\nx-session-update: \xff\xfe\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-session-expiry: -1\r\nContent-Length: 0\r\n\r\n",
    ];
    for answer in answers {
        let h = proxy_in_front_of(raw_upstream(answer).await).await;
        let r = h.client.get("/").send().await;
        assert_eq!(
            r.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(answer)
        );
        assert!(r.set_cookies().is_empty());
        assert_eq!(h.sessions().await, 0);
        let r = h.client.get("/again").send().await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "still serving");
    }
}

#[tokio::test]
async fn upstream_dying_mid_body_only_breaks_that_response() {
    let upstream = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part").await;
    let h = proxy_in_front_of(upstream).await;
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        // The proxy forwards what it has, then closes the client connection:
        // the client sees a short body, never a made-up complete one.
        let _ = timeout(DEADLINE, tcp.read_to_end(&mut got)).await.unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("content-length: 100"), "{text}");
        assert!(text.ends_with("only part"), "{text}");
    }
}

#[tokio::test]
async fn malformed_client_requests_get_400_and_others_are_unaffected() {
    let h = Harness::start().await;
    let garbage: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: spaces\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\n\r\n",
    ];
    for bytes in garbage {
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut got = Vec::new();
        let _ = timeout(DEADLINE, tcp.read_to_end(&mut got)).await.unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(
        h.upstream.requests().is_empty(),
        "nothing malformed reached the upstream"
    );
    let r = h.client.get("/").send().await;
    assert_eq!(r.status, 200);
}
