//! The cookie store end to end, over real sockets: the session travels in
//! the client's (possibly chunked) cookie and the upstream sees it in the token.

mod common;

use std::collections::HashMap;

use common::Harness;
use http::StatusCode;
use serde_json::{Value, json};
use sessionward::cookies::CHUNK_BYTES;
use sessionward::session::SessionKey;

/// A proxy with the cookie store; `adjust` changes the rest of the config.
async fn cookie_harness(adjust: impl FnOnce(&mut sessionward::config::RawConfig)) -> Harness {
    Harness::with(|c| {
        c.store.kind = "cookie".into();
        adjust(c);
    })
    .await
}

/// The session data the upstream saw on its last request.
fn seen(h: &Harness) -> Value {
    Value::Object(h.last_claims().data)
}

/// The jar's session cookies: `sessionid`, `sessionid.1`, ...
fn session_jar(h: &Harness) -> HashMap<String, String> {
    let jar = h.client.jar.lock().unwrap();
    jar.iter()
        .filter(|(k, _)| *k == "sessionid" || k.starts_with("sessionid."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Names of the session cookies a response set (not deleted) and deleted.
fn set_and_deleted(r: &common::Reply) -> (Vec<String>, Vec<String>) {
    let (mut set, mut deleted) = (Vec::new(), Vec::new());
    for c in r.set_cookies() {
        let name = c.split('=').next().unwrap().to_string();
        if !name.starts_with("sessionid") {
            continue;
        }
        if c.contains("Max-Age=0") {
            deleted.push(name);
        } else {
            set.push(name);
        }
    }
    set.sort();
    deleted.sort();
    (set, deleted)
}

/// A JSON object whose text is about `bytes` long.
fn big(bytes: usize) -> String {
    format!(r#"{{"big":"{}"}}"#, "x".repeat(bytes))
}

#[tokio::test]
async fn session_round_trips_through_the_cookie() {
    let h = cookie_harness(|_| {}).await;
    let r = h
        .client
        .post("/login")
        .update(r#"{"user":"ann","n":[1,2]}"#)
        .reply("x-session-subject", "user:7")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let set = r.session_cookie().expect("the session cookie is set");
    assert!(
        set.contains("HttpOnly") && set.contains("Max-Age=1209600"),
        "{set}"
    );
    let value = h.client.session_key().unwrap();
    assert!(
        SessionKey::parse(&value).is_none(),
        "a sealed session, not a key"
    );
    assert!(!value.contains("ann"));
    assert_eq!(h.sessions().await, 0, "nothing is kept server-side");

    h.client.get("/profile").send().await;
    let c = h.last_claims();
    assert!(!c.new);
    assert_eq!(Value::Object(c.data), json!({"user": "ann", "n": [1, 2]}));
    assert_eq!(c.sub.as_deref(), Some("user:7"));
    let sid = c.sid.expect("a session id");
    assert!(
        h.upstream.last().headers.get("cookie").is_none(),
        "the sealed cookie never reaches the upstream"
    );

    let r = h.client.post("/").update(r#"{"n":null}"#).send().await;
    assert!(r.session_cookie().is_some(), "a write reissues the cookie");
    assert_ne!(h.client.session_key().unwrap(), value);
    h.client.get("/").send().await;
    assert_eq!(seen(&h), json!({"user": "ann"}));
    assert_eq!(h.last_claims().sid.unwrap(), sid, "the sid survives writes");

    let r = h.client.get("/").send().await;
    assert!(
        r.set_cookies().is_empty(),
        "an unchanged session sets no cookie"
    );
}

#[tokio::test]
async fn large_sessions_span_chunks_and_shrinking_deletes_the_leftovers() {
    let h = cookie_harness(|_| {}).await;
    // ~6 KB of data seals to ~8 KB of base64: three chunks of CHUNK_BYTES
    // and `sessionid` naming how many.
    let r = h.client.post("/").update(&big(6000)).send().await;
    assert_eq!(r.status, 200);
    let (set, deleted) = set_and_deleted(&r);
    assert_eq!(
        set,
        ["sessionid", "sessionid.1", "sessionid.2", "sessionid.3"]
    );
    assert!(deleted.is_empty());
    let jar = session_jar(&h);
    assert_eq!(jar.len(), 4);
    assert_eq!(jar["sessionid"], "chunks-3");
    assert_eq!(jar["sessionid.1"].len(), CHUNK_BYTES);
    assert_eq!(jar["sessionid.2"].len(), CHUNK_BYTES);

    h.client.get("/").send().await;
    assert_eq!(seen(&h)["big"].as_str().unwrap().len(), 6000);
    assert!(
        h.upstream.last().headers.get("cookie").is_none(),
        "all chunks stripped"
    );

    // Down to two chunks: the third is deleted.
    let r = h.client.post("/").update(&big(4000)).send().await;
    let (set, deleted) = set_and_deleted(&r);
    assert_eq!((set.len(), deleted), (3, vec!["sessionid.3".to_string()]));
    assert_eq!(session_jar(&h)["sessionid"], "chunks-2");

    let r = h
        .client
        .post("/")
        .update(r#"{"big":null,"small":1}"#)
        .send()
        .await;
    let (set, deleted) = set_and_deleted(&r);
    assert_eq!(set, ["sessionid"]);
    assert_eq!(deleted, ["sessionid.1", "sessionid.2"]);
    assert_eq!(session_jar(&h).len(), 1);
    h.client.get("/").send().await;
    assert_eq!(seen(&h), json!({"small": 1}));
}

#[tokio::test]
async fn more_than_max_chunks_is_502_and_changes_nothing() {
    let h = cookie_harness(|c| {
        c.store.cookie.max_chunks = 2;
        c.session.max_bytes = 20_000;
    })
    .await;
    // Creating an oversized session.
    let r = h.client.post("/").update(&big(7000)).send().await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.set_cookies().is_empty());
    assert!(session_jar(&h).is_empty());

    // Growing an existing one past the limit.
    h.client.post("/").update(&big(4000)).send().await;
    let before = session_jar(&h);
    assert_eq!(before.len(), 3, "{:?}", before.keys());
    let r = h
        .client
        .post("/")
        .update(r#"{"more":"y"}"#)
        .update(&big(7000))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    assert_eq!(session_jar(&h), before, "the client keeps its cookies");
    h.client.get("/").send().await;
    let data = seen(&h);
    assert_eq!(data["big"].as_str().unwrap().len(), 4000);
    assert!(data.get("more").is_none(), "nothing was applied");
}

#[tokio::test]
async fn flush_deletes_every_chunk_but_cannot_revoke_a_copy() {
    let h = cookie_harness(|_| {}).await;
    h.client.post("/").update(&big(4000)).send().await;
    let copy = session_jar(&h);
    assert_eq!(copy.len(), 3);

    let r = h.client.post("/logout").action("flush").send().await;
    let (set, deleted) = set_and_deleted(&r);
    assert!(set.is_empty());
    assert_eq!(deleted, ["sessionid", "sessionid.1", "sessionid.2"]);
    assert!(session_jar(&h).is_empty());
    h.client.get("/").send().await;
    assert!(h.last_claims().new);

    // Documented limit: a kept copy lives until its sealed expiry.
    let thief = h.new_client();
    for (k, v) in &copy {
        thief.set_cookie(k, v);
    }
    thief.get("/").send().await;
    assert!(
        !h.last_claims().new,
        "the cookie store cannot revoke copies"
    );
}

#[tokio::test]
async fn tampered_or_truncated_cookies_are_no_session() {
    let h = cookie_harness(|_| {}).await;
    h.client.post("/").update(r#"{"admin":false}"#).send().await;
    let value = h.client.session_key().unwrap();
    let mid = value.len() / 2;
    let flipped = if &value[mid..=mid] == "A" { "B" } else { "A" };
    for forged in [
        format!("{}{flipped}{}", &value[..mid], &value[mid + 1..]),
        value[..value.len() - 4].to_string(),
        format!("{value}AAAA"),
    ] {
        let c = h.new_client();
        c.set_cookie("sessionid", &forged);
        let r = c.get("/").send().await;
        assert_eq!(r.status, 200);
        assert!(r.set_cookies().is_empty());
        let claims = h.last_claims();
        assert!(claims.new && claims.data.is_empty(), "{claims:?}");
    }
    // A stray chunk next to a one-cookie session (left by two racing
    // responses) is ignored, not glued on, and deleted on the next write.
    let c = h.new_client();
    c.set_cookie("sessionid", &value);
    c.set_cookie("sessionid.1", "AAAA");
    c.get("/").send().await;
    assert_eq!(h.last_claims().data["admin"], false);
    let r = c.post("/").update(r#"{"admin":false,"n":1}"#).send().await;
    let (set, deleted) = set_and_deleted(&r);
    assert_eq!(
        (set, deleted),
        (
            vec!["sessionid".to_string()],
            vec!["sessionid.1".to_string()]
        )
    );
    // A chunked session missing a chunk is no session.
    let c = h.new_client();
    c.set_cookie("sessionid", "chunks-2");
    c.set_cookie("sessionid.1", &value);
    c.get("/").send().await;
    assert!(h.last_claims().new);
}

#[tokio::test]
async fn idle_timeout_slides_by_reissuing_the_cookie() {
    let h = cookie_harness(|c| c.session.idle_timeout = Some(60)).await;
    h.client.post("/").update(r#"{"a":1}"#).send().await;
    let first = h.client.session_key().unwrap();
    h.clock.advance(40);
    let r = h.client.get("/").send().await;
    assert!(r.session_cookie().is_some(), "a read reissues the cookie");
    assert_ne!(h.client.session_key().unwrap(), first);
    h.clock.advance(40);
    h.client.get("/").send().await;
    assert!(
        !h.last_claims().new,
        "alive 80 s after creation, 40 s after the last read"
    );

    let stale = h.new_client();
    stale.set_cookie("sessionid", &first);
    stale.get("/").send().await;
    assert!(
        h.last_claims().new,
        "the first cookie's idle deadline passed"
    );
}

#[tokio::test]
async fn revoke_subject_is_502_and_applies_nothing() {
    let h = cookie_harness(|_| {}).await;
    h.client
        .post("/login")
        .update(r#"{"user":"ann"}"#)
        .reply("x-session-subject", "user:7")
        .send()
        .await;
    let before = session_jar(&h);
    let r = h
        .client
        .post("/logout-everywhere")
        .action("revoke-subject")
        .update(r#"{"flash":"bye"}"#)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.set_cookies().is_empty());
    assert_eq!(session_jar(&h), before);
    h.client.get("/").send().await;
    assert_eq!(seen(&h), json!({"user": "ann"}));
    assert_eq!(h.last_claims().sub.as_deref(), Some("user:7"));
}
