//! Request smuggling and hop-by-hop tricks, over raw sockets. A request whose
//! framing two HTTP parsers could read differently is refused with 400 and
//! its connection closed; whatever is hidden behind it never reaches the app;
//! and no header a client sends can make sessionward drop its own token.

mod common;

use std::time::Duration;

use common::{
    DEADLINE, H2_DATA, H2_END_STREAM, H2_GOAWAY, H2_HEADERS, H2_RST_STREAM, Harness, RawAnswer,
    Recorded, h2_frame, h2_preface, h2_request, raw_exchange, read_h2_frame, read_response,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A complete request hidden after the first one: if it ever reaches the
/// upstream, the proxy and a front end could disagree about where requests
/// start.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";

/// How soon after its answer a refused connection must be closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);

/// Sends `request` on its own connection and reads until the proxy closes
/// it. Returns the answer and every request the upstream received because
/// of it: a marker request sent afterwards on another connection has
/// reached the upstream by then, and so has whatever this connection led to.
async fn attempt(h: &Harness, request: &str) -> (RawAnswer, Vec<Recorded>) {
    let before = h.upstream.requests().len();
    let answer = raw_exchange(h.addr, request.as_bytes(), CLOSE_WITHIN).await;
    let marker = format!("/marker-{before}");
    assert_eq!(h.client.get(&marker).send().await.status, 200);
    let seen = h.upstream.requests()[before..]
        .iter()
        .filter(|r| r.path != marker)
        .cloned()
        .collect();
    (answer, seen)
}

fn paths(seen: &[Recorded]) -> Vec<&str> {
    seen.iter().map(|r| r.path.as_str()).collect()
}

/// The issue's rule for a request that must be refused: 400, the connection
/// closed, and nothing at all forwarded. Returns what went wrong, if anything.
async fn refusal_problem(h: &Harness, case: &str, request: &str) -> Option<String> {
    let (answer, seen) = attempt(h, request).await;
    let statuses = answer.statuses();
    (statuses != [400] || !answer.closed || !seen.is_empty()).then(|| {
        format!(
            "{case}: answered {statuses:?}, connection {}, upstream received {:?}",
            if answer.closed { "closed" } else { "left open" },
            paths(&seen)
        )
    })
}

/// Checks every case, then fails with the list of those that broke the rule.
async fn assert_all_refused(h: &Harness, cases: &[(String, String)]) {
    let mut problems = Vec::new();
    for (case, request) in cases {
        problems.extend(refusal_problem(h, case, request).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Both framings at once, in both orders and with every relation between
/// the two lengths: the chunked body `3\r\nabc\r\n0\r\n\r\n` is 15 bytes.
fn cl_and_te_requests() -> Vec<(String, String)> {
    let chunked = "3\r\nabc\r\n0\r\n\r\n";
    let mut cases = Vec::new();
    for cl in ["0", "3", "15", "60"] {
        cases.push((
            format!("CL {cl} then TE"),
            format!(
                "POST /first HTTP/1.1\r\nHost: app.test\r\nContent-Length: {cl}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{chunked}{SMUGGLED}"
            ),
        ));
        cases.push((
            format!("TE then CL {cl}"),
            format!(
                "POST /first HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: {cl}\r\n\r\n{chunked}{SMUGGLED}"
            ),
        ));
    }
    cases
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_with_400() {
    // RFC 9112 section 6.1 would let a server read these as chunked; a front
    // end that reads the Content-Length instead sees another request, so
    // neither reading is taken.
    let h = Harness::start().await;
    assert_all_refused(&h, &cl_and_te_requests()).await;
}

#[tokio::test]
async fn a_refused_request_is_answered_after_the_requests_before_it() {
    // Pipelined: two honest requests, then one with both framings. The two
    // are answered in order, the third refused, and nothing behind it forwarded.
    let h = Harness::start().await;
    let request = format!(
        "POST /first HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc\
         GET /second HTTP/1.1\r\nHost: app.test\r\n\r\n\
         POST /third HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let (answer, seen) = attempt(&h, &request).await;
    assert_eq!(answer.statuses(), [200, 200, 400], "{}", answer.text());
    assert!(answer.closed);
    assert_eq!(paths(&seen), ["/first", "/second"]);
    assert!(
        answer
            .text()
            .ends_with("bad request: Content-Length with Transfer-Encoding\n"),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn a_connect_behind_a_pipelined_request_does_not_turn_checking_off() {
    // The first request's 200 is not the CONNECT's answer, and the CONNECT's
    // own answer (405) switches nothing: the bare-LF request is refused, or
    // the connection closed (what hyper does after a CONNECT it did not
    // tunnel); it never reaches the app.
    let h = Harness::start().await;
    let request = format!(
        "GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n\
         CONNECT app.test:443 HTTP/1.1\r\nHost: app.test\r\n\r\n\
         GET /second HTTP/1.1\nHost: app.test\n\n{SMUGGLED}"
    );
    let (answer, seen) = attempt(&h, &request).await;
    let statuses = answer.statuses();
    assert!(
        statuses == [200, 405] || statuses == [200, 405, 400],
        "{}",
        answer.text()
    );
    assert!(answer.closed);
    assert_eq!(paths(&seen), ["/first"]);
}

#[tokio::test]
async fn a_refused_upgrade_goes_back_to_checked_framing() {
    // The app answers an upgrade request with 200, not 101. Whether the
    // connection then goes on (the next request checked like any other, so
    // refused) or is closed (hyper's choice after an upgrade it was asked
    // for), the bare-LF request behind it never reaches the app.
    let h = Harness::start().await;
    let request = format!(
        "GET /first HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
         GET /second HTTP/1.1\nHost: app.test\n\n{SMUGGLED}"
    );
    let (answer, seen) = attempt(&h, &request).await;
    let statuses = answer.statuses();
    assert!(
        statuses == [200] || statuses == [200, 400],
        "{}",
        answer.text()
    );
    assert!(answer.closed);
    assert_eq!(paths(&seen), ["/first"]);
}

#[tokio::test]
async fn differing_and_invalid_content_lengths_are_refused() {
    let h = Harness::start().await;
    let mut cases = Vec::new();
    for lengths in [
        &["3", "40"][..],
        &["40", "3"],
        &["3", "3", "4"],
        &["3, 40"],
        &["3, 3"],
        &["+3"],
        &["-3"],
        &["0x3"],
        &["3 3"],
        &["3;"],
        &["99999999999999999999999"],
        &[""],
    ] {
        let fields: String = lengths
            .iter()
            .map(|l| format!("Content-Length: {l}\r\n"))
            .collect();
        let request =
            format!("POST /first HTTP/1.1\r\nHost: app.test\r\n{fields}\r\nabc{SMUGGLED}");
        cases.push((format!("Content-Length {lengths:?}"), request));
    }
    assert_all_refused(&h, &cases).await;
}

#[tokio::test]
async fn repeated_identical_content_lengths_frame_one_body() {
    // RFC 9110 section 8.6 lets a recipient take identical repeats as one
    // value; then no parser can read another length, and the request after
    // the 3-byte body is an ordinary pipelined one.
    let h = Harness::start().await;
    let request = "POST /first HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc\
                   GET /second HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let (answer, seen) = attempt(&h, request).await;
    assert!(answer.closed);
    match answer.statuses().as_slice() {
        [400] => assert!(seen.is_empty()),
        [200, 200] => {
            assert_eq!(paths(&seen), ["/first", "/second"]);
            let lengths: Vec<_> = seen[0].headers.get_all("content-length").iter().collect();
            assert_eq!(lengths, ["3"], "one length reaches the app");
            assert!(answer.text().contains("received 3 bytes"));
        }
        other => panic!("answered {other:?}: {}", answer.text()),
    }
}

#[tokio::test]
async fn obfuscated_transfer_encodings_are_refused() {
    let h = Harness::start().await;
    let body = format!("0\r\n\r\n{SMUGGLED}");
    let cases = [
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        "Transfer-Encoding: chu nked\r\n",
        "Transfer-Encoding: \x0bchunked\r\n",
        "Transfer-Encoding: chunked\x00\r\n",
        "Transfer-Encoding : chunked\r\n",
        "Transfer-Encoding\t: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding:\r\n chunked\r\n",
        "X-Padding: a\r\n Transfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nTransfer-Encoding: gzip\r\n",
        "Transfer-Encoding: identity\r\nContent-Length: 5\r\n",
    ];
    let mut cases: Vec<(String, String)> = cases
        .iter()
        .map(|te| {
            let request = format!("POST /first HTTP/1.1\r\nHost: app.test\r\n{te}\r\n{body}");
            (format!("{te:?}"), request)
        })
        .collect();
    // HTTP/1.0 has no chunked coding at all.
    cases.push((
        "HTTP/1.0 with Transfer-Encoding".into(),
        format!(
            "POST /first HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        ),
    ));
    assert_all_refused(&h, &cases).await;
}

#[tokio::test]
async fn header_names_with_spaces_stray_carriage_returns_and_two_hosts_are_refused() {
    let h = Harness::start().await;
    let cases: Vec<(String, String)> = [
        ("space in a name", "Bad Header: x\r\n"),
        ("space before the colon", "Content-Length : 5\r\n"),
        ("tab before the colon", "Content-Length\t: 5\r\n"),
        ("space in a name hiding a length", "X Content-Length: 5\r\n"),
        ("empty name", ": 5\r\n"),
        ("bare CR inside the head", "X-A: a\rContent-Length: 5\r\n"),
        ("NUL in a value", "X-A: a\x00b\r\n"),
        ("line without a colon", "Content-Length 5\r\n"),
        ("a second Host", "Host: evil.test\r\n"),
    ]
    .iter()
    .map(|(case, head)| {
        let request =
            format!("POST /first HTTP/1.1\r\nHost: app.test\r\n{head}\r\nabcde{SMUGGLED}");
        (case.to_string(), request)
    })
    .collect();
    assert_all_refused(&h, &cases).await;
}

#[tokio::test]
async fn bare_lf_line_endings_are_refused() {
    // hyper (httparse) takes a lone LF as a line ending, which RFC 9112
    // section 2.2 allows; a front end that does not can read these bytes as
    // one request where hyper reads two. sessionward checks heads first.
    let h = Harness::start().await;
    let cases = [
        (
            "LF only",
            format!("GET /first HTTP/1.1\nHost: app.test\n\n{SMUGGLED}"),
        ),
        (
            "LF ending one header",
            format!("GET /first HTTP/1.1\r\nHost: app.test\nX-A: b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "LF ending the head",
            format!("GET /first HTTP/1.1\r\nHost: app.test\r\n\n{SMUGGLED}"),
        ),
        (
            "LF before a length",
            format!(
                "POST /first HTTP/1.1\r\nHost: app.test\r\nX-A: b\nContent-Length: 5\r\n\r\nabcde{SMUGGLED}"
            ),
        ),
    ]
    .map(|(case, request)| (case.to_string(), request));
    assert_all_refused(&h, &cases).await;
}

/// Chunked bodies that are broken after the head was accepted.
fn broken_chunked_bodies() -> Vec<(&'static str, String)> {
    let head = "POST /first HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    [
        ("size not hex", "zz\r\nabc\r\n0\r\n\r\n"),
        ("size overflows", "fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
        ("LF-only chunk lines", "3\nabc\n0\n\n"),
        ("LF in a chunk extension", "3;x\nabc\r\n0\r\n\r\n"),
        ("data longer than its size", "3\r\nabcdef\r\n0\r\n\r\n"),
        ("negative size", "-3\r\nabc\r\n0\r\n\r\n"),
    ]
    .into_iter()
    .map(|(case, body)| (case, format!("{head}{body}{SMUGGLED}")))
    .collect()
}

#[tokio::test]
async fn broken_chunked_bodies_never_smuggle_a_request() {
    let h = Harness::start().await;
    for (case, request) in broken_chunked_bodies() {
        let (answer, seen) = attempt(&h, &request).await;
        assert!(answer.closed, "{case}: the connection must be closed");
        assert!(
            paths(&seen).iter().all(|p| *p == "/first"),
            "{case}: the upstream received {:?}",
            paths(&seen)
        );
        let statuses = answer.statuses();
        assert!(
            statuses.len() <= 1 && statuses.iter().all(|s| *s >= 400),
            "{case}: {}",
            answer.text()
        );
    }
}

#[tokio::test]
async fn broken_chunked_bodies_are_the_clients_fault() {
    // A body the client framed wrongly is a 400: a 502 would blame the app,
    // and a load balancer that ejects backends on 5xx could be led to eject
    // healthy ones.
    let h = Harness::start().await;
    let mut wrong = Vec::new();
    for (case, request) in broken_chunked_bodies() {
        let (answer, _) = attempt(&h, &request).await;
        if answer.statuses() != [400] {
            wrong.push(format!("{case}: {:?}", answer.text().lines().next()));
        }
    }
    assert!(wrong.is_empty(), "not answered 400:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn pipelined_requests_are_still_served_in_order() {
    // The control for the tests above: a second request the client sends
    // honestly does reach the upstream, so "never received" means something.
    let h = Harness::start().await;
    let request = "POST /first HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc\
                   POST /second HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n\
                   GET /third HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n";
    let (answer, seen) = attempt(&h, request).await;
    assert_eq!(answer.statuses(), vec![200, 200, 200], "{}", answer.text());
    assert!(answer.closed, "Connection: close is honoured");
    assert_eq!(paths(&seen), ["/first", "/second", "/third"]);
    let text = answer.text();
    let bodies: Vec<_> = text.matches("received ").collect();
    assert_eq!(bodies.len(), 3);
    assert!(text.contains("received 3 bytes") && text.contains("received 2 bytes"));
}

// ---------------------------------------------------------------------------
// HTTP/2 to HTTP/1.1: what the h2 parser lets through must not become framing
// ---------------------------------------------------------------------------

/// How the proxy ended an HTTP/2 stream.
#[derive(Debug, PartialEq)]
enum H2End {
    /// A response: its HEADERS block's first byte (0x88 is :status 200).
    Answered(u8),
    Reset,
    GoAway,
    Closed,
}

/// Sends the preface and `frames`, then reads until stream 1 is answered,
/// reset, or the connection goes away.
async fn h2_attempt(addr: std::net::SocketAddr, frames: &[Vec<u8>]) -> H2End {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = h2_preface();
    for f in frames {
        out.extend_from_slice(f);
    }
    tcp.write_all(&out).await.unwrap();
    timeout(DEADLINE, async {
        loop {
            let Some(frame) = read_h2_frame(&mut tcp).await else {
                return H2End::Closed;
            };
            match frame.kind {
                H2_HEADERS if frame.stream == 1 => return H2End::Answered(frame.payload[0]),
                H2_RST_STREAM if frame.stream == 1 => return H2End::Reset,
                H2_GOAWAY => return H2End::GoAway,
                _ => {}
            }
        }
    })
    .await
    .expect("the proxy ends the stream in time")
}

#[tokio::test]
async fn http2_requests_that_could_reframe_upstream_are_refused() {
    let h = Harness::start().await;
    let smuggled = SMUGGLED.as_bytes();
    let chunked_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    type Case<'a> = (
        &'a str,
        &'a [u8],
        Vec<(&'a [u8], &'a [u8])>,
        Option<&'a [u8]>,
    );
    let cases: Vec<Case> = vec![
        (
            "content-length 0 with a body",
            b"/first",
            vec![(b"content-length", b"0")],
            Some(smuggled),
        ),
        (
            "content-length shorter than the body",
            b"/first",
            vec![(b"content-length", b"3")],
            Some(smuggled),
        ),
        (
            "two content-lengths",
            b"/first",
            vec![(b"content-length", b"3"), (b"content-length", b"40")],
            Some(b"abc"),
        ),
        (
            "transfer-encoding",
            b"/first",
            vec![(b"transfer-encoding", b"chunked")],
            Some(chunked_smuggle.as_bytes()),
        ),
        (
            "CRLF in a value",
            b"/first",
            vec![(b"x-a", b"b\r\nTransfer-Encoding: chunked")],
            None,
        ),
        (
            "LF in a value",
            b"/first",
            vec![(b"x-a", b"b\nx-session: forged")],
            None,
        ),
        ("NUL in a value", b"/first", vec![(b"x-a", b"a\x00b")], None),
        (
            "CRLF in the path",
            b"/first HTTP/1.1\r\nHost: app.test\r\n\r\nGET /smuggled",
            vec![],
            None,
        ),
        ("space in the path", b"/first HTTP/1.1", vec![], None),
        ("space in a name", b"/first", vec![(b"x a", b"b")], None),
        ("colon in a name", b"/first", vec![(b"x:a", b"b")], None),
        ("upper-case name", b"/first", vec![(b"X-A", b"b")], None),
        (
            "connection-specific header",
            b"/first",
            vec![(b"connection", b"x-session")],
            None,
        ),
        (
            "keep-alive header",
            b"/first",
            vec![(b"keep-alive", b"timeout=5")],
            None,
        ),
        (
            "upgrade header",
            b"/first",
            vec![(b"upgrade", b"websocket")],
            None,
        ),
    ];
    for (case, path, headers, data) in cases {
        let before = h.upstream.requests().len();
        let mut frames = vec![h2_request(
            1,
            if data.is_some() { 0 } else { H2_END_STREAM },
            if data.is_some() { "POST" } else { "GET" },
            path,
            &headers,
        )];
        if let Some(d) = data {
            frames.push(h2_frame(H2_DATA, H2_END_STREAM, 1, d));
        }
        let end = h2_attempt(h.addr, &frames).await;
        assert!(
            !matches!(end, H2End::Answered(0x88)),
            "{case}: answered 200"
        );
        let marker = format!("/marker-{before}");
        assert_eq!(h.client.get(&marker).send().await.status, 200);
        let seen: Vec<_> = h.upstream.requests()[before..]
            .iter()
            .map(|r| r.path.clone())
            .filter(|p| *p != marker)
            .collect();
        assert!(
            seen.is_empty(),
            "{case}: the upstream received {seen:?} ({end:?})"
        );
    }
}

#[tokio::test]
async fn http2_data_beyond_a_forwarded_content_length_never_reaches_the_upstream() {
    // The head goes upstream first (content-length 0, stream still open);
    // only then does the client send a body holding a whole request.
    let h = Harness::start().await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let mut out = h2_preface();
    out.extend(h2_request(
        1,
        0,
        "POST",
        b"/first",
        &[(b"content-length", b"0")],
    ));
    tcp.write_all(&out).await.unwrap();
    h.upstream.wait_for_requests(1).await;
    let first = h.upstream.last();
    assert_eq!(first.path, "/first");
    assert_eq!(first.headers["content-length"], "0");
    tcp.write_all(&h2_frame(H2_DATA, H2_END_STREAM, 1, SMUGGLED.as_bytes()))
        .await
        .unwrap();
    // The stream ends one way or another; then nothing else arrived.
    let _ = timeout(DEADLINE, async {
        while let Some(f) = read_h2_frame(&mut tcp).await {
            let done = (f.stream == 1 && f.kind == H2_RST_STREAM)
                || (f.stream == 1 && f.kind == H2_DATA && f.flags & H2_END_STREAM != 0)
                || f.kind == H2_GOAWAY;
            if done {
                return;
            }
        }
    })
    .await;
    assert_eq!(h.client.get("/marker").send().await.status, 200);
    let seen: Vec<_> = h
        .upstream
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(seen, ["/first", "/marker"]);
}

// ---------------------------------------------------------------------------
// Hop-by-hop tricks against the token
// ---------------------------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_tricks_never_cost_the_token() {
    let h = Harness::start().await;
    let r = h.client.post("/login").update(r#"{"user":7}"#).send().await;
    assert_eq!(r.status, 200);
    let key = h.client.session_key().unwrap();
    h.client.get("/").send().await;
    let sid = h.last_claims().sid.expect("a live session has a sid");

    let tricks = [
        "Connection: x-session",
        "Connection: X-Session, close",
        "Connection: keep-alive\r\nConnection: x-session",
        "Connection: x_session",
        "Connection: x-session, x-session-update, x-session-action",
        "Connection: x-forwarded-for, x-forwarded-proto, x-forwarded-host",
        "Connection: host, x-session",
        "Connection: ,,x-session,,",
        "Connection: \tx-session\t",
        "Proxy-Connection: x-session",
        "Keep-Alive: x-session",
        "TE: x-session, trailers",
        "Trailer: x-session",
        "Connection: upgrade, x-session\r\nUpgrade: x-session",
        "Connection: upgrade, x-session\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Connection: x-session\r\nX-Session: forged\r\nX_Session: forged",
    ];
    for (i, trick) in tricks.iter().enumerate() {
        for version in ["HTTP/1.1", "HTTP/1.0"] {
            let path = format!("/trick-{i}-{version}");
            let mut tcp = TcpStream::connect(h.addr).await.unwrap();
            let request = format!(
                "GET {path} {version}\r\nHost: app.test\r\nCookie: sessionid={key}\r\n{trick}\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await.unwrap();
            let (head, _) = read_response(&mut tcp).await;
            assert!(head.contains(" 200 "), "{trick:?} {version}: {head}");
            let rec = h
                .upstream
                .requests()
                .into_iter()
                .find(|r| r.path == path)
                .unwrap_or_else(|| panic!("{trick:?} {version} never reached the upstream"));
            let tokens: Vec<_> = rec.headers.get_all("x-session").iter().collect();
            assert_eq!(tokens.len(), 1, "{trick:?} {version}: {tokens:?}");
            assert!(
                rec.headers
                    .keys()
                    .all(|k| k == "x-session"
                        || !k.as_str().replace('_', "-").starts_with("x-session")),
                "{trick:?} {version}: {:?}",
                rec.headers
            );
            let claims = h.claims_of(&rec);
            assert_eq!(
                claims.sid.as_deref(),
                Some(sid.as_str()),
                "{trick:?} {version}"
            );
            assert_eq!(claims.data["user"], 7, "{trick:?} {version}");
            assert_eq!(rec.headers["x-forwarded-for"], "127.0.0.1", "{trick:?}");
            assert_eq!(rec.headers["x-forwarded-proto"], "http", "{trick:?}");
        }
    }

    // Naming the session's own carriers hop-by-hop: `Connection: cookie`
    // removes the Cookie header before the session is read (the client only
    // loses its own session for this request), and hyper refuses nothing
    // here; the app still gets exactly one genuine token.
    for trick in ["Connection: cookie", "Connection: cookie, x-session, host"] {
        let mut tcp = TcpStream::connect(h.addr).await.unwrap();
        let request = format!(
            "GET /carrier HTTP/1.1\r\nHost: app.test\r\nCookie: sessionid={key}\r\n{trick}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut tcp).await;
        assert!(head.contains(" 200 "), "{trick:?}: {head}");
        let rec = h.upstream.last();
        assert_eq!(
            rec.headers.get_all("x-session").iter().count(),
            1,
            "{trick:?}"
        );
        h.claims_of(&rec);
    }
    assert_eq!(h.sessions().await, 1, "no trick created or lost a session");
}
