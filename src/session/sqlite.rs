//! The SQLite store (being built).

use std::sync::Arc;

use async_trait::async_trait;

use super::keyed::{Backend, Change};
use super::{Edit, KeyHash, Record, StoreError, UpdateError};
use crate::clock::Clock;
use crate::config::SqliteConfig;

/// Sessions in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore;

impl SqliteStore {
    /// Opens (or creates) the database.
    pub fn open(
        _config: &SqliteConfig,
        _idle: Option<u64>,
        _clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        Err(unbuilt())
    }
}

fn unbuilt() -> StoreError {
    StoreError {
        op: "open",
        message: "the sqlite store is not built yet".into(),
    }
}

#[async_trait]
impl Backend for SqliteStore {
    async fn load(&self, _: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        Err(unbuilt())
    }
    async fn create(&self, _: &KeyHash, _: Record) -> Result<Arc<Record>, StoreError> {
        Err(unbuilt())
    }
    async fn update(&self, _: &KeyHash, _: &KeyHash, _: &Edit<'_>) -> Result<Change, UpdateError> {
        Err(unbuilt().into())
    }
    async fn delete(&self, _: &KeyHash) -> Result<bool, StoreError> {
        Err(unbuilt())
    }
    async fn revoke_subject(&self, _: &str) -> Result<u64, StoreError> {
        Err(unbuilt())
    }
    async fn count(&self) -> Result<u64, StoreError> {
        Err(unbuilt())
    }
    async fn purge(&self) -> Result<u64, StoreError> {
        Err(unbuilt())
    }
}
