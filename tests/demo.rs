//! The demo end to end over real sockets: a browser-like client with a
//! hand-rolled cookie jar walks through counter, login, logout and flash.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sessionward::demo::{Demo, DemoError};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One response, reduced to what the assertions look at.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    location: Option<String>,
    /// `Some(Some(v))`: cookie set to v; `Some(None)`: cookie deleted; `None`: untouched.
    cookie: Option<Option<String>>,
    body: String,
}

/// A client that keeps the session cookie the way a browser would.
struct Browser {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
            cookie: None,
        }
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, Bytes::new()).await
    }

    async fn post(&mut self, path: &str, form: &str) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, Bytes::from(form.to_string()))
            .await
    }

    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, format!("sessionid={c}"));
        }
        let resp = tokio::time::timeout(TIMEOUT, self.client.request(req.body(Full::new(body))?))
            .await??;
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str())
            .transpose()?
            .map(str::to_string);
        let mut cookie = None;
        for v in resp.headers().get_all(SET_COOKIE) {
            let v = v.to_str()?;
            let Some(rest) = v.strip_prefix("sessionid=") else {
                continue;
            };
            let value = rest.split(';').next().unwrap_or("").to_string();
            let deleted = value.is_empty() || v.contains("Max-Age=0");
            // Plain http on localhost: the demo must not mark the cookie Secure.
            assert!(!v.contains("Secure"), "{v}");
            assert!(v.contains("HttpOnly"), "{v}");
            cookie = Some((!deleted).then_some(value));
        }
        if let Some(c) = &cookie {
            self.cookie = c.clone();
        }
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Reply {
            status,
            location,
            cookie,
            body: String::from_utf8(body.to_vec())?,
        })
    }
}

/// The text of the element with `id`, up to its closing tag.
fn field<'a>(body: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\">");
    let start = body.find(&open).map_or(body.len(), |i| i + open.len());
    let rest = &body[start..];
    &rest[..rest
        .find("</dd>")
        .or_else(|| rest.find("</pre>"))
        .unwrap_or(rest.len())]
}

fn assert_redirect(r: &Reply) {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some("/"));
}

#[tokio::test]
async fn counter_login_logout_and_flash_through_the_proxy() -> anyhow::Result<()> {
    let demo = Demo::start("127.0.0.1:0".parse()?).await?;
    assert_ne!(demo.proxy_addr().port(), 0);
    assert_ne!(demo.app_addr(), demo.proxy_addr());
    let mut b = Browser::new(demo.proxy_addr());

    // A first visit: no session, and none is created just by looking.
    let r = b.get("/").await?;
    assert_eq!(r.status, StatusCode::OK);
    assert!(field(&r.body, "state").contains("No session"), "{}", r.body);
    assert!(field(&r.body, "sid").contains("none"));
    assert!(r.body.contains("This app has no session code"));
    assert_eq!(r.cookie, None);

    // Two increments: the first creates the session, the second keeps its key.
    let r = b.post("/increment", "").await?;
    assert_redirect(&r);
    let first_key = r
        .cookie
        .clone()
        .flatten()
        .expect("the first update sets the cookie");
    let r = b.post("/increment", "").await?;
    assert_redirect(&r);
    assert_eq!(
        b.cookie.as_deref(),
        Some(first_key.as_str()),
        "no action: same key"
    );

    let r = b.get("/").await?;
    assert!(
        field(&r.body, "state").contains("Session active"),
        "{}",
        r.body
    );
    assert_eq!(field(&r.body, "counter"), "2");
    assert!(field(&r.body, "user").contains("not logged in"));
    assert!(
        field(&r.body, "data").contains("&quot;counter&quot;: 2"),
        "{}",
        r.body
    );
    assert!(field(&r.body, "claims").contains("&quot;iss&quot;: &quot;sessionward&quot;"));
    let sid_before = field(&r.body, "sid").to_string();

    // Login cycles the key but keeps the data.
    let r = b.post("/login", "name=ann").await?;
    assert_redirect(&r);
    let login_key = r.cookie.clone().flatten().expect("login sets a new cookie");
    assert_ne!(login_key, first_key, "login must rotate the session key");
    let r = b.get("/").await?;
    assert!(field(&r.body, "user").contains("ann"), "{}", r.body);
    assert_eq!(field(&r.body, "counter"), "2");
    assert_ne!(field(&r.body, "sid"), sid_before, "the sid follows the key");

    // The pre-login key died with the rotation.
    let mut stale = Browser::new(demo.proxy_addr());
    stale.cookie = Some(first_key);
    let r = stale.get("/").await?;
    assert!(field(&r.body, "state").contains("No session"), "{}", r.body);

    // Logout flushes, then the flash lands in a fresh session.
    let r = b.post("/logout", "").await?;
    assert_redirect(&r);
    let logout_key = r
        .cookie
        .clone()
        .flatten()
        .expect("logout sets a new cookie");
    assert_ne!(logout_key, login_key);
    let r = b.get("/").await?;
    assert!(
        r.body
            .contains("class=\"flash\">You have been logged out.</p>"),
        "{}",
        r.body
    );
    assert!(field(&r.body, "user").contains("not logged in"));
    assert!(!r.body.contains("ann"), "{}", r.body);
    assert_eq!(field(&r.body, "counter"), "0");
    // The flash was all there was: clearing it empties and ends the session.
    assert_eq!(
        r.cookie,
        Some(None),
        "the emptied session's cookie is deleted"
    );

    let r = b.get("/").await?;
    assert!(!r.body.contains("class=\"flash\""), "{}", r.body);
    assert!(field(&r.body, "state").contains("No session"));

    drop((b, stale));
    demo.stop_handle().stop();
    tokio::time::timeout(TIMEOUT, demo.wait()).await?;
    Ok(())
}

#[tokio::test]
async fn browser_close_and_bad_input() -> anyhow::Result<()> {
    let demo = Demo::start("127.0.0.1:0".parse()?).await?;
    let app_addr = demo.app_addr();
    let mut b = Browser::new(demo.proxy_addr());

    let r = b.post("/browser-close", "").await?;
    assert_redirect(&r);
    let r = b.get("/").await?;
    assert!(
        field(&r.body, "expires").contains("browser closes"),
        "{}",
        r.body
    );

    // Names are escaped on the page and survive non-ASCII.
    let r = b.post("/login", "name=%3Cb%3EZo%C3%AB%3C%2Fb%3E").await?;
    assert_redirect(&r);
    let r = b.get("/").await?;
    assert!(
        field(&r.body, "user").contains("&lt;b&gt;Zoë&lt;/b&gt;"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("<b>Zo"));

    for form in [
        "name=",
        "name=+++",
        "other=x",
        &format!("name={}", "a".repeat(65)),
    ] {
        let r = b.post("/login", form).await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{form}");
        assert_eq!(r.cookie, None, "{form}");
    }
    let r = b
        .post("/login", &format!("name={}", "x".repeat(17 * 1024)))
        .await?;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    let r = b.get("/nowhere").await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.body.contains("href=\"/\""));
    let r = b.get("/increment").await?;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Straight to the app, skipping the proxy: no token, no answer.
    let mut direct = Browser::new(app_addr);
    let r = direct.get("/").await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("did not verify"), "{}", r.body);

    drop((b, direct));
    demo.stop_handle().stop();
    tokio::time::timeout(TIMEOUT, demo.wait()).await?;
    Ok(())
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() -> anyhow::Result<()> {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = taken.local_addr()?;
    let err = Demo::start(addr).await.expect_err("the port is taken");
    assert!(matches!(err, DemoError::AddrInUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr}: address in use; pass --listen 127.0.0.1:PORT")
    );
    Ok(())
}
