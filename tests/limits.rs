//! `limits`: header sizes, slow clients, connection counts. A limit hit
//! answers its status (or closes that one connection) and never affects
//! other clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{DEADLINE, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes or `DEADLINE` passes; returns what came.
async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was not closed within {DEADLINE:?}"),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    read_to_close(&mut conn).await
}

#[tokio::test]
async fn an_oversized_cookie_header_is_431_and_never_forwarded() {
    let h = Harness::with(|c| c.limits.max_cookie_bytes = 1000).await;
    let big = format!("a={}", "x".repeat(1200));
    let r = h.client.get("/").header("cookie", &big).send().await;
    assert_eq!(r.status, 431);
    assert!(h.upstream.requests().is_empty(), "forwarded anyway");
    let r = h.client.get("/").header("cookie", "a=1").send().await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn an_oversized_request_head_is_431() {
    let h = Harness::with(|c| c.limits.max_header_bytes = 16_384).await;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "y".repeat(20_000)
    );
    let answer = raw(h.addr, req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    assert!(h.upstream.requests().is_empty());
    assert_eq!(h.client.get("/").send().await.status, 200);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_and_others_are_served_meanwhile() {
    let h = Harness::with(|c| c.limits.header_read_timeout = 0.5).await;
    let mut slow = TcpStream::connect(h.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Drip: 1\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // Served while the slow client holds its connection open.
    assert_eq!(h.client.get("/").send().await.status, 200);
    let answer = read_to_close(&mut slow).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert_eq!(
        h.upstream.requests().len(),
        1,
        "the slow request reached the app"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let h = Harness::with(|c| c.limits.header_read_timeout = 0.5).await;
    let mut conn = TcpStream::connect(h.addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The first answer, then the server closes the idle connection.
    let answer = read_to_close(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_room_comes_back() {
    let h = Harness::with(|c| {
        c.limits.max_connections = 2;
        c.workers = 1;
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(h.addr).await.unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(DEADLINE, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        kept.push(conn);
    }
    let answer = raw(
        h.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.is_empty(), "a third connection was served: {answer}");
    drop(kept.pop());
    // The freed slot is noticed as soon as the server sees the close.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = raw(
            h.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
