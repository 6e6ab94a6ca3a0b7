//! The in-memory store: a sharded hash map from key hash to record.
//!
//! Each shard is a plain `HashMap` behind a mutex, held only for a lookup or
//! for one `edit` (a pure function of the record), which makes every update
//! atomic per session. A general-purpose cache (moka) cost about 450 bytes
//! per session in bookkeeping; this costs about 200, which is what lets a
//! million sessions fit in a small sidecar.
//!
//! When a shard is full, dead sessions go first, then the least recently
//! used of a sample (approximate LRU, as Redis does it). Dead sessions are
//! also swept from a shard every [`SWEEP_EVERY`] inserts into it, so memory
//! is reclaimed without a timer thread. Subjects are found by a scan:
//! revocation is rare, and an index would cost every session memory.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::keyed::{Backend, Change};
use super::{Edit, KeyHash, KeyHasher, Next, Record, StoreError, UpdateError};
use crate::clock::Clock;

/// Shards: enough that two workers rarely meet on one lock.
const SHARDS: usize = 64;
/// Inserts into a shard between two sweeps of its dead sessions.
const SWEEP_EVERY: u32 = 1024;
/// Sessions compared when one must be evicted.
const EVICTION_SAMPLE: usize = 16;

type Map = HashMap<KeyHash, Arc<Record>, BuildHasherDefault<KeyHasher>>;

#[derive(Debug, Default)]
struct Shard {
    map: Map,
    inserts: u32,
}

/// Sessions in this process only; lost on restart, not shared between replicas.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    clock: Arc<dyn Clock>,
    idle: Option<u64>,
}

impl MemoryStore {
    /// A store holding at most about `max_sessions`, with an optional idle timeout in seconds.
    pub fn new(max_sessions: u64, idle: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        let max = usize::try_from(max_sessions).unwrap_or(usize::MAX);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: max.div_ceil(SHARDS).max(1),
            clock,
            idle,
        }
    }

    fn shard(&self, id: &KeyHash) -> MutexGuard<'_, Shard> {
        // Key hashes are uniform: any byte picks a shard fairly.
        let i = id.0[31] as usize % SHARDS;
        // A panic while holding the lock cannot leave a map half-updated
        // (every change is one insert or remove), so a poisoned lock is usable.
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live(&self, record: &Record, now: i64) -> bool {
        record.is_live(now, self.idle)
    }

    /// Inserts under the shard's capacity, evicting first if it is full.
    fn insert(&self, id: KeyHash, record: Arc<Record>, now: i64) {
        let mut shard = self.shard(&id);
        shard.inserts = shard.inserts.wrapping_add(1);
        if shard.inserts.is_multiple_of(SWEEP_EVERY) || shard.map.len() >= self.per_shard {
            shard.map.retain(|_, r| r.is_live(now, self.idle));
        }
        if shard.map.len() >= self.per_shard {
            let victim = shard
                .map
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|(_, r)| r.seen_at)
                .map(|(k, _)| *k);
            if let Some(victim) = victim {
                shard.map.remove(&victim);
            }
        }
        shard.map.insert(id, record);
    }
}

#[async_trait]
impl Backend for MemoryStore {
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let mut shard = self.shard(id);
        let Some(record) = shard.map.get(id) else {
            return Ok(None);
        };
        if !self.live(record, now) {
            shard.map.remove(id);
            return Ok(None);
        }
        if self.idle.is_some() && record.seen_at < now {
            let touched = Arc::new(Record {
                seen_at: now,
                ..Record::clone(record)
            });
            shard.map.insert(*id, touched.clone());
            return Ok(Some(touched));
        }
        Ok(Some(record.clone()))
    }

    async fn create(&self, id: &KeyHash, record: Record) -> Result<Arc<Record>, StoreError> {
        let record = Arc::new(record);
        self.insert(*id, record.clone(), self.clock.now());
        Ok(record)
    }

    async fn update(
        &self,
        id: &KeyHash,
        new_id: &KeyHash,
        edit: &Edit<'_>,
    ) -> Result<Change, UpdateError> {
        let now = self.clock.now();
        let moved = {
            let mut shard = self.shard(id);
            let Some(current) = shard.map.get(id) else {
                return Ok(Change::Gone);
            };
            if !self.live(current, now) {
                shard.map.remove(id);
                return Ok(Change::Gone);
            }
            match edit(current)? {
                Next::Nothing => return Ok(Change::Saved(current.clone())),
                Next::Save {
                    record,
                    rekey: false,
                } => {
                    let record = Arc::new(record);
                    shard.map.insert(*id, record.clone());
                    return Ok(Change::Saved(record));
                }
                Next::Save {
                    record,
                    rekey: true,
                } => {
                    shard.map.remove(id);
                    Arc::new(record)
                }
                Next::Delete => {
                    shard.map.remove(id);
                    return Ok(Change::Deleted);
                }
            }
        };
        // The old key is already gone; the new one is unknown to anybody else
        // yet, so taking its shard's lock separately is safe.
        self.insert(*new_id, moved.clone(), now);
        Ok(Change::Moved(moved))
    }

    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let removed = self.shard(id).map.remove(id);
        Ok(removed.is_some_and(|r| self.live(&r, now)))
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.map.retain(|_, r| {
                let doomed = r.subject.as_deref() == Some(subject);
                n += u64::from(doomed && r.is_live(now, self.idle));
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
            n += shard.map.values().filter(|r| self.live(r, now)).count() as u64;
        }
        Ok(n)
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let mut n = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.map.len();
            shard.map.retain(|_, r| r.is_live(now, self.idle));
            n += (before - shard.map.len()) as u64;
        }
        Ok(n)
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
    async fn a_full_store_evicts_dead_sessions_first_then_old_ones() {
        let clock = Arc::new(ManualClock::new(1000));
        // One session per shard.
        let store = MemoryStore::new(SHARDS as u64, None, clock.clone());
        let ids: Vec<KeyHash> = (0..SHARDS * 4).map(|_| id()).collect();
        for (i, id) in ids.iter().enumerate() {
            store.create(id, record(1000, i as i64)).await.unwrap();
        }
        assert!(store.count().await.unwrap() <= SHARDS as u64);
        // The newest session always survives its own insertion.
        let last = ids.last().unwrap();
        assert!(store.load(last).await.unwrap().is_some());

        // A dead session makes room before any live one is evicted.
        let clock = Arc::new(ManualClock::new(1000));
        let store = MemoryStore::new(1, None, clock.clone());
        let (a, b) = (id(), id());
        store.create(&a, record(900, 900)).await.unwrap(); // dead at 1000
        store.create(&b, record(1000, 1000)).await.unwrap();
        assert!(store.load(&b).await.unwrap().is_some());
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
