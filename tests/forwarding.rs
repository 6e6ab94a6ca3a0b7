//! `trusted_proxies` and `bypass`, end to end.

mod common;

use common::Harness;

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_appended_to() {
    let h = Harness::with(|c| c.trusted_proxies = vec!["127.0.0.0/8".into()]).await;
    let r = h
        .client
        .get("/")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "shop.example")
        .header("x-request-id", "lb-42")
        .send()
        .await;
    let up = h.upstream.last();
    assert_eq!(up.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(up.headers["x-forwarded-proto"], "https");
    assert_eq!(up.headers["x-forwarded-host"], "shop.example");
    assert_eq!(up.headers["x-request-id"], "lb-42");
    assert_eq!(r.headers["x-request-id"], "lb-42");
    // Without claims, the proxy's own view is filled in.
    h.client.get("/").send().await;
    let up = h.upstream.last();
    assert_eq!(up.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up.headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn anybody_elses_forwarding_headers_are_replaced() {
    // A trusted list that does not hold the peer (127.0.0.1).
    let h = Harness::with(|c| c.trusted_proxies = vec!["10.0.0.0/8".into()]).await;
    let r = h
        .client
        .get("/")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=203.0.113.7")
        .header("x-real-ip", "203.0.113.7")
        .header("x-request-id", "forged")
        .send()
        .await;
    let up = h.upstream.last();
    assert_eq!(up.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(up.headers["x-forwarded-proto"], "http");
    assert_ne!(up.headers["x-forwarded-host"], "evil.example");
    assert!(up.headers.get("forwarded").is_none());
    assert!(up.headers.get("x-real-ip").is_none());
    assert_ne!(up.headers["x-request-id"], "forged");
    assert_eq!(r.headers["x-request-id"], up.headers["x-request-id"]);
}

#[tokio::test]
async fn bypassed_paths_get_no_session_and_cannot_change_it() {
    let h = Harness::with(|c| c.bypass = vec!["/static/".into(), "/healthz".into()]).await;
    let r = h
        .client
        .post("/login")
        .update(r#"{"user":"ann"}"#)
        .send()
        .await;
    assert_eq!(r.status, 200);
    let key = h.client.session_key().unwrap();

    let r = h
        .client
        .get("/static/app.css")
        .header("x-session", "forged")
        .update(r#"{"user":"root"}"#)
        .action("flush")
        .reply("set-cookie", "sessionid=evil")
        .send()
        .await;
    assert_eq!(r.status, 200);
    let up = h.upstream.last();
    assert!(
        up.headers.get("x-session").is_none(),
        "no token on a bypassed path"
    );
    assert!(
        up.headers.get("cookie").is_none(),
        "the session cookie still never reaches the app"
    );
    assert!(r.set_cookies().is_empty(), "{:?}", r.set_cookies());
    assert!(
        r.headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-session"))
    );
    assert!(
        r.headers.get("vary").is_none(),
        "static files stay cacheable"
    );

    // Nothing the bypassed response said was applied.
    assert_eq!(h.client.session_key().unwrap(), key);
    h.client.get("/account").send().await;
    assert_eq!(h.last_claims().data["user"], "ann");
    // A path that merely starts alike is not bypassed.
    h.client.get("/staticfile").send().await;
    assert!(h.upstream.last().headers.get("x-session").is_some());
}
