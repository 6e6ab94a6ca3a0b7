//! sessionward: a reverse proxy that gives any web app Django-style sessions.
//!
//! The pipeline lives in [`proxy`]; stores implement [`session::SessionStore`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod body;
pub mod clock;
pub mod config;
pub mod cookies;
pub mod demo;
pub mod error;
pub mod framing;
pub mod metrics;
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
use session::cookie::CookieStore;
use session::memory::MemoryStore;
use session::redis::RedisStore;
use session::sqlite::SqliteStore;
use session::{Keyed, ReadCache, SessionStore, StoreError};

/// The store a configuration selects. Fails only on what a restart will
/// not fix (a database file that cannot be opened, a URL that cannot be
/// parsed); a store that is merely down is connected to in the background.
pub fn build_store(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn SessionStore>, StoreError> {
    let idle = config.session.idle_timeout;
    let cache = || {
        config
            .store_cache
            .map(|c| ReadCache::new(c.ttl, c.max_sessions))
    };
    Ok(match &config.store {
        StoreConfig::Memory { max_sessions } => Arc::new(Keyed::new(
            MemoryStore::new(*max_sessions, idle, clock.clone()),
            cache(),
            clock,
            idle,
        )),
        StoreConfig::Sqlite(c) => Arc::new(Keyed::new(
            SqliteStore::open(c, idle, clock.clone())?,
            cache(),
            clock,
            idle,
        )),
        StoreConfig::Redis(c) => Arc::new(Keyed::new(
            RedisStore::new(c, idle, clock.clone())?,
            cache(),
            clock,
            idle,
        )),
        StoreConfig::Cookie(c) => Arc::new(
            CookieStore::new(c, &config.cookie.name, &config.signing.secret, idle, clock)
                .with_fallbacks(&config.signing.secret_fallbacks),
        ),
    })
}

pub use server::StartError;

/// Starts a proxy for `config`: builds the store, binds and serves. The
/// returned server knows its bound address (port 0 resolves here).
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<server::Server, StartError> {
    let store = build_store(config, clock.clone()).map_err(StartError::Store)?;
    server::Server::start(config, store, clock)
}
