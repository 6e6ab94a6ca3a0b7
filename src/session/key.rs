//! Session keys (what the client's cookie holds) and their hashes (what stores index by).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of randomness in a session key.
pub const KEY_BYTES: usize = 32;
/// Length of a key in its cookie form (base64url, no padding).
pub const ENCODED_LEN: usize = 43;

/// A session key: 32 bytes from the OS CSPRNG. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey([u8; KEY_BYTES]);

impl SessionKey {
    /// A fresh random key; `None` only if the OS random generator fails.
    pub fn generate() -> Option<SessionKey> {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new().fill(&mut bytes).ok()?;
        Some(SessionKey(bytes))
    }

    /// Parses a cookie value; anything but 43 base64url characters is `None`.
    pub fn parse(cookie_value: &str) -> Option<SessionKey> {
        if cookie_value.len() != ENCODED_LEN {
            return None;
        }
        let mut bytes = [0u8; KEY_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(cookie_value, &mut bytes) {
            Ok(KEY_BYTES) => Some(SessionKey(bytes)),
            _ => None,
        }
    }

    /// The cookie form: base64url without padding.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The SHA-256 of the key bytes: the only form a store ever sees.
    pub fn hash(&self) -> KeyHash {
        let d = digest::digest(&digest::SHA256, &self.0);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        KeyHash(out)
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({:?})", self.hash())
    }
}

/// SHA-256 of a session key. `Debug` shows a short prefix, safe for logs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub [u8; 32]);

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Already uniformly random: eight of its bytes are as good a hash as any.
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

/// A hasher for [`KeyHash`] keys that passes their random bits through,
/// skipping SipHash on every store lookup. Keys are SHA-256 outputs of keys
/// we generated, so clients cannot pick colliding ones.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than KeyHash is hashed: fold it in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

impl KeyHash {
    /// The full id in lower-case hex, as operators see it (`sessionward sessions`).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses [`KeyHash::to_hex`]'s form (either case); anything else is `None`.
    pub fn from_hex(text: &str) -> Option<KeyHash> {
        // All hex digits: `from_str_radix` alone would take a "+" sign.
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_differ() {
        let a = SessionKey::generate().unwrap();
        let b = SessionKey::generate().unwrap();
        assert_ne!(a, b);
        let text = a.encode();
        assert_eq!(text.len(), ENCODED_LEN);
        assert_eq!(SessionKey::parse(&text), Some(a.clone()));
        assert_eq!(SessionKey::parse(&text).unwrap().hash(), a.hash());
    }

    #[test]
    fn malformed_values_are_not_keys() {
        let good = SessionKey::generate().unwrap().encode();
        for bad in [
            "",
            "abc",
            &good[1..],
            &format!("{good}A"),
            &good.replace(&good[..1], "+"),
            &"=".repeat(43),
        ] {
            assert!(SessionKey::parse(bad).is_none(), "{bad:?}");
        }
        // The last of 43 characters carries 2 padding bits that must be zero:
        // "B" sets one, so the key has exactly one accepted spelling.
        let mut noncanon = good[..42].to_string();
        noncanon.push('B');
        assert!(SessionKey::parse(&noncanon).is_none());
    }

    #[test]
    fn hex_ids_round_trip_and_nothing_else_parses() {
        let id = SessionKey::generate().unwrap().hash();
        let hex = id.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(KeyHash::from_hex(&hex), Some(id));
        assert_eq!(KeyHash::from_hex(&hex.to_uppercase()), Some(id));
        for bad in [
            &hex[1..],
            &format!("{hex}0"),
            &hex.replace(&hex[..1], "g"),
            "+1".repeat(32).as_str(),
        ] {
            assert!(KeyHash::from_hex(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let k = SessionKey::generate().unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.encode()[..8]), "{dbg}");
        assert_eq!(format!("{}", k.hash()).len(), 9);
    }
}
