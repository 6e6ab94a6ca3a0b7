//! The session token sent upstream: a JWS compact JWT, HS256, that any JWT
//! library verifies. Built by hand from base64 and ring's HMAC because the
//! header is a constant and the data is already JSON text: no re-serializing
//! the session on the hot path.

use std::fmt;
use std::io::Write as _;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Secret;

/// `iss` of every token.
pub const ISSUER: &str = "sessionward";

/// base64url of `{"alg":"HS256","typ":"JWT"}`.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

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
    /// Request method.
    pub method: &'a str,
    /// Request path and query.
    pub path: &'a str,
}

/// Signs tokens and derives session ids with the configured secret.
pub struct Signer {
    key: hmac::Key,
    ttl: i64,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts, or not the expected header.
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
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
}

impl Signer {
    /// A signer keyed by `secret` whose tokens live `ttl_secs`.
    pub fn new(secret: &Secret, ttl_secs: u64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose()),
            ttl: i64::try_from(ttl_secs).unwrap_or(i64::MAX),
        }
    }

    /// The session id the upstream sees: base64url of the first 16 bytes of
    /// HMAC-SHA256(secret, "sid:" + key as in the cookie). Takes the cookie
    /// text because that is what the request already holds.
    pub fn sid(&self, cookie_key: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"sid:");
        ctx.update(cookie_key.as_bytes());
        URL_SAFE_NO_PAD.encode(&ctx.sign().as_ref()[..16])
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims<'_>) -> String {
        let mut payload = Vec::with_capacity(160 + claims.data.len() + claims.path.len());
        // Writing to a Vec cannot fail; the results are ignored on purpose.
        let _ = write!(
            payload,
            r#"{{"iss":"{ISSUER}","iat":{},"exp":{},"sid":"#,
            claims.iat,
            claims.iat.saturating_add(self.ttl)
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
        payload.extend_from_slice(br#","method":"#);
        let _ = serde_json::to_writer(&mut payload, claims.method);
        payload.extend_from_slice(br#","path":"#);
        let _ = serde_json::to_writer(&mut payload, claims.path);
        payload.push(b'}');

        let mut token = String::with_capacity(HEADER_B64.len() + 2 + payload.len() * 4 / 3 + 48);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let tag = hmac::sign(&self.key, token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut token);
        token
    }

    /// Verifies a token as an app would: signature, issuer and expiry at `now`.
    pub fn verify(&self, token: &str, now: i64) -> Result<VerifiedClaims, TokenError> {
        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header_b64, payload_b64) =
            signing_input.split_once('.').ok_or(TokenError::Malformed)?;
        if header_b64 != HEADER_B64 {
            return Err(TokenError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
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
mod tests {
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
}
