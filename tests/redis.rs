//! The Redis store against real redis-server children: store-level cases on
//! a single server, a cluster and a sentinel-managed master; faults (Redis
//! down at start, killed and restarted under a serving proxy, a stalled
//! server); and two proxies sharing one Redis, with and without a read cache.
//! Every wait polls with a deadline; every port is picked free.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{
    Options, RedisCluster, RedisSentinel, RedisServer, use_cluster, use_sentinel, use_single,
};
use common::{DEADLINE, Harness, Upstream};
use http::StatusCode;
use serde_json::{Value, json};
use sessionward::clock::{Clock, ManualClock, SystemClock};
use sessionward::config::{Config, RawConfig, RawStoreCache};
use sessionward::session::{
    self, Action, Changes, Loaded, Next, Policy, Record, SessionKey, SessionStore, Updated,
};

const MAX_AGE: u64 = 100;

/// A store built from config the way the proxy builds it, with its clock.
struct Fixture {
    store: Arc<dyn SessionStore>,
    clock: Arc<ManualClock>,
    prefix: String,
}

fn raw() -> RawConfig {
    let mut raw = common::raw_config("127.0.0.1:9".parse().expect("an address"));
    raw.session.max_age = MAX_AGE as i64;
    raw
}

fn fixture(adjust: impl FnOnce(&mut RawConfig)) -> Fixture {
    let mut raw = raw();
    adjust(&mut raw);
    let prefix = raw.store.redis.key_prefix.clone();
    let config = Config::try_from(raw).expect("a valid config");
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let store = sessionward::build_store(&config, clock.clone()).expect("the store opens");
    Fixture {
        store,
        clock,
        prefix,
    }
}

impl Fixture {
    fn policy(&self) -> Policy {
        Policy {
            max_age: MAX_AGE,
            expire_at_browser_close: false,
            max_bytes: 4096,
            absolute_timeout: None,
        }
    }

    async fn create(&self, data: Value, subject: Option<&str>) -> Loaded {
        let changes = Changes {
            patches: vec![data],
            subject: subject.map(|s| Some(s.into())),
            ..Default::default()
        };
        let record = match session::apply(None, &changes, &self.policy(), self.clock.now()) {
            Ok(Next::Save { record, .. }) => record,
            other => panic!("not a new session: {other:?}"),
        };
        self.store.create(record).await.expect("create succeeds")
    }

    async fn load(&self, l: &Loaded) -> Option<Loaded> {
        self.store
            .load(l.handle.cookie())
            .await
            .expect("load succeeds")
    }

    async fn apply(&self, l: &Loaded, changes: Changes) -> Updated {
        let (policy, now) = (self.policy(), self.clock.now());
        let edit = move |r: &Record| session::apply(Some(r), &changes, &policy, now);
        self.store
            .update(&l.handle, true, &edit)
            .await
            .expect("update succeeds")
    }

    /// The Redis key a session lives under: the prefix and the hex of its key's hash.
    fn key_of(&self, l: &Loaded) -> String {
        let hex: String = l
            .handle
            .key()
            .hash()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}{hex}", self.prefix)
    }
}

fn data(l: &Loaded) -> Value {
    serde_json::from_str(&l.record.data).expect("stored data is JSON")
}

/// Plain commands to whichever topology the store uses, to look at what it wrote.
struct Peek(Box<dyn ::redis::ConnectionLike + Send>);

impl Peek {
    fn single(server: &RedisServer) -> Peek {
        Peek(Box::new(server.connect()))
    }

    fn cluster(cluster: &RedisCluster) -> Peek {
        let client = ::redis::cluster::ClusterClient::new(cluster.urls()).expect("cluster client");
        Peek(Box::new(
            client.get_connection().expect("cluster connection"),
        ))
    }

    fn cmd<T: ::redis::FromRedisValue>(&mut self, args: &[&str]) -> T {
        let mut cmd = ::redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut *self.0)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn ttl(&mut self, key: &str) -> i64 {
        self.cmd(&["TTL", key])
    }

    fn get(&mut self, key: &str) -> Option<String> {
        self.cmd(&["GET", key])
    }
}

// ---------------------------------------------------------------------------
// Store-level scenarios, run on each topology
// ---------------------------------------------------------------------------

/// Create, load, update, delete; the key is the hash, never the cookie; TTLs are set.
async fn round_trip(f: &Fixture, peek: &mut Peek) {
    let d = json!({"user": "Zoë", "emoji": "🦀", "n": [1, 2.5, null]});
    let created = f.create(d.clone(), None).await;
    let loaded = f.load(&created).await.expect("the session loads");
    assert_eq!(data(&loaded), d);
    assert_eq!(loaded.record.expires_at, f.clock.now() + MAX_AGE as i64);

    let key = f.key_of(&created);
    let value = peek
        .get(&key)
        .expect("stored under prefix + hex(sha256(key))");
    assert!(value.starts_with("1 "), "{value}");
    assert!(
        !value.contains(created.handle.cookie()) && !key.contains(created.handle.cookie()),
        "the raw session key reached Redis"
    );
    let ttl = peek.ttl(&key);
    assert!(
        (MAX_AGE as i64 - 2..=MAX_AGE as i64).contains(&ttl),
        "ttl {ttl}"
    );
    assert_eq!(f.store.count().await.expect("count"), 1);

    let patch = Changes {
        patches: vec![json!({"n": null, "cart": [7]})],
        ..Default::default()
    };
    let Updated::Saved(up) = f.apply(&created, patch).await else {
        panic!("expected Saved");
    };
    let want = json!({"user": "Zoë", "emoji": "🦀", "cart": [7]});
    assert_eq!(data(&up), want);
    assert_eq!(data(&f.load(&created).await.expect("there")), want);

    assert!(f.store.delete(&created.handle).await.expect("delete"));
    assert!(f.load(&created).await.is_none());
    assert_eq!(peek.get(&key), None, "the key is gone from Redis");
    assert!(!f.store.delete(&created.handle).await.expect("delete"));
    assert_eq!(f.store.count().await.expect("count"), 0);
}

/// A cycle moves the data to a new key and the old key is gone at once.
async fn cycle(f: &Fixture, peek: &mut Peek) {
    let created = f.create(json!({"cart": [1]}), None).await;
    let old_key = f.key_of(&created);
    let cycle = Changes {
        action: Some(Action::Cycle),
        ..Default::default()
    };
    let Updated::Moved(moved) = f.apply(&created, cycle).await else {
        panic!("expected Moved");
    };
    assert_ne!(moved.handle.key(), created.handle.key());
    assert!(
        f.load(&created).await.is_none(),
        "the old cookie still loads"
    );
    assert_eq!(peek.get(&old_key), None, "the old key is still in Redis");
    let reloaded = f.load(&moved).await.expect("the new key loads");
    assert_eq!(data(&reloaded), json!({"cart": [1]}));
    assert!(peek.ttl(&f.key_of(&moved)) > 0, "the new key has a TTL");
    assert_eq!(f.store.count().await.expect("count"), 1);
}

/// Under an idle timeout a read pushes the deadline and the TTL forward,
/// never past `expires_at`; a session unread for the timeout is dead.
async fn idle_slide(f: &Fixture, peek: &mut Peek) {
    let mut current = f.create(json!({"a": 1}), None).await;
    let key = f.key_of(&current);
    assert!(
        (9..=10).contains(&peek.ttl(&key)),
        "ttl is the idle timeout"
    );
    for _ in 0..3 {
        f.clock.advance(9);
        current = f.load(&current).await.expect("a read within 10 s keeps it");
        assert_eq!(current.record.seen_at, f.clock.now());
        let stored = peek.get(&key).expect("there");
        let seen: i64 = stored
            .split(' ')
            .nth(3)
            .expect("seen_at")
            .parse()
            .expect("a number");
        assert_eq!(seen, f.clock.now(), "the read moved seen_at in Redis");
        assert!((9..=10).contains(&peek.ttl(&key)), "the read moved the TTL");
    }
    // Kept busy up to 5 s before the hard expiry (100 s): the TTL stops there.
    for _ in 0..7 {
        f.clock.advance(9);
        current = f.load(&current).await.expect("a busy session lives");
    }
    f.clock.advance(5);
    current = f.load(&current).await.expect("read 5 s before expiry");
    assert!((4..=5).contains(&peek.ttl(&key)), "capped at expires_at");
    f.clock.advance(5);
    assert!(f.load(&current).await.is_none(), "dead at expires_at");

    let other = f.create(json!({"b": 1}), None).await;
    f.clock.advance(10);
    assert!(f.load(&other).await.is_none(), "10 s unread kills it");
}

/// Revoking a subject deletes its sessions and no one else's, and its index.
async fn revoke(f: &Fixture, peek: &mut Peek) {
    let mut ann = Vec::new();
    for i in 0..3 {
        ann.push(f.create(json!({ "device": i }), Some("ann")).await);
    }
    let bob = f.create(json!({"x": 1}), Some("bob")).await;
    // A session that left ann's subject: listed in her index, but not hers.
    let moved_on = f.create(json!({"y": 1}), Some("ann")).await;
    let retag = Changes {
        subject: Some(Some("carol".into())),
        ..Default::default()
    };
    let Updated::Saved(moved_on) = f.apply(&moved_on, retag).await else {
        panic!("expected Saved");
    };
    let indexes: Vec<String> = peek.cmd(&["KEYS", &format!("{}subject:*", f.prefix)]);
    assert_eq!(indexes.len(), 3, "one index per subject: {indexes:?}");
    for index in &indexes {
        assert!(
            peek.ttl(index) >= MAX_AGE as i64 - 2,
            "index TTL covers its sessions"
        );
    }
    assert_eq!(
        f.store.count().await.expect("count"),
        5,
        "index keys are not sessions"
    );

    assert_eq!(f.store.revoke_subject("ann").await.expect("revoke"), 3);
    for s in &ann {
        assert!(f.load(s).await.is_none(), "a revoked session loads");
    }
    assert!(f.load(&bob).await.is_some(), "bob's session was revoked");
    assert!(
        f.load(&moved_on).await.is_some(),
        "a re-tagged session was revoked"
    );
    let left: Vec<String> = peek.cmd(&["KEYS", &format!("{}subject:*", f.prefix)]);
    assert_eq!(left.len(), 2, "ann's index is gone: {left:?}");
    assert_eq!(f.store.revoke_subject("ann").await.expect("revoke"), 0);
    assert_eq!(f.store.count().await.expect("count"), 2);
}

fn with_prefix(prefix: &str) -> impl Fn(&mut RawConfig) + '_ {
    move |raw| raw.store.redis.key_prefix = prefix.into()
}

// ---------------------------------------------------------------------------
// Single server
// ---------------------------------------------------------------------------

#[tokio::test]
async fn single_round_trip() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = fixture(|c| use_single(c, server.url()));
    round_trip(&f, &mut Peek::single(&server)).await;
}

#[tokio::test]
async fn single_cycle() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = fixture(|c| use_single(c, format!("{}/3", server.url())));
    // The database in the URL is the one used.
    let mut peek = Peek(Box::new(
        ::redis::Client::open(format!("{}/3", server.url()))
            .and_then(|c| c.get_connection())
            .expect("connect to db 3"),
    ));
    cycle(&f, &mut peek).await;
}

#[tokio::test]
async fn single_idle_slide() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = fixture(|c| {
        use_single(c, server.url());
        c.session.idle_timeout = Some(10);
    });
    idle_slide(&f, &mut Peek::single(&server)).await;
}

#[tokio::test]
async fn single_revoke_subject() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = fixture(|c| use_single(c, server.url()));
    revoke(&f, &mut Peek::single(&server)).await;
}

#[tokio::test]
async fn user_and_password_from_the_url_are_used() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    server.command::<()>(&["ACL", "SETUSER", "sw", "on", ">s3cret", "~*", "+@all"]);
    server.command::<()>(&["ACL", "SETUSER", "default", "off"]);
    let url = format!("redis://sw:s3cret@127.0.0.1:{}", server.port());
    let f = fixture(|c| use_single(c, url.clone()));
    let created = f.create(json!({"a": 1}), None).await;
    assert!(f.load(&created).await.is_some());
    let wrong = fixture(|c| use_single(c, url.replace("s3cret", "nope")));
    let err = wrong
        .store
        .load(created.handle.cookie())
        .await
        .expect_err("a wrong password is an error, not no session");
    assert!(!err.to_string().contains("nope"), "password leaked: {err}");
}

// ---------------------------------------------------------------------------
// Cluster and sentinel
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_round_trip_cycle_idle_slide_and_revoke_subject() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let mut peek = Peek::cluster(&cluster);
    let nodes = &cluster;
    let on = |prefix: &'static str| {
        move |c: &mut RawConfig| {
            use_cluster(c, nodes);
            with_prefix(prefix)(c);
        }
    };
    round_trip(&fixture(on("rt:")), &mut peek).await;
    cycle(&fixture(on("cy:")), &mut peek).await;
    let idle = fixture(|c| {
        on("idle:")(c);
        c.session.idle_timeout = Some(10);
    });
    idle_slide(&idle, &mut peek).await;
    revoke(&fixture(on("rv:")), &mut peek).await;

    // Sessions spread over the masters, and count finds them on all of them.
    let f = fixture(on("spread:"));
    for i in 0..30 {
        f.create(json!({ "i": i }), None).await;
    }
    assert_eq!(f.store.count().await.expect("count"), 30);
    let per_node: Vec<i64> = cluster
        .nodes
        .iter()
        .map(|n| n.command::<Vec<String>>(&["KEYS", "spread:*"]).len() as i64)
        .collect();
    assert!(
        per_node.iter().all(|&n| n > 0),
        "keys per node: {per_node:?}"
    );
}

#[tokio::test]
async fn sentinel_round_trip_and_revoke_subject() {
    let Some(s) = RedisSentinel::start() else {
        return;
    };
    let mut peek = Peek::single(&s.master);
    let f = fixture(|c| {
        use_sentinel(c, &s);
        with_prefix("rt:")(c);
    });
    round_trip(&f, &mut peek).await;
    let f = fixture(|c| {
        use_sentinel(c, &s);
        with_prefix("rv:")(c);
    });
    revoke(&f, &mut peek).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_is_followed_to_the_new_master() {
    let Some(s) = RedisSentinel::start_with_replica() else {
        return;
    };
    let replica = s.replica.as_ref().expect("a replica");
    let f = fixture(|c| use_sentinel(c, &s));
    let created = f.create(json!({"n": 0}), None).await;
    let key = f.key_of(&created);
    // A fresh connection each time: a promotion kills the old ones.
    let on_replica = |key: &str| replica.command::<Option<String>>(&["GET", key]);
    let deadline = Instant::now() + DEADLINE;
    while on_replica(&key).is_none() {
        assert!(Instant::now() < deadline, "never replicated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    s.failover();
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.named_master() != Some(replica.port()) {
        assert!(Instant::now() < deadline, "the sentinel never switched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store notices the switch by asking the sentinel (not only when
    // the old master is demoted, which takes the sentinel up to 10 s).
    let switched = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let (policy, now) = (f.policy(), f.clock.now());
        let patch = Changes {
            patches: vec![json!({ "n": n })],
            ..Default::default()
        };
        let edit = move |r: &Record| session::apply(Some(r), &patch, &policy, now);
        if let Ok(Updated::Saved(_)) = f.store.update(&created.handle, false, &edit).await
            && on_replica(&key).is_some_and(|v| v.ends_with(&format!(r#"{{"n":{n}}}"#)))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes never reached the new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved = switched.elapsed();
    eprintln!("writes reached the new master {moved:?} after the sentinel switched");
    assert!(moved < Duration::from_secs(5), "took {moved:?}");
    let loaded = f
        .load(&created)
        .await
        .expect("the session survived the failover");
    assert_eq!(data(&loaded), json!({ "n": n }));
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_corrupt_value_is_an_error_not_no_session() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = fixture(|c| use_single(c, server.url()));
    let mut peek = Peek::single(&server);
    let created = f.create(json!({"a": 1}), None).await;
    let key = f.key_of(&created);
    for garbage in ["garbage", "1 1 2 3 d 0\n[]", "1 x"] {
        peek.cmd::<()>(&["SET", &key, garbage]);
        let err = f
            .store
            .load(created.handle.cookie())
            .await
            .expect_err("corrupt is an error");
        assert!(err.to_string().contains("unreadable"), "{err}");
        let edit = |_: &Record| Ok(Next::Delete);
        assert!(f.store.update(&created.handle, false, &edit).await.is_err());
    }
    // Not UTF-8, and not even a string.
    let mut conn = server.connect();
    ::redis::cmd("SET")
        .arg(&key)
        .arg(&[0xffu8, 0xfe, 0x00][..])
        .exec(&mut conn)
        .expect("set bytes");
    assert!(f.store.load(created.handle.cookie()).await.is_err());
    peek.cmd::<()>(&["DEL", &key]);
    peek.cmd::<()>(&["SADD", &key, "x"]);
    assert!(f.store.load(created.handle.cookie()).await.is_err());
    // Other sessions are unaffected.
    let fine = f.create(json!({"b": 2}), None).await;
    assert!(f.load(&fine).await.is_some());
}

#[tokio::test]
async fn redis_down_at_start_is_an_error_per_request_then_serves_when_it_comes_up() {
    if !common::redis::available(false) {
        return;
    }
    let port = common::redis::free_port();
    let f = fixture(|c| use_single(c, format!("redis://127.0.0.1:{port}")));
    let cookie = SessionKey::generate().expect("random").encode();
    let asked = Instant::now();
    let err = f
        .store
        .load(&cookie)
        .await
        .expect_err("no Redis is an error, never no session");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "took {:?}",
        asked.elapsed()
    );
    let msg = err.to_string();
    assert!(
        msg.contains("127.0.0.1") && msg.contains("refused"),
        "{msg}"
    );

    let server = RedisServer::start_with(Options {
        port: Some(port),
        ..Options::default()
    })
    .expect("redis-server");
    let up = Instant::now();
    while f.store.load(&cookie).await.is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(2),
            "not serving 2 s after Redis came up"
        );
    }
    let created = f.create(json!({"a": 1}), None).await;
    assert!(f.load(&created).await.is_some());
    drop(server);
}

#[tokio::test]
async fn the_first_read_after_a_quiet_restart_succeeds() {
    let Some(mut server) = RedisServer::start_with(Options {
        appendonly: true,
        ..Options::default()
    }) else {
        return;
    };
    let f = fixture(|c| use_single(c, server.url()));
    let created = f.create(json!({"a": 1}), None).await;
    assert!(f.load(&created).await.is_some());
    // No traffic while Redis is away: the store's connection is dead but
    // nobody has noticed; the read finds out and goes again on a new one.
    server.restart();
    let got = f.store.load(created.handle.cookie()).await;
    assert!(matches!(got, Ok(Some(_))), "{got:?}");
}

#[tokio::test]
async fn an_unusable_url_fails_at_open() {
    let mut raw = raw();
    use_single(&mut raw, "redis://127.0.0.1:notaport/".into());
    let config = Config::try_from(raw).expect("the config checks only the scheme");
    let clock = Arc::new(ManualClock::new(0));
    let err = sessionward::build_store(&config, clock).expect_err("unusable URL");
    assert_eq!(err.op, "open");
}

#[tokio::test]
async fn a_stalled_redis_times_out_as_a_store_error() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let f = fixture(|c| {
        use_single(c, server.url());
        c.store.redis.command_timeout = 0.2;
    });
    let created = f.create(json!({"a": 1}), None).await;
    server.command::<()>(&["CLIENT", "PAUSE", "3000", "ALL"]);
    let asked = Instant::now();
    let err = f
        .store
        .load(created.handle.cookie())
        .await
        .expect_err("a stalled Redis is an error");
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}: {err}");
    server.command::<()>(&["CLIENT", "UNPAUSE"]);
    let deadline = Instant::now() + DEADLINE;
    while f.store.load(created.handle.cookie()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "never served again after the pause"
        );
    }
}

#[test]
fn the_store_serves_callers_on_any_runtime_after_its_creator_is_gone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    // Built inside a runtime that is then shut down, as build_store may be.
    let (f, created) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let f = rt.block_on(async { fixture(|c| use_single(c, url)) });
        let created = rt.block_on(f.create(json!({"a": 1}), None));
        drop(rt);
        (f, created)
    })
    .join()
    .expect("builder thread");
    let f = Arc::new(f);
    // Used from several worker-style runtimes, each on its own thread.
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let (f, created) = (f.clone(), created.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let got = f.store.load(created.handle.cookie()).await.expect("load");
                    assert!(got.is_some(), "worker {i} did not see the session");
                    f.create(json!({ "worker": i }), None).await;
                });
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(rt.block_on(f.store.count()).expect("count"), 4);
}

// ---------------------------------------------------------------------------
// Through the proxy
// ---------------------------------------------------------------------------

async fn proxy(url: &str, adjust: impl FnOnce(&mut RawConfig)) -> Harness {
    let url = url.to_owned();
    Harness::build(
        Upstream::start().await,
        move |c| {
            use_single(c, url);
            adjust(c);
        },
        None,
    )
    .await
}

/// Logs in through `h` and returns the session cookie.
async fn login(h: &Harness, data: &str) -> String {
    let r = h.client.post("/login").update(data).send().await;
    assert_eq!(r.status, 200);
    h.client.session_key().expect("a session cookie")
}

/// What the upstream saw of the session on a GET with the client's cookie.
async fn seen(h: &Harness, client: &common::Client) -> serde_json::Map<String, Value> {
    let r = client.get("/").send().await;
    assert_eq!(r.status, 200, "{}", r.body);
    h.last_claims().data
}

#[tokio::test]
async fn redis_killed_under_a_serving_proxy_is_503_then_recovers_within_2s() {
    let Some(mut server) = RedisServer::start_with(Options {
        appendonly: true,
        ..Options::default()
    }) else {
        return;
    };
    let h = proxy(&server.url(), |_| {}).await;
    let cookie = login(&h, r#"{"user":"ann"}"#).await;
    assert_eq!(seen(&h, &h.client).await["user"], "ann");

    server.stop();
    for req in [
        h.client.get("/"),
        h.client.post("/cart").update(r#"{"cart":[1]}"#),
    ] {
        let r = req.send().await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
        assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
        assert_eq!(h.client.session_key().as_deref(), Some(cookie.as_str()));
    }

    server.restart();
    let restarted = Instant::now();
    let r = loop {
        let r = h.client.get("/").send().await;
        if r.status == StatusCode::OK {
            break r;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(restarted.elapsed() < DEADLINE, "never recovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let recovery = restarted.elapsed();
    eprintln!("served again {recovery:?} after redis-server restarted");
    assert!(
        recovery < Duration::from_secs(2),
        "recovery took {recovery:?}"
    );
    assert!(r.set_cookies().is_empty());
    assert_eq!(h.last_claims().data["user"], "ann", "the session survived");
    assert_eq!(h.client.session_key().as_deref(), Some(cookie.as_str()));
}

#[tokio::test]
async fn two_proxies_share_sessions_cycles_and_flushes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = proxy(&server.url(), |_| {}).await;
    let b = proxy(&server.url(), |_| {}).await;
    let on_b = b.new_client();

    let cookie = login(&a, r#"{"user":"ann"}"#).await;
    on_b.set_cookie("sessionid", &cookie);
    assert_eq!(seen(&b, &on_b).await["user"], "ann", "B sees A's session");

    let r = a.client.post("/login").action("cycle").send().await;
    assert_eq!(r.status, 200);
    let cycled = a.client.session_key().expect("a new cookie");
    assert_ne!(cycled, cookie);
    assert!(
        seen(&b, &on_b).await.is_empty(),
        "the old key still works on B"
    );
    assert!(b.last_claims().new);
    on_b.set_cookie("sessionid", &cycled);
    assert_eq!(seen(&b, &on_b).await["user"], "ann");

    let r = a.client.post("/logout").action("flush").send().await;
    assert_eq!(r.status, 200);
    assert!(
        seen(&b, &on_b).await.is_empty(),
        "a flushed session works on B"
    );
    assert!(b.last_claims().new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_through_two_proxies_are_all_kept() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = proxy(&server.url(), |_| {}).await;
    let b = proxy(&server.url(), |_| {}).await;
    let cookie = login(&a, r#"{"base":true}"#).await;
    let on_b = b.new_client();
    on_b.set_cookie("sessionid", &cookie);

    let mut tasks = Vec::new();
    for i in 0..20 {
        for (name, client) in [("a", a.client.clone()), ("b", on_b.clone())] {
            tasks.push(tokio::spawn(async move {
                client
                    .post("/add")
                    .update(&format!(r#"{{"{name}{i}":{i}}}"#))
                    .send()
                    .await
                    .status
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let d = seen(&a, &a.client).await;
    for i in 0..20 {
        assert_eq!(d[&format!("a{i}")], json!(i), "lost a{i}: {d:?}");
        assert_eq!(d[&format!("b{i}")], json!(i), "lost b{i}: {d:?}");
    }
    assert_eq!(d["base"], json!(true));
}

#[tokio::test]
async fn read_cache_staleness_is_bounded_by_its_ttl_and_own_writes_show_at_once() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(600);
    let cached = |c: &mut RawConfig| {
        c.store.cache = Some(RawStoreCache {
            ttl_ms: ttl.as_millis() as i64,
            max_sessions: 1000,
        });
    };
    let a = proxy(&server.url(), cached).await;
    let b = proxy(&server.url(), cached).await;
    let cookie = login(&a, r#"{"v":1}"#).await;
    let on_b = b.new_client();
    on_b.set_cookie("sessionid", &cookie);
    let cached_at = Instant::now();
    assert_eq!(seen(&b, &on_b).await["v"], 1, "B reads and caches v1");
    assert_eq!(seen(&a, &a.client).await["v"], 1, "A caches v1 too");

    let r = a.client.post("/v").update(r#"{"v":2}"#).send().await;
    assert_eq!(r.status, 200);
    let updated = Instant::now();
    assert_eq!(
        seen(&a, &a.client).await["v"],
        2,
        "A sees its own write at once"
    );

    let first = seen(&b, &on_b).await["v"].clone();
    if cached_at.elapsed() < ttl / 2 {
        assert_eq!(first, 1, "B served its cached copy within the ttl");
    }
    while seen(&b, &on_b).await["v"] != 2 {
        assert!(updated.elapsed() < DEADLINE, "B never saw the update");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lag = updated.elapsed();
    assert!(
        lag < ttl + Duration::from_millis(400),
        "B saw the update after {lag:?}, ttl {ttl:?}"
    );
}

#[tokio::test]
async fn rediss_speaks_tls_and_refuses_an_untrusted_certificate() {
    let Some(server) = RedisServer::start_with(Options {
        tls: true,
        ..Options::default()
    }) else {
        return;
    };
    let f = fixture(|c| use_single(c, format!("rediss://localhost:{}", server.port())));
    let cookie = SessionKey::generate().expect("random").encode();
    let err = f
        .store
        .load(&cookie)
        .await
        .expect_err("a self-signed certificate is not trusted");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}
