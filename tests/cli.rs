//! The `sessionward` binary: `check`, `run` and signals, as an operator uses them.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sessionward::config::{Config, EXAMPLE_SECRET_PLACEHOLDER};

const BIN: &str = env!("CARGO_BIN_EXE_sessionward");

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml")).unwrap()
}

#[test]
fn example_config_documents_the_defaults_and_loads() {
    let secret = "s".repeat(40);
    let config = Config::from_yaml(&example(), &|name| {
        (name == "SESSIONWARD_SECRET").then(|| secret.clone())
    })
    .unwrap();
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.cookie.name, "sessionid");
    assert_eq!(config.session.max_age, 1_209_600);
    assert_eq!(config.signing.secret.expose(), secret.as_bytes());

    // Without the variable the placeholder is used, and refused.
    let err = Config::from_yaml(&example(), &|_| None).unwrap_err();
    assert_eq!(err.problems()[0].path, "signing.secret");
    assert!(example().contains(EXAMPLE_SECRET_PLACEHOLDER));
}

fn write_config(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sessionward-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn check_lists_every_problem_with_its_path_and_exits_2() {
    let dir = temp_dir("check");
    let bad = write_config(
        &dir,
        "bad.yaml",
        "listen: nowhere\nupstream: http://127.0.0.1:1\ncookie:\n  same_site: none\n  secure: false\nsigning:\n  secret: short\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["listen:", "cookie.same_site:", "signing.secret:"] {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }

    let good = write_config(
        &dir,
        "good.yaml",
        &format!(
            "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nsigning:\n  secret: {}\n",
            common::SECRET
        ),
    );
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN)
        .arg("check")
        .env("SESSIONWARD_CONFIG", &good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "SESSIONWARD_CONFIG is the fallback"
    );

    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(dir.join("missing.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}

#[test]
fn run_serves_and_exits_0_on_sigterm() {
    let dir = temp_dir("run");
    // A port nothing listens on: the proxy answers 502 at once.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = write_config(
        &dir,
        "run.yaml",
        &format!(
            "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream: http://{}\nsigning:\n  secret: ${{TEST_SECRET}}\n",
            upstream
        ),
    );
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("TEST_SECRET", common::SECRET)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The JSON log line announcing the bound address is the readiness signal.
    let (listen, admin) = loop {
        let line = lines.next().expect("log line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log lines");
        if let Some(addr) = v["fields"]["listen"].as_str() {
            let admin = v["fields"]["admin"].as_str().expect("admin address logged");
            break (addr.to_string(), admin.to_string());
        }
    };
    let mut conn = std::net::TcpStream::connect(&listen).expect("proxy is listening");
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id: "),
        "{answer}"
    );

    // The admin listener, as an orchestrator sees it.
    let get = |path: &str| {
        let mut conn = std::net::TcpStream::connect(&admin).expect("admin is listening");
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    let health = get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let ready = get("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503"),
        "no upstream, not ready: {ready}"
    );
    assert!(ready.contains(&format!("upstream {upstream}")), "{ready}");
    let metrics = get("/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("sessionward_responses_total{class=\"5xx\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sessionward_connections_total 1\n"),
        "{metrics}"
    );
    // The upstream comes up: ready.
    let up = std::net::TcpListener::bind(upstream).expect("the upstream port is free again");
    let ready = get("/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    drop(up);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("exited after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sessions_explains_that_the_memory_store_cannot_be_reached() {
    let dir = temp_dir("purge-memory");
    let path = write_config(
        &dir,
        "memory.yaml",
        &format!(
            "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nsigning:\n  secret: {}\n",
            common::SECRET
        ),
    );
    let out = Command::new(BIN)
        .args(["sessions", "--config"])
        .arg(&path)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("memory store lives inside the running proxy"),
        "{err}"
    );
}

#[tokio::test]
async fn purge_removes_expired_sqlite_sessions_and_keeps_live_ones() {
    use sessionward::clock::{Clock, ManualClock, SystemClock};
    use sessionward::session::{Expiry, Record};

    let dir = temp_dir("purge-sqlite");
    let db = dir.join("sessions.db");
    let _ = std::fs::remove_file(&db);
    let path = write_config(
        &dir,
        "sqlite.yaml",
        &format!(
            "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nsigning:\n  secret: {}\nstore:\n  kind: sqlite\n  sqlite:\n    path: {}\n",
            common::SECRET,
            db.display()
        ),
    );
    let config = Config::load(&path).unwrap();
    let now = SystemClock.now();
    let record = |expires_at| Record {
        data: r#"{"a":1}"#.into(),
        created_at: now - 1000,
        expires_at,
        expiry: Expiry::Default,
        seen_at: now - 1000,
        subject: None,
    };
    {
        let store =
            sessionward::build_store(&config, Arc::new(ManualClock::new(now - 1000))).unwrap();
        store.create(record(now - 10)).await.unwrap();
        store.create(record(now - 1)).await.unwrap();
        store.create(record(now + 1000)).await.unwrap();
    }
    let out = Command::new(BIN)
        .args(["sessions", "--config"])
        .arg(&path)
        .arg("purge")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "purged 2 expired session(s)"
    );
    let store = sessionward::build_store(&config, Arc::new(SystemClock)).unwrap();
    assert_eq!(store.count().await.unwrap(), 1);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `sessionward sessions --config <config> <args>`: exit code, stdout, stderr.
fn sessions_cli(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(["sessions", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sessions_list_show_and_delete_act_on_the_running_proxys_store() {
    use common::{Client, Harness, Upstream};
    use sessionward::config::RawConfig;
    use sessionward::session::SessionKey;

    let dir = temp_dir("sessions-sqlite");
    let db = dir.join("sessions.db");
    let _ = std::fs::remove_file(&db);
    let upstream = Upstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nupstream: http://{}\n\
         cookie:\n  secure: false\nsigning:\n  secret: {}\n\
         store:\n  kind: sqlite\n  sqlite:\n    path: '{}'\n",
        upstream.addr,
        common::SECRET,
        db.display()
    );
    let path = write_config(&dir, "sqlite.yaml", &yaml);
    let raw = RawConfig::from_yaml(&yaml, &|_| None).unwrap();
    let h = Harness::build(upstream, |c| *c = raw, None).await;

    // Two sessions through the proxy: ann's, with a subject, and another.
    let ann = h.client.clone();
    ann.post("/login")
        .update(r#"{"user":7}"#)
        .reply("x-session-subject", "user:7")
        .send()
        .await;
    let other = Client::new(h.addr);
    other.post("/cart").update(r#"{"cart":[1]}"#).send().await;
    let id_of = |c: &Client| {
        SessionKey::parse(&c.session_key().expect("a session"))
            .unwrap()
            .hash()
            .to_hex()
    };
    let (ann_id, other_id) = (id_of(&ann), id_of(&other));

    let (code, table, err) = sessions_cli(&path, &["list"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    let ann_line = lines.iter().find(|l| l.starts_with(&ann_id)).expect(&table);
    assert!(ann_line.ends_with("user:7"), "{ann_line}");
    assert!(lines.iter().any(|l| l.starts_with(&other_id)), "{table}");

    let (code, one, err) = sessions_cli(&path, &["list", "--limit", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(one.lines().count(), 2, "the header and one session: {one}");
    assert!(err.contains("more than 1 live sessions"), "{err}");
    let (_, _, err) = sessions_cli(&path, &["list", "--limit", "2"]);
    assert!(!err.contains("more than"), "all shown: {err}");

    let (code, json_lines, _) = sessions_cli(&path, &["list", "--json"]);
    assert_eq!(code, Some(0));
    let mut ids: Vec<String> = json_lines
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert!(v.get("data").is_none(), "list never prints data: {l}");
            v["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let mut expected = vec![ann_id.clone(), other_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);

    // Show by the cookie value (what a browser's dev tools show) or the id.
    let cookie = ann.session_key().unwrap();
    for which in [cookie.as_str(), ann_id.as_str()] {
        let (code, shown, err) = sessions_cli(&path, &["show", which]);
        assert_eq!(code, Some(0), "{err}");
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(v["id"], ann_id.as_str());
        assert_eq!(v["subject"], "user:7");
        assert_eq!(v["data"]["user"], 7);
        assert_eq!(v["bytes"], 10);
    }

    // A subject's sessions, all at once; ann's (user:7) stays.
    let second = Client::new(h.addr);
    second
        .post("/login")
        .update(r#"{"user":8}"#)
        .reply("x-session-subject", "user:8")
        .send()
        .await;
    let (code, out, err) = sessions_cli(&path, &["revoke-subject", "user:8"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "revoked 1 session(s) of \"user:8\"");
    let (code, _, _) = sessions_cli(&path, &["show", &id_of(&second)]);
    assert_eq!(code, Some(1), "revoked");

    // Deleted from outside: the running proxy no longer knows the cookie.
    let (code, out, err) = sessions_cli(&path, &["delete", &ann_id]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), format!("deleted session {ann_id}"));
    ann.get("/after").send().await;
    let claims = h.last_claims();
    assert!(
        claims.sid.is_none(),
        "the deleted session still reached the app"
    );
    assert_eq!(h.sessions().await, 1);

    let (code, _, err) = sessions_cli(&path, &["show", &ann_id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no live session with id"), "{err}");
    let (code, _, err) = sessions_cli(&path, &["delete", "nonsense"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a session id"), "{err}");
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sessions_in_the_cookie_store_cannot_be_listed_and_say_why() {
    let dir = temp_dir("sessions-cookie");
    let path = write_config(
        &dir,
        "cookie.yaml",
        &format!(
            "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:1\nsigning:\n  secret: {}\nstore:\n  kind: cookie\n",
            common::SECRET
        ),
    );
    let (code, _, err) = sessions_cli(&path, &["list"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("sealed in its browser's cookie"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
