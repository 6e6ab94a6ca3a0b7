//! The in-memory store: a bounded moka cache, least recently used sessions go
//! first when full. Per-key atomicity comes from moka's `and_compute_with`.
//! Subjects are found by a scan: revocation is rare, and an index would cost
//! every session memory for the benefit of a few.

use std::hash::BuildHasherDefault;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::keyed::{Backend, Change};
use super::{ApplyError, Edit, KeyHash, KeyHasher, Next, Record, StoreError, UpdateError};
use crate::clock::Clock;

/// Sessions in this process only; lost on restart, not shared between replicas.
#[derive(Debug)]
pub struct MemoryStore {
    cache: Cache<KeyHash, Arc<Record>, BuildHasherDefault<KeyHasher>>,
    clock: Arc<dyn Clock>,
    idle: Option<u64>,
}

/// Lets moka drop entries when their session expires, so memory is reclaimed
/// without a sweeper; `load` still checks `expires_at` to the second.
struct ExpireAt(Arc<dyn Clock>, Option<u64>);

impl ExpireAt {
    fn remaining(&self, record: &Record) -> Option<Duration> {
        let secs = record.deadline(self.1).saturating_sub(self.0.now()).max(0);
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
    /// A store holding at most `max_sessions`, with an optional idle timeout in seconds.
    pub fn new(max_sessions: u64, idle: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_sessions)
            // TinyLFU may refuse a brand-new entry; a session just created must stick.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(ExpireAt(clock.clone(), idle))
            .build_with_hasher(BuildHasherDefault::default());
        Self { cache, clock, idle }
    }

    /// Moves `seen_at` to `now`, atomically with updates so a touch never
    /// overwrites a concurrent write.
    fn touch(&self, id: &KeyHash, now: i64) -> Option<Arc<Record>> {
        let mut live = None;
        self.cache.entry(*id).and_compute_with(|entry| {
            let Some(current) = entry.map(|e| e.into_value()) else {
                return Op::Nop;
            };
            if !current.is_live(now, self.idle) {
                return Op::Remove;
            }
            if current.seen_at >= now {
                live = Some(current);
                return Op::Nop;
            }
            let touched = Arc::new(Record {
                seen_at: now,
                ..Record::clone(&current)
            });
            live = Some(touched.clone());
            Op::Put(touched)
        });
        live
    }
}

#[async_trait]
impl Backend for MemoryStore {
    async fn load(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        let now = self.clock.now();
        let Some(record) = self.cache.get(id) else {
            return Ok(None);
        };
        if !record.is_live(now, self.idle) {
            return Ok(None);
        }
        if self.idle.is_some() && record.seen_at < now {
            return Ok(self.touch(id, now));
        }
        Ok(Some(record))
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
    ) -> Result<Change, UpdateError> {
        let now = self.clock.now();
        let mut outcome = Change::Gone;
        self.cache.entry(*id).and_try_compute_with(
            |entry| -> Result<Op<Arc<Record>>, ApplyError> {
                let Some(current) = entry.map(|e| e.into_value()) else {
                    return Ok(Op::Nop);
                };
                if !current.is_live(now, self.idle) {
                    return Ok(Op::Remove);
                }
                Ok(match edit(&current)? {
                    Next::Nothing => {
                        outcome = Change::Saved(current);
                        Op::Nop
                    }
                    Next::Save {
                        record,
                        rekey: false,
                    } => {
                        let record = Arc::new(record);
                        outcome = Change::Saved(record.clone());
                        Op::Put(record)
                    }
                    Next::Save {
                        record,
                        rekey: true,
                    } => {
                        outcome = Change::Moved(Arc::new(record));
                        Op::Remove
                    }
                    Next::Delete => {
                        outcome = Change::Deleted;
                        Op::Remove
                    }
                })
            },
        )?;
        if let Change::Moved(record) = &outcome {
            // The old key is already gone; the new one is unknown to anybody else yet.
            self.cache.insert(*new_id, record.clone());
        }
        Ok(outcome)
    }

    async fn delete(&self, id: &KeyHash) -> Result<bool, StoreError> {
        Ok(self.cache.remove(id).is_some())
    }

    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
        let doomed: Vec<KeyHash> = self
            .cache
            .iter()
            .filter(|(_, r)| r.subject.as_deref() == Some(subject))
            .map(|(id, _)| *id)
            .collect();
        let mut n = 0;
        for id in doomed {
            // Checked again under the entry's lock: the subject may have changed.
            let mut removed = false;
            self.cache.entry(id).and_compute_with(|entry| match entry {
                Some(e) if e.value().subject.as_deref() == Some(subject) => {
                    removed = true;
                    Op::Remove
                }
                _ => Op::Nop,
            });
            n += u64::from(removed);
        }
        Ok(n)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.cache.run_pending_tasks();
        Ok(self.cache.entry_count())
    }

    async fn purge(&self) -> Result<u64, StoreError> {
        let now = self.clock.now();
        let dead: Vec<KeyHash> = self
            .cache
            .iter()
            .filter(|(_, r)| !r.is_live(now, self.idle))
            .map(|(id, _)| *id)
            .collect();
        let n = dead.len() as u64;
        for id in dead {
            self.cache.invalidate(&id);
        }
        self.cache.run_pending_tasks();
        Ok(n)
    }
}
