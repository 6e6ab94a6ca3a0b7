//! The Redis store: one value per session under `{prefix}{hex of the key
//! hash}`, written as [`Record::encode`] with a TTL, plus a set per subject
//! (`{prefix}subject:{hex sha256(subject)}`) listing the subject's key hashes.
//!
//! Connections: multiplexed connections that reconnect by themselves (a
//! `ConnectionManager` for one server, the async cluster connection for a
//! cluster, a sentinel-resolved master that is resolved again after a
//! failure or when the sentinels name another); never a pool of blocking
//! ones. Reads are repeated once when they find their connection dead. A
//! connection's driver task lives on the runtime that polled it first, and
//! sessionward's workers each run their own runtime, so the store owns a
//! runtime thread with one connection, and commands from any other runtime
//! run there and are awaited through a join handle. In single mode each
//! server worker also opens its own connection on its own runtime and uses
//! it directly: the hop to the store's thread and back cost a fifth of the
//! proxy's throughput.
//!
//! Liveness is decided with the store's clock, never Redis': TTLs are
//! `deadline - now` so Redis never drops a key before the proxy would, and
//! updates are a compare-and-set (GET, edit in Rust, a script that writes
//! only if the value is byte-for-byte the one read), which works over a
//! shared multiplexed connection where WATCH/MULTI cannot.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisError, RedisFuture, RedisResult, Script, ServerErrorKind, TlsMode, Value,
};
use tracing::warn;

use super::keyed::{Backend, Change};
use super::{Edit, KeyHash, Next, Record, StoreError, UpdateError};
use crate::clock::Clock;
use crate::config::{RedisConfig, RedisTopology, RedisUrl};

/// Longest TTL written: Redis refuses expiry times that overflow its
/// millisecond clock, and a century outlives any configured session.
const MAX_TTL: i64 = 100 * 365 * 86_400;

/// Compare-and-set rounds before an update gives up. Every lost round is
/// another writer's win, so 32 concurrent writers need at most 32.
const MAX_ATTEMPTS: u32 = 64;

/// Keys fetched per SCAN call by `count`.
const SCAN_BATCH: usize = 1000;

/// Sessions revoked concurrently by `revoke_subject`.
const REVOKE_BATCH: usize = 64;

/// Reads a session and, under an idle timeout, moves its `seen_at` to now
/// and its TTL forward (never past `expires_at`) in the same round trip.
/// ARGV: now, idle seconds, longest TTL. Returns the value as it now is;
/// liveness is judged in Rust, a value it cannot parse is returned as is.
static LOAD_SLIDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local head, e, s, tail = string.match(v, '^(1 %-?%d+ )(%-?%d+) (%-?%d+)( .*)$')
if not head then return v end
local now, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
local exp, seen = tonumber(e), tonumber(s)
if seen >= now or now >= math.min(exp, seen + idle) then return v end
local ttl = math.min(exp - now, idle, tonumber(ARGV[3]))
if ttl < 1 then return v end
local nv = head .. e .. ' ' .. ARGV[1] .. tail
redis.call('SET', KEYS[1], nv, 'EX', string.format('%d', ttl))
return nv
",
    )
});

/// Replaces a value only if it is still byte-for-byte the one read.
/// ARGV: expected value, new value, TTL seconds. Returns 1 if written.
static CAS_SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
",
    )
});

/// Deletes a value only if it is still byte-for-byte the one read.
/// ARGV: expected value. Returns 1 if deleted.
static CAS_DEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
",
    )
});

/// Adds a key hash to a subject's set and makes the set live at least as
/// long as that session. ARGV: member, TTL seconds.
static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
",
    )
});

thread_local! {
    /// A server worker's own connections to single-mode servers, by store:
    /// see [`Inner::conn`].
    static LOCAL: std::cell::RefCell<Vec<(u64, Conn)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Numbers stores, to tell their per-thread connections apart.
static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sessions in Redis: one server, a cluster, or a sentinel-managed master.
pub struct RedisStore {
    inner: Arc<Inner>,
    clock: Arc<dyn Clock>,
    worker: Worker,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("key_prefix", &self.inner.prefix)
            .field("idle", &self.inner.idle)
            .finish_non_exhaustive()
    }
}

/// The runtime thread that owns the connections. Dropping it (with the
/// store) ends the thread, its runtime and every connection on it.
struct Worker {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Worker {
    fn start() -> Result<Worker, StoreError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("sessionward-redis".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(runtime.handle().clone()));
                // Runs the connections' tasks until the store is dropped.
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| open_error(format!("cannot start the redis thread: {e}")))?;
        let handle = ready_rx
            .recv()
            .map_err(|_| open_error("the redis thread died while starting".into()))?
            .map_err(|e| open_error(format!("cannot start the redis runtime: {e}")))?;
        Ok(Worker {
            handle,
            _stop: stop,
        })
    }
}

fn open_error(message: String) -> StoreError {
    StoreError {
        op: "open",
        message,
    }
}

impl RedisStore {
    /// Prepares the client; connects in the background, so Redis being down
    /// is not an error here, only a configuration Redis cannot use.
    pub fn new(
        config: &RedisConfig,
        idle: Option<u64>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let worker = Worker::start()?;
        // The clients spawn their background tasks on the current runtime:
        // make that the store's own.
        let conn = {
            let _entered = worker.handle.enter();
            Conn::open(config)?
        };
        let budget = config.connect_timeout + config.command_timeout;
        let inner = Inner {
            target: describe(&config.topology),
            id: STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            per_thread: matches!(config.topology, RedisTopology::Single(_)).then(|| config.clone()),
            conn,
            prefix: config.key_prefix.clone(),
            budget,
            idle,
        };
        Ok(Self {
            inner: Arc::new(inner),
            clock,
            worker,
        })
    }

    /// Runs `fut` on the store's runtime and waits for it from any runtime;
    /// on a server worker with its own connection, right there.
    async fn run<T, F>(&self, op: &'static str, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if self.inner.per_thread.is_some() && crate::server::on_worker_thread() {
            return fut.await;
        }
        match self.worker.handle.spawn(fut).await {
            Ok(result) => result,
            Err(e) => Err(StoreError {
                op,
                message: if e.is_panic() {
                    "the redis store's task panicked".into()
                } else {
                    "the redis store's runtime has stopped".into()
                },
            }),
        }
    }

    /// A short random pause after a lost compare-and-set, so contenders spread out.
    async fn back_off(&self, attempt: u32) -> Result<(), StoreError> {
        if attempt < 2 {
            return Ok(());
        }
        let jitter = RandomState::new().build_hasher().finish();
        let ms = jitter % u64::from(attempt.min(10) + 1);
        self.run("update", async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        })
        .await
    }
}

/// What the store's tasks share: the connection and the key layout.
struct Inner {
    /// The connection on the store's own runtime, for every caller but the
    /// server's workers in single mode.
    conn: Conn,
    /// This store's number, for its per-thread connections.
    id: u64,
    /// In single mode, how to open a worker's own connection. A worker then
    /// talks to Redis from its own thread: a command costs no hop to the
    /// store's thread and back, which is most of what a round trip to a
    /// local Redis costs. Still no pool: one multiplexed connection per
    /// worker, as there is one runtime per worker.
    per_thread: Option<RedisConfig>,
    prefix: String,
    /// Time allowed for one command: a connection, then an answer.
    budget: Duration,
    idle: Option<u64>,
    /// Where Redis is, password redacted, for error messages.
    target: String,
}

impl Inner {
    /// The connection to use from this thread.
    fn conn(&self) -> Conn {
        let Some(config) = self
            .per_thread
            .as_ref()
            .filter(|_| crate::server::on_worker_thread())
        else {
            return self.conn.clone();
        };
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            if let Some((_, conn)) = local.iter().find(|(id, _)| *id == self.id) {
                return conn.clone();
            }
            // Opened lazily inside the worker's runtime, which runs its tasks;
            // a config that opened once for the store opens again.
            match Conn::open(config) {
                Ok(conn) => {
                    local.push((self.id, conn.clone()));
                    conn
                }
                Err(_) => self.conn.clone(),
            }
        })
    }

    fn key(&self, id: &KeyHash) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(&self.prefix);
        push_hex(&mut key, &id.0);
        key
    }

    fn index_key(&self, subject: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, subject.as_bytes());
        let mut key = format!("{}subject:", self.prefix);
        push_hex(&mut key, digest.as_ref());
        key
    }

    fn fail(&self, op: &'static str, e: &RedisError) -> StoreError {
        StoreError {
            op,
            message: format!("redis {}: {e}", self.target),
        }
    }

    /// Bounds one command (or script call) by the connect and command timeouts.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.budget, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(op, &e)),
            Err(_) => Err(StoreError {
                op,
                message: format!(
                    "redis {} did not answer within {} ms",
                    self.target,
                    self.budget.as_millis()
                ),
            }),
        }
    }

    async fn query<T: FromRedisValue>(&self, op: &'static str, cmd: Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn();
        self.bounded(op, async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// A GET, repeated once over a fresh connection if the first found its
    /// connection dead (Redis restarted): a read is safe to repeat.
    async fn get(&self, op: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        let mut conn = self.conn();
        self.bounded(op, async move {
            match cmd.query_async(&mut conn).await {
                Err(e) if stale(&e) => cmd.query_async(&mut conn).await,
                done => done,
            }
        })
        .await
    }

    /// The raw value under `key`; under an idle timeout its deadline slides.
    /// Repeated like [`Inner::get`]: a repeated slide writes the same value.
    async fn fetch(self: Arc<Self>, key: String, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(idle) = self.idle else {
            return self.get("load", &key).await;
        };
        let mut conn = self.conn();
        self.bounded("load", async move {
            let mut slide = LOAD_SLIDING.key(&key);
            slide.arg(now).arg(idle).arg(MAX_TTL);
            match slide.invoke_async(&mut conn).await {
                Err(e) if stale(&e) => slide.invoke_async(&mut conn).await,
                done => done,
            }
        })
        .await
    }

    /// Lists `id` in its subject's set, before the session itself is
    /// written, so a session is never stored where revocation cannot find it.
    async fn index(
        &self,
        op: &'static str,
        id: &str,
        record: &Record,
        now: i64,
    ) -> Result<(), StoreError> {
        let Some(subject) = record.subject.as_deref() else {
            return Ok(());
        };
        let ttl = record.expires_at.saturating_sub(now).clamp(1, MAX_TTL);
        let index = self.index_key(subject);
        let mut conn = self.conn();
        self.bounded(op, async move {
            INDEX_ADD
                .key(&index)
                .arg(id)
                .arg(ttl)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    /// `SET NX` with a TTL; false if the key already existed.
    async fn set_new(
        &self,
        op: &'static str,
        key: &str,
        record: &Record,
        ttl: i64,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(record.encode())
            .arg("EX")
            .arg(ttl)
            .arg("NX");
        let reply: Value = self.query(op, cmd).await?;
        Ok(!matches!(reply, Value::Nil))
    }

    async fn cas_set(
        &self,
        key: &str,
        expected: &[u8],
        record: &Record,
        ttl: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let written: i64 = self
            .bounded("update", async move {
                CAS_SET
                    .key(key)
                    .arg(expected)
                    .arg(record.encode())
                    .arg(ttl)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(written == 1)
    }

    async fn cas_del(
        &self,
        op: &'static str,
        key: &str,
        expected: &[u8],
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let deleted: i64 = self
            .bounded(op, async move {
                CAS_DEL.key(key).arg(expected).invoke_async(&mut conn).await
            })
            .await?;
        Ok(deleted == 1)
    }

    async fn create(
        self: Arc<Self>,
        key: String,
        member: String,
        record: Record,
        ttl: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        self.index("create", &member, &record, now).await?;
        if self.set_new("create", &key, &record, ttl).await? {
            Ok(())
        } else {
            Err(StoreError {
                op: "create",
                message: "a session already exists under the new key".into(),
            })
        }
    }

    /// Writes `record` in place of `expected`; `None` when the value changed meanwhile.
    async fn replace(
        self: Arc<Self>,
        id: String,
        key: String,
        expected: Vec<u8>,
        record: Record,
        now: i64,
    ) -> Result<Option<Change>, StoreError> {
        let Some(ttl) = ttl_secs(&record, self.idle, now) else {
            // Dead on arrival (an absolute timeout reached): nothing to keep.
            let gone = self.cas_del("update", &key, &expected).await?;
            return Ok(gone.then(|| Change::Saved(Arc::new(record))));
        };
        self.index("update", &id, &record, now).await?;
        let written = self.cas_set(&key, &expected, &record, ttl).await?;
        Ok(written.then(|| Change::Saved(Arc::new(record))))
    }

    /// Moves the session to `new_key`: the new key first (nobody knows it
    /// yet), then the old one goes only if unchanged. No multi-key script,
    /// since in a cluster the two keys live in different slots.
    async fn rekey(
        self: Arc<Self>,
        key: String,
        new_id: String,
        new_key: String,
        expected: Vec<u8>,
        record: Record,
        now: i64,
    ) -> Result<Option<Change>, StoreError> {
        let Some(ttl) = ttl_secs(&record, self.idle, now) else {
            let gone = self.cas_del("update", &key, &expected).await?;
            return Ok(gone.then(|| Change::Moved(Arc::new(record))));
        };
        self.index("update", &new_id, &record, now).await?;
        if !self.set_new("update", &new_key, &record, ttl).await? {
            return Err(StoreError {
                op: "update",
                message: "a session already exists under the new key".into(),
            });
        }
        if self.cas_del("update", &key, &expected).await? {
            return Ok(Some(Change::Moved(Arc::new(record))));
        }
        // The old session changed meanwhile: undo, and let the caller retry.
        let mut del = redis::cmd("DEL");
        del.arg(&new_key);
        self.query::<i64>("update", del).await?;
        Ok(None)
    }

    async fn remove(
        self: Arc<Self>,
        key: String,
        expected: Vec<u8>,
    ) -> Result<Option<Change>, StoreError> {
        let deleted = self.cas_del("update", &key, &expected).await?;
        Ok(deleted.then_some(Change::Deleted))
    }

    async fn delete(self: Arc<Self>, key: String) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&key);
        let n: i64 = self.query("delete", cmd).await?;
        Ok(n > 0)
    }

    /// Deletes every session listed for `subject` that still carries it;
    /// counts the ones that were live. Stale members (expired, deleted or
    /// re-tagged sessions) are dropped from the set.
    async fn revoke(self: Arc<Self>, subject: String, now: i64) -> Result<u64, StoreError> {
        const OP: &str = "revoke_subject";
        let index = self.index_key(&subject);
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(&index);
        let members: Vec<Vec<u8>> = self.query(OP, cmd).await?;
        let subject: Arc<str> = subject.into();
        let mut revoked = 0;
        let mut done: Vec<Vec<u8>> = Vec::with_capacity(members.len());
        for batch in members.chunks(REVOKE_BATCH) {
            // One command per session: in a cluster each lives in its own slot.
            let mut tasks = tokio::task::JoinSet::new();
            for member in batch {
                if !is_hex_id(member) {
                    done.push(member.clone());
                    continue;
                }
                let mut key = self.prefix.clone().into_bytes();
                key.extend_from_slice(member);
                let (inner, subject, member) = (self.clone(), subject.clone(), member.clone());
                tasks.spawn(async move {
                    let live = inner.revoke_one(key, &subject, now).await?;
                    Ok::<_, StoreError>((member, live))
                });
            }
            while let Some(joined) = tasks.join_next().await {
                let (member, live) = joined.map_err(|e| StoreError {
                    op: OP,
                    message: format!("a revocation task failed: {e}"),
                })??;
                revoked += u64::from(live);
                done.push(member);
            }
        }
        for batch in done.chunks(SCAN_BATCH) {
            let mut cmd = redis::cmd("SREM");
            cmd.arg(&index).arg(batch);
            self.query::<i64>(OP, cmd).await?;
        }
        Ok(revoked)
    }

    /// Deletes the session under `key` if it belongs to `subject`; true if it was live.
    async fn revoke_one(&self, key: Vec<u8>, subject: &str, now: i64) -> Result<bool, StoreError> {
        const OP: &str = "revoke_subject";
        let key = String::from_utf8_lossy(&key).into_owned();
        for _ in 0..MAX_ATTEMPTS {
            let Some(raw) = self.get(OP, &key).await? else {
                return Ok(false);
            };
            let record = match decode(&raw) {
                Ok(r) => r,
                Err(e) => {
                    // Not provably the subject's: leave it, and say so.
                    warn!(key = %key, error = %e, "revoke-subject skipped a corrupt session value");
                    return Ok(false);
                }
            };
            if record.subject.as_deref() != Some(subject) {
                return Ok(false);
            }
            if self.cas_del(OP, &key, &raw).await? {
                return Ok(record.is_live(now, self.idle));
            }
        }
        Err(conflict(OP))
    }

    /// Session keys under the prefix, index keys left out.
    async fn count(self: Arc<Self>) -> Result<u64, StoreError> {
        let mut total = 0;
        self.scan("count", &mut |keys| {
            total += keys.len() as u64;
            true
        })
        .await?;
        Ok(total)
    }

    /// Up to `limit` live sessions with their ids, each read with a GET.
    async fn list(
        self: Arc<Self>,
        limit: usize,
        now: i64,
    ) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
        const OP: &str = "list";
        let mut keys: Vec<Vec<u8>> = Vec::new();
        self.scan(OP, &mut |found| {
            let room = limit - keys.len();
            keys.extend(found.into_iter().take(room));
            keys.len() < limit
        })
        .await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let key = String::from_utf8_lossy(&key).into_owned();
            let Some(id) = KeyHash::from_hex(&key[self.prefix.len()..]) else {
                continue;
            };
            // None: expired or deleted since the scan.
            let Some(raw) = self.get(OP, &key).await? else {
                continue;
            };
            match decode(&raw) {
                Ok(record) if record.is_live(now, self.idle) => out.push((id, Arc::new(record))),
                Ok(_) => {}
                Err(e) => warn!(%id, error = %e, "list skipped a corrupt session value"),
            }
        }
        Ok(out)
    }

    /// SCANs the session keys under the prefix (on every master of a
    /// cluster), handing each batch to `visit` until it returns false.
    async fn scan(
        &self,
        op: &'static str,
        visit: &mut (dyn FnMut(Vec<Vec<u8>>) -> bool + Send),
    ) -> Result<(), StoreError> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let scan = |cursor: &str| {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            cmd
        };
        let Conn::Cluster(cluster) = &self.conn else {
            let mut cursor = "0".to_owned();
            loop {
                let (next, keys): (String, Vec<Vec<u8>>) = self.query(op, scan(&cursor)).await?;
                if !visit(self.session_keys(keys)) || next == "0" {
                    return Ok(());
                }
                cursor = next;
            }
        };
        // Every master scans its own keys: the first round finds the masters.
        let mut cluster = cluster.clone();
        let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let first = scan("0");
        let replies = self
            .bounded(op, async { cluster.route_command(first, all).await })
            .await?;
        let Value::Map(replies) = replies else {
            return Err(unexpected(op, "SCAN on every master", &replies));
        };
        for (node, reply) in replies {
            let node: String = redis::from_redis_value(node).map_err(|e| StoreError {
                op,
                message: format!("redis {}: a node address: {e}", self.target),
            })?;
            let (host, port) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| StoreError {
                    op,
                    message: format!("redis {}: unusable node address {node:?}", self.target),
                })?;
            let (mut cursor, keys) = scan_reply(op, &self.target, reply)?;
            if !visit(self.session_keys(keys)) {
                return Ok(());
            }
            while cursor != "0" {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                });
                let cmd = scan(&cursor);
                let reply = self
                    .bounded(op, async { cluster.route_command(cmd, route).await })
                    .await?;
                let (next, keys) = scan_reply(op, &self.target, reply)?;
                if !visit(self.session_keys(keys)) {
                    return Ok(());
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// The keys that name sessions (prefix and 64 hex digits), not indexes.
    fn session_keys(&self, mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        keys.retain(|k| {
            k.strip_prefix(self.prefix.as_bytes())
                .is_some_and(is_hex_id)
        });
        keys
    }
}

/// An error that says the connection died under the command.
fn stale(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_unrecoverable_error()
}

fn scan_reply(
    op: &'static str,
    target: &str,
    reply: Value,
) -> Result<(String, Vec<Vec<u8>>), StoreError> {
    if let Value::ServerError(e) = &reply {
        return Err(StoreError {
            op,
            message: format!("redis {target}: {e:?}"),
        });
    }
    redis::from_redis_value(reply).map_err(|e| StoreError {
        op,
        message: format!("redis {target}: unexpected SCAN reply: {e}"),
    })
}

fn unexpected(op: &'static str, what: &str, v: &Value) -> StoreError {
    StoreError {
        op,
        message: format!("unexpected reply to {what}: {v:?}"),
    }
}

fn conflict(op: &'static str) -> StoreError {
    StoreError {
        op,
        message: format!(
            "the session kept changing under concurrent writes; gave up after {MAX_ATTEMPTS} attempts"
        ),
    }
}

/// Seconds Redis keeps `record` after a write at `now`: until its deadline
/// by the store's clock, so the key never expires before the proxy says;
/// `None` when it is already dead.
fn ttl_secs(record: &Record, idle: Option<u64>, now: i64) -> Option<i64> {
    let left = record.deadline(idle).saturating_sub(now);
    (left > 0).then_some(left.min(MAX_TTL))
}

fn decode(raw: &[u8]) -> Result<Record, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the stored value is not UTF-8".to_owned())?;
    Record::decode(text).map_err(|e| e.to_string())
}

fn corrupt(op: &'static str, id: &KeyHash, e: &str) -> StoreError {
    StoreError {
        op,
        message: format!("session {id} in redis is unreadable: {e}"),
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn is_hex_id(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The prefix as a SCAN pattern that matches it literally.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn describe(topology: &RedisTopology) -> String {
    match topology {
        RedisTopology::Single(url) => format!("{url:?}"),
        RedisTopology::Cluster(nodes) => match nodes.first() {
            Some(first) if nodes.len() > 1 => {
                format!("cluster {first:?} (+{} seed nodes)", nodes.len() - 1)
            }
            Some(first) => format!("cluster {first:?}"),
            None => "cluster (no seed nodes)".into(),
        },
        RedisTopology::Sentinel {
            sentinels,
            master_name,
        } => match sentinels.first() {
            Some(first) => format!("master {master_name:?} via sentinel {first:?}"),
            None => format!("master {master_name:?}"),
        },
    }
}

/// The one connection of a process, cloned by every command.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelLink>),
}

impl Conn {
    /// Builds the client for `config` without connecting. Must run inside
    /// the store's runtime: the clients spawn their tasks there.
    fn open(config: &RedisConfig) -> Result<Conn, StoreError> {
        let bad =
            |url: &RedisUrl, e: RedisError| open_error(format!("{url:?} cannot be used: {e}"));
        match &config.topology {
            RedisTopology::Single(url) => {
                let client = redis::Client::open(url.expose()).map_err(|e| bad(url, e))?;
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.command_timeout))
                    // No retry loop inside a reconnection: its error reaches the
                    // request that waited (a clear 503 rather than a timeout),
                    // and the next request starts a fresh attempt, so the
                    // proxy serves again on its first request after Redis is back.
                    .set_number_of_retries(0);
                ConnectionManager::new_lazy_with_config(client, manager)
                    .map(Conn::Single)
                    .map_err(|e| bad(url, e))
            }
            RedisTopology::Cluster(nodes) => {
                let mut infos = Vec::with_capacity(nodes.len());
                for url in nodes {
                    infos.push(
                        url.expose()
                            .into_connection_info()
                            .map_err(|e| bad(url, e))?,
                    );
                }
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.command_timeout)
                    .overall_response_timeout(Some(config.connect_timeout + config.command_timeout))
                    .retries(3)
                    .min_retry_wait(5)
                    .max_retry_wait(50)
                    .build()
                    .map_err(|e| {
                        open_error(format!("the cluster seed nodes cannot be used: {e}"))
                    })?;
                let cluster = ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.command_timeout);
                Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(cluster),
                ))
            }
            RedisTopology::Sentinel {
                sentinels,
                master_name,
            } => {
                let link = Arc::new(SentinelLink::new(sentinels, master_name, config)?);
                tokio::spawn(SentinelLink::watch(Arc::downgrade(&link)));
                Ok(Conn::Sentinel(link))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(link) => Box::pin(async move {
                let (generation, mut conn) = link.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                link.check(generation, &result).await;
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(link) => Box::pin(async move {
                let (generation, mut conn) = link.connection().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                link.check(generation, &result).await;
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(link) => link.db,
        }
    }
}

/// How often the sentinels are asked whether the master moved. A demoted
/// master keeps accepting writes until the sentinels reconfigure it (up to
/// their 10 s INFO period), and those writes are lost: asking often keeps
/// that window short.
const SENTINEL_WATCH: Duration = Duration::from_millis(500);

/// The master the sentinels name, connected on first use and resolved
/// again after a failure that may mean it moved, or when the sentinels
/// name another one.
struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: tokio::sync::Mutex<Option<Master>>,
    generations: AtomicU64,
    config: AsyncConnectionConfig,
    master_name: String,
    db: i64,
}

/// A connection to the master the sentinels named, and where it is.
struct Master {
    generation: u64,
    conn: MultiplexedConnection,
    addr: Option<(String, u16)>,
}

impl SentinelLink {
    /// The URLs' credentials and database are the master's; the sentinels
    /// get the same credentials (a deployment protects both alike) and no
    /// database, which they do not have.
    fn new(sentinels: &[RedisUrl], master: &str, config: &RedisConfig) -> Result<Self, StoreError> {
        let mut infos = Vec::with_capacity(sentinels.len());
        for url in sentinels {
            let info = url
                .expose()
                .into_connection_info()
                .map_err(|e| open_error(format!("{url:?} cannot be used: {e}")))?;
            infos.push(info);
        }
        let first = infos
            .first()
            .ok_or_else(|| open_error("no sentinel URLs".into()))?;
        let node_settings = first.redis_settings().clone();
        let db = node_settings.db();
        let mut node =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(node_settings);
        if let ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
            node = node.set_tls_mode(if *insecure {
                TlsMode::Insecure
            } else {
                TlsMode::Secure
            });
        }
        let infos: Vec<_> = infos
            .into_iter()
            .map(|i| {
                let settings = i.redis_settings().clone().set_db(0);
                i.set_redis_settings(settings)
            })
            .collect();
        let sentinel = SentinelClient::build(infos, master, Some(node), SentinelServerType::Master)
            .map_err(|e| open_error(format!("the sentinels cannot be used: {e}")))?;
        Ok(Self {
            sentinel: tokio::sync::Mutex::new(sentinel),
            current: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.command_timeout)),
            master_name: master.to_owned(),
            db,
        })
    }

    /// The current master connection, asking the sentinels when there is none.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        // Held while resolving, so concurrent commands share one resolution.
        let mut current = self.current.lock().await;
        if let Some(m) = current.as_ref() {
            return Ok((m.generation, m.conn.clone()));
        }
        let client = self.sentinel.lock().await.async_get_client().await?;
        let addr = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Some((host.clone(), *port))
            }
            _ => None,
        };
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *current = Some(Master {
            generation,
            conn: conn.clone(),
            addr,
        });
        Ok((generation, conn))
    }

    /// Forgets the connection after a failure that calls the master into
    /// question, so the next command asks the sentinels again.
    async fn check<T>(&self, generation: u64, result: &RedisResult<T>) {
        let Err(e) = result else { return };
        let moved = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly);
        if moved {
            self.forget(generation).await;
        }
    }

    async fn forget(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|m| m.generation == generation) {
            *current = None;
        }
    }

    /// Asks the sentinels where the master is, now and then, for as long
    /// as the store lives; a master that moved is forgotten at once.
    async fn watch(link: std::sync::Weak<SentinelLink>) {
        let mut sentinel: Option<MultiplexedConnection> = None;
        loop {
            tokio::time::sleep(SENTINEL_WATCH).await;
            let Some(link) = link.upgrade() else { return };
            // Bounded: a sentinel that hangs must not stall the watch.
            let checked =
                tokio::time::timeout(SENTINEL_WATCH * 2, link.verify(&mut sentinel)).await;
            if !matches!(checked, Ok(Ok(()))) {
                sentinel = None;
            }
        }
    }

    async fn verify(&self, sentinel: &mut Option<MultiplexedConnection>) -> RedisResult<()> {
        let (generation, addr) = match self.current.lock().await.as_ref() {
            Some(m) => (m.generation, m.addr.clone()),
            None => return Ok(()),
        };
        let mut conn = match sentinel.take() {
            Some(conn) => conn,
            None => {
                let client = self
                    .sentinel
                    .lock()
                    .await
                    .async_get_sentinel_client()
                    .await?;
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?
            }
        };
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(&self.master_name);
        let named: Option<(String, u16)> = ask.query_async(&mut conn).await?;
        *sentinel = Some(conn);
        if named.is_some() && named != addr {
            warn!(master = %self.master_name, "the sentinels name another master; reconnecting");
            self.forget(generation).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for RedisStore {
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let key = self.inner.key(id);
        let raw = self.run("load", self.inner.clone().fetch(key, now)).await?;
        self.live("load", id, raw, now)
    }

    async fn create(&self, id: &KeyHash, record: Record) -> Result<Arc<Record>, StoreError> {
        let now = self.clock.now();
        let Some(ttl) = ttl_secs(&record, self.inner.idle, now) else {
            // Already dead by the store's clock: nothing would ever load it.
            return Ok(Arc::new(record));
        };
        let key = self.inner.key(id);
        let member = key[self.inner.prefix.len()..].to_owned();
        let inner = self.inner.clone();
        let stored = record.clone();
        self.run("create", inner.create(key, member, stored, ttl, now))
            .await?;
        Ok(Arc::new(record))
    }

    async fn update(
        &self,
        id: &KeyHash,
        new_id: &KeyHash,
        edit: &Edit<'_>,
    ) -> Result<Change, UpdateError> {
        let key = self.inner.key(id);
        let member = key[self.inner.prefix.len()..].to_owned();
        for attempt in 0..MAX_ATTEMPTS {
            let now = self.clock.now();
            let (inner, k) = (self.inner.clone(), key.clone());
            let raw = self
                .run("update", async move { inner.get("update", &k).await })
                .await?;
            let Some(raw) = raw else {
                return Ok(Change::Gone);
            };
            let current = decode(&raw).map_err(|e| corrupt("update", id, &e))?;
            if !current.is_live(now, self.inner.idle) {
                return Ok(Change::Gone);
            }
            let inner = self.inner.clone();
            let done = match edit(&current)? {
                Next::Nothing => return Ok(Change::Saved(Arc::new(current))),
                Next::Save {
                    record,
                    rekey: false,
                } => {
                    let fut = inner.replace(member.clone(), key.clone(), raw, record, now);
                    self.run("update", fut).await?
                }
                Next::Save {
                    record,
                    rekey: true,
                } => {
                    let new_key = self.inner.key(new_id);
                    let new_member = new_key[self.inner.prefix.len()..].to_owned();
                    let fut = inner.rekey(key.clone(), new_member, new_key, raw, record, now);
                    self.run("update", fut).await?
                }
                Next::Delete => self.run("update", inner.remove(key.clone(), raw)).await?,
            };
            if let Some(change) = done {
                return Ok(change);
            }
            self.back_off(attempt).await?;
        }
        Err(conflict("update").into())
    }

    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
        let key = self.inner.key(id);
        self.run("delete", self.inner.clone().delete(key)).await
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let fut = self.inner.clone().revoke(subject.to_owned(), now);
        self.run("revoke_subject", fut).await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.run("count", self.inner.clone().count()).await
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        // Redis expires every key by its TTL: there is nothing to sweep.
        Ok(0)
    }

    async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
        let now = self.clock.now();
        self.run("list", self.inner.clone().list(limit, now)).await
    }

    async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let (inner, key) = (self.inner.clone(), self.inner.key(id));
        let raw = self
            .run("peek", async move { inner.get("peek", &key).await })
            .await?;
        self.live("peek", id, raw, now)
    }
}

impl RedisStore {
    /// The record a stored value holds, if it is still live at `now`.
    fn live(
        &self,
        op: &'static str,
        id: &KeyHash,
        raw: Option<Vec<u8>>,
        now: i64,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let record = decode(&raw).map_err(|e| corrupt(op, id, &e))?;
        Ok(record
            .is_live(now, self.inner.idle)
            .then(|| Arc::new(record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Expiry;

    fn record(expires_at: i64, seen_at: i64) -> Record {
        Record {
            data: "{}".into(),
            created_at: 0,
            expires_at,
            expiry: Expiry::Default,
            seen_at,
            subject: None,
        }
    }

    #[test]
    fn ttl_runs_to_the_deadline_by_the_store_clock() {
        assert_eq!(ttl_secs(&record(150, 50), None, 50), Some(100));
        assert_eq!(ttl_secs(&record(150, 50), Some(30), 50), Some(30));
        assert_eq!(ttl_secs(&record(150, 140), Some(30), 140), Some(10));
        assert_eq!(ttl_secs(&record(150, 50), None, 150), None);
        assert_eq!(ttl_secs(&record(i64::MAX, 0), None, 0), Some(MAX_TTL));
    }

    #[test]
    fn keys_are_hex_of_the_hash_under_the_prefix() {
        let mut key = String::new();
        push_hex(&mut key, &[0x00, 0xab, 0x7f]);
        assert_eq!(key, "00ab7f");
        assert!(is_hex_id("0a".repeat(32).as_bytes()));
        assert!(!is_hex_id("0A".repeat(32).as_bytes()));
        assert!(!is_hex_id(b"subject:00"));
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn garbage_from_redis_is_an_error() {
        assert!(decode(&[0xff, 0xfe]).is_err());
        assert!(decode(b"{}").is_err());
        assert!(decode(record(1, 1).encode().as_bytes()).is_ok());
    }
}
