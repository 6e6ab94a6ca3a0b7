//! The store contract: the same cases against every store, through the
//! `SessionStore` trait only, with a manual clock.
//!
//! A store joins the suite with one line at the end of this file:
//! `contract!(name, setup_fn);` where `setup_fn` is an async fn taking a
//! `RawConfig` (already holding the signing secret and the session rules)
//! that selects the store and returns it with a guard kept alive for the
//! test (a temp dir, a redis-server child...), or `None` to skip the store
//! with a printed reason.
//!
//! Where a store cannot keep a promise by design, the case checks its
//! declared `Capabilities` instead: the cookie store is not revocable (a
//! copied cookie stays valid) and shares no state between requests.

mod common;

use std::any::Any;
use std::sync::Arc;

use serde_json::{Value, json};
use sessionward::clock::{Clock, ManualClock, SystemClock};
use sessionward::config::{Config, RawConfig};
use sessionward::session::{
    self, Action, ApplyError, Changes, Expiry, Loaded, Next, Policy, Record, SessionKey,
    SessionStore, UpdateError, Updated,
};

/// Whatever a store's setup keeps alive for the length of a test.
type Guard = Box<dyn Any + Send + Sync>;

/// A store under test and its clock.
struct Fixture {
    store: Arc<dyn SessionStore>,
    clock: Arc<ManualClock>,
    policy: Policy,
    _guard: Guard,
}

/// The session rules every case uses unless it says otherwise.
const MAX_AGE: u64 = 100;
const MAX_BYTES: usize = 4096;

async fn fixture<F, Fut>(setup: F, idle: Option<u64>, absolute: Option<u64>) -> Option<Fixture>
where
    F: FnOnce(RawConfig) -> Fut,
    Fut: Future<Output = Option<(RawConfig, Guard)>>,
{
    let mut raw = common::raw_config("127.0.0.1:9".parse().expect("an address"));
    raw.session.max_age = MAX_AGE as i64;
    raw.session.max_bytes = MAX_BYTES as i64;
    raw.session.idle_timeout = idle.map(|n| n as i64);
    raw.session.absolute_timeout = absolute.map(|n| n as i64);
    let (raw, guard) = setup(raw).await?;
    let config = Config::try_from(raw).expect("a valid config");
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let store = sessionward::build_store(&config, clock.clone()).expect("the store opens");
    Some(Fixture {
        store,
        clock,
        policy: Policy {
            max_age: MAX_AGE,
            expire_at_browser_close: false,
            max_bytes: MAX_BYTES,
            absolute_timeout: absolute,
        },
        _guard: guard,
    })
}

impl Fixture {
    fn record(&self, data: Value) -> Record {
        let changes = Changes {
            patches: vec![data],
            ..Default::default()
        };
        match session::apply(None, &changes, &self.policy, self.clock.now()) {
            Ok(Next::Save { record, .. }) => record,
            other => panic!("not a new session: {other:?}"),
        }
    }

    async fn create(&self, data: Value) -> Loaded {
        self.store
            .create(self.record(data))
            .await
            .expect("create succeeds")
    }

    async fn load(&self, handle: &Loaded) -> Option<Loaded> {
        self.store
            .load(handle.handle.cookie())
            .await
            .expect("load succeeds")
    }

    async fn apply(&self, at: &Loaded, changes: Changes) -> Result<Updated, UpdateError> {
        let policy = self.policy;
        let now = self.clock.now();
        let edit = move |r: &Record| session::apply(Some(r), &changes, &policy, now);
        self.store.update(&at.handle, true, &edit).await
    }

    async fn patch(&self, at: &Loaded, patch: Value) -> Result<Updated, UpdateError> {
        self.apply(
            at,
            Changes {
                patches: vec![patch],
                ..Default::default()
            },
        )
        .await
    }

    fn revocable(&self) -> bool {
        self.store.capabilities().revocable
    }
}

fn data(l: &Loaded) -> Value {
    serde_json::from_str(&l.record.data).expect("stored data is JSON")
}

fn saved(u: Updated) -> Loaded {
    match u {
        Updated::Saved(l) => l,
        other => panic!("expected Saved, got {other:?}"),
    }
}

/// The cases, each a function of a fixture.
mod cases {
    use super::*;

    pub async fn unknown_keys_load_nothing(f: Fixture) {
        let stranger = SessionKey::generate().expect("random").encode();
        for cookie in ["", "garbage", "x".repeat(5000).as_str(), &stranger] {
            let got = f.store.load(cookie).await.expect("load succeeds");
            assert!(got.is_none(), "{cookie:.20}... loaded a session");
        }
    }

    pub async fn create_then_load_round_trips_unicode(f: Fixture) {
        let d = json!({"user": "Zoë", "emoji": "🦀", "nested": {"ß": [1, 2.5, null]}});
        let created = f.create(d.clone()).await;
        let loaded = f.load(&created).await.expect("the session loads");
        assert_eq!(data(&loaded), d);
        assert_eq!(loaded.record.created_at, f.clock.now());
        assert_eq!(loaded.record.expires_at, f.clock.now() + MAX_AGE as i64);
        assert_eq!(loaded.handle.key(), created.handle.key(), "same key");
    }

    pub async fn merge_patch_applies_to_the_stored_data(f: Fixture) {
        let created = f.create(json!({"a": 1, "b": {"x": 1, "y": 2}})).await;
        let up = saved(
            f.patch(
                &created,
                json!({"a": null, "b": {"y": null, "z": 3}, "c": "new"}),
            )
            .await
            .expect("update succeeds"),
        );
        let want = json!({"b": {"x": 1, "z": 3}, "c": "new"});
        assert_eq!(data(&up), want);
        assert_eq!(data(&f.load(&up).await.expect("still there")), want);
    }

    pub async fn delete_removes_the_session(f: Fixture) {
        let created = f.create(json!({"a": 1})).await;
        assert!(
            f.store
                .delete(&created.handle)
                .await
                .expect("delete succeeds")
        );
        if f.revocable() {
            assert!(f.load(&created).await.is_none(), "deleted session loads");
            assert_eq!(
                f.patch(&created, json!({"b": 1})).await.unwrap(),
                Updated::Gone
            );
        }
    }

    pub async fn emptied_session_is_deleted(f: Fixture) {
        let created = f.create(json!({"a": 1})).await;
        let u = f.patch(&created, json!({"a": null})).await.unwrap();
        assert_eq!(u, Updated::Deleted);
        if f.revocable() {
            assert!(f.load(&created).await.is_none());
        }
    }

    pub async fn cycle_moves_the_data_and_kills_the_old_key(f: Fixture) {
        let created = f.create(json!({"cart": [1, 2]})).await;
        let changes = Changes {
            action: Some(Action::Cycle),
            ..Default::default()
        };
        let moved = match f.apply(&created, changes).await.unwrap() {
            Updated::Moved(l) => l,
            other => panic!("expected Moved, got {other:?}"),
        };
        assert_ne!(moved.handle.key(), created.handle.key());
        assert_ne!(moved.handle.cookie(), created.handle.cookie());
        assert_eq!(data(&moved), json!({"cart": [1, 2]}));
        let reloaded = f.load(&moved).await.expect("the new key loads");
        assert_eq!(data(&reloaded), json!({"cart": [1, 2]}));
        assert_eq!(reloaded.record.created_at, created.record.created_at);
        if f.revocable() {
            assert!(f.load(&created).await.is_none(), "the old key still loads");
        }
    }

    pub async fn flush_then_update_is_a_fresh_session(f: Fixture) {
        let created = f.create(json!({"user": "ann"})).await;
        let tag = Changes {
            expiry: Some(Expiry::Idle(50)),
            subject: Some(Some("ann".into())),
            ..Default::default()
        };
        let created = saved(f.apply(&created, tag).await.unwrap());
        f.clock.advance(10);
        let changes = Changes {
            action: Some(Action::Flush),
            patches: vec![json!({"flash": "bye"})],
            ..Default::default()
        };
        let moved = match f.apply(&created, changes).await.unwrap() {
            Updated::Moved(l) => l,
            other => panic!("expected Moved, got {other:?}"),
        };
        assert_eq!(data(&moved), json!({"flash": "bye"}));
        let fresh = f.load(&moved).await.expect("the fresh session loads");
        assert_eq!(
            fresh.record.created_at,
            f.clock.now(),
            "a new creation time"
        );
        assert_eq!(fresh.record.subject, None, "the subject is dropped");
        assert_eq!(fresh.record.expiry, Expiry::Default, "the expiry is reset");
        if f.revocable() {
            assert!(f.load(&created).await.is_none());
        }
    }

    pub async fn a_login_cycle_keeps_the_subject_for_revocation(f: Fixture) {
        let anonymous = f.create(json!({"cart": [1]})).await;
        let login = Changes {
            action: Some(Action::Cycle),
            subject: Some(Some("user:7".into())),
            patches: vec![json!({"user_id": 7})],
            ..Default::default()
        };
        let moved = match f.apply(&anonymous, login).await.unwrap() {
            Updated::Moved(l) => l,
            other => panic!("expected Moved, got {other:?}"),
        };
        let loaded = f.load(&moved).await.expect("the logged-in session loads");
        assert_eq!(loaded.record.subject.as_deref(), Some("user:7"));
        assert_eq!(data(&loaded), json!({"cart": [1], "user_id": 7}));
        if f.store.capabilities().subject_index {
            assert_eq!(f.store.revoke_subject("user:7").await.expect("revoke"), 1);
            assert!(f.load(&moved).await.is_none());
        }
    }

    pub async fn expiry_is_honoured_to_the_second(f: Fixture) {
        let created = f.create(json!({"a": 1})).await;
        f.clock.advance(MAX_AGE as i64 - 1);
        assert!(f.load(&created).await.is_some(), "alive one second before");
        f.clock.advance(1);
        assert!(f.load(&created).await.is_none(), "alive at its expiry");
        assert_eq!(
            f.patch(&created, json!({"b": 1})).await.unwrap(),
            Updated::Gone
        );
    }

    pub async fn custom_expiry_is_kept(f: Fixture) {
        let created = f.create(json!({"a": 1})).await;
        let changes = Changes {
            expiry: Some(Expiry::Idle(10)),
            ..Default::default()
        };
        let up = saved(f.apply(&created, changes).await.unwrap());
        assert_eq!(up.record.expiry, Expiry::Idle(10));
        f.clock.advance(9);
        let l = f.load(&up).await.expect("alive at 9 s");
        assert_eq!(
            l.record.expiry,
            Expiry::Idle(10),
            "the expiry kind survives storage"
        );
        f.clock.advance(1);
        assert!(f.load(&up).await.is_none(), "dead at 10 s");
    }

    pub async fn idle_timeout_slides_on_reads(f: Fixture) {
        let mut current = f.create(json!({"a": 1})).await;
        for _ in 0..3 {
            f.clock.advance(9);
            current = f
                .load(&current)
                .await
                .expect("a read within 10 s keeps it alive");
        }
        f.clock.advance(10);
        assert!(
            f.load(&current).await.is_none(),
            "10 s without a read kills it"
        );
    }

    pub async fn absolute_timeout_caps_a_busy_session(f: Fixture) {
        let mut current = f.create(json!({"n": 0})).await;
        for n in 1..=2 {
            f.clock.advance(20);
            current = saved(f.patch(&current, json!({ "n": n })).await.unwrap());
        }
        f.clock.advance(9);
        assert!(f.load(&current).await.is_some(), "alive at 49 s");
        f.clock.advance(1);
        assert!(
            f.load(&current).await.is_none(),
            "dead at 50 s despite the writes"
        );
    }

    pub async fn concurrent_disjoint_merges_are_all_kept(f: Fixture) {
        if !f.revocable() {
            // No shared state: each request's cookie is its own copy.
            return;
        }
        let f = Arc::new(f);
        let created = Arc::new(f.create(json!({"base": true})).await);
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let (f, created) = (f.clone(), created.clone());
                tokio::spawn(async move {
                    saved(
                        f.patch(&created, json!({ format!("k{i}"): i }))
                            .await
                            .unwrap(),
                    );
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let d = data(&f.load(&created).await.expect("still there"));
        for i in 0..32 {
            assert_eq!(d[format!("k{i}")], json!(i), "write {i} lost: {d}");
        }
        assert_eq!(d["base"], json!(true));
    }

    pub async fn over_the_size_limit_is_refused_and_nothing_written(f: Fixture) {
        let created = f.create(json!({"a": 1})).await;
        let big = json!({ "blob": "x".repeat(MAX_BYTES) });
        let err = f.patch(&created, big).await.unwrap_err();
        assert!(
            matches!(err, UpdateError::Apply(ApplyError::TooLarge { .. })),
            "{err}"
        );
        assert_eq!(
            data(&f.load(&created).await.expect("there")),
            json!({"a": 1})
        );
    }

    pub async fn a_thousand_sessions_round_trip(f: Fixture) {
        let f = Arc::new(f);
        let mut all = Vec::new();
        for batch in 0..20 {
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let f = f.clone();
                    let n = batch * 50 + i;
                    tokio::spawn(async move { (n, f.create(json!({ "n": n })).await) })
                })
                .collect();
            for t in tasks {
                all.push(t.await.expect("task"));
            }
        }
        let mut keys = std::collections::HashSet::new();
        for (n, l) in &all {
            assert!(keys.insert(l.handle.key().encode()), "key issued twice");
            let got = f.load(l).await.expect("loads");
            assert_eq!(data(&got), json!({ "n": n }));
        }
        if f.revocable() {
            assert_eq!(f.store.count().await.expect("count"), 1000);
        }
    }

    pub async fn subject_is_stored_and_revocable(f: Fixture) {
        let tagged = |s: &'static str| Changes {
            patches: vec![json!({"who": s})],
            subject: Some(Some(s.into())),
            ..Default::default()
        };
        let mut ann = Vec::new();
        for _ in 0..3 {
            let c = f.create(json!({"x": 1})).await;
            ann.push(saved(f.apply(&c, tagged("ann")).await.unwrap()));
        }
        let bob = f.create(json!({"x": 1})).await;
        let bob = saved(f.apply(&bob, tagged("bob")).await.unwrap());
        assert_eq!(
            f.load(&bob).await.expect("there").record.subject.as_deref(),
            Some("bob")
        );
        if !f.store.capabilities().subject_index {
            assert!(f.store.revoke_subject("ann").await.is_err());
            return;
        }
        assert_eq!(f.store.revoke_subject("ann").await.expect("revoke"), 3);
        for s in &ann {
            assert!(f.load(s).await.is_none(), "a revoked session loads");
        }
        assert!(
            f.load(&bob).await.is_some(),
            "another subject's session was revoked"
        );
        assert_eq!(f.store.revoke_subject("ann").await.expect("revoke"), 0);
    }

    pub async fn purge_never_removes_live_sessions(f: Fixture) {
        let old = f.create(json!({"old": 1})).await;
        f.clock.advance(60);
        let young = f.create(json!({"young": 1})).await;
        f.clock.advance(MAX_AGE as i64 - 59);
        f.store.purge().await.expect("purge succeeds");
        assert!(f.load(&old).await.is_none());
        assert!(
            f.load(&young).await.is_some(),
            "purge removed a live session"
        );
    }

    /// What `sessionward sessions` does: sessions by id, read without
    /// refreshing them (run with a 30 s idle timeout).
    pub async fn operators_list_peek_and_delete_by_id(f: Fixture) {
        if !f.revocable() {
            // Sessions live in the browsers: every call says so.
            let id = SessionKey::generate().expect("a key").hash();
            let errors = [
                f.store.list(10).await.err(),
                f.store.peek(&id).await.err(),
                f.store.delete_id(&id).await.err(),
            ];
            for e in errors {
                let e = e.expect("the cookie store cannot reach sessions by id");
                assert!(e.to_string().contains("cookie"), "{e}");
            }
            return;
        }
        let id = |l: &Loaded| l.handle.key().hash();
        let a = f.create(json!({"who": "a"})).await;
        let b = f.create(json!({"who": "b"})).await;
        f.clock.advance(20);
        let peeked = f
            .store
            .peek(&id(&a))
            .await
            .expect("peek")
            .expect("a is live");
        assert_eq!(peeked.data, a.record.data);
        let mut listed: Vec<_> = f.store.list(10).await.expect("list").into_iter().collect();
        listed.sort_by_key(|(_, r)| r.data.clone());
        let ids: Vec<_> = listed.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, [id(&a), id(&b)]);
        assert_eq!(listed[1].1.data, b.record.data);
        assert_eq!(
            f.store.list(1).await.expect("list").len(),
            1,
            "the limit holds"
        );
        // 35 s idle: peek and list refreshed nothing.
        f.clock.advance(15);
        assert!(f.store.peek(&id(&a)).await.expect("peek").is_none());
        assert!(f.store.list(10).await.expect("list").is_empty());

        let c = f.create(json!({"who": "c"})).await;
        assert!(f.load(&c).await.is_some());
        assert!(f.store.delete_id(&id(&c)).await.expect("delete"));
        assert!(
            f.load(&c).await.is_none(),
            "deleted by id, gone for the proxy too"
        );
        assert!(!f.store.delete_id(&id(&c)).await.expect("delete"));
    }
}

/// Declares every case for one store.
macro_rules! contract {
    ($store:ident, $setup:path) => {
        mod $store {
            use super::*;

            macro_rules! case {
                ($case:ident) => {
                    case!($case, None, None);
                };
                ($case:ident, $idle:expr, $absolute:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $case() {
                        match fixture($setup, $idle, $absolute).await {
                            Some(f) => cases::$case(f).await,
                            None => eprintln!("skipped: {} store unavailable", stringify!($store)),
                        }
                    }
                };
            }

            case!(unknown_keys_load_nothing);
            case!(create_then_load_round_trips_unicode);
            case!(merge_patch_applies_to_the_stored_data);
            case!(delete_removes_the_session);
            case!(emptied_session_is_deleted);
            case!(cycle_moves_the_data_and_kills_the_old_key);
            case!(flush_then_update_is_a_fresh_session);
            case!(a_login_cycle_keeps_the_subject_for_revocation);
            case!(expiry_is_honoured_to_the_second);
            case!(custom_expiry_is_kept);
            case!(idle_timeout_slides_on_reads, Some(10), None);
            case!(absolute_timeout_caps_a_busy_session, None, Some(50));
            case!(concurrent_disjoint_merges_are_all_kept);
            case!(over_the_size_limit_is_refused_and_nothing_written);
            case!(a_thousand_sessions_round_trip);
            case!(subject_is_stored_and_revocable);
            case!(purge_never_removes_live_sessions);
            case!(operators_list_peek_and_delete_by_id, Some(30), None);
        }
    };
}

async fn memory(mut raw: RawConfig) -> Option<(RawConfig, Guard)> {
    raw.store.kind = "memory".into();
    Some((raw, Box::new(())))
}

contract!(memory, memory);

async fn cookie(mut raw: RawConfig) -> Option<(RawConfig, Guard)> {
    raw.store.kind = "cookie".into();
    Some((raw, Box::new(())))
}

contract!(cookie, cookie);

/// A temporary directory removed when the test ends.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "sessionward-contract-{tag}-{}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sqlite(mut raw: RawConfig) -> Option<(RawConfig, Guard)> {
    let dir = TempDir::new("sqlite");
    raw.store.kind = "sqlite".into();
    raw.store.sqlite.path = dir.0.join("sessions.db").display().to_string();
    Some((raw, Box::new(dir)))
}

contract!(sqlite, sqlite);

async fn redis_single(mut raw: RawConfig) -> Option<(RawConfig, Guard)> {
    let server = common::redis::RedisServer::start()?;
    common::redis::use_single(&mut raw, server.url());
    Some((raw, Box::new(server)))
}

contract!(redis_single, redis_single);

async fn redis_cluster(mut raw: RawConfig) -> Option<(RawConfig, Guard)> {
    let cluster = common::redis::RedisCluster::start()?;
    common::redis::use_cluster(&mut raw, &cluster);
    Some((raw, Box::new(cluster)))
}

contract!(redis_cluster, redis_cluster);

/// SQLite behind a read cache that outlives every case: whatever the cache
/// holds, this replica must never see its own writes late.
async fn sqlite_cached(raw: RawConfig) -> Option<(RawConfig, Guard)> {
    let (mut raw, guard) = sqlite(raw).await?;
    raw.store.cache = Some(sessionward::config::RawStoreCache {
        ttl_ms: 600_000,
        max_sessions: 10_000,
    });
    Some((raw, guard))
}

contract!(sqlite_cached, sqlite_cached);
