//! The in-memory store: a bounded moka cache, least recently used sessions go
//! first when full. Per-key atomicity comes from moka's `and_compute_with`.

use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{
    ApplyError, Edit, KeyHash, KeyHasher, Next, Record, SessionStore, StoreError, UpdateError,
    Updated,
};
use crate::clock::Clock;

/// Sessions in this process only; lost on restart, not shared between replicas.
#[derive(Debug)]
pub struct MemoryStore {
    cache: Cache<KeyHash, Arc<Record>, BuildHasherDefault<KeyHasher>>,
    clock: Arc<dyn Clock>,
}

/// Lets moka drop entries when their session expires, so memory is reclaimed
/// without a sweeper; `load` still checks `expires_at` to the second.
struct ExpireAt(Arc<dyn Clock>);

impl ExpireAt {
    fn remaining(&self, record: &Record) -> Option<Duration> {
        let secs = record.expires_at.saturating_sub(self.0.now()).max(0);
        Some(Duration::from_secs(secs as u64))
    }
}

impl moka::Expiry<KeyHash, Arc<Record>> for ExpireAt {
    fn expire_after_create(
        &self,
        _: &KeyHash,
        value: &Arc<Record>,
        _: Instant,
    ) -> Option<Duration> {
        self.remaining(value)
    }

    fn expire_after_update(
        &self,
        _: &KeyHash,
        value: &Arc<Record>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        self.remaining(value)
    }
}

impl MemoryStore {
    /// A store holding at most `max_sessions`.
    pub fn new(max_sessions: u64, clock: Arc<dyn Clock>) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_sessions)
            // TinyLFU may refuse a brand-new entry; a session just created must stick.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(ExpireAt(clock.clone()))
            .build_with_hasher(BuildHasherDefault::default());
        Self { cache, clock }
    }

    fn live(&self, record: Arc<Record>) -> Option<Arc<Record>> {
        (!record.is_expired(self.clock.now())).then_some(record)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        Ok(self.cache.get(id).and_then(|r| self.live(r)))
    }

    async fn create(&self, id: &KeyHash, record: Record) -> Result<Arc<Record>, StoreError> {
        let record = Arc::new(record);
        self.cache.insert(*id, record.clone());
        Ok(record)
    }

    async fn update(
        &self,
        id: &KeyHash,
        new_id: &KeyHash,
        edit: &Edit<'_>,
    ) -> Result<Updated, UpdateError> {
        let now = self.clock.now();
        let mut outcome = Updated::Gone;
        self.cache.entry(*id).and_try_compute_with(
            |entry| -> Result<Op<Arc<Record>>, ApplyError> {
                let Some(current) = entry.map(|e| e.into_value()) else {
                    return Ok(Op::Nop);
                };
                if current.is_expired(now) {
                    return Ok(Op::Remove);
                }
                Ok(match edit(&current)? {
                    Next::Nothing => {
                        outcome = Updated::Saved(current);
                        Op::Nop
                    }
                    Next::Save {
                        record,
                        rekey: false,
                    } => {
                        let record = Arc::new(record);
                        outcome = Updated::Saved(record.clone());
                        Op::Put(record)
                    }
                    Next::Save {
                        record,
                        rekey: true,
                    } => {
                        outcome = Updated::Moved(Arc::new(record));
                        Op::Remove
                    }
                    Next::Delete => {
                        outcome = Updated::Deleted;
                        Op::Remove
                    }
                })
            },
        )?;
        if let Updated::Moved(record) = &outcome {
            // The old key is already gone; the new one is unknown to anybody else yet.
            self.cache.insert(*new_id, record.clone());
        }
        Ok(outcome)
    }

    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
        Ok(self.cache.remove(id).is_some())
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.cache.run_pending_tasks();
        Ok(self.cache.entry_count())
    }
}
