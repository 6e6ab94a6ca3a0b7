//! The session cookie: taking it out of the request's `Cookie` header, and
//! writing `Set-Cookie` to set, refresh or delete it.

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use time::{Duration, OffsetDateTime};

use crate::config::{CookieConfig, SameSite};
use crate::session::{Policy, Record, SessionKey};

/// Removes the session cookie from the request's `Cookie` header(s), keeping
/// every other cookie byte for byte, and returns its value. `None` when the
/// client sent no session cookie; the first one wins if it sent several.
/// Several `Cookie` fields (HTTP/2 sends one per cookie) are joined into one
/// with "; ", as RFC 9113 8.2.3 asks of a proxy forwarding to HTTP/1.1.
pub fn take_session_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let mut fields = headers.get_all(COOKIE).iter();
    let first = fields.next()?;
    let several = fields.next().is_some();
    // Fast path: one Cookie field that does not mention our name.
    if !several && !memfind(first.as_bytes(), name.as_bytes()) {
        return None;
    }
    let mut found: Option<String> = None;
    let mut kept: Vec<&[u8]> = Vec::new();
    // Bytes, not text: one non-ASCII byte elsewhere in the header must not
    // make us forward the session key untouched.
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let (n, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            if n.trim_ascii() == name.as_bytes() {
                if found.is_none() {
                    let v = v.trim_ascii();
                    let v = v
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v);
                    found = Some(String::from_utf8_lossy(v).into_owned());
                }
            } else if !pair.is_empty() {
                kept.push(pair);
            }
        }
    }
    // Parts of valid header values joined by "; " make a valid value.
    let joined = (!kept.is_empty())
        .then(|| HeaderValue::from_bytes(&kept.join(&b"; "[..])).ok())
        .flatten();
    headers.remove(COOKIE);
    if let Some(v) = joined {
        headers.insert(COOKIE, v);
    }
    found
}

fn memfind(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Removes every upstream `Set-Cookie` for the session cookie's name; the
/// session cookie belongs to sessionward alone. Returns how many were dropped.
pub fn drop_upstream_session_cookies(headers: &mut HeaderMap, name: &str) -> usize {
    let is_ours = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        let end = bytes.iter().position(|&b| b == b'=').unwrap_or(bytes.len());
        bytes[..end].trim_ascii() == name.as_bytes()
    };
    let dropped = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| is_ours(v))
        .count();
    if dropped > 0 {
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| !is_ours(v))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for v in kept {
            headers.append(SET_COOKIE, v);
        }
    }
    dropped
}

/// Builds `Set-Cookie` values with the configured attributes.
#[derive(Debug, Clone)]
pub struct CookieWriter {
    config: CookieConfig,
}

impl CookieWriter {
    /// A writer for these attributes.
    pub fn new(config: CookieConfig) -> Self {
        Self { config }
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Sets the cookie to `key`, lasting as long as the record (no Max-Age or
    /// Expires for a browser-session cookie).
    pub fn set(&self, key: &SessionKey, record: &Record, policy: &Policy, now: i64) -> HeaderValue {
        let mut cookie = self.base(key.encode());
        if !policy.is_browser_session(record.expiry) {
            cookie = cookie.max_age(Duration::seconds(
                record.expires_at.saturating_sub(now).max(0),
            ));
            // Past year 9999 there is no HTTP date; Max-Age alone still governs.
            if let Ok(at) = OffsetDateTime::from_unix_timestamp(record.expires_at) {
                cookie = cookie.expires(at);
            }
        }
        to_header(cookie)
    }

    /// Expires the cookie with the same name, path, domain and SameSite.
    pub fn delete(&self) -> HeaderValue {
        let cookie = self
            .base(String::new())
            .max_age(Duration::ZERO)
            .expires(OffsetDateTime::UNIX_EPOCH);
        to_header(cookie)
    }

    fn base(&self, value: String) -> ::cookie::CookieBuilder<'static> {
        let c = &self.config;
        let mut b = ::cookie::Cookie::build((c.name.clone(), value))
            .path(c.path.clone())
            .secure(c.secure)
            .http_only(c.http_only)
            .same_site(match c.same_site {
                SameSite::Lax => ::cookie::SameSite::Lax,
                SameSite::Strict => ::cookie::SameSite::Strict,
                SameSite::None => ::cookie::SameSite::None,
            });
        if let Some(d) = &c.domain {
            b = b.domain(d.clone());
        }
        b
    }
}

fn to_header(cookie: ::cookie::CookieBuilder<'static>) -> HeaderValue {
    // Name, path and domain were validated at config load and the value is
    // base64url, so the string is always a valid header value.
    HeaderValue::from_str(&cookie.build().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Expiry;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn cookie_values(h: &HeaderMap) -> Vec<&str> {
        h.get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn takes_ours_and_keeps_the_others_verbatim() {
        let mut h = headers(&["a=1; sessionid=KEY; b=\"x y\""]);
        assert_eq!(
            take_session_cookie(&mut h, "sessionid").as_deref(),
            Some("KEY")
        );
        assert_eq!(cookie_values(&h), vec!["a=1; b=\"x y\""]);
    }

    #[test]
    fn drops_the_header_when_nothing_remains_and_takes_the_first_of_duplicates() {
        let mut h = headers(&["sessionid=ONE", "sessionid=TWO"]);
        assert_eq!(
            take_session_cookie(&mut h, "sessionid").as_deref(),
            Some("ONE")
        );
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn non_ascii_bytes_elsewhere_do_not_let_the_key_through() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes("sessionid=KEY; t=\u{e9}".as_bytes()).unwrap(),
        );
        assert_eq!(
            take_session_cookie(&mut h, "sessionid").as_deref(),
            Some("KEY")
        );
        assert_eq!(h[COOKIE].as_bytes(), "t=\u{e9}".as_bytes());
    }

    #[test]
    fn several_cookie_fields_are_joined_into_one() {
        let mut h = headers(&["a=1", "b=2"]);
        assert_eq!(take_session_cookie(&mut h, "sessionid"), None);
        assert_eq!(cookie_values(&h), vec!["a=1; b=2"]);
        let mut h = headers(&["a=1", "sessionid=K", "b=2"]);
        assert_eq!(
            take_session_cookie(&mut h, "sessionid").as_deref(),
            Some("K")
        );
        assert_eq!(cookie_values(&h), vec!["a=1; b=2"]);
    }

    #[test]
    fn similar_names_are_not_ours() {
        let mut h = headers(&["xsessionid=1; sessionid2=2"]);
        assert_eq!(take_session_cookie(&mut h, "sessionid"), None);
        assert_eq!(cookie_values(&h), vec!["xsessionid=1; sessionid2=2"]);
    }

    #[test]
    fn upstream_session_cookie_is_dropped_others_kept() {
        let mut h = HeaderMap::new();
        for v in ["theme=dark", "sessionid=evil; Path=/", "lang=fr"] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        assert_eq!(drop_upstream_session_cookies(&mut h, "sessionid"), 1);
        let left: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(left, vec!["theme=dark", "lang=fr"]);
    }

    fn writer(domain: Option<&str>) -> CookieWriter {
        CookieWriter::new(CookieConfig {
            name: "sid".into(),
            path: "/app".into(),
            domain: domain.map(Into::into),
            secure: true,
            http_only: true,
            same_site: SameSite::Strict,
        })
    }

    const POLICY: Policy = Policy {
        max_age: 100,
        expire_at_browser_close: false,
        max_bytes: 10,
    };

    #[test]
    fn set_cookie_carries_all_attributes_and_lifetime() {
        let key = SessionKey::generate().unwrap();
        let record = Record {
            data: "{}".into(),
            created_at: 0,
            expires_at: 1_700_000_100,
            expiry: Expiry::Default,
        };
        let v = writer(Some("example.com")).set(&key, &record, &POLICY, 1_700_000_000);
        let s = v.to_str().unwrap();
        assert!(s.starts_with(&format!("sid={}", key.encode())), "{s}");
        for attr in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/app",
            "Domain=example.com",
            "Max-Age=100",
            "Expires=Tue, 14 Nov 2023 22:15:00 GMT",
        ] {
            assert!(s.contains(attr), "{attr} missing from {s}");
        }
    }

    #[test]
    fn far_future_expiry_keeps_max_age_and_drops_expires() {
        let key = SessionKey::generate().unwrap();
        let record = Record {
            data: "{}".into(),
            created_at: 0,
            expires_at: i64::MAX / 2,
            expiry: Expiry::Idle(i64::MAX as u64 / 2),
        };
        let s = writer(None).set(&key, &record, &POLICY, 0);
        let s = s.to_str().unwrap();
        assert!(s.contains("Max-Age=") && !s.contains("Expires"), "{s}");
    }

    #[test]
    fn browser_session_cookie_has_no_lifetime() {
        let key = SessionKey::generate().unwrap();
        let record = Record {
            data: "{}".into(),
            created_at: 0,
            expires_at: 100,
            expiry: Expiry::BrowserClose,
        };
        let s = writer(None).set(&key, &record, &POLICY, 0);
        let s = s.to_str().unwrap();
        assert!(!s.contains("Max-Age") && !s.contains("Expires"), "{s}");
    }

    #[test]
    fn deletion_matches_name_path_domain_and_samesite() {
        let s = writer(Some("example.com")).delete();
        let s = s.to_str().unwrap();
        for attr in [
            "sid=;",
            "Path=/app",
            "Domain=example.com",
            "SameSite=Strict",
            "Max-Age=0",
            "Expires=Thu, 01 Jan 1970 00:00:00 GMT",
        ] {
            assert!(s.contains(attr), "{attr} missing from {s}");
        }
    }
}
