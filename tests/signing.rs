//! Token signing end to end: key rotation (kid, stable sid, cookie-store
//! fallbacks), EdDSA and ES256 tokens checked against the published JWKS
//! and reused per session version, and signed updates.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{Harness, Recorded, SECRET, Upstream, echo_reply};
use http::{HeaderMap, HeaderValue};
use ring::hmac;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use sessionward::clock::Clock;
use sessionward::config::{RawConfig, RawSigningKey};

/// The secret that replaces [`SECRET`] in rotation tests.
const NEW_SECRET: &str = "rotated-secret-0123456789-abcdefghijklmn";
/// The app's key for update signatures with public-key tokens.
const UPDATE_SECRET: &str = "update-secret-0123456789-abcdefghijklmno";

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn token_of(rec: &Recorded) -> String {
    rec.headers["x-session"].to_str().unwrap().to_string()
}

fn sid_under(secret: &str, cookie_key: &str) -> String {
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        format!("sid:{cookie_key}").as_bytes(),
    );
    URL_SAFE_NO_PAD.encode(&mac.as_ref()[..16])
}

// ---------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------

fn rotated(c: &mut RawConfig) {
    c.signing.secret = None;
    c.signing.keys = Some(vec![
        RawSigningKey {
            id: Some("2025-06".into()),
            secret: Some(NEW_SECRET.into()),
            private_key: None,
        },
        RawSigningKey {
            id: Some("2025-01".into()),
            secret: Some(SECRET.into()),
            private_key: None,
        },
    ]);
    // The sid key stays what the single secret was: sids survive the rotation.
    c.signing.sid_secret = Some(SECRET.into());
}

#[tokio::test]
async fn rotated_keys_sign_with_the_first_and_send_its_kid() {
    let h = Harness::with(rotated).await;
    h.client
        .post("/login")
        .update(r#"{"user":"ann"}"#)
        .send()
        .await;
    h.client.get("/page").send().await;
    let token = token_of(&h.upstream.last());
    assert_eq!(
        part(&token, 0),
        json!({"alg": "HS256", "typ": "JWT", "kid": "2025-06"})
    );
    // An app that knows only the new secret verifies it.
    let (input, sig) = token.rsplit_once('.').unwrap();
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, NEW_SECRET.as_bytes()),
        input.as_bytes(),
        &URL_SAFE_NO_PAD.decode(sig).unwrap(),
    )
    .expect("signed with the first key");
    let claims = h.last_claims();
    assert_eq!(claims.data["user"], "ann");
    assert_eq!(
        (claims.method.as_str(), claims.path.as_str()),
        ("GET", "/page")
    );
    // sid is keyed by sid_secret, not by the key that signs.
    let key = h.client.session_key().unwrap();
    assert_eq!(claims.sid.unwrap(), sid_under(SECRET, &key));
}

#[tokio::test]
async fn cookie_store_session_sealed_under_the_old_secret_opens_after_rotation() {
    let cookie_store = |c: &mut RawConfig| {
        c.store.kind = "cookie".into();
    };
    let before = Harness::with(cookie_store).await;
    before
        .client
        .post("/login")
        .update(r#"{"user":"ann"}"#)
        .send()
        .await;
    before.client.get("/").send().await;
    let sid_before = before.last_claims().sid.unwrap();
    let old_cookie = before.client.session_key().unwrap();

    let after = Harness::with(|c| {
        cookie_store(c);
        rotated(c);
    })
    .await;
    after.client.set_cookie("sessionid", &old_cookie);
    after.client.get("/").send().await;
    let claims = after.last_claims();
    assert_eq!(claims.data["user"], "ann", "the old cookie still opens");
    assert_eq!(claims.sid.unwrap(), sid_before, "and keeps its sid");

    // Its next write is sealed under the new secret only.
    let r = after.client.post("/").update(r#"{"n":1}"#).send().await;
    assert_eq!(r.status, 200);
    let resealed = after.client.session_key().unwrap();
    assert_ne!(resealed, old_cookie);
    let new_only = Harness::with(|c| {
        cookie_store(c);
        c.signing.secret = Some(NEW_SECRET.into());
    })
    .await;
    new_only.client.set_cookie("sessionid", &resealed);
    new_only.client.get("/").send().await;
    assert_eq!(new_only.last_claims().data["n"], 1);
    new_only.client.set_cookie("sessionid", &old_cookie);
    new_only.client.get("/").send().await;
    assert!(
        new_only.last_claims().new,
        "without the fallback the old cookie is no session"
    );
}

#[tokio::test]
async fn secret_fallbacks_open_old_cookie_store_sessions() {
    let before = Harness::with(|c| c.store.kind = "cookie".into()).await;
    before.client.post("/").update(r#"{"a":1}"#).send().await;
    let old_cookie = before.client.session_key().unwrap();
    let after = Harness::with(|c| {
        c.store.kind = "cookie".into();
        c.signing.secret = Some(NEW_SECRET.into());
        c.signing.secret_fallbacks = vec![SECRET.into()];
        c.signing.sid_secret = Some(SECRET.into());
    })
    .await;
    after.client.set_cookie("sessionid", &old_cookie);
    after.client.get("/").send().await;
    let claims = after.last_claims();
    assert_eq!(claims.data["a"], 1);
    // HS256 with one secret: no kid, the header is the documented constant.
    let token = token_of(&after.upstream.last());
    assert!(token.starts_with("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."));
}

// ---------------------------------------------------------------------------
// Public-key tokens
// ---------------------------------------------------------------------------

/// A PKCS#8 PEM key for `alg` (`EdDSA` or `ES256`) in a fresh directory,
/// removed on drop (the proxy reads the file once, at start).
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(alg: &str) -> KeyFile {
        let rng = SystemRandom::new();
        let der = match alg {
            "EdDSA" => Ed25519KeyPair::generate_pkcs8(&rng).unwrap(),
            _ => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap(),
        };
        let b64 = STANDARD.encode(der.as_ref());
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            body.join("\n")
        );
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&rng, &mut nonce).unwrap();
        let dir = std::env::temp_dir().join(format!("sessionward-signing-{}", hex(&nonce)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key.pem"), pem).unwrap();
        KeyFile(dir)
    }

    fn path(&self) -> String {
        self.0.join("key.pem").display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn public_key(c: &mut RawConfig, alg: &str, key: &KeyFile) {
    c.signing.algorithm = alg.into();
    c.signing.private_key = Some(key.path());
    // One worker, so one reuse cache: every request sees the same tokens.
    c.workers = 1;
}

/// The JWKS document as an app fetches it, from the admin listener.
async fn fetch_jwks(h: &Harness) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let admin = h.server.as_ref().unwrap().admin_addr().unwrap();
    let mut conn = tokio::net::TcpStream::connect(admin).await.unwrap();
    conn.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/jwk-set+json")
    );
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Verifies `token` with the key its `kid` names in `jwks`, as an app would.
fn verify_with_jwks(jwks: &str, token: &str) -> Value {
    let header = part(token, 0);
    let jwks: Value = serde_json::from_str(jwks).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is in the JWKS");
    assert_eq!(jwk["alg"], header["alg"]);
    assert_eq!(jwk["use"], "sig");
    let b64 = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
    let (public, alg): (Vec<u8>, &dyn signature::VerificationAlgorithm) =
        match header["alg"].as_str().unwrap() {
            "EdDSA" => {
                assert_eq!(
                    (&jwk["kty"], &jwk["crv"]),
                    (&json!("OKP"), &json!("Ed25519"))
                );
                (b64("x"), &signature::ED25519)
            }
            "ES256" => {
                assert_eq!((&jwk["kty"], &jwk["crv"]), (&json!("EC"), &json!("P-256")));
                (
                    [&[4u8][..], &b64("x"), &b64("y")].concat(),
                    &signature::ECDSA_P256_SHA256_FIXED,
                )
            }
            other => panic!("unexpected alg {other}"),
        };
    let (input, sig) = token.rsplit_once('.').unwrap();
    UnparsedPublicKey::new(alg, &public)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
        .expect("the signature verifies with the published public key");
    part(token, 1)
}

async fn public_key_tokens_verify_and_are_reused(alg: &str) {
    let key = KeyFile::new(alg);
    let h = Harness::with(|c| public_key(c, alg, &key)).await;
    let jwks = fetch_jwks(&h).await;
    assert_eq!(jwks, h.signer.jwks());
    assert!(!jwks.contains(SECRET), "the secret is never published");

    h.client.get("/anonymous").send().await;
    let anonymous_token = token_of(&h.upstream.last());
    let anonymous = verify_with_jwks(&jwks, &anonymous_token);
    assert_eq!(
        (&anonymous["new"], &anonymous["sid"]),
        (&json!(true), &Value::Null)
    );
    assert!(anonymous.get("method").is_none() && anonymous.get("path").is_none());

    h.client
        .post("/login")
        .update(r#"{"user":"ann"}"#)
        .send()
        .await;
    h.client.get("/a").send().await;
    let first = token_of(&h.upstream.last());
    // Before the test clock runs ahead of PyJWT's.
    pyjwt_verifies(&jwks, &[&anonymous_token, &first]);
    let claims = verify_with_jwks(&jwks, &first);
    assert_eq!(claims["data"], json!({"user": "ann"}));
    assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
    assert_eq!(
        h.last_claims().sid,
        claims["sid"].as_str().map(String::from)
    );

    // Same session version, another request: the same token, not a new signature.
    h.client.post("/b?x=1").send().await;
    assert_eq!(token_of(&h.upstream.last()), first);
    h.clock.advance(29);
    h.client.get("/c").send().await;
    assert_eq!(token_of(&h.upstream.last()), first);
    // Half the ttl (60 s) passed: a fresh token, again reused.
    h.clock.advance(1);
    h.client.get("/d").send().await;
    let second = token_of(&h.upstream.last());
    assert_ne!(second, first);
    assert_eq!(part(&second, 1)["iat"], h.clock.now());
    h.client.get("/e").send().await;
    assert_eq!(token_of(&h.upstream.last()), second);
    // A new session version gets a new token at once.
    h.client.post("/f").update(r#"{"n":1}"#).send().await;
    h.client.get("/g").send().await;
    let third = token_of(&h.upstream.last());
    assert_ne!(third, second);
    assert_eq!(
        verify_with_jwks(&jwks, &third)["data"],
        json!({"user": "ann", "n": 1})
    );
}

#[tokio::test]
async fn eddsa_tokens_verify_with_the_jwks_and_are_reused_per_version() {
    public_key_tokens_verify_and_are_reused("EdDSA").await;
}

#[tokio::test]
async fn es256_tokens_verify_with_the_jwks_and_are_reused_per_version() {
    public_key_tokens_verify_and_are_reused("ES256").await;
}

/// Cross-checks with an independent library when it is installed: PyJWT
/// (with `cryptography`) verifies the tokens with keys from the JWKS, the
/// way docs/protocol.md section 7 tells apps to.
fn pyjwt_verifies(jwks: &str, tokens: &[&str]) {
    const SCRIPT: &str = r#"
import json, sys, jwt
keys = jwt.PyJWKSet.from_dict(json.loads(sys.argv[1]))
for token in sys.argv[2:]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    jwt.decode(token, key, algorithms=["EdDSA", "ES256"], issuer="sessionward",
               options={"require": ["iss", "iat", "exp", "jti"]})
print("ok")
"#;
    let available = std::process::Command::new("python3")
        .args(["-c", "import jwt, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        eprintln!("PyJWT with cryptography not installed: cross-check skipped");
        return;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, jwks])
        .args(tokens)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PyJWT refused the token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Signed updates
// ---------------------------------------------------------------------------

/// The documented byte string (docs/protocol.md 4.7), built here from the
/// response headers independently of sessionward's own code.
fn update_signature(key: &str, jti: &str, headers: &HeaderMap) -> String {
    let mut lines = vec!["sessionward-update-v1".to_string(), jti.to_string()];
    for (label, name) in [
        ("action", "x-session-action"),
        ("expiry", "x-session-expiry"),
        ("subject", "x-session-subject"),
        ("update", "x-session-update"),
    ] {
        for v in headers.get_all(name) {
            lines.push(format!("{label}:{}", v.to_str().unwrap().trim()));
        }
    }
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
        lines.join("\n").as_bytes(),
    );
    hex(mac.as_ref())
}

/// An app that signs its update headers as `x-sign` asks: `good` (with
/// `x-sign-key`, default the test secret), `other-jti`, `late-update` (a
/// header added after signing, as an injection would), or not at all.
async fn signing_upstream() -> Upstream {
    Upstream::with_handler(Arc::new(|req, state| {
        Box::pin(async move {
            let mode = req
                .headers()
                .get("x-sign")
                .map(|v| v.to_str().unwrap().to_string());
            let key = req
                .headers()
                .get("x-sign-key")
                .map_or(SECRET.to_string(), |v| v.to_str().unwrap().to_string());
            let token = req.headers()["x-session"].to_str().unwrap().to_string();
            let jti = part(&token, 1)["jti"].as_str().unwrap().to_string();
            let mut resp = echo_reply(req, state).await;
            let sig = match mode.as_deref() {
                Some("good") => update_signature(&key, &jti, resp.headers()),
                Some("other-jti") => {
                    update_signature(&key, "AAAAAAAAAAAAAAAAAAAAAA", resp.headers())
                }
                Some("late-update") => {
                    let sig = update_signature(&key, &jti, resp.headers());
                    resp.headers_mut().append(
                        "x-session-update",
                        HeaderValue::from_static(r#"{"admin":true}"#),
                    );
                    sig
                }
                _ => return resp,
            };
            resp.headers_mut()
                .insert("x-session-signature", HeaderValue::from_str(&sig).unwrap());
            resp
        })
    }))
    .await
}

async fn signed_harness(adjust: impl FnOnce(&mut RawConfig)) -> Harness {
    Harness::build(
        signing_upstream().await,
        |c| {
            c.signing.require_signed_updates = true;
            adjust(c);
        },
        None,
    )
    .await
}

#[tokio::test]
async fn correctly_signed_updates_are_applied() {
    let h = signed_harness(|_| {}).await;
    let r = h
        .client
        .post("/login")
        .header("x-sign", "good")
        .action("cycle")
        .reply("x-session-subject", "user:7")
        .update(r#"{"user":"ann"}"#)
        .update(r#"{"n":1}"#)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.session_cookie().is_some());
    assert!(
        r.headers.get("x-session-signature").is_none(),
        "the signature never reaches the client"
    );
    // Responses without update headers need no signature.
    let r = h.client.get("/").send().await;
    assert_eq!(r.status, 200);
    let claims = h.last_claims();
    assert_eq!(Value::Object(claims.data), json!({"user": "ann", "n": 1}));
    assert_eq!(claims.sub.as_deref(), Some("user:7"));
}

#[tokio::test]
async fn missing_or_wrong_signatures_are_502_and_nothing_is_applied() {
    let h = signed_harness(|_| {}).await;
    h.client
        .post("/login")
        .header("x-sign", "good")
        .update(r#"{"user":"ann"}"#)
        .send()
        .await;
    let cookie = h.client.session_key().unwrap();
    let wrong_key = "not-the-update-key-0123456789-abcdefghij";
    for (mode, key) in [
        (None, SECRET),
        (Some("good"), wrong_key),
        (Some("other-jti"), SECRET),
        (Some("late-update"), SECRET),
    ] {
        let mut req = h
            .client
            .post("/evil")
            .header("x-sign-key", key)
            .action("flush")
            .update(r#"{"user":"mallory"}"#);
        if let Some(mode) = mode {
            req = req.header("x-sign", mode);
        }
        let r = req.send().await;
        assert_eq!(r.status, 502, "{mode:?} with {key}");
        assert!(r.session_cookie().is_none(), "{mode:?}: cookie untouched");
    }
    assert_eq!(h.client.session_key().unwrap(), cookie);
    h.client.get("/").send().await;
    let claims = h.last_claims();
    assert_eq!(Value::Object(claims.data), json!({"user": "ann"}));
    // Without a session, an unsigned update creates none.
    let stranger = h.new_client();
    let r = stranger.post("/").update(r#"{"user":"eve"}"#).send().await;
    assert_eq!(r.status, 502);
    assert!(stranger.session_key().is_none());
}

#[tokio::test]
async fn public_key_tokens_take_signed_updates_with_the_update_secret() {
    let key = KeyFile::new("EdDSA");
    let h = signed_harness(|c| {
        public_key(c, "EdDSA", &key);
        c.signing.update_secret = Some(UPDATE_SECRET.into());
    })
    .await;
    // The app has no use for signing.secret here: it must not sign with it.
    let r = h
        .client
        .post("/")
        .header("x-sign", "good")
        .update(r#"{"a":1}"#)
        .send()
        .await;
    assert_eq!(r.status, 502);
    let r = h
        .client
        .post("/")
        .header("x-sign", "good")
        .header("x-sign-key", UPDATE_SECRET)
        .update(r#"{"a":1}"#)
        .send()
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    h.client.get("/").send().await;
    assert_eq!(h.last_claims().data["a"], 1);
    // Two anonymous requests never share a jti when updates are signed.
    let (a, b) = (h.new_client(), h.new_client());
    a.get("/").send().await;
    let ja = part(&token_of(&h.upstream.last()), 1)["jti"].clone();
    b.get("/").send().await;
    let jb = part(&token_of(&h.upstream.last()), 1)["jti"].clone();
    assert_ne!(ja, jb);
}
