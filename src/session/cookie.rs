//! The cookie store (being built).

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    Capabilities, Edit, Handle, Loaded, Record, SessionStore, StoreError, UpdateError, Updated,
};
use crate::clock::Clock;
use crate::config::{CookieStoreConfig, Secret};

/// Sessions sealed into the client's cookie.
#[derive(Debug)]
pub struct CookieStore;

impl CookieStore {
    /// A store sealing with a key derived from `secret`, bound to the cookie's `name`.
    pub fn new(
        _config: &CookieStoreConfig,
        _name: &str,
        _secret: &Secret,
        _idle: Option<u64>,
        _clock: Arc<dyn Clock>,
    ) -> Self {
        Self
    }
}

fn unbuilt() -> StoreError {
    StoreError {
        op: "load",
        message: "the cookie store is not built yet".into(),
    }
}

#[async_trait]
impl SessionStore for CookieStore {
    async fn load(&self, _: &str) -> Result<Option<Loaded>, StoreError> {
        Err(unbuilt())
    }
    async fn create(&self, _: Record) -> Result<Loaded, UpdateError> {
        Err(unbuilt().into())
    }
    async fn update(&self, _: &Handle, _: bool, _: &Edit<'_>) -> Result<Updated, UpdateError> {
        Err(unbuilt().into())
    }
    async fn delete(&self, _: &Handle) -> Result<bool, StoreError> {
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
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            revocable: false,
            subject_index: false,
        }
    }
}
