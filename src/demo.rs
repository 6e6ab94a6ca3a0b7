//! `sessionward demo`: the proxy in front of a tiny built-in "legacy app" that
//! has no session code at all. The app reads the session from the signed
//! token sessionward sends and changes it only through response headers, so
//! the whole header protocol can be watched from a browser.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

use crate::StartError;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, RawConfig};
use crate::error::ProxyError;
use crate::protocol::HeaderNames;
use crate::server::{Server, StopHandle};
use crate::token::{Signer, VerifiedClaims};

/// Largest request body the demo app reads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Longest name `POST /login` accepts, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Bytes of randomness in the throwaway signing secret.
const SECRET_BYTES: usize = 48;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The proxy's address is taken by another process.
    #[error("cannot listen on {addr}: address in use; pass --listen 127.0.0.1:PORT")]
    AddrInUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The proxy could not start for another reason.
    #[error(transparent)]
    Start(StartError),
    /// The demo app's ephemeral port could not be bound.
    #[error("cannot start the demo app on 127.0.0.1: {0}")]
    App(io::Error),
    /// The OS random generator failed.
    #[error("the OS random generator failed; cannot make a signing secret")]
    Random,
    /// The generated configuration was refused (a bug in the demo).
    #[error("the demo configuration is invalid: {0}")]
    Config(ConfigError),
    /// The proxy could not be built.
    #[error("cannot build the proxy: {0}")]
    Proxy(ProxyError),
}

/// A running demo: the proxy and, behind it, the demo app.
#[derive(Debug)]
pub struct Demo {
    server: Server,
    app_addr: SocketAddr,
    app: AbortOnDrop,
}

/// Aborts the app when the demo goes away without [`Demo::wait`], so the
/// app never outlives its proxy.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Demo {
    /// Starts the demo app on an ephemeral port and the proxy on `listen` in front of it.
    pub async fn start(listen: SocketAddr) -> Result<Demo, DemoError> {
        let secret = random_secret()?;
        // Bound before the proxy starts so the upstream address is known; it
        // only starts answering once the proxy is up.
        let app_listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(DemoError::App)?;
        let app_addr = app_listener.local_addr().map_err(DemoError::App)?;
        let config = demo_config(listen, app_addr, secret)?;

        let server = crate::start(&config, Arc::new(SystemClock))
            .await
            .map_err(|e| match e {
                StartError::Bind { addr, source } if source.kind() == io::ErrorKind::AddrInUse => {
                    DemoError::AddrInUse { addr }
                }
                other => DemoError::Start(other),
            })?;

        let app = Arc::new(App {
            signer: Signer::new(&config.signing.secret, config.signing.token_ttl),
            names: HeaderNames::new(&config.header_prefix).map_err(|e| {
                DemoError::Proxy(ProxyError::Internal(format!("header prefix: {e}")))
            })?,
            proxy_addr: server.local_addr(),
        });
        let task = tokio::spawn(serve_app(app_listener, app));
        Ok(Demo {
            server,
            app_addr,
            app: AbortOnDrop(task),
        })
    }

    /// Where the proxy listens: the address to open in a browser.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where the demo app listens (it refuses requests that skip the proxy).
    pub fn app_addr(&self) -> SocketAddr {
        self.app_addr
    }

    /// A handle that stops the proxy, and with it the demo.
    pub fn stop_handle(&self) -> StopHandle {
        self.server.stop_handle()
    }

    /// Waits until the proxy has stopped and drained, then stops the app.
    pub async fn wait(self) {
        let Demo { server, app, .. } = self;
        server.wait().await;
        // The proxy has drained, so nothing is in flight to the app any more.
        app.0.abort();
    }
}

fn random_secret() -> Result<String, DemoError> {
    let mut bytes = [0u8; SECRET_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| DemoError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn demo_config(listen: SocketAddr, app: SocketAddr, secret: String) -> Result<Config, DemoError> {
    let mut raw = RawConfig {
        listen: Some(listen.to_string()),
        upstream: Some(format!("http://{app}")),
        ..RawConfig::default()
    };
    // The demo is plain http on localhost: a Secure cookie would never be
    // sent back, so every request would look like a new visitor.
    raw.cookie.secure = false;
    raw.signing.secret = Some(secret);
    // Ctrl-C on a demo should not wait 25 s for a browser's idle keep-alive.
    raw.shutdown_grace = 2.0;
    // A demo needs no probes, and must not clash with a real instance's admin port.
    raw.admin.listen = None;
    Config::try_from(raw).map_err(DemoError::Config)
}

// ---------------------------------------------------------------------------
// The demo app.
// ---------------------------------------------------------------------------

/// The legacy app: knows the signing secret and the header names, stores nothing.
struct App {
    signer: Signer,
    names: HeaderNames,
    proxy_addr: SocketAddr,
}

type Reply = Response<Full<Bytes>>;

async fn serve_app(listener: TcpListener, app: Arc<App>) {
    // Connections live in the set so that aborting this task ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        debug!(error = %e, "demo app: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(handle(&app, req).await) }
                });
                connections.spawn(async move {
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "demo app: connection ended with an error");
                    }
                });
            }
            // Reap finished connections so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(app: &App, req: Request<Incoming>) -> Reply {
    let now = SystemClock.now();
    let verified = match req.headers().get(&app.names.token) {
        None => Err(format!("there is no {} header", app.names.token)),
        Some(value) => match value.to_str() {
            Err(_) => Err("the header is not text".to_string()),
            Ok(token) => app
                .signer
                .verify(token, now)
                .map(|claims| (token.to_string(), claims))
                .map_err(|e| e.to_string()),
        },
    };
    let (token, claims) = match verified {
        Ok(v) => v,
        Err(reason) => return unverified(app, &reason),
    };

    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/") => home(app, &token, &claims, now),
        (&Method::POST, "/increment" | "/login" | "/browser-close" | "/logout") => {
            let body = match read_body(req.into_body()).await {
                Ok(body) => body,
                Err(reply) => return reply,
            };
            match path.as_str() {
                "/increment" => increment(app, &claims),
                "/login" => login(app, &body, now),
                "/browser-close" => browser_close(app),
                _ => logout(app),
            }
        }
        (_, "/") => method_not_allowed("GET"),
        (_, "/increment" | "/login" | "/browser-close" | "/logout") => method_not_allowed("POST"),
        _ => not_found(&path),
    }
}

/// Reads at most [`MAX_BODY_BYTES`]; the error is the reply to send instead.
async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    let too_large = || {
        page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            &format!("<p>Request bodies are limited to {MAX_BODY_BYTES} bytes.</p>{BACK}"),
        )
    };
    // A declared length over the limit is refused before reading anything.
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => {
            debug!(error = %e, "demo app: cannot read request body");
            Err(page(
                StatusCode::BAD_REQUEST,
                "Bad request",
                "<p>The request body could not be read.</p>",
            ))
        }
    }
}

fn increment(app: &App, claims: &VerifiedClaims) -> Reply {
    let n = claims
        .data
        .get("counter")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    see_other(
        app,
        &[Change::Update(json!({"counter": n.saturating_add(1)}))],
    )
}

fn login(app: &App, body: &[u8], now: i64) -> Reply {
    let form = parse_form(body);
    let name = form
        .iter()
        .find(|(k, _)| k == "name")
        .map_or("", |(_, v)| v.as_str())
        .trim();
    let problem = if name.is_empty() {
        Some("Please enter a name.".to_string())
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some(format!("Names are at most {MAX_NAME_CHARS} characters."))
    } else if name.chars().any(char::is_control) {
        Some("Names cannot contain control characters.".to_string())
    } else {
        None
    };
    if let Some(problem) = problem {
        return page(
            StatusCode::BAD_REQUEST,
            "Cannot log in",
            &format!("<p class=\"error\">{}</p>{BACK}", escape(&problem)),
        );
    }
    // Cycle, as Django's login() does: a new key for the logged-in session
    // defeats session fixation, while the data (the counter) carries over.
    see_other(
        app,
        &[
            Change::Action("cycle"),
            Change::Update(json!({"user": name, "logged_in_at": now})),
        ],
    )
}

fn browser_close(app: &App) -> Reply {
    see_other(
        app,
        &[
            Change::Expiry("0"),
            Change::Update(json!({"expiry_note": "cookie ends when the browser closes"})),
        ],
    )
}

fn logout(app: &App) -> Reply {
    // Flush, then write: the flash lands in a fresh session under a new key.
    see_other(
        app,
        &[
            Change::Action("flush"),
            Change::Update(json!({"flash": "You have been logged out."})),
        ],
    )
}

/// One protocol header for sessionward to apply.
enum Change {
    /// `P-action`.
    Action(&'static str),
    /// `P-expiry`.
    Expiry(&'static str),
    /// `P-update`, a JSON merge patch.
    Update(Value),
}

/// Adds the protocol headers for `changes`; false if one cannot be a header value.
fn add_changes(app: &App, headers: &mut http::HeaderMap, changes: &[Change]) -> bool {
    for change in changes {
        let (name, value) = match change {
            Change::Action(a) => (&app.names.action, HeaderValue::from_static(a)),
            Change::Expiry(e) => (&app.names.expiry, HeaderValue::from_static(e)),
            Change::Update(patch) => match HeaderValue::from_str(&ascii_json(patch)) {
                Ok(v) => (&app.names.update, v),
                Err(_) => return false,
            },
        };
        headers.append(name.clone(), value);
    }
    true
}

/// Post/redirect/get: every form answers `303 See Other` to `/`.
fn see_other(app: &App, changes: &[Change]) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !add_changes(app, resp.headers_mut(), changes) {
        return internal_error();
    }
    resp
}

fn home(app: &App, token: &str, claims: &VerifiedClaims, now: i64) -> Reply {
    let data = &claims.data;
    let header_name = escape(app.names.token.as_str());
    let mut html = String::with_capacity(4096);

    let flash = data.get("flash").filter(|v| !v.is_null());
    if let Some(flash) = flash {
        let _ = write!(
            html,
            "<p class=\"flash\">{}</p>",
            escape(&display_value(flash))
        );
    }

    let _ = write!(
        html,
        "<p class=\"lead\">This app has no session code. sessionward sent it the session as a \
         signed token in the <code>{header_name}</code> header, and it answers with \
         <code>{header_name}-*</code> headers that sessionward applies and stores.</p>"
    );

    html.push_str("<section><h2>Session</h2><dl>");
    let state = if claims.new {
        "<span class=\"no\" id=\"state\">No session</span> (no live session cookie came with this request)"
    } else {
        "<span class=\"yes\" id=\"state\">Session active</span>"
    };
    let _ = write!(html, "<dt>State</dt><dd>{state}</dd>");
    let sid = claims.sid.as_deref().map_or_else(
        || "<em>none</em>".to_string(),
        |s| format!("<code>{}</code>", escape(s)),
    );
    let _ = write!(html, "<dt>sid</dt><dd id=\"sid\">{sid}</dd>");
    let expires = match claims.expires {
        None => "<em>no session, so no expiry</em>".to_string(),
        Some(t) => format!(
            "<code>{t}</code> ({})",
            escape(&in_words(t.saturating_sub(now)))
        ),
    };
    let _ = write!(html, "<dt>Expires</dt><dd id=\"expires\">{expires}");
    if let Some(note) = data.get("expiry_note").filter(|v| !v.is_null()) {
        let _ = write!(
            html,
            "<br><small>{}; the server still drops it at the time above</small>",
            escape(&display_value(note))
        );
    }
    html.push_str("</dd>");
    let user = match data.get("user").filter(|v| !v.is_null()) {
        Some(u) => format!("<strong>{}</strong>", escape(&display_value(u))),
        None => "<em>not logged in</em>".to_string(),
    };
    let _ = write!(html, "<dt>User</dt><dd id=\"user\">{user}</dd>");
    let counter = data.get("counter").and_then(Value::as_i64).unwrap_or(0);
    let _ = write!(html, "<dt>Counter</dt><dd id=\"counter\">{counter}</dd>");
    html.push_str("</dl></section>");

    html.push_str("<section><h2>Try it</h2><div class=\"forms\">");
    html.push_str(
        "<form method=\"post\" action=\"/increment\"><button>Increment counter</button></form>\
         <form method=\"post\" action=\"/login\"><input name=\"name\" placeholder=\"your name\" \
         required maxlength=\"64\" aria-label=\"name\"><button>Log in (cycles the key)</button></form>\
         <form method=\"post\" action=\"/browser-close\"><button>Expire at browser close</button></form>\
         <form method=\"post\" action=\"/logout\"><button>Log out (flush, then flash)</button></form>",
    );
    html.push_str("</div></section>");

    let data_json = serde_json::to_string_pretty(&Value::Object(data.clone())).unwrap_or_default();
    let _ = write!(
        html,
        "<section><h2>Session data</h2><pre id=\"data\">{}</pre></section>",
        escape(&data_json)
    );
    let _ = write!(
        html,
        "<section><h2>Token claims</h2><pre id=\"claims\">{}</pre>\
         <details><summary>Raw token</summary><pre class=\"token\">{}</pre></details></section>",
        escape(&raw_claims(token)),
        escape(token)
    );

    let mut resp = page(StatusCode::OK, "sessionward demo", &html);
    // Showing the flash consumes it, as Django's messages do.
    if flash.is_some()
        && !add_changes(
            app,
            resp.headers_mut(),
            &[Change::Update(json!({"flash": null}))],
        )
    {
        return internal_error();
    }
    resp
}

/// The token's payload exactly as sessionward signed it, pretty-printed.
fn raw_claims(token: &str) -> String {
    token
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| "(the payload could not be decoded)".to_string())
}

fn unverified(app: &App, reason: &str) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(format!(
        "401 Unauthorized: the {} token did not verify ({reason}).\n\
         This app only answers requests that come through sessionward: open http://{}/ instead.\n",
        app.names.token, app.proxy_addr
    ))));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found(path: &str) -> Reply {
    page(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!(
            "<p>There is nothing at <code>{}</code>.</p>{BACK}",
            escape(path)
        ),
    )
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut resp = page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        &format!("<p>Use the buttons on the demo page.</p>{BACK}"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn internal_error() -> Reply {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        &format!("<p>The demo app could not build its response.</p>{BACK}"),
    )
}

const BACK: &str = "<p><a href=\"/\">Back to the demo</a></p>";

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.5rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}\
.lead{color:#555}code,pre{font:13px ui-monospace,monospace}\
pre{background:#f5f5f5;border:1px solid #ddd;border-radius:4px;padding:.75rem;overflow-x:auto}\
.token{white-space:pre-wrap;word-break:break-all}\
dl{display:grid;grid-template-columns:7rem 1fr;gap:.25rem 1rem}dt{font-weight:600}dd{margin:0}\
.yes{color:#176f2c;font-weight:600}.no{color:#8a5a00;font-weight:600}\
.flash{background:#e8f4fd;border:1px solid #9cc9ee;border-radius:4px;padding:.5rem .75rem}\
.error{color:#a40000}.forms{display:flex;flex-wrap:wrap;gap:.5rem}form{margin:0;display:flex;gap:.4rem}\
button,input{font:inherit;padding:.3rem .6rem}";

/// A complete HTML page; `body` must already be escaped.
fn page(status: StatusCode, title: &str, body: &str) -> Reply {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head>\
         <body><h1>{title}</h1>{body}</body></html>\n",
        title = escape(title)
    );
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Only the inline style and same-origin form posts: session data is
    // user input, and a CSP makes a missed escape harmless.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    resp
}

/// "in 5 minutes", for an expiry `secs` from now.
fn in_words(secs: i64) -> String {
    match secs {
        s if s <= 0 => "now".to_string(),
        s if s < 60 => "in under a minute".to_string(),
        s if s < 120 => "in 1 minute".to_string(),
        s if s < 2 * 86_400 => format!("in {} minutes", s / 60),
        s => format!("in {} minutes, about {} days", s / 60, s / 86_400),
    }
}

/// A JSON value as a person reads it: strings without their quotes.
fn display_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Escapes text for HTML element content and quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON text that is plain ASCII, so it is a valid header value whatever
/// the data holds: non-ASCII characters (and DEL) become `\u` escapes, which
/// is safe because outside strings JSON text is ASCII anyway.
fn ascii_json(v: &Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && c != '\x7f' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// Decodes an `application/x-www-form-urlencoded` body into its pairs.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// `+` is a space and `%XX` a byte; a malformed escape stays as it is, as
/// browsers do. Invalid UTF-8 becomes U+FFFD.
fn form_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                s.get(i + 1).and_then(hex_digit),
                s.get(i + 2).and_then(hex_digit),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_percent_and_malformed_escapes() {
        let pairs = parse_form(b"name=Zo%C3%AB+d%27Arc&x=%2&y=%zz&flag&=v");
        assert_eq!(
            pairs,
            vec![
                ("name".into(), "Zoë d'Arc".into()),
                ("x".into(), "%2".into()),
                ("y".into(), "%zz".into()),
                ("flag".into(), "".into()),
                ("".into(), "v".into()),
            ]
        );
        assert_eq!(form_decode(b"%+1"), "% 1");
        assert_eq!(form_decode(b"%ff"), "\u{fffd}");
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn ascii_json_is_a_header_value_and_round_trips() {
        let v = json!({"user": "Zoë 😀\u{7f}\"<", "n": 1});
        let text = ascii_json(&v);
        assert!(text.is_ascii() && !text.contains('\x7f'), "{text}");
        assert!(HeaderValue::from_str(&text).is_ok());
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn expiry_in_words() {
        assert_eq!(in_words(-5), "now");
        assert_eq!(in_words(30), "in under a minute");
        assert_eq!(in_words(90), "in 1 minute");
        assert_eq!(in_words(600), "in 10 minutes");
        assert_eq!(in_words(1_209_600), "in 20160 minutes, about 14 days");
    }

    #[test]
    fn demo_config_is_valid_and_insecure_only_where_it_must_be() {
        let c = demo_config(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            random_secret().unwrap(),
        )
        .unwrap();
        assert!(!c.cookie.secure && c.cookie.http_only);
        assert_eq!(c.upstream.authority().unwrap().as_str(), "127.0.0.1:9");
        assert_eq!(c.signing.secret.expose().len(), 64);
    }
}
