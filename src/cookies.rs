//! The session cookie: taking it out of the request's `Cookie` header, and
//! writing `Set-Cookie` to set, refresh or delete it.

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use time::{Duration, OffsetDateTime};

use crate::config::{CookieConfig, SameSite};
use crate::session::{Policy, Record};

/// Most bytes of session value in one cookie: with the name and attributes
/// a cookie stays under the 4,096 bytes every browser keeps.
pub const CHUNK_BYTES: usize = 3800;

/// The value of `name` when the session is split: `chunks-N` says that
/// `name.1` to `name.N` hold it. Naming the count means a stray chunk left
/// by a race between two responses is ignored instead of corrupting the
/// session. A single-cookie value never starts with this: sealed cookies
/// start with `A` (their version byte), and server-side keys are never split.
const CHUNKED_PREFIX: &str = "chunks-";

/// The session cookie as the client sent it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionCookie {
    /// The value, chunks joined in order.
    pub value: String,
    /// How many cookies named like ours the client sent (`name`, `name.1`,
    /// ...: the highest index plus one), so that a response can delete the
    /// ones it no longer needs.
    pub chunks: usize,
}

impl std::fmt::Debug for SessionCookie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The value is a session key or a sealed session: never printed.
        f.debug_struct("SessionCookie")
            .field("bytes", &self.value.len())
            .field("chunks", &self.chunks)
            .finish()
    }
}

/// Which chunk a cookie name is: 0 for `name`, n for `name.n` (1 to
/// `max_chunks`) when the session may be split at all.
fn chunk_index(cookie: &[u8], name: &str, max_chunks: usize) -> Option<usize> {
    let rest = cookie.strip_prefix(name.as_bytes())?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix(b".")?;
    if digits.is_empty() || digits.len() > 2 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (max_chunks > 1 && n >= 1 && n <= max_chunks && digits[0] != b'0').then_some(n)
}

/// Removes the session cookie (and, when `max_chunks` > 1, its chunks
/// `name.1`...) from the request's `Cookie` header(s), keeping every other
/// cookie byte for byte, and returns its value (the chunks joined when
/// `name` is `chunks-N`). `None` when the client sent
/// no session cookie; the first of duplicates wins. Several `Cookie` fields
/// (HTTP/2 sends one per cookie) are joined into one with "; ", as RFC 9113
/// 8.2.3 asks of a proxy forwarding to HTTP/1.1.
pub fn take_session_cookie(
    headers: &mut HeaderMap,
    name: &str,
    max_chunks: usize,
) -> Option<SessionCookie> {
    let mut fields = headers.get_all(COOKIE).iter();
    let first = fields.next()?;
    let several = fields.next().is_some();
    // Fast path: one Cookie field that does not mention our name.
    if !several && !memfind(first.as_bytes(), name.as_bytes()) {
        return None;
    }
    let max_chunks = max_chunks.max(1);
    let mut parts: Vec<Option<String>> = vec![None; max_chunks + 1];
    let mut kept: Vec<&[u8]> = Vec::new();
    // Bytes, not text: one non-ASCII byte elsewhere in the header must not
    // make us forward the session key untouched.
    for value in headers.get_all(COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            // A pair without `=` is a nameless cookie (browsers store
            // `Set-Cookie: sessionid` that way): never ours, or a planted one
            // could hide the real session.
            let (n, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (&b""[..], pair),
            };
            if let Some(i) = chunk_index(n.trim_ascii(), name, max_chunks) {
                if parts[i].is_none() {
                    let v = v.trim_ascii();
                    let v = v
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v);
                    parts[i] = Some(String::from_utf8_lossy(v).into_owned());
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
    let chunks = parts.iter().rposition(Option::is_some)? + 1;
    let base = parts[0].take().unwrap_or_default();
    let split = base
        .strip_prefix(CHUNKED_PREFIX)
        .filter(|_| max_chunks > 1)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=max_chunks).contains(n));
    let value = match split {
        // A missing chunk leaves no usable value: no session.
        Some(n) => parts[1..=n]
            .iter()
            .map(|p| p.as_deref())
            .collect::<Option<String>>()
            .unwrap_or_default(),
        None => base,
    };
    Some(SessionCookie { value, chunks })
}

fn memfind(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Removes every upstream `Set-Cookie` for the session cookie's name; the
/// session cookie belongs to sessionward alone. Returns how many were dropped.
pub fn drop_upstream_session_cookies(
    headers: &mut HeaderMap,
    name: &str,
    max_chunks: usize,
) -> usize {
    let is_ours = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        // The name-value pair ends at the first `;`; its name at the first `=`.
        let pair = bytes.split(|&b| b == b';').next().unwrap_or(bytes);
        let end = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
        chunk_index(pair[..end].trim_ascii(), name, max_chunks).is_some()
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

    /// Sets the cookie to `value`, lasting as long as the record (no Max-Age
    /// or Expires for a browser-session cookie). A value over
    /// [`CHUNK_BYTES`] is split over `name.1` to `name.N` with `name` set to
    /// `chunks-N`; cookies the client sent (`sent`) that are no longer
    /// needed are deleted.
    pub fn set(
        &self,
        value: &str,
        record: &Record,
        policy: &Policy,
        now: i64,
        sent: usize,
    ) -> Vec<HeaderValue> {
        // Session values are ASCII (keys and sealed cookies are base64url).
        let marker;
        let mut pieces: Vec<&str> = vec![value];
        if value.len() > CHUNK_BYTES && value.is_ascii() {
            let chunks: Vec<&str> = value
                .as_bytes()
                .chunks(CHUNK_BYTES)
                .filter_map(|c| std::str::from_utf8(c).ok())
                .collect();
            marker = format!("{CHUNKED_PREFIX}{}", chunks.len());
            pieces = std::iter::once(marker.as_str()).chain(chunks).collect();
        }
        let mut out = Vec::with_capacity(pieces.len().max(sent));
        for (i, piece) in pieces.iter().enumerate() {
            let mut cookie = self.base(self.chunk_name(i), (*piece).to_owned());
            if !policy.is_browser_session(record.expiry) {
                cookie = cookie.max_age(Duration::seconds(
                    record.expires_at.saturating_sub(now).max(0),
                ));
                // Past year 9999 there is no HTTP date; Max-Age alone still governs.
                if let Ok(at) = OffsetDateTime::from_unix_timestamp(record.expires_at) {
                    cookie = cookie.expires(at);
                }
            }
            out.push(to_header(cookie));
        }
        out.extend((pieces.len()..sent).map(|i| self.expire(i)));
        out
    }

    /// Expires the cookie and the `sent` chunks the client holds, with the
    /// same name, path, domain and SameSite.
    pub fn delete(&self, sent: usize) -> Vec<HeaderValue> {
        (0..sent.max(1)).map(|i| self.expire(i)).collect()
    }

    fn expire(&self, chunk: usize) -> HeaderValue {
        let cookie = self
            .base(self.chunk_name(chunk), String::new())
            .max_age(Duration::ZERO)
            .expires(OffsetDateTime::UNIX_EPOCH);
        to_header(cookie)
    }

    fn chunk_name(&self, i: usize) -> String {
        match i {
            0 => self.config.name.clone(),
            n => format!("{}.{n}", self.config.name),
        }
    }

    fn base(&self, name: String, value: String) -> ::cookie::CookieBuilder<'static> {
        let c = &self.config;
        let mut b = ::cookie::Cookie::build((name, value))
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

    fn take(h: &mut HeaderMap) -> Option<String> {
        take_session_cookie(h, "sessionid", 1).map(|c| c.value)
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
        assert_eq!(take(&mut h), Some("KEY".to_string()));
        assert_eq!(cookie_values(&h), vec!["a=1; b=\"x y\""]);
    }

    #[test]
    fn drops_the_header_when_nothing_remains_and_takes_the_first_of_duplicates() {
        let mut h = headers(&["sessionid=ONE", "sessionid=TWO"]);
        assert_eq!(take(&mut h), Some("ONE".to_string()));
        assert!(h.get(COOKIE).is_none());
    }

    #[test]
    fn non_ascii_bytes_elsewhere_do_not_let_the_key_through() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes("sessionid=KEY; t=\u{e9}".as_bytes()).unwrap(),
        );
        assert_eq!(take(&mut h), Some("KEY".to_string()));
        assert_eq!(h[COOKIE].as_bytes(), "t=\u{e9}".as_bytes());
    }

    #[test]
    fn several_cookie_fields_are_joined_into_one() {
        let mut h = headers(&["a=1", "b=2"]);
        assert_eq!(take(&mut h), None);
        assert_eq!(cookie_values(&h), vec!["a=1; b=2"]);
        let mut h = headers(&["a=1", "sessionid=K", "b=2"]);
        assert_eq!(take(&mut h), Some("K".to_string()));
        assert_eq!(cookie_values(&h), vec!["a=1; b=2"]);
    }

    #[test]
    fn similar_names_are_not_ours() {
        let mut h = headers(&["xsessionid=1; sessionid2=2"]);
        assert_eq!(take(&mut h), None);
        assert_eq!(cookie_values(&h), vec!["xsessionid=1; sessionid2=2"]);
    }

    #[test]
    fn upstream_session_cookie_is_dropped_others_kept() {
        let mut h = HeaderMap::new();
        for v in ["theme=dark", "sessionid=evil; Path=/", "lang=fr"] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        assert_eq!(drop_upstream_session_cookies(&mut h, "sessionid", 1), 1);
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
        absolute_timeout: None,
    };

    fn record(expires_at: i64, expiry: Expiry) -> Record {
        Record {
            data: "{}".into(),
            created_at: 0,
            expires_at,
            expiry,
            seen_at: 0,
            subject: None,
        }
    }

    fn one(v: Vec<HeaderValue>) -> String {
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].to_str().unwrap().to_owned()
    }

    #[test]
    fn set_cookie_carries_all_attributes_and_lifetime() {
        let record = record(1_700_000_100, Expiry::Default);
        let s = one(writer(Some("example.com")).set("KEY", &record, &POLICY, 1_700_000_000, 1));
        assert!(s.starts_with("sid=KEY;"), "{s}");
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
        let record = record(i64::MAX / 2, Expiry::Idle(i64::MAX as u64 / 2));
        let s = one(writer(None).set("K", &record, &POLICY, 0, 0));
        assert!(s.contains("Max-Age=") && !s.contains("Expires"), "{s}");
    }

    #[test]
    fn browser_session_cookie_has_no_lifetime() {
        let record = record(100, Expiry::BrowserClose);
        let s = one(writer(None).set("K", &record, &POLICY, 0, 1));
        assert!(!s.contains("Max-Age") && !s.contains("Expires"), "{s}");
    }

    #[test]
    fn deletion_matches_name_path_domain_and_samesite() {
        let s = one(writer(Some("example.com")).delete(1));
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

    #[test]
    fn chunks_are_joined_in_order_and_all_stripped() {
        let mut h = headers(&["a=1; sid.2=B; sid=chunks-2", "sid.1=A; sid.10=X; sid.01=Y"]);
        let c = take_session_cookie(&mut h, "sid", 4).unwrap();
        assert_eq!((c.value.as_str(), c.chunks), ("AB", 3));
        assert_eq!(cookie_values(&h), vec!["a=1; sid.10=X; sid.01=Y"]);
        // Without chunking, `sid.1` is somebody else's cookie.
        let mut h = headers(&["sid=A; sid.1=B"]);
        let c = take_session_cookie(&mut h, "sid", 1).unwrap();
        assert_eq!((c.value.as_str(), c.chunks), ("A", 1));
        assert_eq!(cookie_values(&h), vec!["sid.1=B"]);
        // A stray chunk next to a whole value is ignored (and counted, to be deleted).
        let mut h = headers(&["sid=WHOLE; sid.1=STRAY"]);
        let c = take_session_cookie(&mut h, "sid", 4).unwrap();
        assert_eq!((c.value.as_str(), c.chunks), ("WHOLE", 2));
        // A missing chunk is no value at all, never a truncated one.
        let mut h = headers(&["sid=chunks-3; sid.1=A; sid.3=C"]);
        let c = take_session_cookie(&mut h, "sid", 4).unwrap();
        assert_eq!((c.value.as_str(), c.chunks), ("", 4));
        // A count over the limit is not a marker.
        let mut h = headers(&["sid=chunks-9; sid.1=A"]);
        let c = take_session_cookie(&mut h, "sid", 4).unwrap();
        assert_eq!(c.value, "chunks-9");
        assert!(
            !format!("{c:?}").contains("chunks-9"),
            "Debug shows no value"
        );
    }

    #[test]
    fn long_values_are_split_and_leftover_chunks_deleted() {
        let w = writer(None);
        let r = record(100, Expiry::Default);
        let value = "x".repeat(CHUNK_BYTES * 2 + 5);
        let set: Vec<String> = w
            .set(&value, &r, &POLICY, 0, 0)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(set.len(), 4);
        assert!(set[0].starts_with("sid=chunks-3;"), "{}", set[0]);
        assert!(set[1].starts_with(&format!("sid.1={};", "x".repeat(CHUNK_BYTES))));
        assert!(set[2].starts_with("sid.2="));
        assert!(set[3].starts_with("sid.3=xxxxx;"));
        assert!(
            set.iter().all(|c| c.len() < 4000),
            "every cookie fits a browser"
        );
        // What was written reads back as the same value.
        let sent: Vec<&str> = set.iter().map(|c| c.split(';').next().unwrap()).collect();
        let mut h = headers(&[&sent.join("; ")]);
        let back = take_session_cookie(&mut h, "sid", 4).unwrap();
        assert_eq!((back.value, back.chunks), (value.clone(), 4));
        let shrunk = w.set("short", &r, &POLICY, 0, 4);
        let shrunk: Vec<&str> = shrunk.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(shrunk.len(), 4);
        assert!(shrunk[0].starts_with("sid=short;"));
        assert!(shrunk[1].starts_with("sid.1=;") && shrunk[1].contains("Max-Age=0"));
        assert!(shrunk[3].starts_with("sid.3=;"));
        assert_eq!(w.delete(2).len(), 2);
    }

    #[test]
    fn upstream_chunk_cookies_are_dropped_too() {
        let mut h = HeaderMap::new();
        for v in ["sid.1=evil", "sid.x=fine", "sid=evil"] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        assert_eq!(drop_upstream_session_cookies(&mut h, "sid", 4), 2);
        assert_eq!(h[SET_COOKIE], "sid.x=fine");
        // A server-side store never splits: `sid.1` is the app's own cookie.
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, HeaderValue::from_static("sid.1=apps"));
        assert_eq!(drop_upstream_session_cookies(&mut h, "sid", 1), 0);
    }

    #[test]
    fn a_nameless_cookie_is_never_the_session() {
        let mut h = headers(&["sessionid; sessionid=KEY"]);
        assert_eq!(take(&mut h), Some("KEY".to_string()));
        assert_eq!(cookie_values(&h), vec!["sessionid"]);
        let mut h = HeaderMap::new();
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("sessionid; Path=/account"),
        );
        h.append(
            SET_COOKIE,
            HeaderValue::from_static("theme=sessionid; Path=/"),
        );
        assert_eq!(drop_upstream_session_cookies(&mut h, "sessionid", 1), 1);
        assert_eq!(h[SET_COOKIE], "theme=sessionid; Path=/");
    }
}
