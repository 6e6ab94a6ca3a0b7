//! End-to-end tests of the header protocol and the session rules, over real
//! sockets: test client -> sessionward -> recording upstream.

mod common;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Harness, SECRET, Upstream};
use http::StatusCode;
use serde_json::json;
use sessionward::clock::Clock;
use sessionward::session::SessionKey;

/// Logs in: creates a session holding `data` and returns its key.
async fn create(h: &Harness, data: &str) -> String {
    let r = h.client.post("/login").update(data).send().await;
    assert_eq!(r.status, 200);
    h.client.session_key().expect("a session cookie was set")
}

/// Sends an update that the upstream holds until `gate` opens: the session is
/// read now and written later.
fn held_update(h: &Harness, gate: &'static str) -> tokio::task::JoinHandle<common::Reply> {
    let c = h.client.clone();
    tokio::spawn(async move {
        c.post("/cart")
            .header("x-reply-gate", gate)
            .update(r#"{"cart":[1]}"#)
            .send()
            .await
    })
}

#[tokio::test]
async fn spoofed_session_headers_never_reach_the_upstream() {
    let h = Harness::start().await;
    for path in ["/", "/static/app.css", "/api/x?y=1"] {
        h.client
            .get(path)
            .header(
                "x-session",
                "eyJhbGciOiJub25lIn0.eyJkYXRhIjp7ImFkbWluIjp0cnVlfX0.",
            )
            .header("X-Session-Update", r#"{"admin":true}"#)
            .header("x-session-user", "root")
            .send()
            .await;
        let rec = h.upstream.last();
        let names: Vec<_> = rec
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-session"))
            .collect();
        assert_eq!(names, vec!["x-session"], "{path}");
        let claims = h.claims_of(&rec);
        assert!(
            claims.data.is_empty() && claims.new,
            "forged data leaked: {claims:?}"
        );
    }
}

#[tokio::test]
async fn connection_header_tricks_cannot_drop_the_token() {
    let h = Harness::start().await;
    h.client
        .get("/")
        .header("connection", "x-session, x-custom")
        .header("x-custom", "hop")
        .send()
        .await;
    let rec = h.upstream.last();
    assert!(
        rec.headers.get("x-custom").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    h.claims_of(&rec);
}

#[tokio::test]
async fn session_cookie_is_removed_upstream_and_other_cookies_stay() {
    let h = Harness::start().await;
    let key = create(&h, r#"{"a":1}"#).await;
    h.client.set_cookie("theme", "dark");
    h.client.get("/").send().await;
    let cookie = h.upstream.last().headers["cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(cookie, "theme=dark");
    assert!(!cookie.contains(&key));

    let alone = h.new_client();
    alone.set_cookie("sessionid", &key);
    alone.get("/").send().await;
    assert!(
        h.upstream.last().headers.get("cookie").is_none(),
        "an emptied Cookie header is dropped"
    );
}

#[tokio::test]
async fn update_headers_never_reach_the_client() {
    let h = Harness::start().await;
    let r = h
        .client
        .get("/")
        .update(r#"{"a":1}"#)
        .expiry("60")
        .reply("x-session-debug", "internal")
        .reply("X-Session", "echoed-token")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let leaked: Vec<_> = r
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-session"))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[tokio::test]
async fn token_verifies_and_carries_the_claims() {
    let h = Harness::start().await;
    h.client.get("/first?q=1").send().await;
    let c = h.last_claims();
    assert_eq!(
        (c.iss.as_str(), c.sid, c.new, c.expires),
        ("sessionward", None, true, None)
    );
    assert!(c.data.is_empty());
    assert_eq!((c.method.as_str(), c.path.as_str()), ("GET", "/first?q=1"));
    assert_eq!(c.exp, c.iat + 60);
    assert_eq!(c.iat, h.clock.now());

    let key = create(&h, r#"{"user":"ann","n":[1,2]}"#).await;
    let created_at = h.clock.now();
    h.client
        .request(http::Method::DELETE, "/x/y?z=%20")
        .send()
        .await;
    let c = h.last_claims();
    assert!(!c.new);
    assert_eq!(
        serde_json::Value::Object(c.data),
        json!({"user": "ann", "n": [1, 2]})
    );
    assert_eq!(c.expires, Some(created_at + 1_209_600));
    assert_eq!(
        (c.method.as_str(), c.path.as_str()),
        ("DELETE", "/x/y?z=%20")
    );
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes()),
        format!("sid:{key}").as_bytes(),
    );
    assert_eq!(c.sid.unwrap(), URL_SAFE_NO_PAD.encode(&mac.as_ref()[..16]));
}

#[tokio::test]
async fn sessions_are_lazy() {
    let h = Harness::start().await;
    let r = h.client.get("/").send().await;
    assert!(r.set_cookies().is_empty());
    let r = h.client.get("/").update("{}").expiry("30").send().await;
    assert!(
        r.set_cookies().is_empty(),
        "an empty session is never stored"
    );
    assert_eq!(h.sessions().await, 0);

    let r = h.client.get("/").update(r#"{"a":1}"#).send().await;
    let set = r.session_cookie().expect("cookie set on first write");
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=1209600",
        "Expires=",
    ] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert_eq!(r.headers["cache-control"], "private");
    assert_eq!(h.sessions().await, 1);

    let r = h.client.get("/").send().await;
    assert!(
        r.set_cookies().is_empty(),
        "an unchanged session sets no cookie"
    );
}

#[tokio::test]
async fn keys_are_random_and_stored_only_as_hashes() {
    let h = Harness::start().await;
    let key = create(&h, r#"{"a":1}"#).await;
    assert_eq!(URL_SAFE_NO_PAD.decode(&key).unwrap().len(), 32);
    assert!(h.store.load(&key).await.unwrap().is_some());
    let other = h.new_client();
    other.post("/").update(r#"{"a":1}"#).send().await;
    assert_ne!(other.session_key().unwrap(), key);
}

#[tokio::test]
async fn merge_patch_semantics_through_the_proxy() {
    let h = Harness::start().await;
    create(&h, r#"{"a":1,"b":{"x":1,"y":2}}"#).await;
    h.client
        .post("/")
        .update(r#"{"a":null,"b":{"y":null,"z":3}}"#)
        .update(r#"{"c":"é"}"#)
        .send()
        .await;
    h.client.get("/").send().await;
    assert_eq!(
        serde_json::Value::Object(h.last_claims().data),
        json!({"b": {"x": 1, "z": 3}, "c": "é"})
    );
}

#[tokio::test]
async fn flush_deletes_the_session_and_expires_the_cookie() {
    let h = Harness::start().await;
    let key = create(&h, r#"{"user":"ann"}"#).await;
    let r = h.client.post("/logout").action("flush").send().await;
    let set = r.session_cookie().expect("cookie deleted");
    assert!(
        set.contains("Max-Age=0") && set.contains("Path=/") && set.contains("SameSite=Lax"),
        "{set}"
    );
    assert_eq!(
        r.headers["cache-control"], "private",
        "a deleted cookie is not cached either"
    );
    assert_eq!(h.client.session_key(), None);
    assert_eq!(h.sessions().await, 0);

    let old = h.new_client();
    old.set_cookie("sessionid", &key);
    old.get("/").send().await;
    assert!(h.last_claims().new, "a flushed key is dead");
}

#[tokio::test]
async fn emptying_the_session_deletes_it() {
    let h = Harness::start().await;
    create(&h, r#"{"a":1}"#).await;
    let r = h.client.post("/").update(r#"{"a":null}"#).send().await;
    assert!(r.session_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(h.sessions().await, 0);
}

#[tokio::test]
async fn flush_then_update_leaves_a_flash_under_a_new_key() {
    let h = Harness::start().await;
    let old = create(&h, r#"{"user":"ann"}"#).await;
    h.client
        .post("/logout")
        .action("flush")
        .update(r#"{"flash":"bye"}"#)
        .send()
        .await;
    let new = h.client.session_key().unwrap();
    assert_ne!(new, old);
    assert!(h.store.load(&old).await.unwrap().is_none());
    h.client.get("/").send().await;
    assert_eq!(
        serde_json::Value::Object(h.last_claims().data),
        json!({"flash": "bye"})
    );
}

#[tokio::test]
async fn cycle_rotates_the_key_and_kills_the_old_one() {
    let h = Harness::start().await;
    let old = create(&h, r#"{"cart":[1]}"#).await;
    let sid_before = {
        h.client.get("/").send().await;
        h.last_claims().sid
    };
    h.client
        .post("/login")
        .action("cycle")
        .update(r#"{"user_id":7}"#)
        .send()
        .await;
    let new = h.client.session_key().unwrap();
    assert_ne!(new, old);
    h.client.get("/").send().await;
    let c = h.last_claims();
    assert_eq!(
        serde_json::Value::Object(c.data),
        json!({"cart": [1], "user_id": 7})
    );
    assert_ne!(c.sid, sid_before, "the sid follows the key");

    let thief = h.new_client();
    thief.set_cookie("sessionid", &old);
    thief.get("/").send().await;
    assert!(h.last_claims().new, "the old key stops working at once");
    assert_eq!(h.sessions().await, 1);
}

#[tokio::test]
async fn browser_close_expiry_sends_a_session_cookie_but_the_server_still_expires_it() {
    let h = Harness::with(|c| c.session.max_age = 100).await;
    create(&h, r#"{"a":1}"#).await;
    let r = h.client.post("/").expiry("0").send().await;
    let set = r.session_cookie().unwrap();
    assert!(
        !set.contains("Max-Age") && !set.contains("Expires"),
        "{set}"
    );
    h.clock.advance(99);
    h.client.get("/").send().await;
    assert!(!h.last_claims().new);
    h.clock.advance(1);
    h.client.get("/").send().await;
    assert!(h.last_claims().new, "dropped after max_age");
}

#[tokio::test]
async fn expire_at_browser_close_setting_makes_session_cookies() {
    let h = Harness::with(|c| c.session.expire_at_browser_close = true).await;
    let r = h.client.post("/").update(r#"{"a":1}"#).send().await;
    let set = r.session_cookie().unwrap();
    assert!(!set.contains("Max-Age"), "{set}");
    let r = h.client.post("/").expiry("60").send().await;
    assert!(r.session_cookie().unwrap().contains("Max-Age=60"));
}

#[tokio::test]
async fn idle_expiry_is_honoured_to_the_second() {
    let h = Harness::start().await;
    create(&h, r#"{"a":1}"#).await;
    let r = h.client.post("/").expiry("30").send().await;
    assert!(r.session_cookie().unwrap().contains("Max-Age=30"));
    let set_at = h.clock.now();
    h.clock.advance(29);
    h.client.get("/").send().await;
    let c = h.last_claims();
    assert_eq!((c.new, c.expires), (false, Some(set_at + 30)));
    h.clock.advance(1);
    h.client.get("/").send().await;
    assert!(h.last_claims().new);

    // An expired cookie is not adopted: a write issues a fresh key.
    let stale = h.client.session_key().unwrap();
    h.client.post("/").update(r#"{"b":2}"#).send().await;
    assert_ne!(h.client.session_key().unwrap(), stale);
}

#[tokio::test]
async fn default_expiry_restores_max_age() {
    let h = Harness::with(|c| c.session.max_age = 500).await;
    create(&h, r#"{"a":1}"#).await;
    h.client.post("/").expiry("5").send().await;
    let r = h.client.post("/").expiry("default").send().await;
    assert!(r.session_cookie().unwrap().contains("Max-Age=500"));
}

#[tokio::test]
async fn server_errors_change_nothing() {
    let h = Harness::start().await;
    let key = create(&h, r#"{"a":1}"#).await;
    for status in ["500", "503"] {
        let r = h
            .client
            .post("/")
            .header("x-reply-status", status)
            .update(r#"{"a":2}"#)
            .action("flush")
            .send()
            .await;
        assert_eq!(r.status.as_str(), status);
        assert!(r.set_cookies().is_empty());
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("x-session"))
        );
    }
    assert_eq!(
        &*h.store.load(&key).await.unwrap().unwrap().record.data,
        r#"{"a":1}"#
    );

    let fresh = h.new_client();
    fresh
        .post("/")
        .header("x-reply-status", "500")
        .update(r#"{"a":1}"#)
        .send()
        .await;
    assert_eq!(fresh.session_key(), None);
    assert_eq!(h.sessions().await, 1);
}

#[tokio::test]
async fn invalid_updates_give_502_and_apply_nothing() {
    let h = Harness::with(|c| c.session.max_bytes = 64).await;
    let key = create(&h, r#"{"a":1}"#).await;
    let bad: &[&[(&str, &str)]] = &[
        &[
            ("x-session-update", r#"{"b":2}"#),
            ("x-session-update", "{oops"),
        ],
        &[("x-session-update", "[1]")],
        &[("x-session-action", "logout")],
        &[("x-session-action", "flush"), ("x-session-expiry", "soon")],
        &[(
            "x-session-update",
            &format!(r#"{{"big":"{}"}}"#, "x".repeat(100)),
        )],
    ];
    for headers in bad {
        let mut req = h.client.post("/");
        for (k, v) in *headers {
            req = req.reply(k, v);
        }
        let r = req.send().await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{headers:?}");
        assert!(r.set_cookies().is_empty());
        assert!(
            !r.body.contains("JSON") && r.body.len() < 80,
            "short body, details in the log: {}",
            r.body
        );
        assert!(
            r.headers
                .keys()
                .all(|k| !k.as_str().starts_with("x-session"))
        );
    }
    assert_eq!(
        &*h.store.load(&key).await.unwrap().unwrap().record.data,
        r#"{"a":1}"#
    );
    assert_eq!(h.sessions().await, 1);
}

#[tokio::test]
async fn unknown_and_malformed_cookies_are_never_adopted() {
    let h = Harness::start().await;
    let unknown = SessionKey::generate().unwrap().encode();
    for value in [
        unknown.as_str(),
        "garbage",
        "",
        "../../etc/passwd",
        &"A".repeat(5000),
    ] {
        let c = h.new_client();
        c.set_cookie("sessionid", value);
        let r = c.get("/").send().await;
        assert_eq!(r.status, 200);
        assert!(
            r.set_cookies().is_empty(),
            "no write, no cookie for {value:.20}"
        );
        assert!(h.last_claims().new);
        c.post("/").update(r#"{"a":1}"#).send().await;
        let issued = c.session_key().unwrap();
        assert_ne!(issued, value);
        assert!(SessionKey::parse(&issued).is_some());
    }
    assert!(h.store.load(&unknown).await.unwrap().is_none());
    assert_eq!(h.sessions().await, 5);
}

#[tokio::test]
async fn stale_cookie_with_flush_is_expired() {
    let h = Harness::start().await;
    h.client
        .set_cookie("sessionid", &SessionKey::generate().unwrap().encode());
    let r = h.client.post("/logout").action("flush").send().await;
    assert!(r.session_cookie().unwrap().contains("Max-Age=0"));
    assert_eq!(h.sessions().await, 0);
}

#[tokio::test]
async fn save_every_request_refreshes_expiry_and_cookie() {
    let h = Harness::with(|c| {
        c.session.save_every_request = true;
        c.session.max_age = 1000;
    })
    .await;
    let key = create(&h, r#"{"a":1}"#).await;
    h.clock.advance(600);
    let r = h.client.get("/").send().await;
    let set = r.session_cookie().expect("refreshed cookie");
    assert!(set.contains(&key) && set.contains("Max-Age=1000"), "{set}");
    h.clock.advance(600);
    h.client.get("/").send().await;
    assert!(!h.last_claims().new, "the refresh moved the expiry forward");

    let r = h
        .client
        .get("/")
        .header("x-reply-status", "502")
        .send()
        .await;
    assert!(r.set_cookies().is_empty(), "no refresh on 5xx");
    let r = h
        .client
        .get("/missing")
        .header("x-reply-status", "404")
        .send()
        .await;
    assert!(
        r.session_cookie().is_some(),
        "4xx responses refresh, as in Django"
    );
    let anon = h.new_client();
    assert!(
        anon.get("/").send().await.set_cookies().is_empty(),
        "no session, nothing to refresh"
    );
}

#[tokio::test]
async fn concurrent_disjoint_updates_both_persist() {
    let h = Harness::start().await;
    create(&h, r#"{"base":0}"#).await;
    let n = 16;
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            c.post("/")
                .header("x-reply-gate", "go")
                .update(&format!(r#"{{"k{i}":{i}}}"#))
                .send()
                .await
                .status
        }));
    }
    // Every request has read the session before any response is applied.
    h.upstream.wait_for_requests(1 + n).await;
    h.upstream.open_gate("go");
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    h.client.get("/").send().await;
    let data = h.last_claims().data;
    assert_eq!(data.len(), n + 1, "{data:?}");
    for i in 0..n {
        assert_eq!(data[&format!("k{i}")], i);
    }
}

#[tokio::test]
async fn concurrent_logout_interrupts_the_other_request() {
    let h = Harness::start().await;
    let key = create(&h, r#"{"user":"ann"}"#).await;
    let slow = held_update(&h, "slow");
    h.upstream.wait_for_requests(2).await;
    let other = h.new_client();
    other.set_cookie("sessionid", &key);
    let r = other.post("/logout").action("flush").send().await;
    assert!(r.session_cookie().unwrap().contains("Max-Age=0"));
    h.upstream.open_gate("slow");
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.set_cookies().is_empty());
    assert_eq!(h.sessions().await, 0, "the session is not recreated");
}

#[tokio::test]
async fn upstream_session_cookie_is_dropped_others_pass() {
    let h = Harness::start().await;
    let r = h
        .client
        .get("/")
        .reply("set-cookie", "sessionid=forged; Path=/")
        .reply("set-cookie", "theme=dark; Path=/")
        .send()
        .await;
    assert_eq!(r.set_cookies(), vec!["theme=dark; Path=/"]);
    assert_eq!(h.client.session_key(), None);
}

#[tokio::test]
async fn vary_and_cache_control() {
    let h = Harness::start().await;
    let r = h.client.get("/").send().await;
    assert_eq!(r.headers["vary"], "Cookie");
    assert!(
        r.headers.get("cache-control").is_none(),
        "no cookie written, caching left to the app"
    );
    let r = h
        .client
        .get("/")
        .reply("vary", "Accept-Encoding")
        .update(r#"{"a":1}"#)
        .send()
        .await;
    assert_eq!(r.headers["vary"], "Accept-Encoding, Cookie");
    assert_eq!(r.headers["cache-control"], "private");
    let r = h
        .client
        .post("/")
        .reply("cache-control", "no-store")
        .update(r#"{"a":2}"#)
        .send()
        .await;
    assert_eq!(r.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_client_values_replaced() {
    let h = Harness::start().await;
    h.client
        .get("/")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=6.6.6.6;proto=https")
        .header("x-real-ip", "6.6.6.6")
        .header("host", "app.example:8443")
        .send()
        .await;
    let rec = h.upstream.last();
    assert_eq!(rec.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(rec.headers["x-forwarded-proto"], "http");
    assert!(rec.headers.get("forwarded").is_none() && rec.headers.get("x-real-ip").is_none());
    assert_eq!(rec.headers["x-forwarded-host"], "app.example:8443");
    assert_eq!(rec.headers["host"], "app.example:8443");
}

#[tokio::test]
async fn upstream_down_gives_502() {
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let upstream = Upstream::start().await;
    let h = Harness::build(
        upstream,
        |c| c.upstream = Some(format!("http://{closed}")),
        None,
    )
    .await;
    let r = h.client.get("/").send().await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        !r.body.contains(&closed.to_string()),
        "no details to the client"
    );
}

#[tokio::test]
async fn upstream_timeout_gives_504() {
    let h = Harness::with(|c| c.timeouts.upstream_response = 0.2).await;
    let r = h
        .client
        .get("/")
        .header("x-reply-gate", "never")
        .send()
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    h.upstream.open_gate("never");
}

#[tokio::test]
async fn store_failure_is_503_and_leaves_the_cookie_alone() {
    let upstream = Upstream::start().await;
    let failing = Arc::new(common_store::Failing::default());
    let h = Harness::build(upstream, |_| {}, Some(failing.clone())).await;
    let key = create(&h, r#"{"a":1}"#).await;
    failing.fail(true);
    let before = h.upstream.requests().len();
    let r = h.client.get("/").send().await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.set_cookies().is_empty());
    assert_eq!(
        h.upstream.requests().len(),
        before,
        "never forwarded as 'no session'"
    );
    failing.fail(false);
    h.client.get("/").send().await;
    assert!(!h.last_claims().new);
    assert_eq!(h.client.session_key().unwrap(), key);
}

/// A store that can be told to fail, wrapping the memory store.
mod common_store {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use sessionward::clock::SystemClock;
    use sessionward::session::memory::MemoryStore;
    use sessionward::session::{
        Capabilities, Edit, Handle, KeyHash, Keyed, Loaded, Record, SessionStore, StoreError,
        UpdateError, Updated,
    };

    #[derive(Debug)]
    pub struct Failing {
        inner: Keyed<MemoryStore>,
        failing: AtomicBool,
    }

    impl Default for Failing {
        fn default() -> Self {
            let clock = Arc::new(SystemClock);
            Self {
                inner: Keyed::new(
                    MemoryStore::new(1000, None, clock.clone()),
                    None,
                    clock,
                    None,
                ),
                failing: AtomicBool::new(false),
            }
        }
    }

    impl Failing {
        pub fn fail(&self, on: bool) {
            self.failing.store(on, Ordering::SeqCst);
        }

        fn check(&self, op: &'static str) -> Result<(), StoreError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError {
                    op,
                    message: "connection refused".into(),
                });
            }
            Ok(())
        }
    }

    #[async_trait]
    impl SessionStore for Failing {
        async fn load(&self, cookie: &str) -> Result<Option<Loaded>, StoreError> {
            self.check("load")?;
            self.inner.load(cookie).await
        }
        async fn create(&self, record: Record) -> Result<Loaded, UpdateError> {
            self.check("create")?;
            self.inner.create(record).await
        }
        async fn update(
            &self,
            handle: &Handle,
            may_rekey: bool,
            edit: &Edit<'_>,
        ) -> Result<Updated, UpdateError> {
            self.check("update")?;
            self.inner.update(handle, may_rekey, edit).await
        }
        async fn delete(&self, handle: &Handle) -> Result<bool, StoreError> {
            self.check("delete")?;
            self.inner.delete(handle).await
        }
        async fn revoke_subject(&self, subject: &str) -> Result<u64, StoreError> {
            self.check("revoke_subject")?;
            self.inner.revoke_subject(subject).await
        }
        async fn count(&self) -> Result<u64, StoreError> {
            self.inner.count().await
        }
        async fn purge(&self) -> Result<u64, StoreError> {
            self.inner.purge().await
        }
        async fn list(&self, limit: usize) -> Result<Vec<(KeyHash, Arc<Record>)>, StoreError> {
            self.inner.list(limit).await
        }
        async fn peek(&self, id: &KeyHash) -> Result<Option<Arc<Record>>, StoreError> {
            self.inner.peek(id).await
        }
        async fn delete_id(&self, id: &KeyHash) -> Result<bool, StoreError> {
            self.inner.delete_id(id).await
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
    }
}

#[tokio::test]
async fn a_session_expiring_during_the_request_is_interrupted_not_resurrected() {
    let h = Harness::with(|c| c.session.max_age = 100).await;
    create(&h, r#"{"user":"ann"}"#).await;
    let slow = held_update(&h, "late");
    h.upstream.wait_for_requests(2).await;
    h.clock.advance(100);
    h.upstream.open_gate("late");
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.set_cookies().is_empty());
    assert_eq!(h.sessions().await, 0);
}
