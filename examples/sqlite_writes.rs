//! Sustained session writes per second of the SQLite store, driven through
//! its `Backend` API the way the proxy drives it: many concurrent tasks, each
//! creating a session and then updating it a few times (read, merge, write).
//!
//! `cargo run --release --example sqlite_writes [SECONDS] [full] [TASKS]`
//! (defaults: 5 seconds, `synchronous = NORMAL`, 64 tasks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sessionward::clock::{Clock, SystemClock};
use sessionward::config::SqliteConfig;
use sessionward::session::keyed::{Backend, Change};
use sessionward::session::sqlite::SqliteStore;
use sessionward::session::{Changes, Next, Policy, SessionKey, apply};

/// Updates per session after its creation.
const UPDATES_PER_SESSION: usize = 3;

const POLICY: Policy = Policy {
    max_age: 1_209_600,
    expire_at_browser_close: false,
    max_bytes: 8192,
    absolute_timeout: None,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Counts {
    creates: AtomicU64,
    updates: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().map_or(Ok(5.0), |s| s.parse())?;
    let full = args.get(1).is_some_and(|s| s == "full");
    let tasks: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;

    let dir =
        std::env::temp_dir().join(format!("sessionward-sqlite-writes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = SqliteConfig {
        path: dir.join("sessions.db"),
        busy_timeout: Duration::from_secs(5),
        purge_interval: Duration::from_secs(300),
        synchronous_full: full,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(SqliteStore::open(&config, None, clock.clone())?);
    let counts = Arc::new(Counts::default());

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let (store, counts, clock) = (store.clone(), counts.clone(), clock.clone());
            tokio::spawn(async move { drive(&store, &counts, &*clock, task, until).await })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();

    let creates = counts.creates.load(Ordering::Relaxed);
    let updates = counts.updates.load(Ordering::Relaxed);
    let writes = creates + updates;
    let sessions = store.count().await?;
    println!(
        "sqlite store, synchronous={}, {tasks} tasks: {writes} writes in {elapsed:.2} s = {:.0} writes/s \
         ({creates} creates, {updates} updates; {sessions} sessions stored)",
        if full { "FULL" } else { "NORMAL" },
        writes as f64 / elapsed,
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// One client: create a session, update it a few times, repeat until `until`.
async fn drive(
    store: &SqliteStore,
    counts: &Counts,
    clock: &dyn Clock,
    task: usize,
    until: Instant,
) -> Result<(), Error> {
    let mut n = 0u64;
    while Instant::now() < until {
        let id = SessionKey::generate().ok_or("no randomness")?.hash();
        let now = clock.now();
        let first = Changes {
            patches: vec![json!({"task": task, "n": n, "user": "someone@example.com"})],
            ..Default::default()
        };
        let Next::Save { record, .. } = apply(None, &first, &POLICY, now)? else {
            return Err("a new session with data must be saved".into());
        };
        store.create(&id, record).await?;
        counts.creates.fetch_add(1, Ordering::Relaxed);
        for step in 0..UPDATES_PER_SESSION {
            let changes = Changes {
                patches: vec![json!({"step": step, "cart": [n, step]})],
                ..Default::default()
            };
            let edit = |current: &_| apply(Some(current), &changes, &POLICY, now);
            match store.update(&id, &id, &edit).await? {
                Change::Saved(_) => counts.updates.fetch_add(1, Ordering::Relaxed),
                other => return Err(format!("unexpected update result {other:?}").into()),
            };
        }
        n += 1;
    }
    Ok(())
}
