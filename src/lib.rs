//! sessionward: a reverse proxy that gives any web app Django-style sessions.
//!
//! The pipeline lives in [`proxy`]; stores implement [`session::SessionStore`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
pub mod clock;
pub mod config;
pub mod cookies;
pub mod demo;
pub mod error;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod upstream;

use std::sync::Arc;

use clock::Clock;
use config::{Config, StoreConfig};
use session::memory::MemoryStore;
use session::{Keyed, ReadCache, SessionStore};

/// The store a configuration selects.
pub fn build_store(config: &Config, clock: Arc<dyn Clock>) -> Arc<dyn SessionStore> {
    let idle = config.session.idle_timeout;
    let cache = || {
        config
            .store_cache
            .map(|c| ReadCache::new(c.ttl, c.max_sessions))
    };
    match &config.store {
        StoreConfig::Memory { max_sessions } => Arc::new(Keyed::new(
            MemoryStore::new(*max_sessions, idle, clock.clone()),
            cache(),
            clock,
            idle,
        )),
        StoreConfig::Sqlite(_) | StoreConfig::Redis(_) | StoreConfig::Cookie(_) => {
            todo!("stores being built")
        }
    }
}

pub use server::StartError;

/// Starts a proxy for `config`: builds the store, binds and serves. The
/// returned server knows its bound address (port 0 resolves here).
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<server::Server, StartError> {
    let store = build_store(config, clock.clone());
    server::Server::start(config, store, clock)
}
