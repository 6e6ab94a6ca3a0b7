//! The header protocol between sessionward and the upstream: names derived
//! from the prefix, stripping, parsing of the update headers, and the check
//! of their signature (`P-signature`) when updates must be signed.

use http::header::{HeaderMap, HeaderName, InvalidHeaderName};
use serde_json::Value;
use tracing::warn;

use crate::session::{Action, Changes, Expiry, json_kind};
use crate::token::UpdateKeys;

/// First line of the byte string an update signature covers: names the
/// format, so a signature made for anything else never matches.
pub const UPDATE_SIGNATURE_CONTEXT: &str = "sessionward-update-v1";

/// The protocol's header names for one prefix `P`.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    prefix: Box<str>,
    /// `P`: the token on requests.
    pub token: HeaderName,
    /// `P-action`: flush or cycle.
    pub action: HeaderName,
    /// `P-expiry`: seconds, 0 or default.
    pub expiry: HeaderName,
    /// `P-update`: a JSON merge patch.
    pub update: HeaderName,
    /// `P-subject`: who the session belongs to.
    pub subject: HeaderName,
    /// `P-signature`: HMAC of the update headers, with `signing.require_signed_updates`.
    pub signature: HeaderName,
}

impl HeaderNames {
    /// Names for `prefix` (any case; header names are lowercase on the wire to hyper).
    pub fn new(prefix: &str) -> Result<Self, InvalidHeaderName> {
        let prefix = prefix.to_ascii_lowercase();
        let name = |suffix: &str| HeaderName::from_bytes(format!("{prefix}{suffix}").as_bytes());
        Ok(Self {
            token: name("")?,
            action: name("-action")?,
            expiry: name("-expiry")?,
            update: name("-update")?,
            subject: name("-subject")?,
            signature: name("-signature")?,
            prefix: prefix.into_boxed_str(),
        })
    }

    /// The lowercase prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Header names are lowercase here; `_` counts as `-` because CGI, PHP
    /// and WSGI read `X_Session` and `X-Session` as the same variable.
    fn matches(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        name.len() >= self.prefix.len()
            && name
                .iter()
                .zip(self.prefix.as_bytes())
                .all(|(&n, &p)| n == p || (n == b'_' && p == b'-'))
    }
}

/// A response header from the upstream that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A header value is not UTF-8 text.
    #[error("{header}: value is not UTF-8")]
    NotText {
        /// Header name.
        header: String,
    },
    /// `P-update` is not JSON.
    #[error("{header}: invalid JSON ({error}) in {value:?}")]
    BadJson {
        /// Header name.
        header: String,
        /// Parser message.
        error: String,
        /// Start of the offending value.
        value: String,
    },
    /// `P-update` is JSON but not an object.
    #[error("{header}: a merge patch must be a JSON object, got {found}")]
    NotAnObject {
        /// Header name.
        header: String,
        /// What it was.
        found: &'static str,
    },
    /// `P-action` is not flush, cycle or revoke-subject.
    #[error("{header}: unknown action {value:?} (expected flush, cycle or revoke-subject)")]
    UnknownAction {
        /// Header name.
        header: String,
        /// The value.
        value: String,
    },
    /// `P-expiry` is not a non-negative integer or `default`.
    #[error(
        "{header}: invalid expiry {value:?} (expected seconds, 0 for browser close, or default)"
    )]
    BadExpiry {
        /// Header name.
        header: String,
        /// The value.
        value: String,
    },
    /// `P-subject` is longer than [`MAX_SUBJECT_BYTES`].
    #[error("{header}: {len} bytes; a subject may have at most {MAX_SUBJECT_BYTES}")]
    SubjectTooLong {
        /// Header name.
        header: String,
        /// Its length.
        len: usize,
    },
    /// `P-action`, `P-expiry` or `P-subject` given more than once.
    #[error("{header}: given {count} times; it may appear once")]
    Repeated {
        /// Header name.
        header: String,
        /// How many times.
        count: usize,
    },

    /// Update headers came without `P-signature` while updates must be signed.
    #[error("update headers without {header} (signing.require_signed_updates is on)")]
    Unsigned {
        /// Name of the signature header.
        header: String,
    },
    /// `P-signature` is not the HMAC of these update headers for this request.
    #[error(
        "{header}: does not match the update headers (wrong key, another request's jti, not 64 hex digits, or headers changed on the way)"
    )]
    BadSignature {
        /// Name of the signature header.
        header: String,
    },
}

/// Longest subject accepted: a user id or an email, not a document.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Removes every header whose name starts with the prefix. Client requests
/// and upstream responses both go through this, so neither side can speak
/// for sessionward.
pub fn strip_prefixed(headers: &mut HeaderMap, names: &HeaderNames) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| names.matches(n))
        .cloned()
        .collect();
    for name in found {
        headers.remove(&name);
    }
}

/// Parses the update headers of an upstream response and strips every
/// prefixed header, valid or not. On error nothing is to be applied.
pub fn take_changes(
    headers: &mut HeaderMap,
    names: &HeaderNames,
) -> Result<Changes, ProtocolError> {
    if !headers.keys().any(|n| names.matches(n)) {
        return Ok(Changes::default());
    }
    let parsed = parse_changes(headers, names);
    for name in headers.keys().filter(|n| names.matches(n)) {
        let known = [
            &names.token,
            &names.action,
            &names.expiry,
            &names.update,
            &names.subject,
            &names.signature,
        ];
        if !known.contains(&name) {
            warn!(header = %name, "unknown session header from upstream ignored");
        }
    }
    strip_prefixed(headers, names);
    parsed
}

/// The byte string an update signature covers, `None` when the response
/// has no update header (nothing to sign). Lines joined by `\n`, no final
/// newline: [`UPDATE_SIGNATURE_CONTEXT`], the request token's `jti`, then
/// `action:V`, `expiry:V`, `subject:V` for each such header and `update:V`
/// for each `P-update` in order, V being the value as received with spaces
/// and tabs around it removed. Labels, not header names, so the prefix does
/// not matter; every line is labelled, so an empty subject (clear it) and
/// no subject (keep it) sign differently.
pub fn update_signing_input(
    headers: &HeaderMap,
    names: &HeaderNames,
    jti: &str,
) -> Option<Vec<u8>> {
    let fields = [
        ("action", &names.action),
        ("expiry", &names.expiry),
        ("subject", &names.subject),
        ("update", &names.update),
    ];
    if !fields.iter().any(|(_, name)| headers.contains_key(*name)) {
        return None;
    }
    let mut input = Vec::with_capacity(64 + jti.len());
    input.extend_from_slice(UPDATE_SIGNATURE_CONTEXT.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(jti.as_bytes());
    for (label, name) in fields {
        for value in headers.get_all(name) {
            input.push(b'\n');
            input.extend_from_slice(label.as_bytes());
            input.push(b':');
            input.extend_from_slice(value.as_bytes().trim_ascii());
        }
    }
    Some(input)
}

/// Checks `P-signature` (64 hex digits, any case) against the update
/// headers and `jti` under any of `keys`. Responses without update headers
/// pass whatever they carry. Strips nothing: the caller does, either way.
pub fn check_update_signature(
    headers: &HeaderMap,
    names: &HeaderNames,
    jti: &str,
    keys: &UpdateKeys,
) -> Result<(), ProtocolError> {
    let Some(input) = update_signing_input(headers, names, jti) else {
        return Ok(());
    };
    let bad = || ProtocolError::BadSignature {
        header: names.signature.to_string(),
    };
    let signature = single(headers, &names.signature)?.ok_or_else(|| ProtocolError::Unsigned {
        header: names.signature.to_string(),
    })?;
    let tag = decode_hex(signature.trim()).ok_or_else(bad)?;
    if keys.verify(&input, &tag) {
        Ok(())
    } else {
        Err(bad())
    }
}

/// 32 bytes from 64 hex digits, `None` for anything else.
fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn parse_changes(headers: &HeaderMap, names: &HeaderNames) -> Result<Changes, ProtocolError> {
    let action = single(headers, &names.action)?
        .map(|v| match v.trim().to_ascii_lowercase().as_str() {
            "flush" => Ok(Action::Flush),
            "cycle" => Ok(Action::Cycle),
            "revoke-subject" => Ok(Action::RevokeSubject),
            _ => Err(ProtocolError::UnknownAction {
                header: names.action.to_string(),
                value: clip(v),
            }),
        })
        .transpose()?;
    let expiry = single(headers, &names.expiry)?
        .map(|v| {
            parse_expiry(v.trim()).ok_or_else(|| ProtocolError::BadExpiry {
                header: names.expiry.to_string(),
                value: clip(v),
            })
        })
        .transpose()?;
    let mut patches = Vec::new();
    for value in headers.get_all(&names.update) {
        let text = text(value, &names.update)?;
        let patch: Value = serde_json::from_str(text).map_err(|e| ProtocolError::BadJson {
            header: names.update.to_string(),
            error: e.to_string(),
            value: clip(text),
        })?;
        if !patch.is_object() {
            return Err(ProtocolError::NotAnObject {
                header: names.update.to_string(),
                found: json_kind(&patch),
            });
        }
        patches.push(patch);
    }
    let subject = single(headers, &names.subject)?
        .map(|v| match v.trim() {
            "" => Ok(None),
            v if v.len() > MAX_SUBJECT_BYTES => Err(ProtocolError::SubjectTooLong {
                header: names.subject.to_string(),
                len: v.len(),
            }),
            v => Ok(Some(v.into())),
        })
        .transpose()?;
    Ok(Changes {
        action,
        expiry,
        patches,
        subject,
    })
}

fn parse_expiry(v: &str) -> Option<Expiry> {
    if v.eq_ignore_ascii_case("default") {
        return Some(Expiry::Default);
    }
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match v.parse::<u64>().ok()? {
        0 => Some(Expiry::BrowserClose),
        // Beyond ~292 billion years a timestamp overflows; refuse rather than wrap.
        n if n < i64::MAX as u64 / 2 => Some(Expiry::Idle(n)),
        _ => None,
    }
}

fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, ProtocolError> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    let extra = all.count();
    if extra > 0 {
        return Err(ProtocolError::Repeated {
            header: name.to_string(),
            count: extra + 1,
        });
    }
    text(first, name).map(Some)
}

fn text<'h>(value: &'h http::HeaderValue, name: &HeaderName) -> Result<&'h str, ProtocolError> {
    std::str::from_utf8(value.as_bytes()).map_err(|_| ProtocolError::NotText {
        header: name.to_string(),
    })
}

/// Keeps log lines short when an upstream sends a huge bad header.
fn clip(s: &str) -> String {
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn names() -> HeaderNames {
        HeaderNames::new("X-Session").unwrap()
    }

    /// A header map from name/value pairs, in order; shared with other modules' tests.
    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn names_derive_from_the_prefix() {
        let n = names();
        assert_eq!(n.token, "x-session");
        assert_eq!(n.action, "x-session-action");
        assert_eq!(n.expiry, "x-session-expiry");
        assert_eq!(n.update, "x-session-update");
    }

    #[test]
    fn strip_removes_every_prefixed_header_and_nothing_else() {
        let mut h = map(&[
            ("X-Session", "forged"),
            ("x-session-user", "admin"),
            ("X-SESSIONS", "a"),
            ("x-other", "keep"),
        ]);
        strip_prefixed(&mut h, &names());
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-other"], "keep");
    }

    #[test]
    fn no_protocol_headers_means_no_changes() {
        let mut h = map(&[("content-type", "text/html")]);
        assert_eq!(take_changes(&mut h, &names()).unwrap(), Changes::default());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn parses_action_expiry_and_ordered_updates_then_strips() {
        let mut h = map(&[
            ("x-session-action", " Cycle "),
            ("x-session-expiry", "300"),
            ("x-session-update", r#"{"a":1}"#),
            ("x-session-update", r#"{"a":null,"b":{"c":2}}"#),
            ("x-session-unknown", "x"),
        ]);
        let c = take_changes(&mut h, &names()).unwrap();
        assert_eq!(c.action, Some(Action::Cycle));
        assert_eq!(c.expiry, Some(Expiry::Idle(300)));
        assert_eq!(
            c.patches,
            vec![json!({"a": 1}), json!({"a": null, "b": {"c": 2}})]
        );
        assert!(h.is_empty());
    }

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expiry("0"), Some(Expiry::BrowserClose));
        assert_eq!(parse_expiry("default"), Some(Expiry::Default));
        assert_eq!(parse_expiry("60"), Some(Expiry::Idle(60)));
        for bad in ["-1", "1.5", "", "soon", "+5", "99999999999999999999999"] {
            assert_eq!(parse_expiry(bad), None, "{bad}");
        }
    }

    #[test]
    fn invalid_headers_are_errors_and_still_stripped() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("x-session-update", "{not json")], "invalid JSON"),
            (
                &[("x-session-update", "[1,2]")],
                "must be a JSON object, got an array",
            ),
            (&[("x-session-action", "logout")], "unknown action"),
            (&[("x-session-expiry", "tomorrow")], "invalid expiry"),
            (
                &[("x-session-action", "flush"), ("x-session-action", "cycle")],
                "given 2 times",
            ),
        ];
        for (pairs, want) in cases {
            let mut h = map(pairs);
            h.insert("x-keep", HeaderValue::from_static("1"));
            let err = take_changes(&mut h, &names()).unwrap_err();
            assert!(err.to_string().contains(want), "{err} !~ {want}");
            assert_eq!(h.len(), 1, "prefixed headers must be stripped on error");
        }
    }

    #[test]
    fn non_utf8_value_is_an_error() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-session-action",
            HeaderValue::from_bytes(&[0xff, 0xfe]).unwrap(),
        );
        assert!(matches!(
            take_changes(&mut h, &names()),
            Err(ProtocolError::NotText { .. })
        ));
    }

    const VECTOR_KEY: &str = "test-vector-update-secret-0123456789abcdef";
    const VECTOR_JTI: &str = "q2mIw6mWf0rS1m2Sy1j8Yg";
    const VECTOR_SIGNATURE: &str =
        "ec51710823bf118649987b573e2000ae380a7008d6314b21d86acfa17c6ee463";

    fn vector_headers() -> HeaderMap {
        map(&[
            ("x-session-update", r#"{"user_id":42}"#),
            ("x-session-subject", "user:42"),
            ("x-session-action", "cycle"),
            ("x-session-update", r#"{"flash":"Welcome"}"#),
        ])
    }

    fn vector_keys() -> UpdateKeys {
        UpdateKeys::new([&crate::config::Secret::new(VECTOR_KEY)])
    }

    /// The test vector of docs/protocol.md, section 4.7.
    #[test]
    fn update_signature_test_vector() {
        let h = vector_headers();
        let input = update_signing_input(&h, &names(), VECTOR_JTI).unwrap();
        assert_eq!(
            std::str::from_utf8(&input).unwrap(),
            "sessionward-update-v1\nq2mIw6mWf0rS1m2Sy1j8Yg\naction:cycle\nsubject:user:42\n\
             update:{\"user_id\":42}\nupdate:{\"flash\":\"Welcome\"}"
        );
        assert_eq!(vector_keys().sign_hex(&input), VECTOR_SIGNATURE);
        let mut h = vector_headers();
        h.insert(
            "x-session-signature",
            HeaderValue::from_static(VECTOR_SIGNATURE),
        );
        check_update_signature(&h, &names(), VECTOR_JTI, &vector_keys()).unwrap();
        let upper = VECTOR_SIGNATURE.to_ascii_uppercase();
        h.insert(
            "x-session-signature",
            HeaderValue::from_str(&upper).unwrap(),
        );
        check_update_signature(&h, &names(), VECTOR_JTI, &vector_keys()).unwrap();
    }

    #[test]
    fn update_signature_refuses_what_it_does_not_cover() {
        let n = names();
        let signed = |pairs: &[(&str, &str)]| {
            let mut h = map(pairs);
            h.insert(
                "x-session-signature",
                HeaderValue::from_static(VECTOR_SIGNATURE),
            );
            check_update_signature(&h, &n, VECTOR_JTI, &vector_keys())
        };
        let bad =
            |r: Result<(), ProtocolError>| matches!(r, Err(ProtocolError::BadSignature { .. }));
        // Another jti: the signature was made for another request.
        let mut h = vector_headers();
        h.insert(
            "x-session-signature",
            HeaderValue::from_static(VECTOR_SIGNATURE),
        );
        assert!(bad(check_update_signature(
            &h,
            &n,
            "AAAAAAAAAAAAAAAAAAAAAA",
            &vector_keys()
        )));
        // Patches reordered, one dropped, one added, a subject added.
        let cycle = ("x-session-action", "cycle");
        let sub = ("x-session-subject", "user:42");
        let (u1, u2) = (
            ("x-session-update", r#"{"user_id":42}"#),
            ("x-session-update", r#"{"flash":"Welcome"}"#),
        );
        assert!(bad(signed(&[cycle, sub, u2, u1])));
        assert!(bad(signed(&[cycle, sub, u1])));
        assert!(bad(signed(&[
            cycle,
            sub,
            u1,
            u2,
            ("x-session-expiry", "0")
        ])));
        assert!(bad(signed(&[cycle, ("x-session-subject", ""), u1, u2])));
        assert!(
            signed(&[u1, sub, u2, cycle]).is_ok(),
            "order across kinds does not matter"
        );
        // Missing, repeated and malformed signatures.
        let missing = check_update_signature(&vector_headers(), &n, VECTOR_JTI, &vector_keys());
        assert!(
            matches!(missing, Err(ProtocolError::Unsigned { .. })),
            "{missing:?}"
        );
        let mut h = vector_headers();
        h.append(
            "x-session-signature",
            HeaderValue::from_static(VECTOR_SIGNATURE),
        );
        h.append(
            "x-session-signature",
            HeaderValue::from_static(VECTOR_SIGNATURE),
        );
        assert!(matches!(
            check_update_signature(&h, &n, VECTOR_JTI, &vector_keys()),
            Err(ProtocolError::Repeated { count: 2, .. })
        ));
        for wrong in [
            "",
            "zz",
            &VECTOR_SIGNATURE[..62],
            &format!("{VECTOR_SIGNATURE}00"),
        ] {
            let mut h = vector_headers();
            h.insert("x-session-signature", HeaderValue::from_str(wrong).unwrap());
            assert!(
                bad(check_update_signature(&h, &n, VECTOR_JTI, &vector_keys())),
                "{wrong}"
            );
        }
        // No update header: nothing to sign, nothing required.
        let h = map(&[("x-session-unknown", "1"), ("content-type", "text/plain")]);
        assert!(check_update_signature(&h, &n, VECTOR_JTI, &vector_keys()).is_ok());
    }

    #[test]
    fn signature_header_is_known_and_stripped() {
        let mut h = map(&[("x-session-signature", "00"), ("x-keep", "1")]);
        assert_eq!(take_changes(&mut h, &names()).unwrap(), Changes::default());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn subject_is_set_cleared_and_bounded() {
        let n = names();
        let mut h = map(&[
            ("x-session-subject", " user:7 "),
            ("x-session-action", "Revoke-Subject"),
        ]);
        let c = take_changes(&mut h, &n).unwrap();
        assert_eq!(c.subject, Some(Some("user:7".into())));
        assert_eq!(c.action, Some(Action::RevokeSubject));
        assert!(h.is_empty());
        let mut h = map(&[("x-session-subject", "")]);
        assert_eq!(take_changes(&mut h, &n).unwrap().subject, Some(None));
        let long = "u".repeat(MAX_SUBJECT_BYTES + 1);
        let mut h = map(&[("x-session-subject", &long)]);
        let err = take_changes(&mut h, &n).unwrap_err();
        assert!(
            matches!(err, ProtocolError::SubjectTooLong { len: 257, .. }),
            "{err}"
        );
        let mut h = map(&[("x-session-subject", "a"), ("x-session-subject", "b")]);
        assert!(matches!(
            take_changes(&mut h, &n).unwrap_err(),
            ProtocolError::Repeated { count: 2, .. }
        ));
    }
}
