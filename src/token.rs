//! The session token sent upstream: a JWS compact JWT that any JWT library
//! verifies, signed with HS256 (a shared secret), EdDSA (Ed25519) or ES256
//! (ECDSA P-256), plus the keys that derive `sid` and check signed updates.
//!
//! Built by hand from base64 and ring because the header is a constant per
//! key and the data is already JSON text: no re-serializing the session on
//! the hot path. HS256 tokens carry the request's method and path and are
//! signed per request (an HMAC costs about a microsecond). Public-key tokens
//! describe the session only and are reused per session version until half
//! their ttl has passed, so a signature is not paid on every request.

use std::cell::RefCell;
use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use moka::sync::Cache;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use ring::{digest, hmac};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{Secret, SigningConfig};

/// `iss` of every token.
pub const ISSUER: &str = "sessionward";

/// base64url of `{"alg":"HS256","typ":"JWT"}`: the header of a key without an id.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Random bytes in a `jti`: 128 bits, so two tokens never share one.
const JTI_BYTES: usize = 16;
/// Length of a `jti`: 16 bytes in base64url without padding.
pub const JTI_LEN: usize = 22;

/// Bytes of tokens and session data the reuse cache of one signer (one per
/// worker thread) may hold. A full 8 KB session costs about 19 KB (token
/// plus the data it is compared with), a 100-byte one about 700 bytes, so
/// this keeps some 1,700 large or 45,000 small sessions; the others are
/// signed again, which is only slower.
const REUSE_CACHE_BYTES: u64 = 32 << 20;

/// The JWS algorithm tokens are signed with (`signing.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256 with a secret the app shares.
    Hs256,
    /// Ed25519; the app holds only the public key.
    EdDsa,
    /// ECDSA P-256 with SHA-256; the app holds only the public key.
    Es256,
}

impl Algorithm {
    /// The JOSE name, as in the token header's `alg`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Es256 => "ES256",
        }
    }

    /// The algorithm a configuration names, in any case.
    pub fn parse(name: &str) -> Option<Self> {
        [Algorithm::Hs256, Algorithm::EdDsa, Algorithm::Es256]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name.trim()))
    }

    /// Whether tokens are verified with a public key (EdDSA, ES256).
    pub fn is_public_key(self) -> bool {
        self != Algorithm::Hs256
    }
}

/// The secret half of a token key.
#[derive(Clone)]
enum Material {
    Hmac(hmac::Key),
    Ed25519(Arc<Ed25519KeyPair>),
    Es256(Arc<EcdsaKeyPair>),
}

/// One key that signs or verifies tokens, with its `kid`.
#[derive(Clone)]
pub struct TokenKey {
    id: Option<Box<str>>,
    material: Material,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// Why a private key file cannot sign tokens.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// No PEM private key in the file.
    #[error("{path} holds no PEM private key ({reason})")]
    NotPem {
        /// The file.
        path: String,
        /// What the PEM reader said.
        reason: String,
    },
    /// A PEM key of the wrong kind or curve.
    #[error("{path}: {reason}")]
    WrongKey {
        /// The file.
        path: String,
        /// What is wrong, with the fix.
        reason: String,
    },
}

impl TokenKey {
    /// An HS256 key; `id`, when given, is sent as `kid`.
    pub fn hmac(id: Option<&str>, secret: &Secret) -> Self {
        Self {
            id: id.map(Into::into),
            material: Material::Hmac(hmac::Key::new(hmac::HMAC_SHA256, secret.expose())),
        }
    }

    /// An EdDSA or ES256 key read from a PKCS#8 PEM file. Without `id`, the
    /// `kid` is the key's RFC 7638 JWK thumbprint.
    pub fn load(alg: Algorithm, id: Option<&str>, path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Unreadable {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(alg, id, &pem).map_err(|e| match e {
            KeyError::NotPem { reason, .. } => KeyError::NotPem {
                path: path.display().to_string(),
                reason,
            },
            KeyError::WrongKey { reason, .. } => KeyError::WrongKey {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// [`TokenKey::load`] from the PEM text itself (errors name the file `(pem)`).
    pub fn from_pem(alg: Algorithm, id: Option<&str>, pem: &[u8]) -> Result<Self, KeyError> {
        let wrong = |reason: String| KeyError::WrongKey {
            path: "(pem)".into(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::NotPem {
            path: "(pem)".into(),
            reason: e.to_string(),
        })?;
        let pkcs8 = match der {
            PrivateKeyDer::Pkcs8(k) => k,
            PrivateKeyDer::Sec1(_) => {
                return Err(wrong(
                    "is a SEC1 key (BEGIN EC PRIVATE KEY); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`".into(),
                ));
            }
            PrivateKeyDer::Pkcs1(_) => {
                return Err(wrong(format!(
                    "is an RSA key; {} needs {}",
                    alg.name(),
                    key_advice(alg)
                )));
            }
            _ => return Err(wrong("is not a PKCS#8 private key".into())),
        };
        let der = pkcs8.secret_pkcs8_der();
        let rng = SystemRandom::new();
        let ed = || Ed25519KeyPair::from_pkcs8_maybe_unchecked(der);
        let es =
            || EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng);
        let material = match alg {
            Algorithm::Hs256 => {
                return Err(wrong(
                    "HS256 signs with a secret, not a private key file".into(),
                ));
            }
            Algorithm::EdDsa => match ed() {
                Ok(k) => Material::Ed25519(Arc::new(k)),
                Err(e) if es().is_ok() => {
                    return Err(wrong(format!(
                        "is a P-256 key ({e}): set signing.algorithm to ES256, or use {}",
                        key_advice(alg)
                    )));
                }
                Err(e) => {
                    return Err(wrong(format!(
                        "is not an Ed25519 key ({e}); EdDSA needs {}",
                        key_advice(alg)
                    )));
                }
            },
            Algorithm::Es256 => match es() {
                Ok(k) => Material::Es256(Arc::new(k)),
                Err(e) if ed().is_ok() => {
                    return Err(wrong(format!(
                        "is an Ed25519 key ({e}): set signing.algorithm to EdDSA, or use {}",
                        key_advice(alg)
                    )));
                }
                Err(e) => {
                    return Err(wrong(format!(
                        "is not a P-256 key ({e}); ES256 needs {}",
                        key_advice(alg)
                    )));
                }
            },
        };
        let mut key = Self { id: None, material };
        key.id = Some(match id {
            Some(id) => id.into(),
            None => key.thumbprint().into(),
        });
        Ok(key)
    }

    /// The `kid` sent in token headers, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self.material {
            Material::Hmac(_) => Algorithm::Hs256,
            Material::Ed25519(_) => Algorithm::EdDsa,
            Material::Es256(_) => Algorithm::Es256,
        }
    }

    /// base64url of this key's JOSE header, computed once per key.
    fn header_b64(&self) -> String {
        match (&self.material, &self.id) {
            (Material::Hmac(_), None) => HEADER_B64.into(),
            (_, id) => {
                let mut header = format!(r#"{{"alg":"{}","typ":"JWT""#, self.algorithm().name());
                if let Some(id) = id {
                    header.push_str(r#","kid":"#);
                    header.push_str(&Value::from(id.as_ref()).to_string());
                }
                header.push('}');
                URL_SAFE_NO_PAD.encode(header)
            }
        }
    }

    /// The JWK members that identify the public key (RFC 7638 order), `None` for a secret.
    fn public_members(&self) -> Option<Vec<(&'static str, String)>> {
        match &self.material {
            Material::Hmac(_) => None,
            Material::Ed25519(k) => Some(vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", URL_SAFE_NO_PAD.encode(k.public_key().as_ref())),
            ]),
            Material::Es256(k) => {
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let coords = k.public_key().as_ref().get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(coords.len() / 2);
                Some(vec![
                    ("crv", "P-256".into()),
                    ("kty", "EC".into()),
                    ("x", URL_SAFE_NO_PAD.encode(x)),
                    ("y", URL_SAFE_NO_PAD.encode(y)),
                ])
            }
        }
    }

    /// RFC 7638 thumbprint: base64url SHA-256 of the required members,
    /// sorted, without whitespace. Empty for a secret.
    fn thumbprint(&self) -> String {
        let Some(members) = self.public_members() else {
            return String::new();
        };
        let fields: Vec<String> = members
            .iter()
            .map(|(k, v)| format!(r#""{k}":"{v}""#))
            .collect();
        let canonical = format!("{{{}}}", fields.join(","));
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    /// The public JWK, `None` for a secret (secrets are never published).
    fn jwk(&self) -> Option<Value> {
        let mut jwk: Map<String, Value> = self
            .public_members()?
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        if let Some(id) = &self.id {
            jwk.insert("kid".into(), Value::from(id.as_ref()));
        }
        jwk.insert("alg".into(), self.algorithm().name().into());
        jwk.insert("use".into(), "sig".into());
        Some(Value::Object(jwk))
    }

    fn sign(&self, rng: &SystemRandom, input: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(match &self.material {
            Material::Hmac(k) => hmac::sign(k, input).as_ref().to_vec(),
            Material::Ed25519(k) => k.sign(input).as_ref().to_vec(),
            Material::Es256(k) => k
                .sign(rng, input)
                .map_err(|_| SignError::Random)?
                .as_ref()
                .to_vec(),
        })
    }

    fn verify(&self, input: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Hmac(k) => hmac::verify(k, input, sig).is_ok(),
            Material::Ed25519(k) => UnparsedPublicKey::new(&signature::ED25519, k.public_key())
                .verify(input, sig)
                .is_ok(),
            Material::Es256(k) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, k.public_key())
                    .verify(input, sig)
                    .is_ok()
            }
        }
    }
}

/// How to make a key for `alg`, for error messages.
fn key_advice(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDsa => "an Ed25519 key: `openssl genpkey -algorithm ed25519 -out signing.pem`",
        _ => {
            "a P-256 key in PKCS#8: `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out signing.pem`"
        }
    }
}

/// The claims of a token about to be signed, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct Claims<'a> {
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Stable opaque session id, `None` without a session.
    pub sid: Option<&'a str>,
    /// True when there is no stored session.
    pub new: bool,
    /// Session data: JSON object text.
    pub data: &'a str,
    /// When the session expires, unix seconds.
    pub expires: Option<i64>,
    /// The session's subject (`P-subject`), if the upstream set one.
    pub sub: Option<&'a str>,
    /// Request method (HS256 tokens only).
    pub method: &'a str,
    /// Request path and query (HS256 tokens only).
    pub path: &'a str,
}

/// OS randomness for `jti`s, 64 at a time: one `getrandom` call costs about
/// as much as the HMAC of a small token, so one per request would add half
/// again to HS256 signing.
const JTI_POOL_BYTES: usize = JTI_BYTES * 64;

thread_local! {
    /// Random bytes not yet handed out, and how many of them are used.
    static JTI_POOL: RefCell<([u8; JTI_POOL_BYTES], usize)> =
        const { RefCell::new(([0; JTI_POOL_BYTES], JTI_POOL_BYTES)) };
}

/// A token's unique id: 16 random bytes in base64url.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Jti([u8; JTI_LEN]);

impl Jti {
    /// The id as sent in the `jti` claim.
    pub fn as_str(&self) -> &str {
        // Always base64url ASCII; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// A fresh id from this thread's pool of OS randomness.
    fn random(rng: &SystemRandom) -> Result<Self, SignError> {
        let raw = JTI_POOL
            .try_with(|pool| {
                let mut pool = pool.try_borrow_mut().map_err(|_| SignError::Random)?;
                let (bytes, used) = &mut *pool;
                if *used + JTI_BYTES > bytes.len() {
                    rng.fill(bytes).map_err(|_| SignError::Random)?;
                    *used = 0;
                }
                let mut raw = [0u8; JTI_BYTES];
                let taken = bytes
                    .get_mut(*used..*used + JTI_BYTES)
                    .ok_or(SignError::Random)?;
                raw.copy_from_slice(taken);
                // Handed out once: never again from this pool.
                taken.fill(0);
                *used += JTI_BYTES;
                Ok(raw)
            })
            .map_err(|_| SignError::Random)??;
        let mut out = [0u8; JTI_LEN];
        match URL_SAFE_NO_PAD.encode_slice(raw, &mut out) {
            Ok(JTI_LEN) => Ok(Self(out)),
            _ => Err(SignError::Random),
        }
    }
}

impl fmt::Debug for Jti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token ready to go upstream, with the `jti` it carries.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The compact JWT as a header value (cheap to clone: shared bytes).
    pub token: HeaderValue,
    /// Its `jti`, which signed updates refer to.
    pub jti: Jti,
}

/// Why a token could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The OS random generator failed (for the `jti` or an ECDSA nonce).
    #[error("the OS random generator failed")]
    Random,
    /// The signer has no key (cannot happen for a validated configuration).
    #[error("no signing key configured")]
    NoKey,
    /// The token is not a valid header value (cannot happen: it is base64url).
    #[error("the token is not a valid header value")]
    Header,
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or not the header of a known key.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// The claims are not what sessionward issues.
    #[error("unexpected claims: {0}")]
    Claims(String),
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VerifiedClaims {
    /// Issuer, always `sessionward`.
    pub iss: String,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// Unique token id, which signed updates refer to.
    pub jti: String,
    /// Session id or `None`.
    pub sid: Option<String>,
    /// No stored session.
    pub new: bool,
    /// Session data.
    pub data: Map<String, Value>,
    /// Session expiry, unix seconds.
    pub expires: Option<i64>,
    /// Subject, when the session has one.
    #[serde(default)]
    pub sub: Option<String>,
    /// Request method; empty in public-key tokens, which do not carry it.
    #[serde(default)]
    pub method: String,
    /// Request path and query; empty in public-key tokens, which do not carry it.
    #[serde(default)]
    pub path: String,
}

/// A key with its header, encoded once.
#[derive(Clone)]
struct Keyed {
    key: TokenKey,
    header_b64: Box<str>,
}

/// A public-key token kept for reuse, with the session claims it was signed for.
struct Reusable {
    issued: Issued,
    iat: i64,
    new: bool,
    data: Box<str>,
    expires: Option<i64>,
    sub: Option<Box<str>>,
}

impl Reusable {
    /// Whether this token says exactly what `claims` would, and has at
    /// least half its ttl left at `claims.iat`.
    fn serves(&self, claims: &Claims<'_>, ttl: i64) -> bool {
        self.iat <= claims.iat
            && claims.iat.saturating_sub(self.iat) < ttl / 2
            && self.new == claims.new
            && self.expires == claims.expires
            && self.sub.as_deref() == claims.sub
            && *self.data == *claims.data
    }
}

/// Reused public-key tokens, keyed by `sid` (`""` for no session).
struct Reuse {
    cache: Cache<Box<str>, Arc<Reusable>>,
    /// Whether requests without a session share one token. Not with signed
    /// updates: an update signed for one visitor's `jti` must not apply to
    /// another visitor who happens to hold the same token.
    share_anonymous: bool,
}

/// Keys HMAC-SHA256 update signatures (`P-signature`) may be made with.
#[derive(Clone)]
pub struct UpdateKeys(Vec<hmac::Key>);

impl fmt::Debug for UpdateKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpdateKeys(<{} redacted>)", self.0.len())
    }
}

impl UpdateKeys {
    /// Keys from `secrets`; the first is the one [`UpdateKeys::sign_hex`] uses.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        Self(
            secrets
                .into_iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose()))
                .collect(),
        )
    }

    /// Whether `tag` is HMAC-SHA256 of `message` under any of the keys (constant time each).
    pub fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        self.0.iter().any(|k| hmac::verify(k, message, tag).is_ok())
    }

    /// Lowercase hex HMAC-SHA256 of `message` under the first key: what the app sends.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        let Some(key) = self.0.first() else {
            return String::new();
        };
        hmac::sign(key, message)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Signs tokens, derives session ids and holds the update-signature keys.
pub struct Signer {
    /// The first signs; all verify (HS256) or are published (public keys).
    keys: Vec<Keyed>,
    sid_key: hmac::Key,
    /// `Some` with `signing.require_signed_updates`.
    update_keys: Option<UpdateKeys>,
    ttl: i64,
    /// Public-key algorithms only.
    reuse: Option<Reuse>,
    rng: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm())
            .field(
                "kids",
                &self.keys.iter().map(|k| k.key.id()).collect::<Vec<_>>(),
            )
            .field("ttl", &self.ttl)
            .field("signed_updates", &self.update_keys.is_some())
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// An HS256 signer keyed by `secret` (no `kid`) whose tokens live `ttl_secs`.
    pub fn new(secret: &Secret, ttl_secs: u64) -> Self {
        Self::build(
            vec![TokenKey::hmac(None, secret)],
            secret,
            None,
            ttl_secs,
            false,
        )
    }

    /// The signer a validated `signing:` section describes.
    pub fn from_config(config: &SigningConfig) -> Self {
        let update_keys = config.require_signed_updates.then(|| config.update_keys());
        Self::build(
            config.keys.clone(),
            &config.sid_secret,
            update_keys,
            config.token_ttl,
            config.algorithm.is_public_key(),
        )
    }

    fn build(
        keys: Vec<TokenKey>,
        sid_secret: &Secret,
        update_keys: Option<UpdateKeys>,
        ttl_secs: u64,
        reuse: bool,
    ) -> Self {
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        let reuse = reuse.then(|| Reuse {
            cache: Cache::<Box<str>, Arc<Reusable>>::builder()
                .max_capacity(REUSE_CACHE_BYTES)
                .weigher(|sid, r| {
                    let bytes = sid.len() + r.data.len() + r.issued.token.len() + 128;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                // Memory only: whether a token still serves is decided by
                // the injected clock in `Reusable::serves`.
                .time_to_live(Duration::from_secs(ttl_secs.div_ceil(2).max(1)))
                .build(),
            share_anonymous: update_keys.is_none(),
        });
        Self {
            keys: keys
                .into_iter()
                .map(|key| Keyed {
                    header_b64: key.header_b64().into(),
                    key,
                })
                .collect(),
            sid_key: hmac::Key::new(hmac::HMAC_SHA256, sid_secret.expose()),
            update_keys,
            ttl,
            reuse,
            rng: SystemRandom::new(),
        }
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.keys
            .first()
            .map_or(Algorithm::Hs256, |k| k.key.algorithm())
    }

    /// Keys that `P-signature` is checked against; `None` unless
    /// `signing.require_signed_updates` is on.
    pub fn update_keys(&self) -> Option<&UpdateKeys> {
        self.update_keys.as_ref()
    }

    /// The session id the upstream sees: base64url of the first 16 bytes of
    /// HMAC-SHA256(sid secret, "sid:" + key as in the cookie). Takes the
    /// cookie text because that is what the request already holds.
    pub fn sid(&self, cookie_key: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.sid_key);
        ctx.update(b"sid:");
        ctx.update(cookie_key.as_bytes());
        URL_SAFE_NO_PAD.encode(&ctx.sign().as_ref()[..16])
    }

    /// The JWKS document (RFC 7517) of every public key, for apps to verify
    /// EdDSA and ES256 tokens; `{"keys":[]}` for HS256, whose secrets are
    /// never published. Served at `/.well-known/jwks.json` on the admin listener.
    pub fn jwks(&self) -> String {
        let keys: Vec<Value> = self.keys.iter().filter_map(|k| k.key.jwk()).collect();
        serde_json::json!({ "keys": keys }).to_string()
    }

    /// The token for a request: a fresh one for HS256; for EdDSA and ES256
    /// the one already signed for this session version while it has half
    /// its ttl left (`claims.method` and `claims.path` are not used there).
    pub fn issue(&self, claims: &Claims<'_>) -> Result<Issued, SignError> {
        let Some(reuse) = self.reuse.as_ref().filter(|_| self.ttl / 2 > 0) else {
            return self.fresh(claims);
        };
        let slot = match claims.sid {
            Some(sid) => sid,
            None if reuse.share_anonymous => "",
            None => return self.fresh(claims),
        };
        if let Some(kept) = reuse.cache.get(slot)
            && kept.serves(claims, self.ttl)
        {
            return Ok(kept.issued.clone());
        }
        let issued = self.fresh(claims)?;
        reuse.cache.insert(
            slot.into(),
            Arc::new(Reusable {
                issued: issued.clone(),
                iat: claims.iat,
                new: claims.new,
                data: claims.data.into(),
                expires: claims.expires,
                sub: claims.sub.map(Into::into),
            }),
        );
        Ok(issued)
    }

    /// A freshly signed token as text, never reused; empty only if the OS
    /// random generator failed. For tests and tools: the proxy uses [`Signer::issue`].
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        self.sign_text(claims).map(|(t, _)| t).unwrap_or_default()
    }

    fn fresh(&self, claims: &Claims<'_>) -> Result<Issued, SignError> {
        let (token, jti) = self.sign_text(claims)?;
        let token = HeaderValue::try_from(token).map_err(|_| SignError::Header)?;
        Ok(Issued { token, jti })
    }

    fn sign_text(&self, claims: &Claims<'_>) -> Result<(String, Jti), SignError> {
        let jti = Jti::random(&self.rng)?;
        Ok((self.sign_as(claims, jti)?, jti))
    }

    /// The token for `claims` with this `jti`.
    fn sign_as(&self, claims: &Claims<'_>, jti: Jti) -> Result<String, SignError> {
        let key = self.keys.first().ok_or(SignError::NoKey)?;
        let per_request = !key.key.algorithm().is_public_key();
        let mut payload = Vec::with_capacity(200 + claims.data.len() + claims.path.len());
        // Writing to a Vec cannot fail; the results are ignored on purpose.
        let _ = write!(
            payload,
            r#"{{"iss":"{ISSUER}","iat":{},"exp":{},"jti":"{}","sid":"#,
            claims.iat,
            claims.iat.saturating_add(self.ttl),
            jti.as_str(),
        );
        match claims.sid {
            Some(sid) => {
                let _ = serde_json::to_writer(&mut payload, sid);
            }
            None => payload.extend_from_slice(b"null"),
        }
        let _ = write!(payload, r#","new":{},"data":"#, claims.new);
        payload.extend_from_slice(claims.data.as_bytes());
        match claims.expires {
            Some(t) => {
                let _ = write!(payload, r#","expires":{t}"#);
            }
            None => payload.extend_from_slice(br#","expires":null"#),
        }
        // Absent rather than null: `sub` is a registered claim that JWT
        // libraries type-check as a string when present.
        if let Some(sub) = claims.sub {
            payload.extend_from_slice(br#","sub":"#);
            let _ = serde_json::to_writer(&mut payload, sub);
        }
        // A reused token serves many requests: it cannot name one of them.
        if per_request {
            payload.extend_from_slice(br#","method":"#);
            let _ = serde_json::to_writer(&mut payload, claims.method);
            payload.extend_from_slice(br#","path":"#);
            let _ = serde_json::to_writer(&mut payload, claims.path);
        }
        payload.push(b'}');

        let mut token =
            String::with_capacity(key.header_b64.len() + 2 + payload.len() * 4 / 3 + 90);
        token.push_str(&key.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = key.key.sign(&self.rng, token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig, &mut token);
        Ok(token)
    }

    /// Verifies a token as an app would: signature (with the key its header
    /// names), issuer and expiry at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedClaims, TokenError> {
        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header_b64, payload_b64) =
            signing_input.split_once('.').ok_or(TokenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| *k.header_b64 == *header_b64)
            .ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TokenError::Malformed)?;
        if !key.key.verify(signing_input.as_bytes(), &sig) {
            return Err(TokenError::BadSignature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| TokenError::Malformed)?;
        let claims: VerifiedClaims =
            serde_json::from_slice(&payload).map_err(|e| TokenError::Claims(e.to_string()))?;
        if claims.iss != ISSUER {
            return Err(TokenError::Claims(format!("iss is {:?}", claims.iss)));
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::session::SessionKey;

    fn signer() -> Signer {
        Signer::new(&Secret::new("k".repeat(32)), 60)
    }

    fn claims<'a>(data: &'a str, path: &'a str) -> Claims<'a> {
        Claims {
            iat: 1000,
            sid: Some("abc"),
            new: false,
            data,
            expires: Some(2000),
            sub: None,
            method: "GET",
            path,
        }
    }

    #[test]
    fn header_constant_is_the_documented_header() {
        let h = URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap();
        assert_eq!(h, br#"{"alg":"HS256","typ":"JWT"}"#);
    }

    #[test]
    fn sign_then_verify_round_trips_every_claim() {
        let s = signer();
        let t = s.sign(&claims(r#"{"n":1,"u":"é"}"#, "/a?b=\"c\"\\"));
        let c = s.verify(&t, 1001).unwrap();
        assert_eq!(c.iss, "sessionward");
        assert_eq!((c.iat, c.exp, c.expires), (1000, 1060, Some(2000)));
        assert_eq!(c.sid.as_deref(), Some("abc"));
        assert!(!c.new);
        assert_eq!(c.data["u"], "é");
        assert_eq!(c.path, "/a?b=\"c\"\\");
        assert_eq!(c.method, "GET");
    }

    #[test]
    fn null_sid_and_expires_serialize_as_null() {
        let s = signer();
        let mut cl = claims("{}", "/");
        cl.sid = None;
        cl.expires = None;
        cl.new = true;
        let c = s.verify(&s.sign(&cl), 1000).unwrap();
        assert_eq!((c.sid, c.expires, c.new), (None, None, true));
    }

    #[test]
    fn tampering_expiry_and_other_keys_are_rejected() {
        let s = signer();
        let t = s.sign(&claims("{}", "/"));
        assert_eq!(s.verify(&t, 1060), Err(TokenError::Expired));
        let other = Signer::new(&Secret::new("j".repeat(32)), 60);
        assert_eq!(other.verify(&t, 1001), Err(TokenError::BadSignature));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"iss":"sessionward","data":{"admin":true}}"#);
        parts[1] = &forged;
        assert_eq!(
            s.verify(&parts.join("."), 1001),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify("a.b", 1001), Err(TokenError::Malformed));
    }

    #[test]
    fn sid_is_stable_per_key_and_differs_between_keys() {
        let s = signer();
        let k1 = SessionKey::generate().unwrap();
        let k2 = SessionKey::generate().unwrap();
        let (k1, k2) = (k1.encode(), k2.encode());
        assert_eq!(s.sid(&k1), s.sid(&k1));
        assert_ne!(s.sid(&k1), s.sid(&k2));
        assert_eq!(s.sid(&k1).len(), 22);
        let mut mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &[b'k'; 32]));
        mac.update(format!("sid:{k1}").as_bytes());
        assert_eq!(
            s.sid(&k1),
            URL_SAFE_NO_PAD.encode(&mac.sign().as_ref()[..16])
        );
    }

    /// The example of docs/protocol.md, sections 2 and 3.3, byte for byte.
    #[test]
    fn documented_example_token_is_reproduced() {
        let s = Signer::new(
            &Secret::new("example-secret-do-not-use-0123456789abcdef"),
            60,
        );
        let sid = s.sid("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
        assert_eq!(sid, "Fdm09BMNnatoeUWL2ygRTQ");
        let claims = Claims {
            iat: 1_767_225_600,
            sid: Some(&sid),
            new: false,
            data: r#"{"cart":[3,7],"user_id":42}"#,
            expires: Some(1_768_434_600),
            sub: None,
            method: "GET",
            path: "/account?tab=orders",
        };
        let jti = Jti(*b"ehyT5LIPXY5mwakEfzstGA");
        assert_eq!(
            s.sign_as(&claims, jti).unwrap(),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJpc3MiOiJzZXNzaW9ud2FyZCIsImlhdCI6MTc2NzIyNTYwMCwiZXhwIjoxNzY3MjI1NjYwLCJqdGkiOiJlaHlUNUxJUFhZNW13YWtFZnpzdEdBIiwic2lkIjoiRmRtMDlCTU5uYXRvZVVXTDJ5Z1JUUSIsIm5ldyI6ZmFsc2UsImRhdGEiOnsiY2FydCI6WzMsN10sInVzZXJfaWQiOjQyfSwiZXhwaXJlcyI6MTc2ODQzNDYwMCwibWV0aG9kIjoiR0VUIiwicGF0aCI6Ii9hY2NvdW50P3RhYj1vcmRlcnMifQ.\
             JHK_8BBm849E-RC_Qersnu1jjaYnpuV1O8S5ZosBmko"
        );
    }

    // -- Rotation, public keys and reuse -----------------------------------

    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
        -----END PRIVATE KEY-----\n";

    fn pem(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// A fresh PKCS#8 PEM key for `alg`.
    pub(crate) fn generated_pem(alg: Algorithm) -> String {
        let rng = SystemRandom::new();
        let der = match alg {
            Algorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng).unwrap(),
            _ => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap(),
        };
        pem(der.as_ref())
    }

    fn public_signer(alg: Algorithm, update: bool) -> Signer {
        let key = TokenKey::from_pem(alg, None, generated_pem(alg).as_bytes()).unwrap();
        let secret = Secret::new("s".repeat(32));
        let updates = update.then(|| UpdateKeys::new([&secret]));
        Signer::build(vec![key], &secret, updates, 60, true)
    }

    fn decode_part(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn every_token_has_a_fresh_22_character_jti() {
        let s = signer();
        let a = s.verify(&s.sign(&claims("{}", "/")), 1001).unwrap().jti;
        let b = s.verify(&s.sign(&claims("{}", "/")), 1001).unwrap().jti;
        assert_eq!((a.len(), b.len()), (JTI_LEN, JTI_LEN));
        assert_ne!(a, b);
        let issued = s.issue(&claims("{}", "/")).unwrap();
        let c = s.verify(issued.token.to_str().unwrap(), 1001).unwrap();
        assert_eq!(c.jti, issued.jti.as_str());
        // Across several refills of the thread's pool, never a repeat.
        let rng = SystemRandom::new();
        let many: std::collections::HashSet<String> = (0..1000)
            .map(|_| Jti::random(&rng).unwrap().as_str().to_string())
            .collect();
        assert_eq!(many.len(), 1000);
        assert!(
            many.iter()
                .all(|j| j.len() == JTI_LEN && !j.starts_with("AAAAAAAA"))
        );
    }

    #[test]
    fn rotated_hs256_keys_carry_their_kid_and_all_verify() {
        let (new, old) = (Secret::new("n".repeat(32)), Secret::new("o".repeat(32)));
        let keys = vec![
            TokenKey::hmac(Some("2025-06"), &new),
            TokenKey::hmac(Some("2025-01"), &old),
        ];
        let s = Signer::build(keys, &old, None, 60, false);
        let t = s.sign(&claims("{}", "/"));
        assert_eq!(
            decode_part(&t, 0),
            serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "2025-06"})
        );
        // An app holding only the new secret verifies the signature.
        let (input, sig) = t.rsplit_once('.').unwrap();
        let k = hmac::Key::new(hmac::HMAC_SHA256, new.expose());
        hmac::verify(&k, input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
        // A token signed by the old key alone still verifies under the rotated signer.
        let before = Signer::build(
            vec![TokenKey::hmac(Some("2025-01"), &old)],
            &old,
            None,
            60,
            false,
        );
        assert!(s.verify(&before.sign(&claims("{}", "/")), 1001).is_ok());
        assert_eq!(s.jwks(), r#"{"keys":[]}"#, "secrets are never published");
    }

    #[test]
    fn ed25519_and_es256_tokens_verify_with_the_published_jwk() {
        for alg in [Algorithm::EdDsa, Algorithm::Es256] {
            let s = public_signer(alg, false);
            let t = s.sign(&claims(r#"{"u":1}"#, "/x"));
            let header = decode_part(&t, 0);
            assert_eq!(header["alg"], alg.name());
            let jwks: Value = serde_json::from_str(&s.jwks()).unwrap();
            let jwk = &jwks["keys"][0];
            assert_eq!(jwk["kid"], header["kid"], "{alg:?}");
            assert_eq!((&jwk["alg"], &jwk["use"]), (&header["alg"], &"sig".into()));
            let b64 = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
            let (public, verify_alg): (Vec<u8>, &dyn signature::VerificationAlgorithm) = match alg {
                Algorithm::EdDsa => {
                    assert_eq!(
                        (&jwk["kty"], &jwk["crv"]),
                        (&"OKP".into(), &"Ed25519".into())
                    );
                    (b64("x"), &signature::ED25519)
                }
                _ => {
                    assert_eq!((&jwk["kty"], &jwk["crv"]), (&"EC".into(), &"P-256".into()));
                    (
                        [&[4u8][..], &b64("x"), &b64("y")].concat(),
                        &signature::ECDSA_P256_SHA256_FIXED,
                    )
                }
            };
            let (input, sig) = t.rsplit_once('.').unwrap();
            UnparsedPublicKey::new(verify_alg, &public)
                .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
                .unwrap();
            let c = s.verify(&t, 1001).unwrap();
            assert_eq!(c.data["u"], 1);
            let payload = decode_part(&t, 1);
            assert!(payload.get("method").is_none() && payload.get("path").is_none());
            assert_eq!((c.method.as_str(), c.path.as_str()), ("", ""));
        }
    }

    #[test]
    fn default_kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A: its Ed25519 key (A.1, as PKCS#8 v1 like
        // `openssl genpkey` writes), public key (A.2) and thumbprint (A.3).
        let k = TokenKey::from_pem(Algorithm::EdDsa, None, ED25519_PEM.as_bytes()).unwrap();
        assert_eq!(k.id(), Some("kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"));
        let jwk = k.jwk().unwrap();
        assert_eq!(jwk["x"], "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let named = TokenKey::from_pem(Algorithm::EdDsa, Some("ed-1"), ED25519_PEM.as_bytes());
        assert_eq!(named.unwrap().id(), Some("ed-1"));
    }

    #[test]
    fn wrong_key_types_are_refused_with_the_fix() {
        let ed = generated_pem(Algorithm::EdDsa);
        let es = generated_pem(Algorithm::Es256);
        let err = |alg, pem: &str| {
            TokenKey::from_pem(alg, None, pem.as_bytes())
                .unwrap_err()
                .to_string()
        };
        assert!(err(Algorithm::Es256, &ed).contains("set signing.algorithm to EdDSA"));
        assert!(err(Algorithm::EdDsa, &es).contains("set signing.algorithm to ES256"));
        assert!(err(Algorithm::EdDsa, "not a key").contains("no PEM private key"));
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(err(Algorithm::Es256, sec1).contains("openssl pkcs8 -topk8"));
        assert!(err(Algorithm::Hs256, &ed).contains("secret"));
    }

    #[test]
    fn public_key_tokens_are_reused_per_session_version_until_half_ttl() {
        let s = public_signer(Algorithm::EdDsa, false);
        let at = |iat, data| Claims {
            iat,
            ..claims(data, "/ignored")
        };
        let first = s.issue(&at(1000, r#"{"v":1}"#)).unwrap();
        // Same version, other request, 29 s later: the very same token.
        let mut other = at(1029, r#"{"v":1}"#);
        other.method = "POST";
        other.path = "/elsewhere";
        let again = s.issue(&other).unwrap();
        assert_eq!(again.token, first.token);
        assert_eq!(again.jti, first.jti);
        // Half the ttl (30 s) has passed: a new token, which is then reused.
        let later = s.issue(&at(1030, r#"{"v":1}"#)).unwrap();
        assert_ne!(later.token, first.token);
        assert_eq!(s.issue(&at(1031, r#"{"v":1}"#)).unwrap().token, later.token);
        // A new version (data, expiry or subject) gets its own token at once.
        let v2 = s.issue(&at(1031, r#"{"v":2}"#)).unwrap();
        assert_ne!(v2.token, later.token);
        assert_eq!(
            s.verify(v2.token.to_str().unwrap(), 1031).unwrap().data["v"],
            2
        );
        let mut expires = at(1031, r#"{"v":2}"#);
        expires.expires = Some(3000);
        assert_ne!(s.issue(&expires).unwrap().token, v2.token);
        let mut sub = expires;
        sub.sub = Some("user:1");
        let with_sub = s.issue(&sub).unwrap();
        assert_eq!(
            s.verify(with_sub.token.to_str().unwrap(), 1031)
                .unwrap()
                .sub
                .as_deref(),
            Some("user:1")
        );
        // Other sessions never get this session's token.
        let mut elsewhere = sub;
        elsewhere.sid = Some("xyz");
        assert_ne!(s.issue(&elsewhere).unwrap().token, with_sub.token);
        // A clock that went back never reuses a token from its future.
        assert_ne!(s.issue(&at(999, r#"{"v":1}"#)).unwrap().token, later.token);
    }

    #[test]
    fn anonymous_tokens_are_shared_unless_updates_are_signed() {
        let anon = |iat| Claims {
            iat,
            sid: None,
            new: true,
            data: "{}",
            expires: None,
            sub: None,
            method: "GET",
            path: "/",
        };
        let shared = public_signer(Algorithm::Es256, false);
        let a = shared.issue(&anon(1000)).unwrap();
        assert_eq!(shared.issue(&anon(1010)).unwrap().token, a.token);
        let signed = public_signer(Algorithm::Es256, true);
        let b = signed.issue(&anon(1000)).unwrap();
        assert_ne!(signed.issue(&anon(1000)).unwrap().jti, b.jti);
    }

    #[test]
    fn hs256_tokens_are_never_reused() {
        let s = signer();
        let a = s.issue(&claims("{}", "/")).unwrap();
        let b = s.issue(&claims("{}", "/")).unwrap();
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn update_keys_accept_any_key_and_sign_hex_with_the_first() {
        let (a, b) = (Secret::new("a".repeat(32)), Secret::new("b".repeat(32)));
        let keys = UpdateKeys::new([&a, &b]);
        let only_b = UpdateKeys::new([&b]);
        let hex = only_b.sign_hex(b"m");
        assert_eq!(hex.len(), 64);
        let tag: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert!(keys.verify(b"m", &tag));
        assert!(!keys.verify(b"n", &tag));
        assert!(!UpdateKeys::new([&a]).verify(b"m", &tag));
        assert!(!format!("{keys:?}").contains("aaaa"));
    }

    #[test]
    fn debug_output_shows_no_key_material() {
        let s = public_signer(Algorithm::EdDsa, true);
        let shown = format!("{s:?}");
        assert!(
            shown.contains("EdDsa") && shown.contains("signed_updates: true"),
            "{shown}"
        );
        let k = TokenKey::hmac(Some("k1"), &Secret::new("z".repeat(32)));
        assert!(!format!("{k:?}").contains("zzzz"));
    }
}
