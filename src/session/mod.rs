//! Sessions: the key a client holds, the record a store keeps, the pure rules
//! that turn an upstream's requested changes into the next record, and the
//! [`SessionStore`] trait every store implements.

pub mod cookie;
mod key;
pub mod keyed;
pub mod memory;
pub mod redis;
pub mod sqlite;
mod wire;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

pub use key::{KeyHash, KeyHasher, SessionKey};
pub use keyed::{Backend, Keyed, ReadCache};
pub use wire::WireError;

/// Serialized session data: always a JSON object, kept as text so it can be
/// embedded in a token without serializing it again.
pub type Data = Box<str>;

/// The data of a session with nothing in it.
pub const EMPTY_DATA: &str = "{}";

/// How a session's lifetime is computed, Django's `set_expiry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// The configured default: `max_age`, with a browser-session cookie when
    /// `expire_at_browser_close` is set.
    Default,
    /// Browser-session cookie; the server still drops the session after `max_age`.
    BrowserClose,
    /// Expires after this many seconds without a write.
    Idle(u64),
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// JSON object text.
    pub data: Data,
    /// Unix seconds of creation (reset by flush).
    pub created_at: i64,
    /// Unix seconds after which the session is dead.
    pub expires_at: i64,
    /// How `expires_at` is computed on the next write.
    pub expiry: Expiry,
    /// Unix seconds of the last read or write, for `session.idle_timeout`.
    pub seen_at: i64,
    /// Who the session belongs to (`P-subject`), for `revoke-subject`.
    pub subject: Option<Box<str>>,
}

impl Record {
    /// Unix seconds at which the session dies: `expires_at`, or earlier when
    /// it goes unused for `idle` seconds.
    pub fn deadline(&self, idle: Option<u64>) -> i64 {
        match idle {
            Some(idle) => self.expires_at.min(
                self.seen_at
                    .saturating_add(i64::try_from(idle).unwrap_or(i64::MAX)),
            ),
            None => self.expires_at,
        }
    }

    /// Whether the session is alive at `now` under an idle timeout of `idle` seconds.
    pub fn is_live(&self, now: i64, idle: Option<u64>) -> bool {
        now < self.deadline(idle)
    }
}

/// The session rules from the configuration that the pure functions need.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Default lifetime in seconds.
    pub max_age: u64,
    /// Default expiry is browser-close.
    pub expire_at_browser_close: bool,
    /// Largest serialized data accepted.
    pub max_bytes: usize,
    /// Hard cap on a session's life from its creation, in seconds.
    pub absolute_timeout: Option<u64>,
}

impl Policy {
    /// Seconds the server keeps a session under `expiry` after a write.
    pub fn lifetime(&self, expiry: Expiry) -> u64 {
        match expiry {
            Expiry::Idle(secs) => secs,
            Expiry::Default | Expiry::BrowserClose => self.max_age,
        }
    }

    /// Whether the cookie should be a browser-session cookie (no Max-Age).
    pub fn is_browser_session(&self, expiry: Expiry) -> bool {
        match expiry {
            Expiry::BrowserClose => true,
            Expiry::Default => self.expire_at_browser_close,
            Expiry::Idle(_) => false,
        }
    }
}

/// What the upstream asked for with `P-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Delete the session; a later update starts a fresh one under a new key.
    Flush,
    /// New key, same data; the old key dies at once.
    Cycle,
    /// Delete every session of the current session's subject, this one
    /// included; a later update starts a fresh one under a new key.
    RevokeSubject,
}

/// Everything the upstream asked for in one response, in application order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// `P-action`.
    pub action: Option<Action>,
    /// `P-expiry`.
    pub expiry: Option<Expiry>,
    /// `P-update` merge patches, each a JSON object.
    pub patches: Vec<Value>,
    /// `P-subject`: `Some(None)` clears the subject.
    pub subject: Option<Option<Box<str>>>,
}

impl Changes {
    /// True when the upstream asked for nothing.
    pub fn is_empty(&self) -> bool {
        self.action.is_none()
            && self.expiry.is_none()
            && self.patches.is_empty()
            && self.subject.is_none()
    }
}

/// What [`apply`] decided the store must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing to store (no session and nothing but empty data).
    Nothing,
    /// Write this record, under a fresh key when `rekey` is set.
    Save {
        /// The new record.
        record: Record,
        /// Whether the session must move to a new key.
        rekey: bool,
    },
    /// The session ended up empty: delete it.
    Delete,
}

/// Why changes could not be applied; nothing is stored when this happens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The resulting data exceeds `session.max_bytes`.
    #[error("session data would be {size} bytes, over the limit of {max} (session.max_bytes)")]
    TooLarge {
        /// Serialized size.
        size: usize,
        /// Configured limit.
        max: usize,
    },
    /// Stored data is not a JSON object (a corrupt store entry).
    #[error("stored session data is not a JSON object: {0}")]
    Corrupt(String),
    /// The sealed session would need more cookies than `store.cookie.max_chunks`.
    #[error(
        "the session would take {size} bytes of cookies, over the {max} bytes that store.cookie.max_chunks allows"
    )]
    CookieTooLarge {
        /// Sealed size.
        size: usize,
        /// Bytes allowed.
        max: usize,
    },
    /// The upstream asked for something the configured store cannot do.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Applies `changes` to the current record (`None` for no session) at `now`:
/// action first, then expiry, then the merge patches in order.
pub fn apply(
    current: Option<&Record>,
    changes: &Changes,
    policy: &Policy,
    now: i64,
) -> Result<Next, ApplyError> {
    // `None` means "the current data, untouched": no need to parse it.
    let mut data: Option<Map<String, Value>> = None;
    let mut expiry = current.map_or(Expiry::Default, |r| r.expiry);
    let mut created_at = current.map_or(now, |r| r.created_at);
    let mut subject = current.and_then(|r| r.subject.clone());
    let mut rekey = false;

    match changes.action {
        // The proxy deletes the subject's sessions first; what is left to
        // do here is what a flush does.
        Some(Action::Flush | Action::RevokeSubject) => {
            data = Some(Map::new());
            expiry = Expiry::Default;
            created_at = now;
            subject = None;
            rekey = true;
        }
        Some(Action::Cycle) => rekey = true,
        None => {}
    }
    if let Some(e) = changes.expiry {
        expiry = e;
    }
    if let Some(s) = &changes.subject {
        subject = s.clone();
    }
    if !changes.patches.is_empty() {
        let base = match (data.take(), current) {
            (Some(map), _) => map,
            (None, Some(r)) => parse_data(&r.data)?,
            (None, None) => Map::new(),
        };
        let mut doc = Value::Object(base);
        for patch in &changes.patches {
            json_patch::merge(&mut doc, patch);
        }
        data = match doc {
            Value::Object(map) => Some(map),
            // Unreachable with object patches, which the protocol parser guarantees.
            other => {
                return Err(ApplyError::Corrupt(format!(
                    "merge produced {}",
                    json_kind(&other)
                )));
            }
        };
    }
    let text = data.map(|map| Value::Object(map).to_string());

    let text: Data = match (text, current) {
        (Some(t), _) => t.into_boxed_str(),
        (None, Some(r)) => r.data.clone(),
        (None, None) => EMPTY_DATA.into(),
    };
    if text.as_ref() == EMPTY_DATA {
        return Ok(if current.is_some() {
            Next::Delete
        } else {
            Next::Nothing
        });
    }
    if text.len() > policy.max_bytes {
        return Err(ApplyError::TooLarge {
            size: text.len(),
            max: policy.max_bytes,
        });
    }
    let lifetime = i64::try_from(policy.lifetime(expiry)).unwrap_or(i64::MAX);
    let mut expires_at = now.saturating_add(lifetime);
    if let Some(cap) = policy.absolute_timeout {
        let cap = created_at.saturating_add(i64::try_from(cap).unwrap_or(i64::MAX));
        expires_at = expires_at.min(cap);
    }
    Ok(Next::Save {
        record: Record {
            data: text,
            created_at,
            expires_at,
            expiry,
            seen_at: now,
            subject,
        },
        rekey: rekey && current.is_some(),
    })
}

fn parse_data(text: &str) -> Result<Map<String, Value>, ApplyError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApplyError::Corrupt(format!("found {}", json_kind(&other)))),
        Err(e) => Err(ApplyError::Corrupt(e.to_string())),
    }
}

/// "an array", "a string"...: what a JSON value is, for error messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A store failure: the store could not answer. Never read as "no session".
#[derive(Debug, thiserror::Error)]
#[error("session store {op} failed: {message}")]
pub struct StoreError {
    /// The operation that failed.
    pub op: &'static str,
    /// What the store said.
    pub message: String,
}

/// A live session's identity: its secret key and the cookie value that
/// carries it. For server-side stores the cookie is the key; for the cookie
/// store it is the sealed session and the key lives inside it.
#[derive(Clone, PartialEq, Eq)]
pub struct Handle {
    key: SessionKey,
    cookie: Box<str>,
}

impl Handle {
    /// A handle for `key`, sent to the client as `cookie`.
    pub fn new(key: SessionKey, cookie: impl Into<Box<str>>) -> Self {
        Self {
            key,
            cookie: cookie.into(),
        }
    }

    /// The secret key: stable for the session's life, changed by a cycle.
    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    /// The cookie value to send to the client.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handle({})", self.key.hash())
    }
}

/// A live session as a store hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its identity.
    pub handle: Handle,
    /// Its record.
    pub record: Arc<Record>,
    /// The cookie changed without a write (the cookie store refreshing an
    /// idle deadline): it must be sent again even if nothing else changes.
    pub refreshed: bool,
}

/// The result of [`SessionStore::update`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    /// The record was written under the same key.
    Saved(Loaded),
    /// The record was moved to a new key; the old one is gone.
    Moved(Loaded),
    /// The session was deleted.
    Deleted,
    /// The session was not there (expired or deleted concurrently): nothing written.
    Gone,
}

/// The edit an [`SessionStore::update`] runs against the record as it is at write time.
pub type Edit<'a> = dyn Fn(&Record) -> Result<Next, ApplyError> + Send + Sync + 'a;

/// Failure of an update: either the store failed or the edit refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The changes could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What a store can and cannot promise, for the proxy and the contract tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Delete, flush and cycle kill the old cookie at once (false for the
    /// cookie store: a copied cookie lives until it expires).
    pub revocable: bool,
    /// `revoke_subject` works: the store can find a subject's sessions.
    pub subject_index: bool,
}

/// A place sessions live. Every store keeps the same promises: keys are
/// never stored in the clear, expiry is honoured to the second with the
/// store's clock, an idle timeout slides on every read, and `update` is
/// atomic against concurrent updates of the same session.
#[async_trait]
pub trait SessionStore: Send + Sync + std::fmt::Debug {
    /// The live session a cookie value names, or `None` when the cookie is
    /// malformed, unknown or expired. Refreshes the idle deadline.
    async fn load(&self, cookie: &str) -> Result<Option<Loaded>, StoreError>;

    /// Stores a new session under a fresh key.
    async fn create(&self, record: Record) -> Result<Loaded, UpdateError>;

    /// Atomically runs `edit` on the current live record of `handle` and
    /// stores its result: in place, moved to a fresh key (the old key dies in
    /// the same step), or deleted. `may_rekey` is false when the edit cannot
    /// ask for a new key, which saves drawing one. Returns [`Updated::Gone`]
    /// when there is no live record.
    async fn update(
        &self,
        handle: &Handle,
        may_rekey: bool,
        edit: &Edit<'_>,
    ) -> Result<Updated, UpdateError>;

    /// Deletes the session; true if there was one.
    async fn delete(&self, handle: &Handle) -> Result<bool, StoreError>;

    /// Deletes every session tagged with `subject`; returns how many.
    async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError>;

    /// Number of live sessions (approximate for caching stores).
    async fn count(&self) -> Result<u64, StoreError>;

    /// Removes expired sessions now; returns how many.
    async fn purge(&self) -> Result<u64, StoreError>;

    /// Up to `limit` live sessions with their ids, in no set order, read
    /// without refreshing them: for operators (`sessionward sessions list`).
    async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError>;

    /// The live session under `id`, read without refreshing it.
    async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError>;

    /// Deletes the session under `id`; true if a live one was there.
    async fn delete_id(&self, id: &KeyHash) -> Result<bool, StoreError>;

    /// What this store promises.
    fn capabilities(&self) -> Capabilities;

    /// Checks that the store answers, for readiness probes. Cheap: one read.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const POLICY: Policy = Policy {
        max_age: 100,
        expire_at_browser_close: false,
        max_bytes: 64,
        absolute_timeout: None,
    };

    fn record(data: &str) -> Record {
        Record {
            data: data.into(),
            created_at: 10,
            expires_at: 110,
            expiry: Expiry::Default,
            seen_at: 10,
            subject: None,
        }
    }

    fn changes(action: Option<Action>, expiry: Option<Expiry>, patches: &[Value]) -> Changes {
        Changes {
            action,
            expiry,
            patches: patches.to_vec(),
            subject: None,
        }
    }

    fn saved(next: Next) -> (Record, bool) {
        match next {
            Next::Save { record, rekey } => (record, rekey),
            other => panic!("expected Save, got {other:?}"),
        }
    }

    #[test]
    fn no_session_and_no_data_stores_nothing() {
        let next = apply(
            None,
            &changes(Some(Action::Cycle), Some(Expiry::Idle(5)), &[]),
            &POLICY,
            50,
        );
        assert_eq!(next.unwrap(), Next::Nothing);
        let next = apply(
            None,
            &changes(None, None, &[json!({"a": null})]),
            &POLICY,
            50,
        );
        assert_eq!(next.unwrap(), Next::Nothing);
    }

    #[test]
    fn first_update_creates_with_default_lifetime() {
        let (r, rekey) =
            saved(apply(None, &changes(None, None, &[json!({"a": 1})]), &POLICY, 50).unwrap());
        assert_eq!(&*r.data, r#"{"a":1}"#);
        assert_eq!((r.created_at, r.expires_at, rekey), (50, 150, false));
    }

    #[test]
    fn merge_patch_deletes_and_merges_nested() {
        let cur = record(r#"{"a":1,"b":{"x":1,"y":2}}"#);
        let patch = json!({"a": null, "b": {"y": null, "z": 3}});
        let (r, _) = saved(apply(Some(&cur), &changes(None, None, &[patch]), &POLICY, 50).unwrap());
        assert_eq!(&*r.data, r#"{"b":{"x":1,"z":3}}"#);
    }

    #[test]
    fn patches_apply_in_order() {
        let p = [json!({"n": 1}), json!({"n": 2})];
        let (r, _) = saved(apply(None, &changes(None, None, &p), &POLICY, 0).unwrap());
        assert_eq!(&*r.data, r#"{"n":2}"#);
    }

    #[test]
    fn emptied_session_is_deleted() {
        let cur = record(r#"{"a":1}"#);
        let next = apply(
            Some(&cur),
            &changes(None, None, &[json!({"a": null})]),
            &POLICY,
            50,
        );
        assert_eq!(next.unwrap(), Next::Delete);
    }

    #[test]
    fn flush_then_update_is_a_fresh_session_under_a_new_key() {
        let mut cur = record(r#"{"user":"ann"}"#);
        cur.expiry = Expiry::Idle(7);
        let c = changes(Some(Action::Flush), None, &[json!({"flash": "bye"})]);
        let (r, rekey) = saved(apply(Some(&cur), &c, &POLICY, 50).unwrap());
        assert_eq!(&*r.data, r#"{"flash":"bye"}"#);
        assert_eq!((r.expiry, r.created_at, rekey), (Expiry::Default, 50, true));
        assert_eq!(
            apply(
                Some(&cur),
                &changes(Some(Action::Flush), None, &[]),
                &POLICY,
                50
            )
            .unwrap(),
            Next::Delete
        );
    }

    #[test]
    fn cycle_keeps_data_and_rekeys() {
        let cur = record(r#"{"a":1}"#);
        let c = changes(Some(Action::Cycle), None, &[json!({"user_id": 7})]);
        let (r, rekey) = saved(apply(Some(&cur), &c, &POLICY, 50).unwrap());
        assert_eq!(&*r.data, r#"{"a":1,"user_id":7}"#);
        assert!(rekey);
        assert_eq!(r.created_at, 10);
    }

    #[test]
    fn expiry_sets_lifetime_and_touch_refreshes() {
        let cur = record(r#"{"a":1}"#);
        let (r, _) = saved(
            apply(
                Some(&cur),
                &changes(None, Some(Expiry::Idle(30)), &[]),
                &POLICY,
                50,
            )
            .unwrap(),
        );
        assert_eq!((r.expires_at, r.expiry), (80, Expiry::Idle(30)));
        let (r, _) = saved(
            apply(
                Some(&cur),
                &changes(None, Some(Expiry::BrowserClose), &[]),
                &POLICY,
                50,
            )
            .unwrap(),
        );
        assert_eq!(
            r.expires_at, 150,
            "browser-close sessions still die after max_age"
        );
        let (r, _) = saved(apply(Some(&cur), &Changes::default(), &POLICY, 60).unwrap());
        assert_eq!((r.expires_at, &*r.data), (160, r#"{"a":1}"#));
    }

    #[test]
    fn too_large_is_refused() {
        let big = json!({"x": "y".repeat(100)});
        let err = apply(None, &changes(None, None, &[big]), &POLICY, 0).unwrap_err();
        assert!(matches!(err, ApplyError::TooLarge { max: 64, .. }), "{err}");
    }

    #[test]
    fn corrupt_stored_data_is_an_error_not_a_reset() {
        let cur = record("[1]");
        let err = apply(
            Some(&cur),
            &changes(None, None, &[json!({"a": 1})]),
            &POLICY,
            0,
        )
        .unwrap_err();
        assert!(matches!(err, ApplyError::Corrupt(_)));
    }

    #[test]
    fn browser_session_cookie_rules() {
        let p = Policy {
            expire_at_browser_close: true,
            ..POLICY
        };
        assert!(p.is_browser_session(Expiry::Default));
        assert!(!p.is_browser_session(Expiry::Idle(5)));
        assert!(POLICY.is_browser_session(Expiry::BrowserClose));
        assert!(!POLICY.is_browser_session(Expiry::Default));
    }
    #[test]
    fn absolute_timeout_caps_from_creation() {
        let p = Policy {
            absolute_timeout: Some(30),
            ..POLICY
        };
        let cur = record(r#"{"a":1}"#);
        let (r, _) = saved(apply(Some(&cur), &Changes::default(), &p, 20).unwrap());
        assert_eq!(r.expires_at, 40, "created at 10 + 30, not 20 + 100");
        let c = changes(Some(Action::Cycle), None, &[]);
        let (r, _) = saved(apply(Some(&cur), &c, &p, 20).unwrap());
        assert_eq!(r.expires_at, 40, "a cycle keeps the creation time");
        let c = changes(Some(Action::Flush), None, &[json!({"b": 1})]);
        let (r, _) = saved(apply(Some(&cur), &c, &p, 20).unwrap());
        assert_eq!(r.expires_at, 50, "a flush starts a new session");
    }

    #[test]
    fn idle_deadline_slides_with_seen_at() {
        let mut r = record("{}");
        assert_eq!(r.deadline(None), 110);
        assert_eq!(r.deadline(Some(30)), 40);
        assert!(r.is_live(39, Some(30)) && !r.is_live(40, Some(30)));
        r.seen_at = 100;
        assert_eq!(r.deadline(Some(30)), 110, "never past expires_at");
        assert_eq!(r.deadline(Some(u64::MAX)), 110);
    }

    #[test]
    fn subject_is_set_cleared_and_dropped_by_flush() {
        let mut c = changes(None, None, &[json!({"a": 1})]);
        c.subject = Some(Some("user:7".into()));
        let (r, _) = saved(apply(None, &c, &POLICY, 5).unwrap());
        assert_eq!(r.subject.as_deref(), Some("user:7"));
        assert_eq!(r.seen_at, 5);
        let (kept, _) = saved(apply(Some(&r), &Changes::default(), &POLICY, 6).unwrap());
        assert_eq!(kept.subject.as_deref(), Some("user:7"));
        let clear = Changes {
            subject: Some(None),
            ..Default::default()
        };
        assert!(!clear.is_empty());
        let (cleared, _) = saved(apply(Some(&r), &clear, &POLICY, 6).unwrap());
        assert_eq!(cleared.subject, None);
        let c = changes(Some(Action::RevokeSubject), None, &[json!({"f": 1})]);
        let (fresh, rekey) = saved(apply(Some(&r), &c, &POLICY, 7).unwrap());
        assert_eq!(
            (fresh.subject, &*fresh.data, rekey),
            (None, r#"{"f":1}"#, true)
        );
    }
}
