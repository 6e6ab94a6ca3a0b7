//! The SQLite store in the real binary: sessions survive `kill -9` in the
//! middle of a load and a clean restart, and the file stays intact.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sessionward::clock::{Clock, SystemClock};
use sessionward::config::Config;
use sessionward::token::Signer;
use tokio::sync::Notify;

use common::{DEADLINE, SECRET, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_sessionward");
/// Concurrent clients during the load.
const CLIENTS: usize = 16;
/// Sessions acknowledged before the kill; the load goes on while it lands.
const CREATED_BEFORE_KILL: usize = 500;
/// Updates each client makes to its session before starting a new one.
const UPDATES: u64 = 3;

type Http = Client<HttpConnector, Full<Bytes>>;

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sessionward-sqlite-it-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `sessionward run`; killed if the test ends early.
struct Proxy {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Proxy {
    /// Starts the binary and waits for the log line with its bound address.
    fn start(config: &Path) -> Proxy {
        let mut child = Command::new(BIN)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stderr to the end so the proxy never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let listen = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["listen"].as_str().map(str::to_owned));
                match (listen, tx.take()) {
                    (Some(addr), Some(tx)) => {
                        let _ = tx.send(Ok(addr));
                    }
                    (_, pending) => {
                        tx = pending;
                        if tx.is_some() {
                            seen.push(line);
                        }
                    }
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        let addr = match rx.recv_timeout(DEADLINE) {
            Ok(Ok(addr)) => addr.parse().unwrap(),
            Ok(Err(log)) => panic!("the proxy exited before serving:\n{log}"),
            Err(e) => panic!("the proxy did not announce its address: {e}"),
        };
        Proxy {
            child: Some(child),
            addr,
        }
    }

    /// SIGKILL: no chance to flush or close anything.
    fn kill_9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and a clean exit.
    fn stop(mut self) {
        let child = self.child.take().unwrap();
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let mut child = child;
        std::thread::spawn(move || tx.send(child.wait()));
        let status = rx.recv_timeout(DEADLINE).expect("exited after SIGTERM");
        assert_eq!(status.unwrap().code(), Some(0));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write_config(dir: &Path, upstream: SocketAddr, db: &Path) -> PathBuf {
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
         upstream: http://{upstream}\n\
         workers: 2\n\
         shutdown_grace: 5\n\
         cookie:\n  secure: false\n\
         signing:\n  secret: {SECRET}\n\
         store:\n  kind: sqlite\n  sqlite:\n    path: '{}'\n",
        db.display()
    );
    let path = dir.join("sessionward.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn signer(config: &Path) -> Signer {
    let text = std::fs::read_to_string(config).unwrap();
    let config = Config::from_yaml(&text, &|_| None).unwrap();
    Signer::new(&config.signing.secret, config.signing.token_ttl)
}

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a POST with an optional session cookie, asking the upstream to
/// answer with an optional session update. `Err` when the proxy is gone.
async fn send(
    http: &Http,
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    update: Option<&Value>,
) -> Result<(StatusCode, Option<String>), String> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"));
    if let Some(cookie) = cookie {
        req = req.header("cookie", format!("sessionid={cookie}"));
    }
    if let Some(update) = update {
        req = req.header("x-reply-header", format!("x-session-update: {update}"));
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(DEADLINE, http.request(req))
        .await
        .map_err(|_| "no response in time".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    tokio::time::timeout(DEADLINE, body.collect())
        .await
        .map_err(|_| "no body in time".to_string())?
        .map_err(|e| e.to_string())?;
    let session = parts
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| cookie::Cookie::parse(v.to_str().ok()?.to_owned()).ok())
        .find(|c| c.name() == "sessionid")
        .map(|c| c.value().to_owned());
    Ok((parts.status, session))
}

/// A session as the clients last saw it acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    cookie: String,
    /// The last update whose response arrived.
    step: u64,
}

#[derive(Default)]
struct Load {
    acked: Mutex<HashMap<String, Acked>>,
    progress: Notify,
}

/// One client: create a session, update it a few times, start over; until
/// the proxy stops answering (the kill). Returns the error that ended it.
async fn client(proxy: SocketAddr, load: Arc<Load>, id: usize) -> String {
    let http = http();
    let mut n = 0;
    loop {
        n += 1;
        let owner = format!("c{id}-{n}");
        let data = json!({"owner": owner, "step": 0, "pad": "p".repeat(200)});
        let path = format!("/create/{owner}");
        let cookie = match send(&http, proxy, &path, None, Some(&data)).await {
            Ok((StatusCode::OK, Some(cookie))) => cookie,
            Ok(other) => panic!("create answered {other:?}"),
            Err(e) => return e,
        };
        let fresh = Acked {
            cookie: cookie.clone(),
            step: 0,
        };
        load.acked.lock().unwrap().insert(owner.clone(), fresh);
        load.progress.notify_one();
        for step in 1..=UPDATES {
            let path = format!("/update/{owner}/{step}");
            let patch = json!({ "step": step });
            match send(&http, proxy, &path, Some(&cookie), Some(&patch)).await {
                Ok((StatusCode::OK, _)) => {}
                Ok(other) => panic!("update answered {other:?}"),
                Err(e) => return e,
            }
            if let Some(a) = load.acked.lock().unwrap().get_mut(&owner) {
                a.step = step;
            }
        }
    }
}

/// Loads every acknowledged session through the proxy and returns the data
/// the upstream saw in each one's token, by owner.
async fn read_back(
    proxy: SocketAddr,
    upstream: &Upstream,
    signer: &Signer,
    sessions: &HashMap<String, Acked>,
    round: &str,
) -> HashMap<String, serde_json::Map<String, Value>> {
    let http = http();
    for (owner, acked) in sessions {
        let path = format!("/check/{round}/{owner}");
        let (status, _) = send(&http, proxy, &path, Some(&acked.cookie), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    let now = SystemClock.now();
    let prefix = format!("/check/{round}/");
    upstream
        .requests()
        .into_iter()
        .filter_map(|r| {
            let owner = r.path.strip_prefix(&prefix)?.to_owned();
            let token = r.headers.get("x-session")?.to_str().ok()?.to_owned();
            let claims = signer.verify(&token, now).expect("token verifies");
            assert!(
                !claims.new && claims.sid.is_some(),
                "{owner}: the session was not found: {claims:?}"
            );
            Some((owner, claims.data))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_kill_9_under_load_and_a_clean_restart() {
    let dir = TempDir::new("kill");
    let db = dir.0.join("sessions.db");
    let upstream = Upstream::start().await;
    let config = write_config(&dir.0, upstream.addr, &db);
    let signer = signer(&config);

    // Load, then SIGKILL once enough sessions are acknowledged, mid-flight.
    let proxy = Proxy::start(&config);
    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(client(proxy.addr, load.clone(), id)))
        .collect();
    // A hang detector, generous for a debug build on a busy machine.
    tokio::time::timeout(DEADLINE * 6, async {
        loop {
            let progressed = load.progress.notified();
            if load.acked.lock().unwrap().len() >= CREATED_BEFORE_KILL {
                return;
            }
            progressed.await;
        }
    })
    .await
    .expect("the load did not get going");
    proxy.kill_9();
    // The clients end on their own: nothing answers any more.
    for c in clients {
        tokio::time::timeout(DEADLINE, c).await.unwrap().unwrap();
    }
    let acked = load.acked.lock().unwrap().clone();
    assert!(acked.len() >= CREATED_BEFORE_KILL);
    assert_eq!(integrity(&db), "ok", "after kill -9");

    // Every acknowledged session is there with its data.
    let proxy = Proxy::start(&config);
    let seen = read_back(proxy.addr, &upstream, &signer, &acked, "after-kill").await;
    assert_eq!(seen.len(), acked.len());
    for (owner, a) in &acked {
        let data = &seen[owner];
        assert_eq!(data["owner"], json!(owner));
        assert_eq!(data["pad"], json!("p".repeat(200)));
        let step = data["step"].as_u64().unwrap();
        // An update in flight at the kill may have committed unanswered.
        assert!(
            step == a.step || step == a.step + 1,
            "{owner}: step {step}, last acknowledged {}",
            a.step
        );
    }

    // A clean restart keeps the same sessions, exactly.
    proxy.stop();
    assert_eq!(integrity(&db), "ok", "after a clean stop");
    let proxy = Proxy::start(&config);
    let again = read_back(proxy.addr, &upstream, &signer, &acked, "after-stop").await;
    assert_eq!(again, seen);
    proxy.stop();
    assert_eq!(integrity(&db), "ok");
}
