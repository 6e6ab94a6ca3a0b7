//! The cookie store: the whole session lives in the client's cookie, sealed
//! with AES-256-GCM, and the server keeps nothing.
//!
//! # What it guarantees
//!
//! - The client can neither read nor change its session: the data, subject
//!   and deadlines are encrypted and authenticated. A tampered, truncated or
//!   made-up cookie, one sealed under a secret this proxy does not know, or
//!   one moved to another cookie name (the name is the associated data) is
//!   no session.
//! - Expiry is enforced by the server from the sealed `expires_at` and idle
//!   deadline, to the second with the store's clock: keeping the cookie past
//!   its `Max-Age` does not keep the session alive.
//! - Each session carries a random [`SessionKey`] inside the seal; the
//!   token's `sid` is derived from it, so it is stable across writes and
//!   changes on cycle and flush, as with the server-side stores.
//! - With `session.idle_timeout`, a load in a later second moves `seen_at` to
//!   now and reissues the cookie ([`Loaded::refreshed`]).
//!
//! # What it cannot do
//!
//! - Revoke. Flush, cycle and delete only ask the browser to drop or replace
//!   its cookie; a copy (stolen, or simply kept by the client) stays valid
//!   until its sealed deadline. For the same reason a client can roll its own
//!   session back to an earlier cookie: never keep state there whose rollback
//!   helps the client (spent vouchers, attempt counters).
//!   `revoke-subject` is refused; `count` and `purge` answer 0.
//! - Make concurrent requests atomic. Two requests of one client read the
//!   same cookie and each answer with a new one: the browser keeps the last
//!   response's, and the other request's changes are lost (a cycle or flush
//!   can even be undone by a slower plain write). Server-side stores apply
//!   both updates; this one cannot.
//! - Hold much. The client sends the whole session with every request. A
//!   sealed value longer than [`CHUNK_BYTES`] is split over `name`,
//!   `name.1`, ... by the proxy; one longer than `store.cookie.max_chunks`
//!   times [`CHUNK_BYTES`] is refused with [`ApplyError::CookieTooLarge`]
//!   (the proxy answers 502 and applies nothing). Sealing adds 61 bytes
//!   (key, version, nonce, tag) plus the record's header line to the data,
//!   then base64 adds a third: 100 bytes of data make a 267-byte cookie.
//!   Keep sessions small.
//!
//! # Format
//!
//! `base64url-nopad(version || nonce || AES-256-GCM(plaintext) || tag)` with
//! version 1, a random 12-byte nonce per seal, the cookie name as associated
//! data and plaintext `session key (32 bytes) || Record::encode()`. The key is
//! derived from `signing.secret` with HKDF-SHA256 and a label naming the
//! version, so it is independent of the token's HMAC key and a future format
//! gets its own key.
//!
//! # Rotating the secret
//!
//! Seals always use `signing.secret` (with HS256 `signing.keys`, the first
//! key's secret). Opening also tries the fallbacks, in order: the other
//! HS256 keys' secrets, then `signing.secret_fallbacks`. So a new secret
//! takes over at once while cookies sealed under the old one keep their
//! sessions; each is sealed anew under the new secret on its next write.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use super::key::KEY_BYTES;
use super::{
    ApplyError, Capabilities, Edit, Handle, KeyHash, Loaded, Next, Record, SessionKey,
    SessionStore, StoreError, UpdateError, Updated,
};
use crate::clock::Clock;
use crate::config::{CookieStoreConfig, Secret};
use crate::cookies::CHUNK_BYTES;

/// First byte of every sealed value: the format version.
const VERSION: u8 = 1;
/// HKDF info: names the use and the format, so no other key ever equals this one.
const LABEL: &[u8] = b"sessionward cookie store v1";
/// AES-GCM's tag: the full 16 bytes.
const TAG_LEN: usize = aead::MAX_TAG_LEN;
/// Version byte and nonce, in the clear before the ciphertext.
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// Sessions sealed into the client's cookie.
pub struct CookieStore {
    /// `None` only if key derivation failed, which ring rules out for a
    /// 32-byte output; every operation then fails instead of panicking.
    key: Option<LessSafeKey>,
    /// Keys from older secrets: they open cookies but never seal one.
    fallbacks: Vec<LessSafeKey>,
    /// The cookie name, the associated data of every seal.
    name: Box<str>,
    /// Longest sealed value: `max_chunks` cookies' worth.
    max: usize,
    idle: Option<u64>,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
}

impl std::fmt::Debug for CookieStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieStore")
            .field("name", &self.name)
            .field("max", &self.max)
            .field("idle", &self.idle)
            .field("fallbacks", &self.fallbacks.len())
            .finish_non_exhaustive()
    }
}

impl CookieStore {
    /// A store sealing with a key derived from `secret`, bound to the cookie's `name`.
    pub fn new(
        config: &CookieStoreConfig,
        name: &str,
        secret: &Secret,
        idle: Option<u64>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            key: derive_key(secret.expose()),
            fallbacks: Vec::new(),
            name: name.into(),
            max: config.max_chunks.max(1).saturating_mul(CHUNK_BYTES),
            idle,
            clock,
            rng: SystemRandom::new(),
        }
    }

    /// Also opens cookies sealed under `secrets` (older secrets, tried in order).
    pub fn with_fallbacks(mut self, secrets: &[Secret]) -> Self {
        self.fallbacks = secrets
            .iter()
            .filter_map(|s| derive_key(s.expose()))
            .collect();
        self
    }

    fn aead_key(&self, op: &'static str) -> Result<&LessSafeKey, StoreError> {
        self.key
            .as_ref()
            .ok_or_else(|| failure(op, "the cookie key could not be derived"))
    }

    /// Seals `record` under `key` into a cookie value, refusing one over `max`.
    fn seal(
        &self,
        key: &SessionKey,
        record: &Record,
        op: &'static str,
    ) -> Result<String, UpdateError> {
        let text = record.encode();
        let size = sealed_len(KEY_BYTES + text.len());
        // Checked before sealing: the size is known up front, and a refused
        // session costs no encryption and no randomness.
        if size > self.max {
            return Err(ApplyError::CookieTooLarge {
                size,
                max: self.max,
            }
            .into());
        }
        let aead_key = self.aead_key(op)?;
        // Random nonces: ~2^-33 chance of any repeat after 2^32 seals under
        // one secret (n^2 / 2^97), the bound NIST SP 800-38D sets.
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| failure(op, "the OS random generator failed"))?;
        let mut buf = Vec::with_capacity(HEADER_LEN + KEY_BYTES + text.len() + TAG_LEN);
        buf.push(VERSION);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(&key_bytes(key, op)?);
        // No compression, on purpose: compressing data the upstream fills
        // from user input next to secrets, then encrypting, leaks the
        // secrets through the ciphertext's size (CRIME/BREACH).
        buf.extend_from_slice(text.as_bytes());
        let tag = aead_key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.name.as_bytes()),
                &mut buf[HEADER_LEN..],
            )
            .map_err(|_| failure(op, "sealing failed"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(URL_SAFE_NO_PAD.encode(&buf))
    }

    /// The key and record sealed in `value`; `None` for anything this store
    /// did not seal under this name and its secret or a fallback. Liveness
    /// is not checked.
    fn open(
        &self,
        value: &str,
        op: &'static str,
    ) -> Result<Option<(SessionKey, Record)>, StoreError> {
        let aead_key = self.aead_key(op)?;
        // Nothing longer was ever issued: no work for oversized garbage.
        if value.len() > self.max {
            return Ok(None);
        }
        let Ok(mut bytes) = URL_SAFE_NO_PAD.decode(value) else {
            return Ok(None);
        };
        if bytes.len() < HEADER_LEN + KEY_BYTES + TAG_LEN || bytes[0] != VERSION {
            return Ok(None);
        }
        // A failed open leaves the buffer unspecified: older keys each get a
        // fresh copy, kept only when there are older keys.
        let original = (!self.fallbacks.is_empty()).then(|| bytes.clone());
        let mut opened = open_with(aead_key, &self.name, &mut bytes);
        if opened.is_none()
            && let Some(original) = original
        {
            for key in &self.fallbacks {
                bytes.clone_from(&original);
                opened = open_with(key, &self.name, &mut bytes);
                if opened.is_some() {
                    break;
                }
            }
        }
        let Some(len) = opened else {
            return Ok(None);
        };
        let Some(plain) = bytes.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let Some((key, text)) = plain.split_at_checked(KEY_BYTES) else {
            return Ok(None);
        };
        let Some(key) = SessionKey::parse(&URL_SAFE_NO_PAD.encode(key)) else {
            return Ok(None);
        };
        // Authentic but unreadable can only be another version's plaintext
        // under a reused label: still no session, never a panic.
        let record = std::str::from_utf8(text)
            .ok()
            .and_then(|t| Record::decode(t).ok());
        Ok(record.map(|r| (key, r)))
    }

    fn loaded(key: SessionKey, cookie: String, record: Record, refreshed: bool) -> Loaded {
        Loaded {
            handle: Handle::new(key, cookie),
            record: Arc::new(record),
            refreshed,
        }
    }
}

/// The AES-256-GCM key for `secret`: HKDF-SHA256, no salt, info [`LABEL`].
fn derive_key(secret: &[u8]) -> Option<LessSafeKey> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(secret);
    let okm = prk.expand(&[LABEL], &aead::AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Opens the sealed value in `bytes` in place under `key`; the plaintext's
/// length (it starts at [`HEADER_LEN`]), or `None` if `key` did not seal it.
fn open_with(key: &LessSafeKey, name: &str, bytes: &mut [u8]) -> Option<usize> {
    let (head, sealed) = bytes.split_at_mut(HEADER_LEN);
    let nonce = Nonce::try_assume_unique_for_key(head.get(1..)?).ok()?;
    key.open_in_place(nonce, Aad::from(name.as_bytes()), sealed)
        .ok()
        .map(|plain| plain.len())
}

/// Length of the cookie value sealing `plain_len` bytes of plaintext.
fn sealed_len(plain_len: usize) -> usize {
    base64::encoded_len(HEADER_LEN + plain_len + TAG_LEN, false).unwrap_or(usize::MAX)
}

/// The raw bytes of `key`. `SessionKey` shows only its cookie form, so this
/// goes through base64; the round trip cannot fail for a key we hold.
fn key_bytes(key: &SessionKey, op: &'static str) -> Result<[u8; KEY_BYTES], StoreError> {
    let mut out = [0u8; KEY_BYTES];
    match URL_SAFE_NO_PAD.decode_slice(key.encode(), &mut out) {
        Ok(KEY_BYTES) => Ok(out),
        _ => Err(failure(op, "a session key did not decode to 32 bytes")),
    }
}

fn generate(op: &'static str) -> Result<SessionKey, StoreError> {
    SessionKey::generate().ok_or_else(|| failure(op, "the OS random generator failed"))
}

fn failure(op: &'static str, message: &str) -> StoreError {
    StoreError {
        op,
        message: message.into(),
    }
}

#[async_trait]
impl SessionStore for CookieStore {
    async fn load(&self, cookie: &str) -> Result<Option<Loaded>, StoreError> {
        let Some((key, mut record)) = self.open(cookie, "load")? else {
            return Ok(None);
        };
        let now = self.clock.now();
        if !record.is_live(now, self.idle) {
            return Ok(None);
        }
        // The idle deadline lives in the cookie: sliding it means a new cookie.
        // At most once a second per client, since seen_at has whole seconds.
        if self.idle.is_some() && record.seen_at < now {
            let seen_at = record.seen_at;
            record.seen_at = now;
            match self.seal(&key, &record, "load") {
                Ok(sealed) => return Ok(Some(Self::loaded(key, sealed, record, true))),
                Err(UpdateError::Store(e)) => return Err(e),
                // Only when seen_at gained a digit at the very size limit:
                // keep the old cookie, which dies at its old idle deadline.
                Err(UpdateError::Apply(_)) => record.seen_at = seen_at,
            }
        }
        Ok(Some(Self::loaded(key, cookie.to_owned(), record, false)))
    }

    async fn create(&self, record: Record) -> Result<Loaded, UpdateError> {
        let key = generate("create")?;
        let sealed = self.seal(&key, &record, "create")?;
        Ok(Self::loaded(key, sealed, record, false))
    }

    /// Runs `edit` on the record sealed in the handle's cookie. Atomic only
    /// within this request: see the module documentation on concurrency.
    async fn update(
        &self,
        handle: &Handle,
        _may_rekey: bool,
        edit: &Edit<'_>,
    ) -> Result<Updated, UpdateError> {
        let Some((key, current)) = self.open(handle.cookie(), "update")? else {
            return Ok(Updated::Gone);
        };
        // The same liveness rule as the server-side stores at write time.
        if key != *handle.key() || !current.is_live(self.clock.now(), self.idle) {
            return Ok(Updated::Gone);
        }
        Ok(match edit(&current)? {
            Next::Nothing => Updated::Saved(Loaded {
                handle: handle.clone(),
                record: Arc::new(current),
                refreshed: false,
            }),
            Next::Save {
                record,
                rekey: false,
            } => {
                let sealed = self.seal(&key, &record, "update")?;
                Updated::Saved(Self::loaded(key, sealed, record, false))
            }
            // Drawn here rather than on `may_rekey`: a key costs nothing to
            // hold back, and a requested rekey is never skipped.
            Next::Save {
                record,
                rekey: true,
            } => {
                let key = generate("update")?;
                let sealed = self.seal(&key, &record, "update")?;
                Updated::Moved(Self::loaded(key, sealed, record, false))
            }
            Next::Delete => Updated::Deleted,
        })
    }

    /// Nothing to delete server-side: the proxy expires the cookie. Copies
    /// of it stay valid until their sealed deadline.
    async fn delete(&self, _: &Handle) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Always an error: sessions live in clients, with no index by subject.
    /// The proxy checks [`Capabilities::subject_index`] before calling.
    async fn revoke_subject(&self, _: &str) -> Result<u64, StoreError> {
        Err(failure(
            "revoke_subject",
            "the cookie store keeps no index of sessions by subject; it cannot revoke them",
        ))
    }

    /// Always 0: the store cannot see sessions held by clients.
    async fn count(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Always 0: expired cookies are ignored on load; nothing is stored to purge.
    async fn purge(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn list(&self, _: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
        Err(in_browsers("list"))
    }

    async fn peek(&self, _: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
        Err(in_browsers("peek"))
    }

    async fn delete_id(&self, _: &KeyHash) -> Result<bool, StoreError> {
        Err(in_browsers("delete"))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            revocable: false,
            subject_index: false,
        }
    }
}

/// The cookie store cannot reach a session by id: each lives in its browser.
fn in_browsers(op: &'static str) -> StoreError {
    StoreError {
        op,
        message: "the cookie store keeps every session sealed in its browser's cookie: \
                  the server holds none to list, show or delete (rotate signing.secret \
                  to end them all)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::session::{Action, Changes, Expiry, Policy, apply};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const SECRET: &str = "unit-test-secret-0123456789-abcdefghij";

    fn store_with(
        secret: &str,
        name: &str,
        max_chunks: usize,
        idle: Option<u64>,
    ) -> (CookieStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(NOW));
        let store = CookieStore::new(
            &CookieStoreConfig { max_chunks },
            name,
            &Secret::new(secret.as_bytes()),
            idle,
            clock.clone(),
        );
        (store, clock)
    }

    fn store() -> (CookieStore, Arc<ManualClock>) {
        store_with(SECRET, "sessionid", 4, None)
    }

    fn record(data: &str) -> Record {
        Record {
            data: data.into(),
            created_at: NOW,
            expires_at: NOW + 100,
            expiry: Expiry::Default,
            seen_at: NOW,
            subject: None,
        }
    }

    const POLICY: Policy = Policy {
        max_age: 100,
        expire_at_browser_close: false,
        max_bytes: 1 << 20,
        absolute_timeout: None,
    };

    fn changes(action: Option<Action>, patch: Option<serde_json::Value>) -> Changes {
        Changes {
            action,
            patches: patch.into_iter().collect(),
            ..Default::default()
        }
    }

    async fn update(store: &CookieStore, handle: &Handle, c: &Changes) -> Updated {
        let now = store.clock.now();
        let edit = |r: &Record| apply(Some(r), c, &POLICY, now);
        store
            .update(handle, c.action.is_some(), &edit)
            .await
            .unwrap()
    }

    async fn live(store: &CookieStore, cookie: &str) -> Option<Loaded> {
        store.load(cookie).await.unwrap()
    }

    #[tokio::test]
    async fn round_trip_and_format() {
        let (s, _) = store();
        let r = Record {
            subject: Some("user:7".into()),
            expiry: Expiry::Idle(50),
            ..record(r#"{"user":"ann","n":[1,2]}"#)
        };
        let created = s.create(r.clone()).await.unwrap();
        assert!(!created.refreshed);
        let cookie = created.handle.cookie();
        let bytes = URL_SAFE_NO_PAD.decode(cookie).unwrap();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(
            bytes.len(),
            HEADER_LEN + KEY_BYTES + r.encode().len() + TAG_LEN
        );
        assert_eq!(cookie.len(), sealed_len(KEY_BYTES + r.encode().len()));
        assert!(!cookie.contains("ann"), "the data is encrypted");

        let loaded = live(&s, cookie).await.expect("the cookie opens");
        assert_eq!(*loaded.record, r);
        assert_eq!(loaded.handle, created.handle);
        assert!(!loaded.refreshed, "no idle timeout, no refresh");

        // Same record sealed twice: fresh nonces, different cookies.
        let again = s.seal(created.handle.key(), &r, "test").unwrap();
        assert_ne!(again, cookie);
        assert_eq!(
            live(&s, &again).await.unwrap().handle.key(),
            created.handle.key()
        );

        // A write keeps the key and reseals the new record.
        let c = changes(None, Some(json!({"n": null})));
        let Updated::Saved(saved) = update(&s, &loaded.handle, &c).await else {
            panic!("expected Saved");
        };
        assert_eq!(saved.handle.key(), created.handle.key());
        assert_ne!(saved.handle.cookie(), cookie);
        let reread = live(&s, saved.handle.cookie()).await.unwrap();
        assert_eq!(&*reread.record.data, r#"{"user":"ann"}"#);
        assert_eq!(reread.record.subject.as_deref(), Some("user:7"));
    }

    #[tokio::test]
    async fn any_flipped_byte_or_character_is_no_session() {
        let (s, _) = store();
        let cookie = s.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        let cookie = cookie.cookie();
        let bytes = URL_SAFE_NO_PAD.decode(cookie).unwrap();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let forged = URL_SAFE_NO_PAD.encode(&b);
                assert!(live(&s, &forged).await.is_none(), "byte {i} bit {bit:#x}");
            }
        }
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for i in 0..cookie.len() {
            let mut c = cookie.as_bytes().to_vec();
            c[i] = alphabet[(alphabet.iter().position(|&a| a == c[i]).unwrap() + 1) % 64];
            let forged = String::from_utf8(c).unwrap();
            assert!(live(&s, &forged).await.is_none(), "character {i}");
        }
        for forged in [
            &cookie[..cookie.len() - 1],
            &cookie[1..],
            &format!("{cookie}A"),
            &format!("{cookie}="),
            "",
        ] {
            assert!(live(&s, forged).await.is_none(), "{forged:.20}");
        }
        assert!(live(&s, cookie).await.is_some(), "the original still opens");
    }

    #[tokio::test]
    async fn another_secret_is_no_session() {
        let (a, _) = store();
        let (b, _) = store_with(
            "another-secret-0123456789-abcdefghijk",
            "sessionid",
            4,
            None,
        );
        let cookie = a.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        assert!(live(&b, cookie.cookie()).await.is_none());
        assert!(live(&a, cookie.cookie()).await.is_some());
    }

    #[tokio::test]
    async fn fallback_secrets_open_but_never_seal() {
        const OLD: &str = "another-secret-0123456789-abcdefghijk";
        let (old, _) = store_with(OLD, "sessionid", 4, None);
        let sealed_before = old.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        let (rotated, _) = store();
        let rotated = rotated.with_fallbacks(&[
            Secret::new("unrelated-secret-0123456789-abcdefghij"),
            Secret::new(OLD),
        ]);
        let loaded = live(&rotated, sealed_before.cookie()).await.expect("opens");
        assert_eq!(&*loaded.record.data, r#"{"a":1}"#);
        // Its next write is sealed under the new secret alone.
        let c = changes(None, Some(json!({"b": 2})));
        let Updated::Saved(saved) = update(&rotated, &loaded.handle, &c).await else {
            panic!("expected Saved");
        };
        let (new_only, _) = store();
        assert!(live(&new_only, saved.handle.cookie()).await.is_some());
        assert!(live(&old, saved.handle.cookie()).await.is_none());
        // Tampering is still caught under every key.
        let mut bytes = URL_SAFE_NO_PAD.decode(sealed_before.cookie()).unwrap();
        bytes[HEADER_LEN] ^= 1;
        assert!(
            live(&rotated, &URL_SAFE_NO_PAD.encode(&bytes))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn another_cookie_name_is_no_session() {
        let (a, _) = store();
        let (b, _) = store_with(SECRET, "othersession", 4, None);
        let cookie = a.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        assert!(live(&b, cookie.cookie()).await.is_none());
    }

    #[test]
    fn the_aes_key_is_derived_not_the_raw_secret() {
        // Sealing with the raw secret as the AES key must not open our cookies.
        let secret = Secret::new(SECRET.as_bytes());
        let derived = derive_key(secret.expose()).unwrap();
        let raw =
            LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, &secret.expose()[..32]).unwrap());
        let mut a = b"same plaintext".to_vec();
        let mut b = a.clone();
        let n = [0u8; NONCE_LEN];
        let ta = derived
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut a)
            .unwrap();
        let tb = raw
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::empty(), &mut b)
            .unwrap();
        assert_ne!((a, ta.as_ref().to_vec()), (b, tb.as_ref().to_vec()));
    }

    #[tokio::test]
    async fn expiry_is_honoured_to_the_second() {
        let (s, clock) = store();
        let cookie = s.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        clock.advance(99);
        assert!(
            live(&s, cookie.cookie()).await.is_some(),
            "alive at expires_at - 1"
        );
        clock.advance(1);
        assert!(
            live(&s, cookie.cookie()).await.is_none(),
            "dead at expires_at"
        );
        // And the write path agrees: no resurrecting a dead cookie.
        let c = changes(None, Some(json!({"b": 2})));
        assert_eq!(update(&s, &cookie, &c).await, Updated::Gone);
    }

    #[tokio::test]
    async fn idle_timeout_refreshes_by_reissuing_the_cookie() {
        let (s, clock) = store_with(SECRET, "sessionid", 4, Some(30));
        let created = s.create(record(r#"{"a":1}"#)).await.unwrap();
        let same_second = live(&s, created.handle.cookie()).await.unwrap();
        assert!(!same_second.refreshed, "seen this second: nothing to slide");
        assert_eq!(same_second.handle.cookie(), created.handle.cookie());

        clock.advance(20);
        let refreshed = live(&s, created.handle.cookie()).await.unwrap();
        assert!(refreshed.refreshed);
        assert_eq!(refreshed.record.seen_at, NOW + 20);
        assert_eq!(refreshed.handle.key(), created.handle.key());
        assert_ne!(refreshed.handle.cookie(), created.handle.cookie());

        clock.advance(10);
        assert!(
            live(&s, created.handle.cookie()).await.is_none(),
            "the old cookie dies 30 s after its seen_at"
        );
        let later = live(&s, refreshed.handle.cookie()).await.unwrap();
        assert_eq!(later.record.seen_at, NOW + 30);
        clock.advance(29);
        assert!(live(&s, later.handle.cookie()).await.is_some());
        clock.advance(1);
        assert!(live(&s, later.handle.cookie()).await.is_none());
    }

    #[tokio::test]
    async fn cycle_changes_the_key_and_keeps_the_data() {
        let (s, _) = store();
        let old = s.create(record(r#"{"a":1}"#)).await.unwrap();
        let c = changes(Some(Action::Cycle), Some(json!({"user": 7})));
        let Updated::Moved(moved) = update(&s, &old.handle, &c).await else {
            panic!("expected Moved");
        };
        assert_ne!(moved.handle.key(), old.handle.key());
        let reread = live(&s, moved.handle.cookie()).await.unwrap();
        assert_eq!(reread.handle.key(), moved.handle.key());
        assert_eq!(&*reread.record.data, r#"{"a":1,"user":7}"#);
        // Not revocable: the old cookie still opens until it expires.
        assert!(live(&s, old.handle.cookie()).await.is_some());
        assert!(!s.capabilities().revocable);
    }

    #[tokio::test]
    async fn flush_deletes_nothing_keeps_and_no_index_operations() {
        let (s, _) = store();
        let h = s.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        let c = changes(Some(Action::Flush), None);
        assert_eq!(update(&s, &h, &c).await, Updated::Deleted);
        let nothing = |_: &Record| Ok(Next::Nothing);
        let Updated::Saved(same) = s.update(&h, false, &nothing).await.unwrap() else {
            panic!("expected Saved");
        };
        assert_eq!((&same.handle, &*same.record), (&h, &record(r#"{"a":1}"#)));
        assert!(s.delete(&h).await.unwrap());
        let err = s.revoke_subject("user:7").await.unwrap_err();
        assert!(err.to_string().contains("no index"), "{err}");
        assert_eq!((s.count().await.unwrap(), s.purge().await.unwrap()), (0, 0));
        assert!(!s.capabilities().subject_index);
    }

    #[tokio::test]
    async fn too_large_is_refused_at_the_exact_limit() {
        let (s, _) = store_with(SECRET, "sessionid", 1, None);
        let (mut fits, mut refused) = (0, 0);
        for n in 2700..2900 {
            let r = record(&format!(r#"{{"x":"{}"}}"#, "y".repeat(n)));
            let expected = sealed_len(KEY_BYTES + r.encode().len());
            match s.create(r).await {
                Ok(l) => {
                    assert_eq!(l.handle.cookie().len(), expected);
                    assert!(expected <= CHUNK_BYTES);
                    fits += 1;
                }
                Err(UpdateError::Apply(ApplyError::CookieTooLarge { size, max })) => {
                    assert_eq!((size, max), (expected, CHUNK_BYTES));
                    assert!(size > CHUNK_BYTES);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(fits > 0 && refused > 0, "{fits} fit, {refused} refused");

        // An update that grows past the limit is refused; the old cookie stands.
        let h = s.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        let c = changes(None, Some(json!({"big": "z".repeat(3000)})));
        let now = s.clock.now();
        let edit = |r: &Record| apply(Some(r), &c, &POLICY, now);
        let err = s.update(&h, false, &edit).await.unwrap_err();
        assert!(
            matches!(
                err,
                UpdateError::Apply(ApplyError::CookieTooLarge {
                    max: CHUNK_BYTES,
                    ..
                })
            ),
            "{err}"
        );
        assert_eq!(
            &*live(&s, h.cookie()).await.unwrap().record.data,
            r#"{"a":1}"#
        );
    }

    #[tokio::test]
    async fn unicode_data_and_subject_round_trip() {
        let (s, _) = store();
        let r = Record {
            subject: Some("Zoë 🦀\nx".into()),
            ..record(r#"{"ü":"ß","crab":"🦀","quote":"\"\n","nul":"\u0000"}"#)
        };
        let h = s.create(r.clone()).await.unwrap().handle;
        assert_eq!(*live(&s, h.cookie()).await.unwrap().record, r);
    }

    #[tokio::test]
    async fn a_hundred_bytes_of_data_make_a_267_byte_cookie() {
        let (s, _) = store();
        let data = format!(r#"{{"k":"{}"}}"#, "v".repeat(92));
        assert_eq!(data.len(), 100);
        let h = s.create(record(&data)).await.unwrap().handle;
        assert_eq!(h.cookie().len(), 267);
    }

    #[tokio::test]
    async fn random_strings_never_panic() {
        let (s, _) = store();
        let valid = s.create(record(r#"{"a":1}"#)).await.unwrap().handle;
        let valid = valid.cookie().as_bytes();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/. \"%";
        for round in 0..4000 {
            let value: Vec<u8> = match round % 3 {
                // Random text in (mostly) the base64url alphabet, any length.
                0 => (0..next() % 400)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect(),
                // Random bytes, base64url-encoded: always decodes, never opens.
                1 => {
                    let raw: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
                    let mut raw = raw;
                    if let Some(b) = raw.first_mut() {
                        *b = VERSION;
                    }
                    URL_SAFE_NO_PAD.encode(raw).into_bytes()
                }
                // The valid cookie, cut and with a few characters changed.
                _ => {
                    let mut v = valid[..(next() as usize % (valid.len() + 1))].to_vec();
                    for _ in 0..1 + next() % 3 {
                        if !v.is_empty() {
                            let i = next() as usize % v.len();
                            v[i] = alphabet[(next() % 64) as usize];
                        }
                    }
                    v
                }
            };
            let value = String::from_utf8_lossy(&value);
            if value.as_bytes() == valid {
                continue;
            }
            assert!(live(&s, &value).await.is_none(), "{value}");
        }
    }
}
