//! Bad input from both sides: broken upstreams and malformed clients get a
//! clear status, and the proxy keeps serving everyone else.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{DEADLINE, Harness, Upstream, raw_exchange, raw_upstream};
use http::StatusCode;
use sessionward::session::SessionKey;
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

#[tokio::test]
async fn ten_thousand_random_session_ids_are_never_adopted() {
    let h = Harness::start().await;
    let mut real = Vec::new();
    for user in 0..3 {
        let c = h.new_client();
        let r = c
            .post("/login")
            .update(&format!(r#"{{"user":{user}}}"#))
            .send()
            .await;
        assert_eq!(r.status, 200);
        real.push(c);
    }
    assert_eq!(h.sessions().await, 3);
    let before = h.upstream.requests().len();

    // Well-formed keys (43 base64url characters, 32 bytes), so every one is
    // looked up in the store rather than refused by its shape.
    let mut rng = XorShift(0x0001_d50f_5e55_10e5);
    let ids: Vec<String> = (0..10_000)
        .map(|_| {
            let bytes: Vec<u8> = (0..4).flat_map(|_| rng.next().to_le_bytes()).collect();
            URL_SAFE_NO_PAD.encode(bytes)
        })
        .collect();
    assert!(ids.iter().all(|id| SessionKey::parse(id).is_some()));

    // Eight keep-alive connections of the pooled client, 1,250 ids each.
    let mut tasks = Vec::new();
    for chunk in ids.chunks(1250) {
        let (client, chunk) = (h.client.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                let r = client
                    .get("/guess")
                    .without_jar()
                    .header("cookie", &format!("theme=dark; sessionid={id}"))
                    .send()
                    .await;
                assert_eq!(r.status, 200, "{id}");
                assert!(r.set_cookies().is_empty(), "nothing to set for {id}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let seen = &h.upstream.requests()[before..];
    assert_eq!(seen.len(), 10_000);
    for rec in seen {
        let claims = h.claims_of(rec);
        assert!(claims.new && claims.sid.is_none() && claims.data.is_empty());
        assert_eq!(rec.headers["cookie"], "theme=dark");
    }
    assert_eq!(h.sessions().await, 3, "the store did not grow");
    for (user, c) in real.iter().enumerate() {
        c.get("/me").send().await;
        let claims = h.last_claims();
        assert!(!claims.new);
        assert_eq!(claims.data["user"], user);
    }
}

/// Any of 200 (accepted: the session cookie found and removed, every other
/// cookie forwarded), 400 or 431 (refused: nothing forwarded) is an answer;
/// a panic, a hang or a proxy that stops serving others is not. Today:
/// 64 KB in one header 200, 500 cookies in one header 200, 500 `Cookie`
/// fields 431 (hyper's 100-field limit), a 1 MB cookie 431 (hyper's ~400 KB
/// head buffer), a 64 KB session cookie 200 (no session); over HTTP/2, 500
/// fields 200 (joined into one) and 5,000 fields 431 (the 64 KB header list).
#[tokio::test]
async fn oversized_and_numerous_cookies_are_answered_and_others_still_served() {
    let h = Harness::start().await;
    h.client.post("/login").update(r#"{"user":1}"#).send().await;
    let key = h.client.session_key().unwrap();
    let session = format!("sessionid={key}");

    // (case, Cookie fields, what is forwarded when the proxy accepts).
    let small: Vec<String> = (0..500).map(|i| format!("c{i}=v{i}")).collect();
    let mut big: Vec<String> = (0..6000).map(|i| format!("k{i:04}=v")).collect();
    big.insert(3000, session.clone());
    let mut many = small.clone();
    many.insert(250, session.clone());
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("one 64 KB Cookie header", vec![big.join("; ")]),
        ("500 cookies in one header", vec![many.join("; ")]),
        (
            "500 Cookie fields",
            many.iter().map(|c| c.to_string()).collect(),
        ),
        (
            "one 1 MB cookie",
            vec![format!("{session}; huge={}", "x".repeat(1 << 20))],
        ),
        (
            "a 64 KB session cookie",
            vec![format!("sessionid={}; a=1", "A".repeat(64 * 1024))],
        ),
    ];
    for (case, fields) in cases {
        let before = h.upstream.requests().len();
        let head: String = fields.iter().map(|f| format!("Cookie: {f}\r\n")).collect();
        let request = format!(
            "GET /{} HTTP/1.1\r\nHost: app.test\r\n{head}Connection: close\r\n\r\n",
            before
        );
        let answer = raw_exchange(h.addr, request.as_bytes(), DEADLINE).await;
        let status = answer.statuses();
        assert!(answer.closed, "{case}");
        match status.as_slice() {
            [200] => {
                let rec = h.upstream.last();
                assert_eq!(rec.path, format!("/{before}"));
                let forwarded = rec.headers["cookie"].to_str().unwrap();
                assert!(
                    !forwarded.contains("sessionid"),
                    "{case}: the key was forwarded"
                );
                let others = fields
                    .join("; ")
                    .split("; ")
                    .filter(|c| !c.starts_with("sessionid="))
                    .count();
                assert_eq!(
                    forwarded.split("; ").count(),
                    others,
                    "{case}: every other cookie kept"
                );
                let claims = h.claims_of(&rec);
                assert_eq!(claims.new, !fields.join("; ").contains(&session), "{case}");
            }
            [400] | [431] => assert_eq!(
                h.upstream.requests().len(),
                before,
                "{case}: refused yet forwarded"
            ),
            other => panic!("{case}: answered {other:?}"),
        }
        assert_eq!(
            h.client.get("/still").send().await.status,
            200,
            "after {case}"
        );
    }

    // HTTP/2: every cookie its own field, as browsers send them.
    let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    for (case, n) in [
        ("500 HTTP/2 cookie fields", 500),
        ("5,000 HTTP/2 cookie fields", 5000),
    ] {
        let mut req = http::Request::get(format!("http://{}/h2-{n}", h.addr));
        for i in 0..n {
            req = req.header("cookie", format!("c{i}=v{i}"));
            if i == n / 2 {
                req = req.header("cookie", session.as_str());
            }
        }
        let mut sender = tokio::time::timeout(DEADLINE, client.clone().ready())
            .await
            .unwrap()
            .unwrap();
        let (resp, _) = sender.send_request(req.body(()).unwrap(), true).unwrap();
        let resp = tokio::time::timeout(DEADLINE, resp).await.unwrap().unwrap();
        match resp.status().as_u16() {
            200 => {
                let rec = h.upstream.last();
                assert_eq!(rec.path, format!("/h2-{n}"));
                let joined: Vec<_> = rec.headers.get_all("cookie").iter().collect();
                assert_eq!(joined.len(), 1, "{case}: joined into one field");
                let joined = joined[0].to_str().unwrap();
                assert_eq!(joined.split("; ").count(), n, "{case}");
                assert!(!joined.contains("sessionid"));
                assert!(
                    !h.claims_of(&rec).new,
                    "{case}: the session among them is found"
                );
            }
            400 | 431 => {}
            other => panic!("{case}: answered {other}"),
        }
    }
    assert_eq!(h.client.get("/still").send().await.status, 200);
}

#[tokio::test]
async fn upstream_cannot_plant_a_nameless_cookie_read_back_as_the_session() {
    // `Set-Cookie: sessionid; Path=/account` has no `=` in its name-value
    // pair: a browser stores a nameless cookie whose value is `sessionid` and
    // sends it back bare (`Cookie: sessionid; sessionid=KEY`, longer paths
    // first), and sessionward reads a bare `sessionid` as its own cookie with
    // an empty value. The first one wins, so it would shadow the real
    // session on those paths. Found by fuzz/fuzz_targets/cookie_header.rs.
    let h = Harness::start().await;
    for planted in [
        "sessionid; Path=/account",
        "sessionid; Secure",
        " sessionid ; HttpOnly",
        "sessionid",
    ] {
        let r = h
            .client
            .get("/")
            .without_jar()
            .reply("set-cookie", planted)
            .reply("set-cookie", "theme=dark")
            .send()
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.set_cookies(),
            vec!["theme=dark"],
            "{planted:?} reached the client"
        );
    }
}
