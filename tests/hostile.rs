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

/// A small deterministic generator: the same seed gives the same inputs, so a
/// failure here reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Header-safe bytes (visible ASCII, space, tab and obs-text), biased
    /// towards the characters the parsers care about.
    fn header_text(&mut self, max: usize) -> Vec<u8> {
        const SPECIAL: &[u8] = b"{}[]\":,;= \\\t0123456789-nulltrueflushcycle\x80\xff";
        let len = (self.next() % max as u64) as usize;
        (0..len)
            .map(|_| {
                let r = self.next();
                if r.is_multiple_of(3) {
                    SPECIAL[(r >> 8) as usize % SPECIAL.len()]
                } else {
                    0x20 + ((r >> 8) % 0x5f) as u8
                }
            })
            .collect()
    }
}

#[tokio::test]
async fn random_cookies_and_random_update_headers_never_break_the_proxy() {
    let h = Harness::start().await;
    let mut rng = XorShift(0x5e55_10e5_a7d5_eed5);
    let mut created = 0;
    for i in 0..300 {
        let cookie = String::from_utf8_lossy(&rng.header_text(120)).into_owned();
        // Every third value is a random object patch, so some writes succeed.
        let value = if i % 3 == 0 {
            format!(r#"{{"k{}":"{}"}}"#, rng.next() % 10, rng.next())
        } else {
            String::from_utf8_lossy(&rng.header_text(80)).into_owned()
        };
        let name = ["x-session-update", "x-session-action", "x-session-expiry"][i % 3];
        let mut req = h.client.get("/").without_jar();
        if let Ok(v) = http::HeaderValue::from_str(&format!("sessionid={cookie}"))
            && let Ok(text) = v.to_str()
        {
            req = req.header("cookie", text);
        }
        if http::HeaderValue::from_str(&value).is_ok() {
            req = req.reply(name, &value);
        }
        let r = req.send().await;
        assert!(
            r.status == 200 || r.status == StatusCode::BAD_GATEWAY,
            "{} for cookie {cookie:?} and {name}: {value:?}",
            r.status
        );
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("x-session"))
        );
        if r.session_cookie().is_some_and(|c| !c.contains("Max-Age=0")) {
            created += 1;
        }
    }
    // Random text is never a key we issued, so no cookie was adopted: every
    // stored session is one whose creation the client was told about.
    assert!(
        created >= 90,
        "the object patches created sessions: {created}"
    );
    assert_eq!(h.sessions().await, created);
    assert_eq!(h.client.get("/").send().await.status, 200, "still serving");
}
