//! The header protocol between sessionward and the upstream: names derived
//! from the prefix, stripping, and parsing of the update headers.

use http::header::{HeaderMap, HeaderName, InvalidHeaderName};
use serde_json::Value;
use tracing::warn;

use crate::session::{Action, Changes, Expiry, json_kind};

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
        ];
        if !known.contains(&name) {
            warn!(header = %name, "unknown session header from upstream ignored");
        }
    }
    strip_prefixed(headers, names);
    parsed
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
