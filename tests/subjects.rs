//! Subjects, `revoke-subject`, and the idle and absolute timeouts, end to
//! end through the proxy with the default (memory) store.

mod common;

use common::Harness;
use http::StatusCode;
use sessionward::clock::Clock;

/// Logs a fresh client in as `user`: a session tagged with the subject.
async fn login(h: &Harness, user: &str) -> common::Client {
    let client = h.new_client();
    let r = client
        .post("/login")
        .update(&format!(r#"{{"user":"{user}"}}"#))
        .reply("x-session-subject", user)
        .send()
        .await;
    assert_eq!(r.status, 200);
    client
}

#[tokio::test]
async fn the_subject_reaches_the_app_as_the_sub_claim() {
    let h = Harness::start().await;
    let ann = login(&h, "user:7").await;
    ann.get("/").send().await;
    assert_eq!(h.last_claims().sub.as_deref(), Some("user:7"));
    // An empty P-subject clears it; the session stays.
    ann.get("/").reply("x-session-subject", "").send().await;
    ann.get("/").send().await;
    let claims = h.last_claims();
    assert_eq!(claims.sub, None);
    assert_eq!(claims.data["user"], "user:7");
}

#[tokio::test]
async fn revoke_subject_ends_every_session_of_the_subject_and_no_other() {
    let h = Harness::start().await;
    let laptop = login(&h, "ann").await;
    let phone = login(&h, "ann").await;
    let bob = login(&h, "bob").await;
    assert_eq!(h.sessions().await, 3);

    let r = phone
        .post("/password")
        .action("revoke-subject")
        .update(r#"{"flash":"signed out everywhere"}"#)
        .send()
        .await;
    assert_eq!(r.status, 200);
    // The phone got a fresh session holding only the flash message.
    phone.get("/").send().await;
    let claims = h.last_claims();
    assert_eq!(claims.data.len(), 1, "{claims:?}");
    assert_eq!(claims.data["flash"], "signed out everywhere");
    assert_eq!(claims.sub, None);

    laptop.get("/").send().await;
    assert!(
        h.last_claims().new,
        "the laptop's session survived revocation"
    );
    bob.get("/").send().await;
    assert_eq!(h.last_claims().data["user"], "bob");
    assert_eq!(h.sessions().await, 2, "bob's and the phone's fresh one");
}

#[tokio::test]
async fn revoke_subject_without_a_subject_ends_just_this_session() {
    let h = Harness::start().await;
    let other = login(&h, "ann").await;
    let r = h.client.post("/login").update(r#"{"a":1}"#).send().await;
    assert_eq!(r.status, 200);
    let r = h.client.post("/x").action("revoke-subject").send().await;
    assert_eq!(r.status, 200);
    assert!(
        r.set_cookies().iter().any(|c| c.contains("Max-Age=0")),
        "{:?}",
        r.set_cookies()
    );
    other.get("/").send().await;
    assert_eq!(h.last_claims().data["user"], "ann");
}

#[tokio::test]
async fn an_overlong_subject_is_refused_with_nothing_applied() {
    let h = Harness::start().await;
    let ann = login(&h, "ann").await;
    let long = "u".repeat(257);
    let r = ann
        .get("/")
        .update(r#"{"more":1}"#)
        .reply("x-session-subject", &long)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    ann.get("/").send().await;
    let claims = h.last_claims();
    assert_eq!(
        (claims.sub.as_deref(), claims.data.get("more")),
        (Some("ann"), None)
    );
}

#[tokio::test]
async fn idle_timeout_slides_on_every_request_and_kills_an_unused_session() {
    let h = Harness::with(|c| c.session.idle_timeout = Some(30)).await;
    let ann = login(&h, "ann").await;
    for _ in 0..4 {
        h.clock.advance(29);
        ann.get("/").send().await;
        let claims = h.last_claims();
        assert!(!claims.new, "a request within 30 s keeps the session");
        assert_eq!(
            claims.expires,
            Some(h.clock.now() + 30),
            "the token shows the slid deadline"
        );
    }
    h.clock.advance(30);
    ann.get("/").send().await;
    assert!(h.last_claims().new, "30 s without a request ends it");
}

#[tokio::test]
async fn absolute_timeout_ends_a_session_however_busy() {
    let h = Harness::with(|c| {
        c.session.absolute_timeout = Some(100);
        c.session.save_every_request = true;
    })
    .await;
    let ann = login(&h, "ann").await;
    for _ in 0..3 {
        h.clock.advance(33);
        ann.get("/").send().await;
        assert!(!h.last_claims().new);
    }
    h.clock.advance(1);
    ann.get("/").send().await;
    assert!(h.last_claims().new, "alive past its absolute timeout");
}

#[tokio::test]
async fn an_oversized_follow_up_refuses_revocation_before_anything_is_deleted() {
    let h = Harness::with(|c| c.session.max_bytes = 100).await;
    let laptop = login(&h, "ann").await;
    let phone = login(&h, "ann").await;
    let big = format!(r#"{{"flash":"{}"}}"#, "x".repeat(200));
    let r = phone
        .post("/password")
        .action("revoke-subject")
        .update(&big)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.set_cookies().is_empty());
    assert_eq!(
        h.sessions().await,
        2,
        "a refused revocation deleted sessions"
    );
    for c in [&laptop, &phone] {
        c.get("/").send().await;
        assert_eq!(h.last_claims().sub.as_deref(), Some("ann"));
    }
}

#[tokio::test]
async fn revocation_uses_the_subject_as_stored_when_it_runs() {
    let h = Harness::start().await;
    let laptop = login(&h, "ann").await;
    // The phone's session has no subject yet when the revoking request arrives.
    let phone = h.new_client();
    phone.post("/").update(r#"{"cart":[1]}"#).send().await;
    let revoking = {
        let phone = phone.clone();
        tokio::spawn(async move {
            phone
                .post("/logout-everywhere")
                .header("x-reply-gate", "revoke")
                .action("revoke-subject")
                .send()
                .await
        })
    };
    h.upstream.wait_for_requests(3).await;
    // Meanwhile a login on the same session tags it.
    let r = phone
        .post("/login")
        .reply("x-session-subject", "ann")
        .send()
        .await;
    assert_eq!(r.status, 200);
    h.upstream.open_gate("revoke");
    assert_eq!(revoking.await.unwrap().status, 200);
    laptop.get("/").send().await;
    assert!(
        h.last_claims().new,
        "the laptop's session escaped revocation"
    );
}
