//! The session cookie on its way in (`take_session_cookie` on the client's
//! `Cookie` fields) and out (`drop_upstream_session_cookies` on the app's
//! `Set-Cookie` fields).
//!
//! Input: the first byte picks `max_chunks` (1 to 4); the rest, split at
//! `\n` (a byte no header value may hold), is the list of `Cookie` fields
//! (several fields, as HTTP/2 clients send them) and, again, the list of the
//! app's `Set-Cookie` values. Fields that are not valid header values are
//! skipped, as hyper would have refused them.
//!
//! Invariants: no panic; the session cookie and its chunks never remain in
//! the forwarded `Cookie` header, every other cookie is forwarded byte for
//! byte and in order; the taken value is the first session cookie's; no
//! upstream `Set-Cookie` for our name survives and every other one does.
#![no_main]

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use libfuzzer_sys::fuzz_target;
use sessionward::cookies::{drop_upstream_session_cookies, take_session_cookie};

const NAME: &str = "sessionid";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let max_chunks = usize::from(selector % 4) + 1;
    let fields: Vec<HeaderValue> = rest
        .split(|&b| b == b'\n')
        .filter_map(|f| HeaderValue::from_bytes(f).ok())
        .collect();
    check_request(&fields, max_chunks);
    check_response(&fields, max_chunks);
});

/// Which chunk `name` is (0 for `sessionid`, n for `sessionid.n`), written
/// from the documented rule rather than from the code under test.
fn ours(name: &[u8], max_chunks: usize) -> Option<usize> {
    if name == NAME.as_bytes() {
        return Some(0);
    }
    let digits = name.strip_prefix(NAME.as_bytes())?.strip_prefix(b".")?;
    let text = std::str::from_utf8(digits).ok()?;
    if max_chunks < 2 || text.is_empty() || text.len() > 2 || text.starts_with('0') {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: usize = text.parse().ok()?;
    (1..=max_chunks).contains(&n).then_some(n)
}

/// A `Cookie` field as an app parses it: `;`-separated pairs, trimmed,
/// the name before the first `=`.
fn pairs(value: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], &[u8])> {
    value
        .split(|&b| b == b';')
        .map(|p| p.trim_ascii())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (pair, pair[..i].trim_ascii(), &pair[i + 1..]),
            // No `=`: a nameless cookie, never the session (see cookies.rs).
            None => (pair, &b""[..], pair),
        })
}

fn check_request(fields: &[HeaderValue], max_chunks: usize) {
    let mut headers = HeaderMap::new();
    for f in fields {
        headers.append(COOKIE, f.clone());
    }
    let taken = take_session_cookie(&mut headers, NAME, max_chunks);
    let forwarded: Vec<&[u8]> = headers
        .get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();

    // The session cookie and its chunks never reach the app.
    for value in &forwarded {
        for (pair, name, _) in pairs(value) {
            assert!(
                ours(name, max_chunks).is_none(),
                "session cookie {pair:?} forwarded in {value:?}"
            );
        }
    }

    let mine: Vec<(usize, &[u8])> = fields
        .iter()
        .flat_map(|f| pairs(f.as_bytes()))
        .filter_map(|(_, name, value)| ours(name, max_chunks).map(|i| (i, value)))
        .collect();
    match (&taken, mine.first()) {
        (None, None) => {}
        (Some(c), Some(_)) => {
            let highest = mine.iter().map(|(i, _)| *i).max().unwrap_or(0);
            assert_eq!(c.chunks, highest + 1, "chunks counted");
            assert!(c.chunks <= max_chunks + 1);
            if max_chunks == 1 {
                let first = mine[0].1.trim_ascii();
                let unquoted = first
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(first);
                assert_eq!(c.value, String::from_utf8_lossy(unquoted), "first one wins");
            }
        }
        (taken, first) => panic!("taken {taken:?} but the fields hold {first:?}"),
    }

    // Every other cookie is forwarded, byte for byte and in order.
    let untouched = fields.len() == 1 && !contains(fields[0].as_bytes(), NAME.as_bytes());
    if fields.is_empty() || untouched {
        let before: Vec<&[u8]> = fields.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(
            forwarded, before,
            "a header without our cookie is left alone"
        );
        return;
    }
    let kept: Vec<&[u8]> = fields
        .iter()
        .flat_map(|f| pairs(f.as_bytes()))
        .filter(|(pair, name, _)| !pair.is_empty() && ours(name, max_chunks).is_none())
        .map(|(pair, _, _)| pair)
        .collect();
    if kept.is_empty() {
        assert!(forwarded.is_empty(), "an emptied Cookie header is dropped");
    } else {
        assert_eq!(forwarded, vec![kept.join(&b"; "[..]).as_slice()]);
    }
}

fn check_response(fields: &[HeaderValue], max_chunks: usize) {
    let mut headers = HeaderMap::new();
    for f in fields {
        headers.append(SET_COOKIE, f.clone());
    }
    // How a Set-Cookie comes back: the name-value pair ends at the first
    // `;`; a browser stores `name=value` under `name`, and a pair without
    // `=` as a nameless cookie it later sends back bare, which sessionward
    // then reads as a cookie of that name (with an empty value).
    let comes_back_as_ours = |v: &[u8]| {
        let pair = v.split(|&b| b == b';').next().unwrap_or(b"");
        let name = pair
            .iter()
            .position(|&b| b == b'=')
            .map_or(pair, |i| &pair[..i]);
        ours(name.trim_ascii(), max_chunks).is_some()
    };
    let expected: Vec<&[u8]> = fields
        .iter()
        .map(|v| v.as_bytes())
        .filter(|v| !comes_back_as_ours(v))
        .collect();
    let dropped = drop_upstream_session_cookies(&mut headers, NAME, max_chunks);
    let left: Vec<&[u8]> = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(left, expected, "ours dropped, the others kept in order");
    assert_eq!(dropped, fields.len() - expected.len());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
