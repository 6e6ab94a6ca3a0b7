//! The app's update headers: `take_changes` on an arbitrary response header
//! map, then `session::apply` of what it parsed to an arbitrary record.
//!
//! Input: text lines (split at `\n`). `name: value` is a response header;
//! lines starting with `@` set the scene:
//!
//! ```text
//! @prefix x-session        the configured header prefix (default x-session)
//! @data {"cart":[1]}       the current session's data (no @data: no session)
//! @expiry 300              its expiry: default, browser or seconds
//! @subject user:7          its subject
//! @max 4096                session.max_bytes
//! @age 1209600             session.max_age
//! @absolute 86400          session.absolute_timeout
//! @now 1700000000          the request's clock
//! ```
//!
//! Invariants: no panic; afterwards no header starting with the prefix (`_`
//! counting as `-`) remains and every other header is untouched; what parsed
//! follows the protocol's rules; `apply` never saves data over `max_bytes`,
//! saves a JSON object whenever the session it started from was one, and
//! leaves the keys of the last patch as that patch says.
#![no_main]

use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use sessionward::protocol::{HeaderNames, MAX_SUBJECT_BYTES, take_changes};
use sessionward::session::{Action, ApplyError, Expiry, Next, Policy, Record, apply};

struct Scene {
    prefix: String,
    data: Option<String>,
    expiry: Expiry,
    subject: Option<Box<str>>,
    policy: Policy,
    now: i64,
    headers: HeaderMap,
}

fn scene(input: &[u8]) -> Scene {
    let mut s = Scene {
        prefix: "x-session".into(),
        data: None,
        expiry: Expiry::Default,
        subject: None,
        policy: Policy {
            max_age: 1_209_600,
            expire_at_browser_close: false,
            max_bytes: 4096,
            absolute_timeout: None,
        },
        now: 1_700_000_000,
        headers: HeaderMap::new(),
    };
    for line in input.split(|&b| b == b'\n') {
        if let Some(setting) = line.strip_prefix(b"@") {
            let text = String::from_utf8_lossy(setting);
            let (key, value) = text.split_once(' ').unwrap_or((&text, ""));
            match key {
                "prefix" => s.prefix = value.to_string(),
                "data" => s.data = Some(value.to_string()),
                "expiry" => {
                    s.expiry = match value {
                        "default" => Expiry::Default,
                        "browser" => Expiry::BrowserClose,
                        n => Expiry::Idle(n.parse().unwrap_or(0)),
                    }
                }
                "subject" => s.subject = Some(value.into()),
                "max" => s.policy.max_bytes = value.parse().unwrap_or(0),
                "age" => s.policy.max_age = value.parse().unwrap_or(0),
                "absolute" => s.policy.absolute_timeout = value.parse().ok(),
                "browser" => s.policy.expire_at_browser_close = true,
                "now" => s.now = value.parse().unwrap_or(0),
                _ => {}
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value),
        ) {
            s.headers.append(name, value);
        }
    }
    s
}

/// Whether `name` starts with the prefix, `_` counting as `-` (the documented rule).
fn prefixed(name: &HeaderName, prefix: &str) -> bool {
    let (name, prefix) = (name.as_str().as_bytes(), prefix.as_bytes());
    name.len() >= prefix.len()
        && prefix
            .iter()
            .zip(name)
            .all(|(&p, &n)| n == p || (p == b'-' && n == b'_'))
}

/// The other headers: each name's values in order (the order between
/// different names means nothing in HTTP, and `HeaderMap` does not keep it
/// across removals).
fn others(headers: &HeaderMap, prefix: &str) -> BTreeMap<String, Vec<HeaderValue>> {
    headers
        .keys()
        .filter(|n| !prefixed(n, prefix))
        .map(|n| (n.to_string(), headers.get_all(n).iter().cloned().collect()))
        .collect()
}

fuzz_target!(|input: &[u8]| {
    let mut s = scene(input);
    let Ok(names) = HeaderNames::new(&s.prefix) else {
        return;
    };
    let prefix = names.prefix().to_string();
    let untouched = others(&s.headers, &prefix);
    let parsed = take_changes(&mut s.headers, &names);
    assert!(
        s.headers.keys().all(|n| !prefixed(n, &prefix)),
        "a prefixed header survived: {:?}",
        s.headers
    );
    assert_eq!(
        others(&s.headers, &prefix),
        untouched,
        "other headers untouched"
    );
    let Ok(changes) = parsed else {
        return;
    };
    assert!(changes.patches.iter().all(Value::is_object));
    if let Some(Some(subject)) = &changes.subject {
        assert!(!subject.is_empty() && subject.len() <= MAX_SUBJECT_BYTES);
    }
    if let Some(Expiry::Idle(n)) = changes.expiry {
        assert!(n > 0 && n < i64::MAX as u64 / 2);
    }

    // The record as a store would hold it: canonical JSON when it is an
    // object at all, the raw text (a corrupt entry) otherwise.
    let object = s
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
        .filter(Value::is_object);
    let current = s.data.as_ref().map(|raw| Record {
        data: object
            .as_ref()
            .map_or_else(|| raw.clone(), Value::to_string)
            .into_boxed_str(),
        created_at: s.now.saturating_sub(100),
        expires_at: s.now.saturating_add(100),
        expiry: s.expiry,
        seen_at: s.now.saturating_sub(10),
        subject: s.subject.clone(),
    });
    let sound_start = current.is_none() || object.is_some();

    match apply(current.as_ref(), &changes, &s.policy, s.now) {
        Ok(Next::Save { record, rekey }) => {
            assert!(
                record.data.len() <= s.policy.max_bytes,
                "{} bytes saved over max_bytes {}",
                record.data.len(),
                s.policy.max_bytes
            );
            assert!(
                !rekey || current.is_some(),
                "a new session has no key to move"
            );
            if let Some(e) = changes.expiry {
                assert_eq!(record.expiry, e);
            }
            if let Some(subject) = &changes.subject {
                assert_eq!(&record.subject, subject);
            }
            if sound_start {
                let saved: Map<String, Value> = match serde_json::from_str(&record.data) {
                    Ok(Value::Object(map)) => map,
                    other => panic!("saved data is not a JSON object: {other:?}"),
                };
                assert!(!saved.is_empty(), "an empty session is deleted, not saved");
                if let Some(Value::Object(last)) = changes.patches.last() {
                    for (key, value) in last {
                        match value {
                            Value::Null => assert!(!saved.contains_key(key), "{key} removed"),
                            Value::Object(_) => {}
                            v => assert_eq!(saved.get(key), Some(v), "{key} set by the last patch"),
                        }
                    }
                }
            }
        }
        Ok(Next::Nothing) => assert!(current.is_none()),
        Ok(Next::Delete) => {
            assert!(current.is_some());
            assert!(
                sound_start
                    || matches!(changes.action, Some(Action::Flush | Action::RevokeSubject)),
                "only an emptied session is deleted"
            );
        }
        Err(ApplyError::TooLarge { size, max }) => {
            assert_eq!(max, s.policy.max_bytes);
            assert!(size > max);
        }
        Err(ApplyError::Corrupt(_)) => assert!(!sound_start, "a sound session is never corrupt"),
        Err(e) => panic!("apply cannot fail this way: {e}"),
    }
});
