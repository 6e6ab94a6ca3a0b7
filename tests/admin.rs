//! The admin listener: health, readiness and metrics as an orchestrator and
//! a Prometheus server see them, plus request ids.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{DEADLINE, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET on the admin listener: (status, body).
async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = tokio::net::TcpStream::connect(admin)
        .await
        .expect("admin listens");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, conn.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = answer[9..12].parse().expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn admin_of(h: &Harness) -> SocketAddr {
    h.server
        .as_ref()
        .and_then(|s| s.admin_addr())
        .expect("the admin listener is on")
}

/// The value of one sample line of a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{metrics}"))
}

#[tokio::test]
async fn metrics_count_what_the_proxy_did() {
    let h = Harness::start().await;
    let admin = admin_of(&h);
    h.client
        .post("/login")
        .update(r#"{"user":"ann"}"#)
        .send()
        .await;
    h.client.get("/").update(r#"{"n":1}"#).send().await;
    h.client.get("/").action("cycle").send().await;
    let r = h.client.get("/").update("not json").send().await;
    assert_eq!(r.status, 502);
    h.client.get("/").action("flush").send().await;
    h.client
        .get("/")
        .header("x-reply-status", "404")
        .send()
        .await;

    let (status, m) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&m, "sessionward_responses_total{class=\"2xx\"}"),
        4.0
    );
    assert_eq!(
        sample(&m, "sessionward_responses_total{class=\"4xx\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "sessionward_responses_total{class=\"5xx\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "sessionward_request_duration_seconds_count"),
        6.0
    );
    assert_eq!(
        sample(&m, "sessionward_upstream_duration_seconds_count"),
        6.0
    );
    assert_eq!(
        sample(&m, "sessionward_sessions_total{event=\"created\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "sessionward_sessions_total{event=\"updated\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "sessionward_sessions_total{event=\"rotated\"}"),
        1.0
    );
    assert_eq!(
        sample(&m, "sessionward_sessions_total{event=\"deleted\"}"),
        1.0
    );
    assert_eq!(sample(&m, "sessionward_protocol_errors_total"), 1.0);
    // Loads: the four requests between login and flush carried a cookie.
    assert_eq!(
        sample(&m, "sessionward_store_duration_seconds_count{op=\"load\"}"),
        4.0
    );
    assert_eq!(
        sample(&m, "sessionward_store_errors_total{op=\"load\"}"),
        0.0
    );
    assert!(sample(&m, "sessionward_connections_total") >= 1.0);
}

#[tokio::test]
async fn every_response_has_its_own_request_id_and_the_app_sees_it() {
    let h = Harness::start().await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..20 {
        let r = h
            .client
            .get("/")
            .header("x-request-id", "forged-by-the-client")
            .send()
            .await;
        let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        let seen = h.upstream.last().headers["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(seen, id, "the app sees the id the client gets");
        assert!(ids.insert(id), "an id came twice");
    }
}

#[tokio::test]
async fn healthz_answers_and_unknown_paths_do_not() {
    let h = Harness::start().await;
    let admin = admin_of(&h);
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(get(admin, "/").await.0, 404);
    // The proxy's own port does not serve the admin paths: they go to the app.
    h.client.get("/healthz").send().await;
    assert_eq!(h.upstream.last().path, "/healthz");
}

#[tokio::test]
async fn readiness_follows_the_redis_store_down_and_up() {
    let Some(mut redis) = common::redis::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let h = Harness::with(|c| common::redis::use_single(c, url)).await;
    let admin = admin_of(&h);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    redis.stop();
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store:"), "{body}");
    // Liveness is not readiness: the process is fine.
    assert_eq!(get(admin, "/healthz").await.0, 200);
    redis.restart();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if get(admin, "/readyz").await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_admin_port_cannot_be_the_proxy_port() {
    let mut raw = common::raw_config("127.0.0.1:9".parse().unwrap());
    raw.listen = Some("127.0.0.1:8080".into());
    raw.admin.listen = Some("0.0.0.0:8080".into());
    let err = sessionward::config::Config::try_from(raw).unwrap_err();
    assert_eq!(err.problems()[0].path, "admin.listen");
}
