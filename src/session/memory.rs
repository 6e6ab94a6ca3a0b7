//! The in-memory store: a sharded hash map from key hash to record.
//!
//! Each shard is a plain `HashMap` behind a mutex, held only for a lookup or
//! for one `edit` (a pure function of the record), which makes every update
//! atomic per session. A general-purpose cache (moka) cost about 450 bytes
//! per session in bookkeeping; this costs about 200, which is what lets a
//! million sessions fit in a small sidecar.
//!
//! When a shard is full, its dead sessions go, and then the least recently
//! used eighth of it in one pass: eviction costs a constant amortized time
//! per insert, so a flood of new sessions cannot make each insert scan the
//! shard. Dead sessions are also swept from a shard every [`SWEEP_EVERY`]
//! inserts into it, so memory is reclaimed without a timer thread. Subjects
//! are found by a scan: revocation is rare, and an index would cost every
//! session memory.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;

use super::keyed::{Backend, Change};
use super::{Edit, KeyHash, KeyHasher, Next, Record, StoreError, UpdateError};
use crate::clock::Clock;

/// Shards: enough that two workers rarely meet on one lock.
const SHARDS: usize = 64;
/// Inserts into a shard between two sweeps of its dead sessions.
const SWEEP_EVERY: u32 = 1024;
/// Share of a full shard evicted in one pass: one in this many.
const EVICT_FRACTION: usize = 8;

/// A stored session and when it was last used (read or written), for eviction.
struct Slot {
    record: Arc<Record>,
    used: i64,
}

type Map = HashMap<KeyHash, Slot, BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct Shard {
    map: Map,
    inserts: u32,
}

impl Shard {
    /// Inserts under `cap`, making room first when the shard is full.
    fn insert(
        &mut self,
        id: KeyHash,
        record: Arc<Record>,
        now: i64,
        idle: Option<u64>,
        cap: usize,
    ) {
        self.inserts = self.inserts.wrapping_add(1);
        if self.inserts.is_multiple_of(SWEEP_EVERY) || self.map.len() >= cap {
            self.map.retain(|_, s| s.record.is_live(now, idle));
        }
        if self.map.len() >= cap {
            self.evict_least_recently_used(cap);
        }
        self.map.insert(id, Slot { record, used: now });
    }

    /// Removes the least recently used eighth of a full shard.
    fn evict_least_recently_used(&mut self, cap: usize) {
        let n = (cap / EVICT_FRACTION).max(1);
        let mut used: Vec<i64> = self.map.values().map(|s| s.used).collect();
        if n >= used.len() {
            self.map.clear();
            return;
        }
        let (_, &mut cutoff, _) = used.select_nth_unstable(n - 1);
        let mut left = n;
        // Everything used before the cutoff goes, then ties until n are gone.
        self.map.retain(|_, s| {
            let evict = left > 0 && s.used <= cutoff;
            left -= usize::from(evict);
            !evict
        });
    }
}

/// Sessions in this process only; lost on restart, not shared between replicas.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Held shared by a move between keys, exclusively by `revoke_subject`:
    /// a session moving from a shard the scan has not reached to one it has
    /// passed would otherwise escape revocation.
    moves: RwLock<()>,
    per_shard: usize,
    clock: Arc<dyn Clock>,
    idle: Option<u64>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the maps: they hold session data.
        f.debug_struct("MemoryStore")
            .field("shards", &SHARDS)
            .field("per_shard", &self.per_shard)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store holding at most about `max_sessions`, with an optional idle timeout in seconds.
    pub fn new(max_sessions: u64, idle: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        let max = usize::try_from(max_sessions).unwrap_or(usize::MAX);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            moves: RwLock::new(()),
            per_shard: max.div_ceil(SHARDS).max(1),
            clock,
            idle,
        }
    }

    fn index(id: &KeyHash) -> usize {
        // Key hashes are uniform: any byte picks a shard fairly.
        id.0[31] as usize % SHARDS
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave a map half-updated
        // (every change is one insert or remove), so a poisoned lock is usable.
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn shard(&self, id: &KeyHash) -> MutexGuard<'_, Shard> {
        self.lock(Self::index(id))
    }
}

#[async_trait]
impl Backend for MemoryStore {
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let mut shard = self.shard(id);
        let Some(slot) = shard.map.get_mut(id) else {
            return Ok(None);
        };
        if !slot.record.is_live(now, self.idle) {
            shard.map.remove(id);
            return Ok(None);
        }
        slot.used = now;
        if self.idle.is_some() && slot.record.seen_at < now {
            slot.record = Arc::new(Record {
                seen_at: now,
                ..Record::clone(&slot.record)
            });
        }
        Ok(Some(slot.record.clone()))
    }

    async fn create(&self, id: &KeyHash, record: Record) -> Result<Arc<Record>, StoreError> {
        let record = Arc::new(record);
        let now = self.clock.now();
        self.shard(id)
            .insert(*id, record.clone(), now, self.idle, self.per_shard);
        Ok(record)
    }

    async fn update(
        &self,
        id: &KeyHash,
        new_id: &KeyHash,
        edit: &Edit<'_>,
    ) -> Result<Change, UpdateError> {
        let now = self.clock.now();
        let _moving = (id != new_id).then(|| self.moves.read().unwrap_or_else(|p| p.into_inner()));
        let (i, j) = (Self::index(id), Self::index(new_id));
        // A move holds both shards, taken in index order, so a scan of the
        // shards (count) sees the session in one of them, never in neither.
        let (mut first, mut second) = match i.cmp(&j) {
            std::cmp::Ordering::Equal => (self.lock(i), None),
            std::cmp::Ordering::Less => {
                let a = self.lock(i);
                (a, Some(self.lock(j)))
            }
            std::cmp::Ordering::Greater => {
                let b = self.lock(j);
                let a = self.lock(i);
                (a, Some(b))
            }
        };
        let shard = &mut *first;
        let Some(slot) = shard.map.get(id) else {
            return Ok(Change::Gone);
        };
        if !slot.record.is_live(now, self.idle) {
            shard.map.remove(id);
            return Ok(Change::Gone);
        }
        Ok(match edit(&slot.record)? {
            Next::Nothing => Change::Saved(slot.record.clone()),
            Next::Save {
                record,
                rekey: false,
            } => {
                let record = Arc::new(record);
                shard.map.insert(
                    *id,
                    Slot {
                        record: record.clone(),
                        used: now,
                    },
                );
                Change::Saved(record)
            }
            Next::Save {
                record,
                rekey: true,
            } => {
                shard.map.remove(id);
                let record = Arc::new(record);
                let target = second.as_deref_mut().unwrap_or(shard);
                target.insert(*new_id, record.clone(), now, self.idle, self.per_shard);
                Change::Moved(record)
            }
            Next::Delete => {
                shard.map.remove(id);
                Change::Deleted
            }
        })
    }

    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let removed = self.shard(id).map.remove(id);
        Ok(removed.is_some_and(|s| s.record.is_live(now, self.idle)))
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let _no_moves = self.moves.write().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.map.retain(|_, s| {
                let doomed = s.record.subject.as_deref() == Some(subject);
                n += u64::from(doomed && s.record.is_live(now, self.idle));
                !doomed
            });
        }
        Ok(n)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut n = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            n += shard
                .map
                .values()
                .filter(|s| s.record.is_live(now, self.idle))
                .count() as u64;
        }
        Ok(n)
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.map.len();
            shard.map.retain(|_, s| s.record.is_live(now, self.idle));
            n += (before - shard.map.len()) as u64;
        }
        Ok(n)
    }

    async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let live = shard
                .map
                .iter()
                .filter(|(_, s)| s.record.is_live(now, self.idle))
                .map(|(id, s)| (*id, s.record.clone()));
            out.extend(live.take(limit - out.len()));
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let shard = self.shard(id);
        Ok(shard
            .map
            .get(id)
            .filter(|s| s.record.is_live(now, self.idle))
            .map(|s| s.record.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::session::{Expiry, SessionKey};

    fn record(now: i64, seen_at: i64) -> Record {
        Record {
            data: r#"{"a":1}"#.into(),
            created_at: now,
            expires_at: now + 100,
            expiry: Expiry::Default,
            seen_at,
            subject: None,
        }
    }

    fn id() -> KeyHash {
        SessionKey::generate().unwrap().hash()
    }

    #[tokio::test]
    async fn a_full_shard_drops_dead_sessions_then_the_least_recently_used() {
        let clock = Arc::new(ManualClock::new(0));
        // Eight sessions per shard; every key below lands in shard 0.
        let store = MemoryStore::new(SHARDS as u64 * 8, None, clock.clone());
        for n in 0..8 {
            clock.advance(1);
            let now = clock.now();
            store
                .create(&in_shard_zero(n), record(now, now))
                .await
                .unwrap();
        }
        // Session 0 is the oldest write but the most recent read.
        clock.advance(1);
        assert!(store.load(&in_shard_zero(0)).await.unwrap().is_some());
        clock.advance(1);
        let now = clock.now();
        store
            .create(&in_shard_zero(8), record(now, now))
            .await
            .unwrap();
        assert!(
            store.load(&in_shard_zero(1)).await.unwrap().is_none(),
            "LRU kept"
        );
        for n in [0, 2, 3, 4, 5, 6, 7, 8] {
            assert!(
                store.load(&in_shard_zero(n)).await.unwrap().is_some(),
                "{n} evicted"
            );
        }

        // A dead session makes room before any live one is evicted.
        let store = MemoryStore::new(SHARDS as u64 * 2, None, clock.clone());
        let now = clock.now();
        store
            .create(&in_shard_zero(0), record(now - 100, now - 100))
            .await
            .unwrap();
        store
            .create(&in_shard_zero(1), record(now, now))
            .await
            .unwrap();
        store
            .create(&in_shard_zero(2), record(now, now))
            .await
            .unwrap();
        assert!(store.load(&in_shard_zero(1)).await.unwrap().is_some());
        assert!(store.load(&in_shard_zero(2)).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_session_moving_between_shards_cannot_escape_revocation() {
        let clock = Arc::new(ManualClock::new(1000));
        let store = Arc::new(MemoryStore::new(1_000_000, None, clock.clone()));
        let mut tagged = record(1000, 1000);
        tagged.subject = Some("ann".into());
        let mut ids = Vec::new();
        for _ in 0..64 {
            let id = id();
            store.create(&id, tagged.clone()).await.unwrap();
            ids.push(id);
        }
        let cyclers: Vec<_> = ids
            .into_iter()
            .map(|mut id| {
                let store = store.clone();
                tokio::spawn(async move {
                    let cycle = |r: &Record| {
                        Ok(Next::Save {
                            record: r.clone(),
                            rekey: true,
                        })
                    };
                    for _ in 0..2000 {
                        let next = self::id();
                        match store.update(&id, &next, &cycle).await.unwrap() {
                            Change::Moved(_) => id = next,
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        store.revoke_subject("ann").await.unwrap();
        for c in cyclers {
            c.await.unwrap();
        }
        assert_eq!(store.count().await.unwrap(), 0, "a cycling session escaped");
    }

    /// A key hash that lands in shard 0, distinct for each `n`.
    fn in_shard_zero(n: u32) -> KeyHash {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        KeyHash(bytes)
    }

    #[tokio::test]
    async fn dead_sessions_are_swept_as_inserts_go_on() {
        let clock = Arc::new(ManualClock::new(0));
        let store = MemoryStore::new(1_000_000, None, clock.clone());
        for n in 0..100 {
            store.create(&in_shard_zero(n), record(0, 0)).await.unwrap();
        }
        clock.advance(100);
        for n in 100..100 + SWEEP_EVERY {
            store
                .create(&in_shard_zero(n), record(100, 100))
                .await
                .unwrap();
        }
        let held = store.shards[0].lock().unwrap().map.len();
        assert_eq!(held, SWEEP_EVERY as usize, "dead sessions still held");
        assert_eq!(store.count().await.unwrap(), u64::from(SWEEP_EVERY));
    }
}
