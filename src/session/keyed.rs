//! Server-side stores: the cookie holds a random key, the store keeps the
//! record under the key's hash. [`Keyed`] turns any [`Backend`] (memory,
//! SQLite, Redis) into a [`SessionStore`]: it parses cookies, draws new keys
//! and runs the optional read cache, so each backend only maps hashes to
//! records.

use std::fmt::Debug;
use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use moka::sync::Cache;

use super::{
    Capabilities, Edit, Handle, KeyHash, KeyHasher, Loaded, Record, SessionKey, SessionStore,
    StoreError, UpdateError, Updated,
};
use crate::clock::Clock;

/// The result of [`Backend::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Written under the same hash.
    Saved(Arc<Record>),
    /// Written under the new hash; the old one is gone.
    Moved(Arc<Record>),
    /// Deleted.
    Deleted,
    /// No live record: nothing written.
    Gone,
}

/// A server-side store addressed by key hashes. The liveness rules are the
/// [`SessionStore`] ones: a record is live while `now < deadline(idle)`, with
/// `now` from the store's clock, and a load moves `seen_at` to now when the
/// store has an idle timeout.
#[async_trait]
pub trait Backend: Send + Sync + Debug {
    /// The live record under `id`, its idle deadline refreshed.
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError>;
    /// Stores a new record under a fresh `id`.
    async fn create(&self, id: &KeyHash, record: Record) -> Result<Arc<Record>, StoreError>;
    /// Runs `edit` atomically on the live record under `id`; a rekey moves it to `new_id`.
    async fn update(
        &self,
        id: &KeyHash,
        new_id: &KeyHash,
        edit: &Edit<'_>,
    ) -> Result<Change, UpdateError>;
    /// Deletes the record under `id`; true if there was one.
    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError>;
    /// Deletes every record tagged with `subject`; returns how many.
    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError>;
    /// Number of live records.
    async fn count(&self) -> Result<u64, StoreError>;
    /// Removes dead records; returns how many.
    async fn purge(&self) -> Result<u64, StoreError>;
    /// Up to `limit` live records and their ids, untouched.
    async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError>;
    /// The live record under `id`, untouched (no idle refresh).
    async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError>;
}

/// Stripes of write generations: enough that unrelated sessions rarely share one.
const GENERATIONS: usize = 1024;

/// `store.cache`: a short-lived copy of recently read sessions in this
/// process, so hot sessions skip a network round trip on reads.
///
/// A read that races a write must not put back the copy the write just
/// invalidated (a logged-out session would come back for `ttl`). Every
/// invalidation bumps a generation (one per stripe of key hashes, plus a
/// global one for revocations); a read caches its result only if the
/// generation it saw before reading is still current.
pub struct ReadCache {
    cache: Cache<KeyHash, Arc<Record>, BuildHasherDefault<KeyHasher>>,
    generations: Box<[AtomicU64]>,
    global: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the entries: they are session data.
        f.debug_struct("ReadCache")
            .field("entries", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl ReadCache {
    /// Keeps at most `max_sessions` copies, each for at most `ttl`.
    pub fn new(ttl: Duration, max_sessions: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_sessions)
                .time_to_live(ttl)
                .build_with_hasher(BuildHasherDefault::default()),
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
            global: AtomicU64::new(0),
        }
    }

    fn stripe(&self, id: &KeyHash) -> &AtomicU64 {
        let i = u16::from_le_bytes([id.0[0], id.0[1]]) as usize % GENERATIONS;
        &self.generations[i]
    }

    /// The generation a read of `id` must still see to cache its result.
    fn generation(&self, id: &KeyHash) -> (u64, u64) {
        (
            self.stripe(id).load(Ordering::Acquire),
            self.global.load(Ordering::Acquire),
        )
    }

    fn invalidate(&self, id: &KeyHash) {
        self.stripe(id).fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(id);
    }

    fn invalidate_all(&self) {
        self.global.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }

    fn insert_if_current(&self, id: KeyHash, record: Arc<Record>, seen: (u64, u64)) {
        if self.generation(&id) == seen {
            self.cache.insert(id, record);
            // A write may have slipped in between the check and the insert:
            // then its invalidation ran before our insert, so drop the copy.
            if self.generation(&id) != seen {
                self.cache.invalidate(&id);
            }
        }
    }
}

/// Stripes of update locks: enough that unrelated sessions rarely queue together.
const UPDATE_LOCKS: usize = 1024;

/// A [`SessionStore`] over a [`Backend`], with an optional [`ReadCache`].
///
/// Updates of one session from this process queue on a lock (striped by key
/// hash) before they reach the backend: backends that update by
/// compare-and-set (SQLite, Redis) then only contend with other processes,
/// instead of retrying against dozens of concurrent requests of their own.
#[derive(Debug)]
pub struct Keyed<B> {
    backend: B,
    cache: Option<ReadCache>,
    clock: Arc<dyn Clock>,
    idle: Option<u64>,
    updates: Box<[tokio::sync::Mutex<()>]>,
}

impl<B: Backend> Keyed<B> {
    /// Wraps `backend`; `idle` is the store's idle timeout, for checking cached copies.
    pub fn new(
        backend: B,
        cache: Option<ReadCache>,
        clock: Arc<dyn Clock>,
        idle: Option<u64>,
    ) -> Self {
        Self {
            backend,
            cache,
            clock,
            idle,
            updates: (0..UPDATE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// The wrapped backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn forget(&self, ids: &[&KeyHash]) {
        if let Some(c) = &self.cache {
            for id in ids {
                c.invalidate(id);
            }
        }
    }

    fn loaded(key: SessionKey, record: Arc<Record>) -> Loaded {
        let cookie = key.encode();
        Loaded {
            handle: Handle::new(key, cookie),
            record,
            refreshed: false,
        }
    }
}

fn generate(op: &'static str) -> Result<SessionKey, StoreError> {
    SessionKey::generate().ok_or_else(|| StoreError {
        op,
        message: "the OS random generator failed".into(),
    })
}

#[async_trait]
impl<B: Backend> SessionStore for Keyed<B> {
    async fn load(&self, cookie: &str) -> Result<Option<Loaded>, StoreError> {
        let Some(key) = SessionKey::parse(cookie) else {
            return Ok(None);
        };
        let id = key.hash();
        let seen = self.cache.as_ref().map(|c| c.generation(&id));
        if let Some(c) = &self.cache
            && let Some(record) = c.cache.get(&id)
        {
            let now = self.clock.now();
            // With an idle timeout a copy serves only the second it was read
            // in: a later read must reach the store to slide the deadline.
            let fresh = self.idle.is_none() || record.seen_at >= now;
            if fresh && record.is_live(now, self.idle) {
                return Ok(Some(Self::loaded(key, record)));
            }
        }
        let Some(record) = self.backend.load(&id).await? else {
            return Ok(None);
        };
        if let (Some(c), Some(seen)) = (&self.cache, seen) {
            c.insert_if_current(id, record.clone(), seen);
        }
        Ok(Some(Self::loaded(key, record)))
    }

    async fn create(&self, record: Record) -> Result<Loaded, UpdateError> {
        let key = generate("create")?;
        let record = self.backend.create(&key.hash(), record).await?;
        Ok(Self::loaded(key, record))
    }

    async fn update(
        &self,
        handle: &Handle,
        may_rekey: bool,
        edit: &Edit<'_>,
    ) -> Result<Updated, UpdateError> {
        let id = handle.key().hash();
        let new_key = if may_rekey {
            Some(generate("update")?)
        } else {
            None
        };
        let new_id = new_key.as_ref().map_or(id, SessionKey::hash);
        let stripe = u16::from_le_bytes([id.0[2], id.0[3]]) as usize % UPDATE_LOCKS;
        let _queued = self.updates[stripe].lock().await;
        // Forget first: a failed or partial write must not leave a stale copy.
        self.forget(&[&id]);
        let change = self.backend.update(&id, &new_id, edit).await;
        self.forget(&[&id]);
        Ok(match change? {
            Change::Saved(record) => Updated::Saved(Loaded {
                handle: handle.clone(),
                record,
                refreshed: false,
            }),
            Change::Moved(record) => {
                let key = new_key.ok_or_else(|| StoreError {
                    op: "update",
                    message: "the store moved a session that was not allowed to move".into(),
                })?;
                Updated::Moved(Self::loaded(key, record))
            }
            Change::Deleted => Updated::Deleted,
            Change::Gone => Updated::Gone,
        })
    }

    async fn delete(&self, handle: &Handle) -> Result<bool, StoreError> {
        let id = handle.key().hash();
        self.forget(&[&id]);
        let deleted = self.backend.delete(&id).await;
        // Again: a read that started after the first forget may hold the old copy.
        self.forget(&[&id]);
        deleted
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
        let n = self.backend.revoke_subject(subject).await?;
        if let Some(c) = &self.cache {
            // This replica's copies of the subject's sessions: drop them all
            // rather than track which ones they were.
            c.invalidate_all();
        }
        Ok(n)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.backend.count().await
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        self.backend.purge().await
    }

    async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
        self.backend.list(limit).await
    }

    async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        self.backend.peek(id).await
    }

    async fn delete_id(&self, id: &KeyHash) -> Result<bool, StoreError> {
        self.forget(&[id]);
        let deleted = self.backend.delete(id).await;
        self.forget(&[id]);
        deleted
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            revocable: true,
            subject_index: true,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A read of a key no session has: a real round trip, nothing written.
        self.backend.load(&KeyHash([0; 32])).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::session::memory::MemoryStore;
    use crate::session::{Expiry, Next};
    use tokio::sync::Semaphore;

    /// A memory backend whose loads, once read, wait for a permit: a write
    /// can then land between a load's read and its caching.
    #[derive(Debug)]
    struct SlowLoads {
        inner: MemoryStore,
        gate: Arc<Semaphore>,
        slow: std::sync::atomic::AtomicBool,
        parked: std::sync::atomic::AtomicBool,
    }

    #[async_trait]
    impl Backend for SlowLoads {
        async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
            let read = self.inner.load(id).await;
            if self.slow.load(Ordering::SeqCst) {
                self.parked.store(true, Ordering::SeqCst);
                let _ = self.gate.acquire().await.map(|p| p.forget());
            }
            read
        }
        async fn create(&self, id: &KeyHash, r: Record) -> Result<Arc<Record>, StoreError> {
            self.inner.create(id, r).await
        }
        async fn update(
            &self,
            id: &KeyHash,
            new_id: &KeyHash,
            edit: &Edit<'_>,
        ) -> Result<Change, UpdateError> {
            self.inner.update(id, new_id, edit).await
        }
        async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
            self.inner.delete(id).await
        }
        async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
            self.inner.revoke_subject(subject).await
        }
        async fn count(&self) -> Result<u64, StoreError> {
            self.inner.count().await
        }
        async fn purge(&self) -> Result<u64, StoreError> {
            self.inner.purge().await
        }
        async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
            self.inner.list(limit).await
        }
        async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
            self.inner.peek(id).await
        }
    }

    fn store() -> (Arc<Keyed<SlowLoads>>, Arc<Semaphore>) {
        let clock = Arc::new(ManualClock::new(1000));
        let gate = Arc::new(Semaphore::new(0));
        let backend = SlowLoads {
            inner: MemoryStore::new(100, None, clock.clone()),
            gate: gate.clone(),
            slow: std::sync::atomic::AtomicBool::new(false),
            parked: std::sync::atomic::AtomicBool::new(false),
        };
        let cache = ReadCache::new(Duration::from_secs(600), 100);
        (
            Arc::new(Keyed::new(backend, Some(cache), clock, None)),
            gate,
        )
    }

    fn record() -> Record {
        Record {
            data: r#"{"user":"ann"}"#.into(),
            created_at: 1000,
            expires_at: 2000,
            expiry: Expiry::Default,
            seen_at: 1000,
            subject: Some("ann".into()),
        }
    }

    /// Starts a load that has read the session but not yet cached it.
    async fn stalled_load(
        store: &Arc<Keyed<SlowLoads>>,
        cookie: &str,
    ) -> tokio::task::JoinHandle<Option<Loaded>> {
        store.backend.slow.store(true, Ordering::SeqCst);
        let (s, c) = (store.clone(), cookie.to_owned());
        let task = tokio::spawn(async move { s.load(&c).await.unwrap() });
        let parked = async {
            while !store.backend.parked.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), parked)
            .await
            .expect("the load reads and parks");
        task
    }

    #[tokio::test]
    async fn a_load_racing_a_delete_never_caches_the_deleted_session() {
        let (store, gate) = store();
        let created = store.create(record()).await.unwrap();
        let cookie = created.handle.cookie().to_owned();
        let load = stalled_load(&store, &cookie).await;
        assert!(store.delete(&created.handle).await.unwrap());
        store.backend.slow.store(false, Ordering::SeqCst);
        gate.add_permits(1);
        let _stale = load.await.unwrap();
        assert!(
            store.load(&cookie).await.unwrap().is_none(),
            "the cache brought a deleted session back"
        );
    }

    #[tokio::test]
    async fn a_load_racing_a_revocation_never_caches_a_revoked_session() {
        let (store, gate) = store();
        let created = store.create(record()).await.unwrap();
        let cookie = created.handle.cookie().to_owned();
        let load = stalled_load(&store, &cookie).await;
        assert_eq!(store.revoke_subject("ann").await.unwrap(), 1);
        store.backend.slow.store(false, Ordering::SeqCst);
        gate.add_permits(1);
        let _stale = load.await.unwrap();
        assert!(store.load(&cookie).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn own_writes_replace_the_cached_copy_at_once() {
        let (store, _gate) = store();
        let created = store.create(record()).await.unwrap();
        let cookie = created.handle.cookie().to_owned();
        assert!(store.load(&cookie).await.unwrap().is_some(), "now cached");
        let edit = |r: &Record| {
            Ok(Next::Save {
                record: Record {
                    data: r#"{"user":"bob"}"#.into(),
                    ..r.clone()
                },
                rekey: false,
            })
        };
        store.update(&created.handle, false, &edit).await.unwrap();
        let seen = store.load(&cookie).await.unwrap().unwrap();
        assert_eq!(&*seen.record.data, r#"{"user":"bob"}"#);
    }
}
