//! Configuration: the YAML file as raw serde structs, `${VAR}` expansion, and
//! validation into [`Config`], which holds only checked, typed values.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_yaml::Value;

use crate::token::{Algorithm, TokenKey, UpdateKeys};

/// The placeholder secret in `config.example.yaml`; refused so nobody ships it.
pub const EXAMPLE_SECRET_PLACEHOLDER: &str = "CHANGE-ME-to-a-random-secret-of-at-least-32-bytes";

/// Shortest accepted signing secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

// ---------------------------------------------------------------------------
// Raw structs: exactly what the YAML may say.
// ---------------------------------------------------------------------------

/// The configuration file as written, before validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where clients connect (required).
    pub listen: Option<String>,
    /// The app's base URL (required).
    pub upstream: Option<String>,
    /// Session cookie attributes.
    #[serde(default)]
    pub cookie: RawCookie,
    /// Session lifetime and size.
    #[serde(default)]
    pub session: RawSession,
    /// Which store keeps sessions.
    #[serde(default)]
    pub store: RawStore,
    /// Token signing (required: `secret`).
    #[serde(default)]
    pub signing: RawSigning,
    /// Names of the protocol headers.
    #[serde(default)]
    pub headers: RawHeaders,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[serde(default = "defaults::shutdown_grace", deserialize_with = "lenient")]
    pub shutdown_grace: f64,
    /// Worker threads; 0 means one per CPU.
    #[serde(default, deserialize_with = "lenient")]
    pub workers: i64,
    /// TLS termination; absent means plain HTTP.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// The operators' listener: health, readiness, metrics.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Proxies (CIDRs) whose X-Forwarded-* and X-Request-Id are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Path prefixes served without sessions (static files, health checks).
    #[serde(default)]
    pub bypass: Vec<String>,
    /// Limits that protect the proxy and its clients from each other.
    #[serde(default)]
    pub limits: RawLimits,
    /// How an https:// upstream's certificate is checked.
    #[serde(default)]
    pub upstream_tls: RawUpstreamTls,
}

/// `upstream_tls:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    /// PEM file of the CA certificates to trust; null: the system's roots.
    pub ca_file: Option<String>,
}

/// `limits:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Seconds a client has to send a request's headers, and (HTTP/1) the
    /// longest a kept-alive connection may wait for its next request.
    #[serde(deserialize_with = "lenient")]
    pub header_read_timeout: f64,
    /// Seconds a connection (HTTP/1 or HTTP/2) may go without a request in
    /// flight before it is closed.
    #[serde(deserialize_with = "lenient")]
    pub idle_timeout: f64,
    /// Largest request head (request line and headers), in bytes; 431 beyond.
    #[serde(deserialize_with = "lenient")]
    pub max_header_bytes: i64,
    /// Largest `Cookie` header, in bytes; 431 beyond.
    #[serde(deserialize_with = "lenient")]
    pub max_cookie_bytes: i64,
    /// Most downstream connections open at once; more are closed at once.
    #[serde(deserialize_with = "lenient")]
    pub max_connections: i64,
    /// Most concurrent HTTP/2 streams per connection.
    #[serde(deserialize_with = "lenient")]
    pub h2_max_concurrent_streams: i64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: 65.0,
            idle_timeout: 65.0,
            max_header_bytes: 65_536,
            max_cookie_bytes: 16_384,
            max_connections: 10_000,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// `admin:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Where `/healthz`, `/readyz` and `/metrics` are served; null turns it off.
    pub listen: Option<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:9090".into()),
        }
    }
}

/// `tls:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

impl Default for RawConfig {
    /// The documented defaults; `listen`, `upstream` and `signing.secret` unset.
    fn default() -> Self {
        Self {
            listen: None,
            upstream: None,
            cookie: RawCookie::default(),
            session: RawSession::default(),
            store: RawStore::default(),
            signing: RawSigning::default(),
            headers: RawHeaders::default(),
            timeouts: RawTimeouts::default(),
            shutdown_grace: defaults::shutdown_grace(),
            workers: 0,
            tls: None,
            admin: RawAdmin::default(),
            trusted_proxies: Vec::new(),
            bypass: Vec::new(),
            limits: RawLimits::default(),
            upstream_tls: RawUpstreamTls::default(),
        }
    }
}

/// `cookie:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie `Path`.
    pub path: String,
    /// Cookie `Domain`, none by default (host-only).
    pub domain: Option<String>,
    /// Cookie `Secure`.
    #[serde(deserialize_with = "lenient")]
    pub secure: bool,
    /// Cookie `HttpOnly`.
    #[serde(deserialize_with = "lenient")]
    pub http_only: bool,
    /// Cookie `SameSite`: lax, strict or none.
    pub same_site: String,
}

impl Default for RawCookie {
    fn default() -> Self {
        Self {
            name: "sessionid".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: "lax".into(),
        }
    }
}

/// `session:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSession {
    /// Seconds a session lives without a custom expiry (Django's SESSION_COOKIE_AGE).
    #[serde(deserialize_with = "lenient")]
    pub max_age: i64,
    /// Default to browser-session cookies.
    #[serde(deserialize_with = "lenient")]
    pub expire_at_browser_close: bool,
    /// Refresh expiry and cookie on every response to a live session.
    #[serde(deserialize_with = "lenient")]
    pub save_every_request: bool,
    /// Largest serialized session data accepted, in bytes.
    #[serde(deserialize_with = "lenient")]
    pub max_bytes: i64,
    /// Seconds without a request after which a session dies (sliding; off by default).
    #[serde(deserialize_with = "lenient_opt")]
    pub idle_timeout: Option<i64>,
    /// Seconds from creation after which a session dies whatever happens (off by default).
    #[serde(deserialize_with = "lenient_opt")]
    pub absolute_timeout: Option<i64>,
}

impl Default for RawSession {
    fn default() -> Self {
        Self {
            max_age: 1_209_600,
            expire_at_browser_close: false,
            save_every_request: false,
            max_bytes: 8192,
            idle_timeout: None,
            absolute_timeout: None,
        }
    }
}

/// `store:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// Store engine name.
    pub kind: String,
    /// Settings of the in-memory store.
    pub memory: RawMemoryStore,
    /// Settings of the SQLite store.
    pub sqlite: RawSqliteStore,
    /// Settings of the Redis store.
    pub redis: RawRedisStore,
    /// Settings of the cookie store.
    pub cookie: RawCookieStore,
    /// Read cache in front of a server-side store.
    pub cache: Option<RawStoreCache>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            memory: RawMemoryStore::default(),
            sqlite: RawSqliteStore::default(),
            redis: RawRedisStore::default(),
            cookie: RawCookieStore::default(),
            cache: None,
        }
    }
}

/// `store.sqlite:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSqliteStore {
    /// Database file; created when missing.
    pub path: String,
    /// Seconds to wait for a lock held by another process.
    #[serde(deserialize_with = "lenient")]
    pub busy_timeout: f64,
    /// Seconds between sweeps of expired rows.
    #[serde(deserialize_with = "lenient")]
    pub purge_interval: f64,
    /// `normal` (survives a crash of the process) or `full` (also a power cut).
    pub synchronous: String,
}

impl Default for RawSqliteStore {
    fn default() -> Self {
        Self {
            path: "sessions.db".into(),
            busy_timeout: 5.0,
            purge_interval: 300.0,
            synchronous: "normal".into(),
        }
    }
}

/// `store.redis:` section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedisStore {
    /// `single`, `cluster` or `sentinel`.
    pub mode: String,
    /// `redis://` or `rediss://` URL of the server (single mode).
    pub url: Option<String>,
    /// Seed node URLs (cluster mode).
    pub nodes: Vec<String>,
    /// Sentinel URLs (sentinel mode).
    pub sentinels: Vec<String>,
    /// Name of the monitored master (sentinel mode).
    pub master_name: Option<String>,
    /// Prefix of every key sessionward writes.
    pub key_prefix: String,
    /// Seconds to wait for a connection.
    #[serde(deserialize_with = "lenient")]
    pub connect_timeout: f64,
    /// Seconds to wait for a command's answer.
    #[serde(deserialize_with = "lenient")]
    pub command_timeout: f64,
}

impl Default for RawRedisStore {
    fn default() -> Self {
        Self {
            mode: "single".into(),
            url: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            key_prefix: "sessionward:".into(),
            connect_timeout: 0.25,
            command_timeout: 0.25,
        }
    }
}

impl fmt::Debug for RawRedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawRedisStore")
            .field("mode", &self.mode)
            .field("url", &self.url.as_deref().map(RedisUrl::redact))
            .field("nodes", &self.nodes.len())
            .field("sentinels", &self.sentinels.len())
            .field("master_name", &self.master_name)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// `store.cookie:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCookieStore {
    /// Most cookies one session may span (`name`, `name.1`, ...).
    #[serde(deserialize_with = "lenient")]
    pub max_chunks: i64,
}

impl Default for RawCookieStore {
    fn default() -> Self {
        Self { max_chunks: 3 }
    }
}

/// `store.cache:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStoreCache {
    /// Milliseconds a cached copy may be served.
    #[serde(deserialize_with = "lenient")]
    pub ttl_ms: i64,
    /// Most sessions cached.
    #[serde(deserialize_with = "lenient", default = "default_cache_sessions")]
    pub max_sessions: i64,
}

fn default_cache_sessions() -> i64 {
    100_000
}

/// `store.memory:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMemoryStore {
    /// Most sessions kept; the least recently used go first.
    #[serde(deserialize_with = "lenient")]
    pub max_sessions: i64,
}

impl Default for RawMemoryStore {
    fn default() -> Self {
        Self {
            max_sessions: 1_000_000,
        }
    }
}

/// `signing:` section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSigning {
    /// sessionward's secret: the HS256 token key, and with every algorithm
    /// the cookie store's key (required unless HS256 `keys` are given).
    pub secret: Option<String>,
    /// Token keys with ids, for rotation: the first signs, all verify.
    pub keys: Option<Vec<RawSigningKey>>,
    /// `HS256` (default), `EdDSA` or `ES256`.
    pub algorithm: String,
    /// PKCS#8 PEM private key file (EdDSA and ES256).
    pub private_key: Option<String>,
    /// `kid` of `private_key`; its JWK thumbprint when absent.
    pub key_id: Option<String>,
    /// Older secrets the cookie store still opens sessions with.
    pub secret_fallbacks: Vec<String>,
    /// Key of the `sid` claim, which must not change when keys rotate.
    pub sid_secret: Option<String>,
    /// Seconds a token stays valid.
    #[serde(deserialize_with = "lenient")]
    pub token_ttl: i64,
    /// Apply update headers only with a valid `P-signature`.
    #[serde(deserialize_with = "lenient")]
    pub require_signed_updates: bool,
    /// HMAC key of `P-signature` (required for EdDSA and ES256).
    pub update_secret: Option<String>,
}

/// One entry of `signing.keys`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKey {
    /// Sent as the token header's `kid`.
    pub id: Option<String>,
    /// HS256 secret.
    pub secret: Option<String>,
    /// EdDSA or ES256 PKCS#8 PEM private key file.
    pub private_key: Option<String>,
}

/// How a secret appears in `Debug` output: its length only.
fn redacted(secret: &str) -> String {
    format!("<{} bytes redacted>", secret.len())
}

impl fmt::Debug for RawSigning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |s: &Option<String>| s.as_deref().map(redacted);
        f.debug_struct("RawSigning")
            .field("secret", &opt(&self.secret))
            .field("keys", &self.keys)
            .field("algorithm", &self.algorithm)
            .field("private_key", &self.private_key)
            .field("key_id", &self.key_id)
            .field(
                "secret_fallbacks",
                &self
                    .secret_fallbacks
                    .iter()
                    .map(|s| redacted(s))
                    .collect::<Vec<_>>(),
            )
            .field("sid_secret", &opt(&self.sid_secret))
            .field("token_ttl", &self.token_ttl)
            .field("require_signed_updates", &self.require_signed_updates)
            .field("update_secret", &opt(&self.update_secret))
            .finish()
    }
}

impl fmt::Debug for RawSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSigningKey")
            .field("id", &self.id)
            .field("secret", &self.secret.as_deref().map(redacted))
            .field("private_key", &self.private_key)
            .finish()
    }
}

impl Default for RawSigning {
    fn default() -> Self {
        Self {
            secret: None,
            keys: None,
            algorithm: "HS256".into(),
            private_key: None,
            key_id: None,
            secret_fallbacks: Vec::new(),
            sid_secret: None,
            token_ttl: 60,
            require_signed_updates: false,
            update_secret: None,
        }
    }
}

/// `headers:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaders {
    /// Prefix of every protocol header; the token header is named exactly this.
    pub prefix: String,
}

impl Default for RawHeaders {
    fn default() -> Self {
        Self {
            prefix: "x-session".into(),
        }
    }
}

/// `timeouts:` section, in seconds (fractions allowed).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    /// TCP connect to the upstream.
    #[serde(deserialize_with = "lenient")]
    pub upstream_connect: f64,
    /// From sending the request until the upstream's response headers arrive.
    #[serde(deserialize_with = "lenient")]
    pub upstream_response: f64,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        Self {
            upstream_connect: 5.0,
            upstream_response: 60.0,
        }
    }
}

mod defaults {
    pub fn shutdown_grace() -> f64 {
        25.0
    }
}

/// Accepts the native YAML type or a string that parses to it, so `${VAR}`
/// expansions (always strings) can fill numeric and boolean fields.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + DeserializeOwned,
    T::Err: fmt::Display,
{
    match Value::deserialize(deserializer)? {
        Value::String(text) => text
            .trim()
            .parse()
            .map_err(|e| D::Error::custom(format!("{text:?}: {e}"))),
        other => serde_yaml::from_value(other).map_err(D::Error::custom),
    }
}

/// [`lenient`] for optional values: `null` or absent is `None`.
fn lenient_opt<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + DeserializeOwned,
    T::Err: fmt::Display,
{
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        other => lenient(other).map(Some).map_err(D::Error::custom),
    }
}

// ---------------------------------------------------------------------------
// Validated configuration.
// ---------------------------------------------------------------------------

/// A signing secret; its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret bytes, for keying a MAC.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Cookie `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Lax`
    Lax,
    /// `SameSite=Strict`
    Strict,
    /// `SameSite=None` (requires `Secure`)
    None,
}

/// Validated cookie attributes.
#[derive(Debug, Clone)]
pub struct CookieConfig {
    /// Cookie name.
    pub name: String,
    /// Cookie `Path`.
    pub path: String,
    /// Cookie `Domain`.
    pub domain: Option<String>,
    /// Cookie `Secure`.
    pub secure: bool,
    /// Cookie `HttpOnly`.
    pub http_only: bool,
    /// Cookie `SameSite`.
    pub same_site: SameSite,
}

/// Validated session rules.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Default lifetime in seconds.
    pub max_age: u64,
    /// Browser-session cookies by default.
    pub expire_at_browser_close: bool,
    /// Refresh every live session on every non-5xx response.
    pub save_every_request: bool,
    /// Largest serialized session data, in bytes.
    pub max_bytes: usize,
    /// Sliding idle timeout in seconds.
    pub idle_timeout: Option<u64>,
    /// Hard cap from creation in seconds.
    pub absolute_timeout: Option<u64>,
}

/// Validated store selection.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In-process store.
    Memory {
        /// Capacity in sessions.
        max_sessions: u64,
    },
    /// One SQLite file.
    Sqlite(SqliteConfig),
    /// A Redis server, cluster or sentinel-managed master.
    Redis(RedisConfig),
    /// The client's own cookie, sealed.
    Cookie(CookieStoreConfig),
}

/// Validated `store.sqlite`.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Database file.
    pub path: std::path::PathBuf,
    /// Lock wait.
    pub busy_timeout: Duration,
    /// Time between sweeps of expired rows.
    pub purge_interval: Duration,
    /// `synchronous = FULL` instead of `NORMAL`.
    pub synchronous_full: bool,
}

/// A Redis URL, whose password never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as written, password included: for the client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `url` with any password replaced by `***`.
    pub fn redact(url: &str) -> String {
        match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let userinfo = &url[s + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            }
            _ => url.to_owned(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Self::redact(&self.0))
    }
}

/// Where the Redis store finds its server.
#[derive(Debug, Clone)]
pub enum RedisTopology {
    /// One server.
    Single(RedisUrl),
    /// A Redis Cluster, found from these seed nodes.
    Cluster(Vec<RedisUrl>),
    /// The master that these sentinels name.
    Sentinel {
        /// Sentinel URLs.
        sentinels: Vec<RedisUrl>,
        /// Monitored master's name.
        master_name: String,
    },
}

/// Validated `store.redis`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where the server is.
    pub topology: RedisTopology,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Connection wait.
    pub connect_timeout: Duration,
    /// Command answer wait.
    pub command_timeout: Duration,
}

/// Validated `store.cookie`.
#[derive(Debug, Clone)]
pub struct CookieStoreConfig {
    /// Most cookies a session may span.
    pub max_chunks: usize,
}

/// Validated `store.cache`.
#[derive(Debug, Clone, Copy)]
pub struct StoreCacheConfig {
    /// How long a cached copy may be served.
    pub ttl: Duration,
    /// Most sessions cached.
    pub max_sessions: u64,
}

/// Validated signing settings.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    /// sessionward's secret: seals the cookie store; with HS256 it is also
    /// the signing token key (`signing.secret`, or the first of `signing.keys`).
    pub secret: Secret,
    /// Token lifetime in seconds.
    pub token_ttl: u64,
    /// The token algorithm.
    pub algorithm: Algorithm,
    /// Token keys: the first signs; all verify (HS256) or are published (JWKS).
    pub keys: Vec<TokenKey>,
    /// Secrets the cookie store opens with but never seals with: the other
    /// HS256 keys, then `signing.secret_fallbacks`.
    pub secret_fallbacks: Vec<Secret>,
    /// Key of the `sid` claim: `signing.sid_secret`, else `signing.secret`.
    pub sid_secret: Secret,
    /// Refuse update headers without a valid `P-signature`.
    pub require_signed_updates: bool,
    /// Key of `P-signature`, when set apart from the token keys.
    pub update_secret: Option<Secret>,
    /// The HS256 token secrets, in order (empty for EdDSA and ES256).
    pub hmac_secrets: Vec<Secret>,
}

impl SigningConfig {
    /// The keys a `P-signature` is accepted under: `update_secret` when
    /// set, else any HS256 token secret (the app holds those already).
    pub fn update_keys(&self) -> UpdateKeys {
        match &self.update_secret {
            Some(s) => UpdateKeys::new([s]),
            None => UpdateKeys::new(&self.hmac_secrets),
        }
    }
}

/// Validated upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect.
    pub upstream_connect: Duration,
    /// Until response headers.
    pub upstream_response: Duration,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening address.
    pub listen: SocketAddr,
    /// Upstream base URI: scheme and authority only (`http://localhost`
    /// for a Unix socket upstream).
    pub upstream: Uri,
    /// The Unix socket the upstream listens on, for `unix:/path` upstreams.
    pub upstream_socket: Option<std::path::PathBuf>,
    /// The TLS client for an https:// upstream, with its trusted roots loaded.
    pub upstream_tls: Option<UpstreamTls>,
    /// Cookie attributes.
    pub cookie: CookieConfig,
    /// Session rules.
    pub session: SessionConfig,
    /// Store selection.
    pub store: StoreConfig,
    /// Read cache in front of a server-side store.
    pub store_cache: Option<StoreCacheConfig>,
    /// Signing settings.
    pub signing: SigningConfig,
    /// Protocol header prefix, lowercase.
    pub header_prefix: String,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Worker threads, each with its own listener and upstream pool.
    pub workers: usize,
    /// TLS termination, loaded and checked.
    pub tls: Option<TlsConfig>,
    /// The admin listener's address; `None` when turned off.
    pub admin: Option<SocketAddr>,
    /// Peers whose forwarding headers are kept and appended to.
    pub trusted_proxies: Vec<Cidr>,
    /// Path prefixes served without sessions.
    pub bypass: Vec<String>,
    /// Connection and request limits.
    pub limits: Limits,
}

/// Validated `limits`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send request headers; also the HTTP/1 keep-alive idle limit.
    pub header_read_timeout: Duration,
    /// Time a connection may stay without a request in flight.
    pub idle_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Largest `Cookie` header in bytes.
    pub max_cookie_bytes: usize,
    /// Most open downstream connections.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
}

/// An IP network such as `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in this network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let net: std::net::IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or a CIDR such as 10.0.0.0/8"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

/// The TLS client configuration for an https:// upstream.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The rustls client configuration (roots, ALPN http/1.1).
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls").finish_non_exhaustive()
    }
}

/// A loaded TLS certificate and key.
#[derive(Clone)]
pub struct TlsConfig {
    /// Where the certificate chain was read from.
    pub cert: std::path::PathBuf,
    /// Where the key was read from.
    pub key: std::path::PathBuf,
    /// The rustls configuration built from them.
    pub server: std::sync::Arc<rustls::ServerConfig>,
    /// The loaded pair, which a reload replaces.
    pub certificates: std::sync::Arc<crate::tls::Certificates>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

/// One thing wrong with a configuration, at a field path such as `cookie.same_site`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path, or `(file)` for the document as a whole.
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration could not be loaded; lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// One or more fields are wrong.
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem found (empty for an I/O error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            ConfigError::Read { .. } => &[],
        }
    }
}

// ---------------------------------------------------------------------------
// Loading.
// ---------------------------------------------------------------------------

impl Config {
    /// Reads, expands and validates a config file, with `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses YAML text, expanding `${VAR}` through `env`, and validates it.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = RawConfig::from_yaml(text, env)?;
        Config::try_from(raw)
    }
}

impl RawConfig {
    /// Parses YAML text into raw structs, expanding `${VAR}` in every string value.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<RawConfig, ConfigError> {
        let mut value: Value = serde_yaml::from_str(text).map_err(|e| {
            ConfigError::Invalid(vec![Problem {
                path: "(file)".into(),
                message: format!("not valid YAML: {e}"),
            }])
        })?;
        if value.is_null() {
            value = Value::Mapping(Default::default());
        }
        let mut problems = Vec::new();
        expand_env(&mut value, &mut String::new(), env, &mut problems);
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        match deserialize(value.clone()) {
            Ok(raw) => Ok(raw),
            Err(first) => {
                // serde stops at the first error; deserializing each top-level
                // key on its own finds the first error of every section.
                let mut problems: Vec<Problem> = match &value {
                    Value::Mapping(map) => map
                        .iter()
                        .filter_map(|(k, v)| {
                            let mut one = serde_yaml::Mapping::new();
                            one.insert(k.clone(), v.clone());
                            deserialize(Value::Mapping(one)).err()
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if problems.is_empty() {
                    problems.push(first);
                }
                Err(ConfigError::Invalid(problems))
            }
        }
    }
}

fn deserialize(value: Value) -> Result<RawConfig, Problem> {
    serde_path_to_error::deserialize::<_, RawConfig>(value).map_err(|e| {
        let path = e.path().to_string();
        Problem {
            path: if path == "." { "(file)".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string of the tree; `$$` is a literal `$`.
fn expand_env(
    value: &mut Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                path: path.clone(),
                message,
            }),
        },
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.as_str().unwrap_or("?"));
                expand_env(v, path, env, problems);
                path.truncate(len);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(v, path, env, problems);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

fn expand_str(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{...}} in {input:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{{expr}}}"));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Validation.
// ---------------------------------------------------------------------------

struct Checker(Vec<Problem>);

impl Checker {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    fn seconds(&mut self, path: &str, secs: f64) -> Duration {
        if secs.is_finite() && secs > 0.0 && secs < 1e9 {
            Duration::from_secs_f64(secs)
        } else {
            self.fail(
                path,
                format!("must be a positive number of seconds, got {secs}"),
            );
            Duration::from_secs(1)
        }
    }

    fn positive(&mut self, path: &str, n: i64) -> u64 {
        if n > 0 {
            n as u64
        } else {
            self.fail(path, format!("must be greater than 0, got {n}"));
            1
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut c = Checker(Vec::new());

        let listen = match raw.listen.as_deref() {
            None => {
                c.fail("listen", "is required (for example 127.0.0.1:8080)");
                None
            }
            Some(s) => match s.trim().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    c.fail("listen", format!("{s:?} is not an IP:port address: {e}"));
                    None
                }
            },
        };

        let upstream = match raw.upstream.as_deref() {
            None => {
                c.fail(
                    "upstream",
                    "is required (for example http://127.0.0.1:8000 or unix:/run/app.sock)",
                );
                None
            }
            Some(s) if s.trim().starts_with("unix:") => {
                let path = s.trim().trim_start_matches("unix:");
                if !path.starts_with('/') {
                    c.fail(
                        "upstream",
                        format!("{s:?}: a Unix socket upstream needs an absolute path, as in unix:/run/app.sock"),
                    );
                }
                Some(Uri::from_static("http://localhost/"))
            }
            Some(s) => match parse_upstream(s.trim()) {
                Ok(u) => Some(u),
                Err(msg) => {
                    c.fail("upstream", msg);
                    None
                }
            },
        };
        let upstream_socket = raw
            .upstream
            .as_deref()
            .and_then(|s| s.trim().strip_prefix("unix:"))
            .map(std::path::PathBuf::from);
        let upstream_tls = match &upstream {
            Some(u) if u.scheme_str() == Some("https") => {
                match crate::tls::upstream_client(
                    raw.upstream_tls
                        .ca_file
                        .as_deref()
                        .map(std::path::Path::new),
                ) {
                    Ok(client) => Some(UpstreamTls { client }),
                    Err(message) => {
                        c.fail("upstream_tls.ca_file", message);
                        None
                    }
                }
            }
            _ => None,
        };

        let cookie = validate_cookie(&raw.cookie, &mut c);

        let max_age = c.positive("session.max_age", raw.session.max_age);
        let max_bytes = c.positive("session.max_bytes", raw.session.max_bytes) as usize;
        let idle_timeout = raw
            .session
            .idle_timeout
            .map(|n| c.positive("session.idle_timeout", n));
        let absolute_timeout = raw
            .session
            .absolute_timeout
            .map(|n| c.positive("session.absolute_timeout", n));
        let session = SessionConfig {
            max_age,
            expire_at_browser_close: raw.session.expire_at_browser_close,
            save_every_request: raw.session.save_every_request,
            max_bytes,
            idle_timeout,
            absolute_timeout,
        };

        let store = validate_store(&raw.store, &mut c);
        let store_cache = raw.store.cache.as_ref().map(|cache| {
            let ttl_ms = c.positive("store.cache.ttl_ms", cache.ttl_ms);
            let max_sessions = c.positive("store.cache.max_sessions", cache.max_sessions);
            if !matches!(store, StoreConfig::Sqlite(_) | StoreConfig::Redis(_)) {
                c.fail(
                    "store.cache",
                    "applies to the sqlite and redis stores only; the memory and cookie stores have nothing to cache",
                );
            }
            StoreCacheConfig {
                ttl: Duration::from_millis(ttl_ms),
                max_sessions,
            }
        });

        let signing = validate_signing(&raw.signing, &mut c);

        let prefix = raw.headers.prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || http::HeaderName::from_bytes(prefix.as_bytes()).is_err() {
            c.fail(
                "headers.prefix",
                format!("{:?} is not a valid header name", raw.headers.prefix),
            );
        } else if is_reserved_header(&prefix) {
            c.fail(
                "headers.prefix",
                format!("{prefix:?} would strip standard headers; choose a name of your own such as x-session"),
            );
        }

        let timeouts = Timeouts {
            upstream_connect: c.seconds("timeouts.upstream_connect", raw.timeouts.upstream_connect),
            upstream_response: c
                .seconds("timeouts.upstream_response", raw.timeouts.upstream_response),
        };
        let shutdown_grace = c.seconds("shutdown_grace", raw.shutdown_grace);
        let tls = raw.tls.as_ref().and_then(|t| {
            let (cert, key) = (
                std::path::PathBuf::from(&t.cert),
                std::path::PathBuf::from(&t.key),
            );
            let loaded = crate::tls::Certificates::load(&cert, &key)
                .and_then(|certificates| Ok((certificates.server_config()?, certificates)));
            match loaded {
                Ok((server, certificates)) => Some(TlsConfig {
                    cert,
                    key,
                    server,
                    certificates,
                }),
                Err(message) => {
                    c.fail("tls", message);
                    None
                }
            }
        });
        let workers = match raw.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n @ 1..=1024 => n as usize,
            n => {
                c.fail(
                    "workers",
                    format!("must be 0 (one per CPU) to 1024, got {n}"),
                );
                1
            }
        };

        let admin =
            raw.admin
                .listen
                .as_deref()
                .and_then(|s| match s.trim().parse::<SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(e) => {
                        c.fail(
                            "admin.listen",
                            format!("{s:?} is not an IP:port address: {e}"),
                        );
                        None
                    }
                });
        if let (Some(admin), Some(listen)) = (admin, listen)
            && admin.port() != 0
            && admin.port() == listen.port()
        {
            c.fail(
                "admin.listen",
                "must not be the proxy's port: health and metrics are for operators, never for clients",
            );
        }

        let mut trusted_proxies = Vec::new();
        for (i, t) in raw.trusted_proxies.iter().enumerate() {
            match t.parse::<Cidr>() {
                Ok(cidr) => trusted_proxies.push(cidr),
                Err(e) => c.fail(&format!("trusted_proxies[{i}]"), e),
            }
        }
        let mut bypass = Vec::new();
        for (i, p) in raw.bypass.iter().enumerate() {
            let p = p.trim();
            if !p.starts_with('/') {
                c.fail(
                    &format!("bypass[{i}]"),
                    format!("{p:?} must be a path prefix starting with /"),
                );
            } else if p == "/" {
                c.fail(
                    &format!("bypass[{i}]"),
                    "\"/\" would bypass sessions for every request; name the paths that need none, such as /static/",
                );
            } else {
                bypass.push(p.to_owned());
            }
        }

        let l = &raw.limits;
        let limits = Limits {
            header_read_timeout: c.seconds("limits.header_read_timeout", l.header_read_timeout),
            idle_timeout: c.seconds("limits.idle_timeout", l.idle_timeout),
            max_header_bytes: {
                // hyper cannot read a request head into less than 8 KiB.
                if l.max_header_bytes < 8192 {
                    c.fail(
                        "limits.max_header_bytes",
                        format!("must be at least 8192, got {}", l.max_header_bytes),
                    );
                }
                l.max_header_bytes.max(8192) as usize
            },
            max_cookie_bytes: c.positive("limits.max_cookie_bytes", l.max_cookie_bytes) as usize,
            max_connections: c.positive("limits.max_connections", l.max_connections) as usize,
            h2_max_concurrent_streams: c
                .positive(
                    "limits.h2_max_concurrent_streams",
                    l.h2_max_concurrent_streams,
                )
                .min(u64::from(u32::MAX)) as u32,
        };

        match (c.0.is_empty(), listen, upstream) {
            (true, Some(listen), Some(upstream)) => Ok(Config {
                listen,
                upstream,
                upstream_socket,
                upstream_tls,
                cookie,
                session,
                store,
                store_cache,
                signing,
                header_prefix: prefix,
                timeouts,
                shutdown_grace,
                workers,
                tls,
                admin,
                trusted_proxies,
                bypass,
                limits,
            }),
            _ => Err(ConfigError::Invalid(c.0)),
        }
    }
}

/// A prefix that matches headers every request carries would make the proxy strip them.
fn is_reserved_header(prefix: &str) -> bool {
    const STANDARD: &[&str] = &[
        "accept",
        "authorization",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "cookie",
        "host",
        "set-cookie",
        "transfer-encoding",
        "user-agent",
        "vary",
        "x-forwarded",
    ];
    STANDARD.iter().any(|h| h.starts_with(prefix))
}

fn parse_upstream(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {}
        Some(other) => {
            return Err(format!(
                "{s:?}: scheme {other:?} is not supported; use http://, https:// or unix:/path"
            ));
        }
        None => return Err(format!("{s:?} has no scheme; write http://{s}")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{s:?} has no host"))?
        .clone();
    if authority.host().is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?}: the upstream must be a scheme and host only; request paths are forwarded as they come"
        ));
    }
    Uri::builder()
        .scheme(uri.scheme_str().unwrap_or("http"))
        .authority(authority)
        .path_and_query("/")
        .build()
        .map_err(|e| format!("{s:?}: {e}"))
}

fn validate_store(raw: &RawStore, c: &mut Checker) -> StoreConfig {
    match raw.kind.trim() {
        "memory" => StoreConfig::Memory {
            max_sessions: c.positive("store.memory.max_sessions", raw.memory.max_sessions),
        },
        "sqlite" => {
            let s = &raw.sqlite;
            if s.path.trim().is_empty() {
                c.fail("store.sqlite.path", "is required: the database file");
            }
            let synchronous_full = match s.synchronous.trim().to_ascii_lowercase().as_str() {
                "normal" => false,
                "full" => true,
                other => {
                    c.fail(
                        "store.sqlite.synchronous",
                        format!("{other:?} is not normal or full"),
                    );
                    false
                }
            };
            StoreConfig::Sqlite(SqliteConfig {
                path: s.path.trim().into(),
                busy_timeout: {
                    if s.busy_timeout > 3600.0 {
                        c.fail(
                            "store.sqlite.busy_timeout",
                            format!(
                                "{} s is longer than any lock should be held; at most 3600",
                                s.busy_timeout
                            ),
                        );
                    }
                    c.seconds("store.sqlite.busy_timeout", s.busy_timeout)
                },
                purge_interval: c.seconds("store.sqlite.purge_interval", s.purge_interval),
                synchronous_full,
            })
        }
        "redis" => StoreConfig::Redis(validate_redis(&raw.redis, c)),
        "cookie" => {
            let n = c.positive("store.cookie.max_chunks", raw.cookie.max_chunks);
            if n > 4 {
                // Load balancers and servers commonly cap a header line at
                // 16 KB; four chunks of 3,800 bytes already come close.
                c.fail(
                    "store.cookie.max_chunks",
                    format!("{n} cookies of 3,800 bytes make a Cookie header over what proxies commonly accept (16 KB); at most 4"),
                );
            }
            StoreConfig::Cookie(CookieStoreConfig {
                max_chunks: n.min(4) as usize,
            })
        }
        other => {
            c.fail(
                "store.kind",
                format!("unknown store {other:?}; expected memory, sqlite, redis or cookie"),
            );
            StoreConfig::Memory { max_sessions: 1 }
        }
    }
}

/// What a secret may be: set, not the example's placeholder, long enough.
fn check_secret(c: &mut Checker, path: &str, value: &str) -> Secret {
    if value == EXAMPLE_SECRET_PLACEHOLDER {
        c.fail(
            path,
            "is the example's placeholder; set SESSIONWARD_SECRET to a random value of your own",
        );
    } else if value.len() < MIN_SECRET_BYTES {
        c.fail(
            path,
            format!(
                "is {} bytes; at least {MIN_SECRET_BYTES} are required",
                value.len()
            ),
        );
    } else {
        return Secret::new(value.as_bytes());
    }
    Secret::new(Vec::new())
}

/// A `kid`: short, and plain enough to paste into any JWKS tool.
fn check_key_id(c: &mut Checker, path: &str, id: &str) {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !ok {
        c.fail(
            path,
            format!("{id:?} is not a key id: 1 to 64 letters, digits, '-', '_', '.' or ':'"),
        );
    }
}

fn validate_signing(raw: &RawSigning, c: &mut Checker) -> SigningConfig {
    let algorithm = Algorithm::parse(&raw.algorithm).unwrap_or_else(|| {
        c.fail(
            "signing.algorithm",
            format!("{:?} is not HS256, EdDSA or ES256", raw.algorithm),
        );
        Algorithm::Hs256
    });
    let required = || {
        format!(
            "is required: at least {MIN_SECRET_BYTES} random bytes, for example from `openssl rand -base64 48`"
        )
    };
    let mut ids: Vec<String> = Vec::new();
    let mut key_id = |c: &mut Checker, path: String, id: Option<&str>| -> Option<String> {
        let Some(id) = id.map(str::trim) else {
            c.fail(&path, "is required: the key's kid, for example 2025-06");
            return None;
        };
        check_key_id(c, &path, id);
        if ids.iter().any(|known| known == id) {
            c.fail(&path, format!("{id:?} is already the id of another key"));
        }
        ids.push(id.to_string());
        Some(id.to_string())
    };

    let mut keys = Vec::new();
    let mut hmac_secrets = Vec::new();
    let secret = if algorithm == Algorithm::Hs256 {
        for (field, set) in [
            ("signing.private_key", raw.private_key.is_some()),
            ("signing.key_id", raw.key_id.is_some()),
        ] {
            if set {
                c.fail(field, "applies to algorithm EdDSA or ES256 only; HS256 signs with signing.secret or signing.keys");
            }
        }
        match (&raw.secret, &raw.keys) {
            (Some(_), Some(_)) => c.fail(
                "signing.keys",
                "cannot be used together with signing.secret: give one secret, or a list of keys whose first signs",
            ),
            (None, None) => c.fail("signing.secret", required()),
            (Some(s), None) => {
                let s = check_secret(c, "signing.secret", s);
                keys.push(TokenKey::hmac(None, &s));
                hmac_secrets.push(s);
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    c.fail("signing.keys", "is empty: list at least one {id, secret}");
                }
                for (i, k) in list.iter().enumerate() {
                    let id = key_id(c, format!("signing.keys[{i}].id"), k.id.as_deref());
                    if k.private_key.is_some() {
                        c.fail(
                            &format!("signing.keys[{i}].private_key"),
                            "HS256 keys are secrets; private keys need signing.algorithm EdDSA or ES256",
                        );
                    }
                    let path = format!("signing.keys[{i}].secret");
                    let Some(s) = &k.secret else {
                        if k.private_key.is_none() {
                            c.fail(&path, required());
                        }
                        continue;
                    };
                    let s = check_secret(c, &path, s);
                    keys.push(TokenKey::hmac(id.as_deref(), &s));
                    hmac_secrets.push(s);
                }
            }
        }
        hmac_secrets
            .first()
            .cloned()
            .unwrap_or_else(|| Secret::new(Vec::new()))
    } else {
        let load = |c: &mut Checker, path: &str, id: Option<&str>, file: &str| match TokenKey::load(
            algorithm,
            id,
            Path::new(file.trim()),
        ) {
            Ok(k) => Some(k),
            Err(e) => {
                c.fail(path, e.to_string());
                None
            }
        };
        match (&raw.private_key, &raw.keys) {
            (Some(_), Some(_)) => c.fail(
                "signing.keys",
                "cannot be used together with signing.private_key: give one key file, or a list of keys whose first signs",
            ),
            (None, None) => c.fail(
                "signing.private_key",
                format!(
                    "is required with algorithm {}: a PKCS#8 PEM file, for example {}",
                    algorithm.name(),
                    match algorithm {
                        Algorithm::EdDsa => "from `openssl genpkey -algorithm ed25519 -out signing.pem`",
                        _ => "from `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out signing.pem`",
                    }
                ),
            ),
            (Some(file), None) => {
                let id = raw.key_id.as_deref().map(str::trim);
                if let Some(id) = id {
                    check_key_id(c, "signing.key_id", id);
                }
                keys.extend(load(c, "signing.private_key", id, file));
            }
            (None, Some(list)) => {
                if raw.key_id.is_some() {
                    c.fail(
                        "signing.key_id",
                        "goes with signing.private_key; each of signing.keys has its own id",
                    );
                }
                if list.is_empty() {
                    c.fail("signing.keys", "is empty: list at least one {id, private_key}");
                }
                for (i, k) in list.iter().enumerate() {
                    let id = key_id(c, format!("signing.keys[{i}].id"), k.id.as_deref());
                    if k.secret.is_some() {
                        c.fail(
                            &format!("signing.keys[{i}].secret"),
                            format!("{} keys are private key files (private_key); secrets are for HS256", algorithm.name()),
                        );
                    }
                    let path = format!("signing.keys[{i}].private_key");
                    match &k.private_key {
                        Some(file) => keys.extend(load(c, &path, id.as_deref(), file)),
                        // Already told that the secret does not belong here.
                        None if k.secret.is_some() => {}
                        None => c.fail(&path, "is required: a PKCS#8 PEM file"),
                    }
                }
            }
        }
        match &raw.secret {
            Some(s) => check_secret(c, "signing.secret", s),
            None => {
                c.fail(
                    "signing.secret",
                    format!("{}; with {} it stays with sessionward (it derives sid and seals the cookie store) and is never given to the app", required(), algorithm.name()),
                );
                Secret::new(Vec::new())
            }
        }
    };

    let mut secret_fallbacks: Vec<Secret> = hmac_secrets.iter().skip(1).cloned().collect();
    for (i, s) in raw.secret_fallbacks.iter().enumerate() {
        secret_fallbacks.push(check_secret(
            c,
            &format!("signing.secret_fallbacks[{i}]"),
            s,
        ));
    }

    let rotating =
        (algorithm == Algorithm::Hs256 && raw.keys.is_some()) || !raw.secret_fallbacks.is_empty();
    let sid_secret = match &raw.sid_secret {
        Some(s) => check_secret(c, "signing.sid_secret", s),
        None if rotating => {
            c.fail(
                "signing.sid_secret",
                "is required with signing.keys or signing.secret_fallbacks, so that sid does not change when the secret rotates: set it to the secret used so far to keep today's sids, or to a new random value of at least 32 bytes; it never needs to change",
            );
            Secret::new(Vec::new())
        }
        None => secret.clone(),
    };

    let update_secret = raw
        .update_secret
        .as_deref()
        .map(|s| check_secret(c, "signing.update_secret", s));
    if algorithm.is_public_key() {
        if raw.require_signed_updates && update_secret.is_none() {
            c.fail(
                "signing.update_secret",
                format!("is required with signing.require_signed_updates and algorithm {}: the app signs its updates with it, as it holds no other secret", algorithm.name()),
            );
        }
        if let Some(u) = &update_secret
            && !u.expose().is_empty()
            && (*u == secret || secret_fallbacks.contains(u) || *u == sid_secret)
        {
            c.fail(
                "signing.update_secret",
                "must differ from signing.secret, signing.secret_fallbacks and signing.sid_secret: the app gets update_secret, and those stay with sessionward",
            );
        }
    }

    SigningConfig {
        secret,
        token_ttl: c.positive("signing.token_ttl", raw.token_ttl),
        algorithm,
        keys,
        secret_fallbacks,
        sid_secret,
        require_signed_updates: raw.require_signed_updates,
        update_secret,
        hmac_secrets,
    }
}

fn validate_redis(raw: &RawRedisStore, c: &mut Checker) -> RedisConfig {
    fn url(c: &mut Checker, path: &str, u: &str) -> RedisUrl {
        let u = u.trim();
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            c.fail(
                path,
                format!(
                    "{:?} is not a redis:// or rediss:// URL",
                    RedisUrl::redact(u)
                ),
            );
        }
        RedisUrl(u.to_owned())
    }
    fn urls(c: &mut Checker, path: &str, list: &[String], what: &str) -> Vec<RedisUrl> {
        if list.is_empty() {
            c.fail(path, format!("is required: a list of {what} URLs"));
        }
        list.iter()
            .enumerate()
            .map(|(i, u)| url(c, &format!("{path}[{i}]"), u))
            .collect()
    }
    let topology = match raw.mode.trim() {
        "single" => match &raw.url {
            Some(u) => RedisTopology::Single(url(c, "store.redis.url", u)),
            None => {
                c.fail(
                    "store.redis.url",
                    "is required (for example redis://127.0.0.1:6379/0)",
                );
                RedisTopology::Single(RedisUrl(String::new()))
            }
        },
        "cluster" => RedisTopology::Cluster(urls(c, "store.redis.nodes", &raw.nodes, "seed node")),
        "sentinel" => {
            let sentinels = urls(c, "store.redis.sentinels", &raw.sentinels, "sentinel");
            let master_name = raw.master_name.clone().unwrap_or_default();
            if master_name.trim().is_empty() {
                c.fail(
                    "store.redis.master_name",
                    "is required in sentinel mode: the name the sentinels monitor",
                );
            }
            RedisTopology::Sentinel {
                sentinels,
                master_name,
            }
        }
        other => {
            c.fail(
                "store.redis.mode",
                format!("{other:?} is not single, cluster or sentinel"),
            );
            RedisTopology::Single(RedisUrl(String::new()))
        }
    };
    if raw.key_prefix.contains(['{', '}']) {
        // A hash tag would pin every session to one cluster slot.
        c.fail(
            "store.redis.key_prefix",
            "must not contain { or }: a hash tag would put every session on one cluster node",
        );
    }
    RedisConfig {
        topology,
        key_prefix: raw.key_prefix.clone(),
        connect_timeout: c.seconds("store.redis.connect_timeout", raw.connect_timeout),
        command_timeout: c.seconds("store.redis.command_timeout", raw.command_timeout),
    }
}

fn validate_cookie(raw: &RawCookie, c: &mut Checker) -> CookieConfig {
    let name = raw.name.trim().to_string();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if !valid_name {
        c.fail(
            "cookie.name",
            format!("{:?} is not a valid cookie name", raw.name),
        );
    }
    let same_site = match raw.same_site.trim().to_ascii_lowercase().as_str() {
        "lax" => SameSite::Lax,
        "strict" => SameSite::Strict,
        "none" => SameSite::None,
        other => {
            c.fail(
                "cookie.same_site",
                format!("{other:?} is not one of lax, strict, none"),
            );
            SameSite::Lax
        }
    };
    if same_site == SameSite::None && !raw.secure {
        c.fail(
            "cookie.same_site",
            "none requires cookie.secure: true (browsers reject SameSite=None without Secure)",
        );
    }
    if !raw.path.starts_with('/') || raw.path.bytes().any(|b| b == b';' || b.is_ascii_control()) {
        c.fail(
            "cookie.path",
            format!("{:?} must start with / and hold no ';'", raw.path),
        );
    }
    let domain = raw
        .domain
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    if let Some(d) = domain
        && d.bytes()
            .any(|b| b == b';' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        c.fail("cookie.domain", format!("{d:?} is not a valid domain"));
    }
    if name.starts_with("__Host-") && !(raw.secure && raw.path == "/" && domain.is_none()) {
        c.fail(
            "cookie.name",
            "a __Host- cookie requires secure: true, path: / and no domain",
        );
    }
    if name.starts_with("__Secure-") && !raw.secure {
        c.fail("cookie.name", "a __Secure- cookie requires secure: true");
    }
    CookieConfig {
        name,
        path: raw.path.clone(),
        domain: domain.map(str::to_string),
        secure: raw.secure,
        http_only: raw.http_only,
        same_site,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn minimal(extra: &str) -> String {
        format!(
            "listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nsigning:\n  secret: {SECRET}\n{extra}"
        )
    }

    fn paths(err: ConfigError) -> Vec<String> {
        err.problems().iter().map(|p| p.path.clone()).collect()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::from_yaml(&minimal(""), &env(&[])).unwrap();
        assert_eq!(c.cookie.name, "sessionid");
        assert_eq!(c.cookie.path, "/");
        assert!(c.cookie.secure && c.cookie.http_only);
        assert_eq!(c.cookie.same_site, SameSite::Lax);
        assert_eq!(c.session.max_age, 1_209_600);
        assert_eq!(c.session.max_bytes, 8192);
        assert!(matches!(
            c.store,
            StoreConfig::Memory {
                max_sessions: 1_000_000
            }
        ));
        assert_eq!(c.signing.token_ttl, 60);
        assert_eq!(c.header_prefix, "x-session");
        assert_eq!(c.upstream.authority().unwrap().as_str(), "127.0.0.1:9");
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
    }

    #[test]
    fn raw_default_equals_an_empty_document() {
        let from_yaml = RawConfig::from_yaml("{}", &env(&[])).unwrap();
        assert_eq!(
            format!("{:?}", RawConfig::default()),
            format!("{from_yaml:?}")
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_path() {
        let err = Config::from_yaml(&minimal("cookie:\n  nmae: x\n"), &env(&[])).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.path, "cookie.nmae");
        assert!(p.message.contains("nmae"), "{p}");
    }

    #[test]
    fn env_vars_expand_with_defaults_and_fill_numbers() {
        let yaml = "listen: ${ADDR}\nupstream: http://${HOST:-127.0.0.1}:9\nsigning:\n  secret: ${S}\nsession:\n  max_age: ${AGE}\n";
        let c = Config::from_yaml(
            yaml,
            &env(&[("ADDR", "127.0.0.1:7"), ("S", SECRET), ("AGE", "30")]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 7);
        assert_eq!(c.upstream.host(), Some("127.0.0.1"));
        assert_eq!(c.signing.secret.expose(), SECRET.as_bytes());
        assert_eq!(c.session.max_age, 30);
    }

    #[test]
    fn unset_env_var_names_the_field_and_the_variable() {
        let err =
            Config::from_yaml(&minimal("").replace(SECRET, "${NOPE}"), &env(&[])).unwrap_err();
        assert_eq!(paths(err.clone_problems()), vec!["signing.secret"]);
        assert!(err.problems()[0].message.contains("NOPE"));
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(expand_str("a$$b$c", &env(&[])).unwrap(), "a$b$c");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let yaml = "listen: nowhere\nupstream: ftp://x\ncookie:\n  same_site: none\n  secure: false\nsession:\n  max_age: 0\nsigning:\n  secret: short\n";
        let err = Config::from_yaml(yaml, &env(&[])).unwrap_err();
        let p = paths(err);
        for want in [
            "listen",
            "upstream",
            "cookie.same_site",
            "session.max_age",
            "signing.secret",
        ] {
            assert!(p.contains(&want.to_string()), "{want} missing from {p:?}");
        }
    }

    #[test]
    fn missing_required_fields_are_named() {
        let err = Config::from_yaml("", &env(&[])).unwrap_err();
        assert_eq!(paths(err), vec!["listen", "upstream", "signing.secret"]);
    }

    #[test]
    fn placeholder_secret_is_refused() {
        let err = Config::from_yaml(
            &minimal("").replace(SECRET, EXAMPLE_SECRET_PLACEHOLDER),
            &env(&[]),
        )
        .unwrap_err();
        assert!(err.problems()[0].message.contains("placeholder"));
    }

    #[test]
    fn host_prefix_rules() {
        let ok = minimal("cookie:\n  name: __Host-sid\n");
        assert!(Config::from_yaml(&ok, &env(&[])).is_ok());
        for bad in [
            "cookie:\n  name: __Host-sid\n  secure: false\n",
            "cookie:\n  name: __Host-sid\n  path: /app\n",
            "cookie:\n  name: __Host-sid\n  domain: example.com\n",
        ] {
            let err = Config::from_yaml(&minimal(bad), &env(&[])).unwrap_err();
            assert_eq!(paths(err), vec!["cookie.name"], "{bad}");
        }
    }

    #[test]
    fn negative_max_age_and_bad_urls_are_refused() {
        for (extra, field) in [
            ("session:\n  max_age: -5\n", "session.max_age"),
            (
                "timeouts:\n  upstream_response: 0\n",
                "timeouts.upstream_response",
            ),
            ("headers:\n  prefix: cookie\n", "headers.prefix"),
            ("store:\n  kind: mongo\n", "store.kind"),
        ] {
            let err = Config::from_yaml(&minimal(extra), &env(&[])).unwrap_err();
            assert_eq!(paths(err), vec![field], "{extra}");
        }
        for url in ["http://x/app", "127.0.0.1:80", "http://"] {
            let yaml = minimal("").replace("http://127.0.0.1:9", url);
            let err = Config::from_yaml(&yaml, &env(&[])).unwrap_err();
            assert_eq!(paths(err), vec!["upstream"], "{url}");
        }
    }

    #[test]
    fn type_errors_in_several_sections_are_all_reported() {
        let yaml = minimal("session:\n  max_bytes: lots\ncookie:\n  secure: maybe\nbogus: 1\n");
        let err = Config::from_yaml(&yaml, &env(&[])).unwrap_err();
        let mut p = paths(err);
        p.sort();
        assert_eq!(p, vec!["bogus", "cookie.secure", "session.max_bytes"]);
    }

    #[test]
    fn type_errors_carry_the_field_path() {
        let err =
            Config::from_yaml(&minimal("session:\n  max_bytes: lots\n"), &env(&[])).unwrap_err();
        assert_eq!(paths(err), vec!["session.max_bytes"]);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new(SECRET);
        assert!(!format!("{s:?}").contains("0123"));
        let raw = RawConfig::from_yaml(&minimal(""), &env(&[])).unwrap();
        assert!(!format!("{raw:?}").contains("0123"), "{raw:?}");
        let config = Config::try_from(raw).unwrap();
        assert!(!format!("{config:?}").contains("0123"));
    }

    /// A PEM key file for `alg` in a fresh temporary directory, removed on drop.
    struct KeyFile(std::path::PathBuf);

    impl KeyFile {
        fn display(&self) -> std::path::Display<'_> {
            self.0.display()
        }
    }

    impl Drop for KeyFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn key_file(alg: Algorithm, name: &str) -> KeyFile {
        let dir =
            std::env::temp_dir().join(format!("sessionward-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        std::fs::write(&path, crate::token::tests::generated_pem(alg)).unwrap();
        KeyFile(path)
    }

    fn signing(yaml: &str) -> Result<SigningConfig, Vec<(String, String)>> {
        let doc = format!("listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nsigning:\n{yaml}");
        Config::from_yaml(&doc, &env(&[]))
            .map(|c| c.signing)
            .map_err(|e| {
                e.problems()
                    .iter()
                    .map(|p| (p.path.clone(), p.message.clone()))
                    .collect()
            })
    }

    fn problem_paths(yaml: &str) -> Vec<String> {
        signing(yaml)
            .unwrap_err()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    const OTHER: &str = "fedcba9876543210fedcba9876543210";
    const SID: &str = "sid-secret-0123456789abcdef0123456789";

    #[test]
    fn single_secret_is_hs256_without_kid_and_keys_sid() {
        let s = signing(&format!("  secret: {SECRET}\n")).unwrap();
        assert_eq!(s.algorithm, Algorithm::Hs256);
        assert_eq!(s.keys.len(), 1);
        assert_eq!(s.keys[0].id(), None);
        assert_eq!(s.sid_secret, s.secret);
        assert!(s.secret_fallbacks.is_empty() && !s.require_signed_updates);
        assert_eq!(s.hmac_secrets, vec![Secret::new(SECRET)]);
    }

    #[test]
    fn keys_rotate_with_the_first_signing_and_the_rest_opening_cookies() {
        let s = signing(&format!(
            "  keys:\n    - id: new\n      secret: {OTHER}\n    - id: old\n      secret: {SECRET}\n  secret_fallbacks: [\"{}\"]\n  sid_secret: {SID}\n",
            "x".repeat(32)
        ))
        .unwrap();
        let ids: Vec<_> = s.keys.iter().map(|k| k.id()).collect();
        assert_eq!(ids, vec![Some("new"), Some("old")]);
        assert_eq!(s.secret, Secret::new(OTHER), "the first key seals cookies");
        assert_eq!(
            s.secret_fallbacks,
            vec![Secret::new(SECRET), Secret::new("x".repeat(32))]
        );
        assert_eq!(s.sid_secret, Secret::new(SID));
    }

    #[test]
    fn key_list_mistakes_are_named_by_path() {
        let two = |a: &str, b: &str| {
            format!(
                "  keys:\n    - id: {a}\n      secret: {OTHER}\n    - id: {b}\n      secret: {SECRET}\n  sid_secret: {SID}\n"
            )
        };
        assert_eq!(problem_paths(&two("k1", "k1")), vec!["signing.keys[1].id"]);
        assert_eq!(
            problem_paths(&two("k1", "\"has space\"")),
            vec!["signing.keys[1].id"]
        );
        assert_eq!(
            problem_paths(&format!("  secret: {SECRET}\n{}", two("a", "b"))),
            vec!["signing.keys"],
            "secret and keys together"
        );
        assert_eq!(
            problem_paths(&format!(
                "  keys:\n    - id: a\n      secret: short\n  sid_secret: {SID}\n"
            )),
            vec!["signing.keys[0].secret"]
        );
        assert_eq!(
            problem_paths(&format!(
                "  keys:\n    - secret: {SECRET}\n  sid_secret: {SID}\n"
            )),
            vec!["signing.keys[0].id"]
        );
        assert_eq!(
            problem_paths(
                "  keys: []\n  sid_secret: {SID}\n"
                    .replace("{SID}", SID)
                    .as_str()
            ),
            vec!["signing.keys"]
        );
        let no_sid = two("a", "b").replace(&format!("  sid_secret: {SID}\n"), "");
        let err = signing(&no_sid).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].0, "signing.sid_secret");
        assert!(err[0].1.contains("keep today's sids"), "{}", err[0].1);
        assert_eq!(
            problem_paths(&format!(
                "  secret: {SECRET}\n  secret_fallbacks: [short]\n  sid_secret: {SID}\n"
            )),
            vec!["signing.secret_fallbacks[0]"]
        );
        assert_eq!(
            problem_paths(&format!(
                "  secret: {SECRET}\n  secret_fallbacks: [{OTHER}]\n"
            )),
            vec!["signing.sid_secret"],
            "fallbacks rotate the secret, so sid needs its own"
        );
        assert_eq!(
            problem_paths(&format!(
                "  secret: {SECRET}\n  private_key: k.pem\n  key_id: x\n"
            )),
            vec!["signing.private_key", "signing.key_id"]
        );
        assert_eq!(
            problem_paths(&format!("  secret: {SECRET}\n  algorithm: RS256\n")),
            vec!["signing.algorithm"]
        );
    }

    #[test]
    fn public_key_algorithms_load_their_key_file() {
        for (alg, name) in [(Algorithm::EdDsa, "EdDSA"), (Algorithm::Es256, "es256")] {
            let file = key_file(alg, name);
            let s = signing(&format!(
                "  algorithm: {name}\n  private_key: {}\n  key_id: main-1\n  secret: {SECRET}\n  require_signed_updates: true\n  update_secret: {OTHER}\n",
                file.display()
            ))
            .unwrap();
            assert_eq!(s.algorithm, alg);
            assert_eq!(s.keys[0].id(), Some("main-1"));
            assert_eq!(s.keys[0].algorithm(), alg);
            assert!(s.hmac_secrets.is_empty());
            assert_eq!(s.update_secret, Some(Secret::new(OTHER)));
            assert_eq!(s.sid_secret, Secret::new(SECRET));
            let without_id = signing(&format!(
                "  algorithm: {name}\n  private_key: {}\n  secret: {SECRET}\n",
                file.display()
            ))
            .unwrap();
            assert_eq!(
                without_id.keys[0].id().map(str::len),
                Some(43),
                "thumbprint kid"
            );
        }
    }

    #[test]
    fn public_key_mistakes_are_named_by_path() {
        let ed = key_file(Algorithm::EdDsa, "mistakes");
        let ed = ed.display();
        let one = |yaml: String| {
            let err = signing(&yaml).unwrap_err();
            assert_eq!(err.len(), 1, "{err:?}");
            err.into_iter().next().unwrap()
        };
        let (path, msg) = one(format!(
            "  algorithm: ES256\n  private_key: {ed}\n  secret: {SECRET}\n"
        ));
        assert_eq!(path, "signing.private_key");
        assert!(msg.contains("set signing.algorithm to EdDSA"), "{msg}");
        let (path, msg) = one(format!(
            "  algorithm: EdDSA\n  private_key: /nonexistent/k.pem\n  secret: {SECRET}\n"
        ));
        assert_eq!(path, "signing.private_key");
        assert!(msg.contains("cannot read /nonexistent/k.pem"), "{msg}");
        let (path, msg) = one(format!("  algorithm: EdDSA\n  secret: {SECRET}\n"));
        assert_eq!(path, "signing.private_key");
        assert!(msg.contains("openssl genpkey -algorithm ed25519"), "{msg}");
        let (path, msg) = one(format!("  algorithm: EdDSA\n  private_key: {ed}\n"));
        assert_eq!(path, "signing.secret");
        assert!(msg.contains("never given to the app"), "{msg}");
        let (path, _) = one(format!(
            "  algorithm: EdDSA\n  private_key: {ed}\n  secret: {SECRET}\n  require_signed_updates: true\n"
        ));
        assert_eq!(path, "signing.update_secret");
        let (path, msg) = one(format!(
            "  algorithm: EdDSA\n  private_key: {ed}\n  secret: {SECRET}\n  update_secret: {SECRET}\n"
        ));
        assert_eq!(path, "signing.update_secret");
        assert!(msg.contains("must differ"), "{msg}");
        let (path, _) = one(format!(
            "  algorithm: EdDSA\n  private_key: {ed}\n  secret: {SECRET}\n  keys:\n    - id: a\n      private_key: {ed}\n"
        ));
        assert_eq!(path, "signing.keys");
        let (path, _) = one(format!(
            "  algorithm: EdDSA\n  secret: {SECRET}\n  keys:\n    - id: a\n      secret: {OTHER}\n"
        ));
        assert_eq!(path, "signing.keys[0].secret");
        let s = signing(&format!(
            "  algorithm: EdDSA\n  secret: {SECRET}\n  keys:\n    - id: next\n      private_key: {ed}\n    - id: prev\n      private_key: {ed}\n"
        ))
        .unwrap();
        assert_eq!(
            s.keys.len(),
            2,
            "private key lists need no sid_secret: the secret does not rotate"
        );
    }

    #[test]
    fn every_signing_secret_is_redacted() {
        let yaml = format!(
            "  keys:\n    - id: a\n      secret: {SECRET}\n  secret_fallbacks: [{SECRET}]\n  sid_secret: {SECRET}\n  update_secret: {SECRET}\n"
        );
        let doc = format!("listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nsigning:\n{yaml}");
        let raw = RawConfig::from_yaml(&doc, &env(&[])).unwrap();
        assert!(!format!("{raw:?}").contains("0123"), "{raw:?}");
        let config = Config::try_from(raw).unwrap();
        assert!(!format!("{config:?}").contains("0123"), "{config:?}");
    }

    impl ConfigError {
        fn clone_problems(&self) -> ConfigError {
            ConfigError::Invalid(self.problems().to_vec())
        }
    }

    #[test]
    fn cidrs_match_their_networks_only() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(
            c("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")),
            "IPv4-mapped"
        );
        assert!(c("192.168.1.5").contains(ip("192.168.1.5")));
        assert!(!c("192.168.1.5").contains(ip("192.168.1.6")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(c("fd00::/8").contains(ip("fd12::1")));
        assert!(!c("fd00::/8").contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "nope", "::1/129", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let mut raw = RawConfig {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("http://127.0.0.1:1".into()),
            trusted_proxies: vec!["10.0.0.0/8".into(), "bad".into()],
            bypass: vec!["static".into(), "/".into(), "/assets/".into()],
            ..Default::default()
        };
        raw.signing.secret = Some("s".repeat(40));
        let paths: Vec<String> = Config::try_from(raw)
            .unwrap_err()
            .problems()
            .iter()
            .map(|p| p.path.clone())
            .collect();
        assert_eq!(paths, ["trusted_proxies[1]", "bypass[0]", "bypass[1]"]);
    }
}
