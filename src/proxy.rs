//! The request pipeline, top to bottom: strip inbound headers, resolve the
//! session, build and sign the upstream request, forward, take the update
//! headers, apply them, set the cookie.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, error, warn};

use crate::body::{self, Relayed};
use crate::clock::Clock;
use crate::config::Config;
use crate::config::{Cidr, StoreConfig};
use crate::cookies::{self, CookieWriter};
use crate::error::ProxyError;
use crate::metrics::{Metrics, SessionEvent, StoreOp};
use crate::protocol::{self, HeaderNames};
use crate::session::{
    self, Action, ApplyError, Changes, Loaded, Next, Policy, Record, SessionStore, Updated,
};
use crate::token::{Claims, Issued, Jti, Signer};
use crate::upstream::Upstream;

/// Body of every response sessionward sends: the upstream's, streamed, or its own.
pub type Body = Either<Relayed, Full<Bytes>>;

/// Where a downstream connection comes from; built once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's socket address.
    pub addr: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
    /// The client's IP as an `X-Forwarded-For` value, formatted once.
    forwarded_for: HeaderValue,
}

impl Peer {
    /// A peer connected from `addr`.
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            addr,
            tls,
            forwarded_for,
        }
    }
}

/// The session a request arrived with.
#[derive(Debug)]
struct Resolved {
    /// How many cookies carried the session (0: none sent), valid or not.
    cookies_sent: usize,
    /// The live session they name, as read at the start of the request.
    live: Option<Loaded>,
}

/// What the response must do with the session cookie.
#[derive(Debug, PartialEq)]
enum CookieChange {
    /// Leave the client's cookie alone.
    Keep,
    /// Set (or refresh) the cookie for this session.
    Set(Loaded),
    /// Expire the cookie.
    Delete,
}

/// The proxy: configuration, store, signer and upstream client.
#[derive(Debug)]
pub struct Proxy {
    names: Arc<HeaderNames>,
    cookies: CookieWriter,
    /// Cookies one session may span: more than one only for the cookie store.
    max_chunks: usize,
    policy: Policy,
    save_every_request: bool,
    idle_timeout: Option<u64>,
    signer: Signer,
    store: Arc<dyn SessionStore>,
    upstream: Upstream,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    ids: RequestIds,
    trusted: Vec<Cidr>,
    bypass: Vec<Box<str>>,
    max_cookie_bytes: usize,
}

/// Request ids: a random prefix per worker and a counter, so ids are unique
/// across workers and restarts without a random draw per request.
#[derive(Debug)]
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut bytes = [0u8; 4];
        // A failed draw only makes ids less unique across restarts.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        Self {
            prefix: u32::from_le_bytes(bytes),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}{:012x}", self.prefix, n & 0xffff_ffff_ffff);
        HeaderValue::try_from(id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Ties a request's log lines, the app's logs and the client's report together.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Proxy {
    /// A proxy for a validated configuration.
    pub fn new(
        config: &Config,
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ProxyError> {
        let names = HeaderNames::new(&config.header_prefix)
            .map_err(|e| ProxyError::Internal(format!("header prefix: {e}")))?;
        Ok(Self {
            names: Arc::new(names),
            cookies: CookieWriter::new(config.cookie.clone()),
            max_chunks: match &config.store {
                StoreConfig::Cookie(c) => c.max_chunks,
                _ => 1,
            },
            policy: Policy {
                max_age: config.session.max_age,
                expire_at_browser_close: config.session.expire_at_browser_close,
                max_bytes: config.session.max_bytes,
                absolute_timeout: config.session.absolute_timeout,
            },
            save_every_request: config.session.save_every_request,
            idle_timeout: config.session.idle_timeout,
            signer: Signer::from_config(&config.signing),
            store,
            upstream: Upstream::new(
                &config.upstream,
                config.upstream_socket.as_deref(),
                config.upstream_tls.as_ref().map(|t| t.client.clone()),
                config.timeouts,
            ),
            clock,
            metrics,
            ids: RequestIds::new(),
            trusted: config.trusted_proxies.clone(),
            bypass: config.bypass.iter().map(|p| p.as_str().into()).collect(),
            max_cookie_bytes: config.limits.max_cookie_bytes,
        })
    }

    /// Handles one downstream request; failures become short error responses.
    pub async fn handle(&self, mut req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        // Shares the request's bytes; no copy unless something is logged.
        let path = req.uri().path_and_query().cloned();
        let path = tracing::field::display(DisplayPath(path));
        // A trusted proxy's id is kept; anybody else's is replaced, since it
        // could be used to forge or confuse log correlation.
        let trusted = self.is_trusted(&peer);
        let id = match req.headers().get(X_REQUEST_ID) {
            Some(id) if trusted && !id.is_empty() && id.len() <= 200 => id.clone(),
            _ => self.ids.next(),
        };
        req.headers_mut().insert(X_REQUEST_ID, id.clone());
        let request_id = tracing::field::display(String::from_utf8_lossy(id.as_bytes()));
        let client =
            tracing::field::display(client_ip(req.headers(), peer.addr.ip(), &self.trusted));
        let mut resp = match self.pipeline(req, peer).await {
            Ok(resp) => {
                debug!(request_id, client, %method, path, status = resp.status().as_u16(), "proxied");
                resp
            }
            Err(err) => {
                match &err {
                    ProxyError::Store(_) | ProxyError::Internal(_) => {
                        error!(request_id, client, %method, path, error = %err, "request failed")
                    }
                    _ => warn!(request_id, client, %method, path, error = %err, "request failed"),
                }
                if matches!(err, ProxyError::Protocol(_) | ProxyError::Apply(_)) {
                    self.metrics.protocol_error();
                }
                let mut resp = err.to_response().map(Either::Right);
                add_vary_cookie(resp.headers_mut());
                resp
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID, id);
        self.metrics
            .response(resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn pipeline(
        &self,
        mut req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, ProxyError> {
        // One reading of the clock per request: token, store and cookie agree.
        let now = self.clock.now();
        refuse_unsupported(&req)?;
        check_cookie_size(req.headers(), self.max_cookie_bytes)?;
        let version = req.version();
        let upgrade = strip_inbound_headers(req.headers_mut(), &self.names, version);
        let cookie =
            cookies::take_session_cookie(req.headers_mut(), self.cookies.name(), self.max_chunks);
        if self.is_bypassed(req.uri().path()) {
            return self.pass_through(req, &peer).await;
        }
        let session = self.resolve_session(cookie).await?;
        let jti = self.build_upstream_request(&mut req, &session, &peer, now)?;
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let mut resp = self.forward(req).await?;

        let switching =
            resp.status() == StatusCode::SWITCHING_PROTOCOLS && downstream_upgrade.is_some();
        strip_hop_by_hop(resp.headers_mut(), switching);
        let status = resp.status();
        self.check_update_signature(resp.headers_mut(), status, &jti)?;
        let changes = take_update_headers(resp.headers_mut(), &self.names, status)?;
        let change = self.apply_changes(&session, &changes, status, now).await?;
        self.set_cookie(resp.headers_mut(), change, session.cookies_sent, now);

        if let (true, Some(downstream)) = (switching, downstream_upgrade) {
            tunnel(downstream, hyper::upgrade::on(&mut resp));
        }
        let names = self.names.clone();
        Ok(resp.map(|b| Either::Left(Relayed::new(b, names))))
    }

    /// Looks the cookie up. Malformed, unknown and expired cookies are no
    /// session; a store failure is an error, never "no session".
    async fn resolve_session(
        &self,
        cookie: Option<cookies::SessionCookie>,
    ) -> Result<Resolved, ProxyError> {
        let Some(cookie) = cookie else {
            return Ok(Resolved {
                cookies_sent: 0,
                live: None,
            });
        };
        let t = Instant::now();
        let live = self.store.load(&cookie.value).await;
        self.metrics
            .store(StoreOp::Load, t.elapsed(), live.is_err());
        let live = live?;
        if live.is_none() {
            debug!("malformed, unknown or expired session cookie ignored");
        }
        Ok(Resolved {
            cookies_sent: cookie.chunks,
            live,
        })
    }

    /// Points the request at the upstream and adds the forwarding headers and
    /// the signed token; returns the token's `jti`.
    fn build_upstream_request<B>(
        &self,
        req: &mut Request<B>,
        session: &Resolved,
        peer: &Peer,
        now: i64,
    ) -> Result<Jti, ProxyError> {
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let Issued { token, jti } = self
            .sign_token(req, session, now)
            .map_err(|e| ProxyError::Internal(format!("token: {e}")))?;
        *req.uri_mut() = self.upstream.uri_for(req.uri())?;
        *req.version_mut() = Version::HTTP_11;
        set_forwarding_headers(req.headers_mut(), host, peer, self.is_trusted(peer));
        req.headers_mut().insert(self.names.token.clone(), token);
        Ok(jti)
    }

    /// Whether the connection comes from a configured trusted proxy.
    fn is_trusted(&self, peer: &Peer) -> bool {
        !self.trusted.is_empty() && self.trusted.iter().any(|c| c.contains(peer.addr.ip()))
    }

    /// Whether `path` is configured to go through without sessions.
    fn is_bypassed(&self, path: &str) -> bool {
        self.bypass.iter().any(|p| path.starts_with(&**p))
    }

    /// A `bypass` path: forwarded without a session lookup or a token. The
    /// inbound stripping has run; the app's session headers are stripped
    /// unread and it cannot set the session cookie; `Vary` is left alone so
    /// static files stay cacheable.
    async fn pass_through(
        &self,
        mut req: Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<Body>, ProxyError> {
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        *req.uri_mut() = self.upstream.uri_for(req.uri())?;
        *req.version_mut() = Version::HTTP_11;
        set_forwarding_headers(req.headers_mut(), host, peer, self.is_trusted(peer));
        let mut resp = self.forward(req).await?;
        strip_hop_by_hop(resp.headers_mut(), false);
        protocol::strip_prefixed(resp.headers_mut(), &self.names);
        cookies::drop_upstream_session_cookies(
            resp.headers_mut(),
            self.cookies.name(),
            self.max_chunks,
        );
        let names = self.names.clone();
        Ok(resp.map(|b| Either::Left(Relayed::new(b, names))))
    }

    /// Sends the request upstream and waits for the response head. A
    /// failure caused by the client's own body (broken chunked framing, cut
    /// off) is the client's fault, 400, not the app's.
    async fn forward(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ProxyError> {
        let names = self.names.clone();
        let body = body::Failure::default();
        let sent = Instant::now();
        let resp = self
            .upstream
            .send(req.map(|b| Relayed::watched(b, names, body.clone())))
            .await;
        match (resp, body.reason()) {
            (Ok(resp), _) => {
                self.metrics.upstream(sent.elapsed());
                Ok(resp)
            }
            (Err(_), Some(reason)) => Err(ProxyError::BadRequestBody(reason.to_string())),
            (Err(e), None) => Err(e),
        }
    }

    fn sign_token<B>(
        &self,
        req: &Request<B>,
        session: &Resolved,
        now: i64,
    ) -> Result<Issued, crate::token::SignError> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let sid;
        let claims = match &session.live {
            Some(live) => {
                sid = self.signer.sid(&live.handle.key().encode());
                Claims {
                    iat: now,
                    sid: Some(&sid),
                    new: false,
                    data: &live.record.data,
                    expires: Some(live.record.deadline(self.idle_timeout)),
                    sub: live.record.subject.as_deref(),
                    method: req.method().as_str(),
                    path,
                }
            }
            None => Claims {
                iat: now,
                sid: None,
                new: true,
                data: session::EMPTY_DATA,
                expires: None,
                sub: None,
                method: req.method().as_str(),
                path,
            },
        };
        self.signer.issue(&claims)
    }

    /// With `signing.require_signed_updates`, refuses update headers whose
    /// `P-signature` is missing or wrong for this request's token. A 5xx
    /// response's updates are never applied, so they need no signature.
    fn check_update_signature(
        &self,
        headers: &mut HeaderMap,
        status: StatusCode,
        jti: &Jti,
    ) -> Result<(), ProxyError> {
        let Some(keys) = self.signer.update_keys() else {
            return Ok(());
        };
        if status.is_server_error() {
            return Ok(());
        }
        protocol::check_update_signature(headers, &self.names, jti.as_str(), keys).map_err(|e| {
            protocol::strip_prefixed(headers, &self.names);
            e.into()
        })
    }

    /// Persists what the upstream asked for, atomically against the session as
    /// it is in the store now. 5xx responses change nothing.
    async fn apply_changes(
        &self,
        session: &Resolved,
        changes: &Changes,
        status: StatusCode,
        now: i64,
    ) -> Result<CookieChange, ProxyError> {
        if status.is_server_error() {
            return Ok(CookieChange::Keep);
        }
        let Some(live) = &session.live else {
            return self
                .start_session(session.cookies_sent > 0, changes, now)
                .await;
        };
        if changes.action == Some(Action::RevokeSubject) {
            return self.revoke_subject(live, changes, now).await;
        }
        if changes.is_empty() && !self.save_every_request {
            // The cookie store refreshes an idle deadline by reissuing the cookie.
            return Ok(if live.refreshed {
                CookieChange::Set(live.clone())
            } else {
                CookieChange::Keep
            });
        }
        let policy = self.policy;
        let edit = move |current: &Record| session::apply(Some(current), changes, &policy, now);
        // Only an action can move the session to a new key.
        let may_rekey = changes.action.is_some();
        let t = Instant::now();
        let updated = self.store.update(&live.handle, may_rekey, &edit).await;
        let failed = matches!(updated, Err(session::UpdateError::Store(_)));
        self.metrics.store(StoreOp::Update, t.elapsed(), failed);
        match updated? {
            Updated::Saved(saved) => {
                self.metrics.session(SessionEvent::Updated);
                Ok(CookieChange::Set(saved))
            }
            Updated::Moved(moved) => {
                debug!(
                    old = %live.handle.key().hash(),
                    new = %moved.handle.key().hash(),
                    "session key rotated"
                );
                self.metrics.session(SessionEvent::Rotated);
                Ok(CookieChange::Set(moved))
            }
            Updated::Deleted => {
                debug!(session = %live.handle.key().hash(), "session deleted");
                self.metrics.session(SessionEvent::Deleted);
                Ok(CookieChange::Delete)
            }
            Updated::Gone => Err(ProxyError::SessionInterrupted),
        }
    }

    /// Changes for a request without a live session: create one if they leave data.
    async fn start_session(
        &self,
        cookie_sent: bool,
        changes: &Changes,
        now: i64,
    ) -> Result<CookieChange, ProxyError> {
        if changes.is_empty() {
            return Ok(CookieChange::Keep);
        }
        match session::apply(None, changes, &self.policy, now)? {
            Next::Save { record, .. } => {
                let t = Instant::now();
                let created = self.store.create(record).await;
                let failed = matches!(created, Err(session::UpdateError::Store(_)));
                self.metrics.store(StoreOp::Create, t.elapsed(), failed);
                let created = created?;
                self.metrics.session(SessionEvent::Created);
                debug!(session = %created.handle.key().hash(), "session created");
                Ok(CookieChange::Set(created))
            }
            // A stale cookie and an upstream that empties the session: clear the cookie.
            Next::Nothing | Next::Delete
                if cookie_sent
                    && (matches!(changes.action, Some(Action::Flush | Action::RevokeSubject))
                        || !changes.patches.is_empty()) =>
            {
                Ok(CookieChange::Delete)
            }
            Next::Nothing | Next::Delete => Ok(CookieChange::Keep),
        }
    }

    /// `revoke-subject`: every session of the current session's subject goes,
    /// this one included; what else the upstream sent starts a fresh session.
    async fn revoke_subject(
        &self,
        live: &Loaded,
        changes: &Changes,
        now: i64,
    ) -> Result<CookieChange, ProxyError> {
        if !self.store.capabilities().subject_index {
            return Err(ApplyError::Unsupported(
                "revoke-subject needs a store that can find a subject's sessions; the cookie store cannot",
            )
            .into());
        }
        // Refuse an oversized follow-up before deleting anything.
        session::apply(None, changes, &self.policy, now)?;
        // End this session first, atomically, reading its subject as it is
        // now: a concurrent login may have set it since the request began.
        let subject_now: std::sync::Mutex<Option<Box<str>>> = std::sync::Mutex::new(None);
        let end = |current: &Record| {
            if let Ok(mut s) = subject_now.lock() {
                s.clone_from(&current.subject);
            }
            Ok(Next::Delete)
        };
        let t = Instant::now();
        let ended = self.store.update(&live.handle, false, &end).await;
        let failed = matches!(ended, Err(session::UpdateError::Store(_)));
        self.metrics.store(StoreOp::Update, t.elapsed(), failed);
        match ended? {
            Updated::Deleted => self.metrics.session(SessionEvent::Deleted),
            // Moved or ended by a concurrent request: nothing done, as for any update.
            _ => return Err(ProxyError::SessionInterrupted),
        }
        let subject_now = subject_now.into_inner().unwrap_or_default();
        let mut subjects: Vec<&str> = subject_now.as_deref().into_iter().collect();
        if let Some(at_start) = live.record.subject.as_deref()
            && !subjects.contains(&at_start)
        {
            subjects.push(at_start);
        }
        let mut revoked = 0;
        for subject in subjects {
            let t = Instant::now();
            let n = self.store.revoke_subject(subject).await;
            self.metrics.store(StoreOp::Revoke, t.elapsed(), n.is_err());
            revoked += n?;
        }
        debug!(session = %live.handle.key().hash(), revoked, "subject's sessions revoked");
        self.start_session(true, changes, now).await
    }

    /// Writes the session cookie, `Vary: Cookie` and `Cache-Control: private`;
    /// the upstream's own `Set-Cookie` for our name is dropped.
    fn set_cookie(&self, headers: &mut HeaderMap, change: CookieChange, sent: usize, now: i64) {
        let dropped =
            cookies::drop_upstream_session_cookies(headers, self.cookies.name(), self.max_chunks);
        if dropped > 0 {
            warn!(
                cookie = self.cookies.name(),
                dropped, "upstream tried to set the session cookie; dropped"
            );
        }
        add_vary_cookie(headers);
        let values = match change {
            CookieChange::Keep => return,
            CookieChange::Set(s) => {
                self.cookies
                    .set(s.handle.cookie(), &s.record, &self.policy, now, sent)
            }
            CookieChange::Delete => self.cookies.delete(sent),
        };
        for value in values {
            headers.append(header::SET_COOKIE, value);
        }
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
    }
}

/// Sets `Host`, `X-Forwarded-For`, `-Proto` and `-Host`. From a trusted
/// proxy, what it says is kept and the peer is appended to the chain; from
/// anybody else, every claim is replaced and the other spellings of the same
/// claims (`Forwarded`, `X-Real-IP`) are dropped.
fn set_forwarding_headers(
    h: &mut HeaderMap,
    host: Option<HeaderValue>,
    peer: &Peer,
    trusted: bool,
) {
    drop_underscore_spellings(h);
    let proto = HeaderValue::from_static(if peer.tls { "https" } else { "http" });
    if trusted {
        let chain: Vec<&[u8]> = h
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty())
            .collect();
        let appended = if chain.is_empty() {
            peer.forwarded_for.clone()
        } else {
            let mut joined = chain.join(&b", "[..]);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer.forwarded_for.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer.forwarded_for.clone())
        };
        h.insert(X_FORWARDED_FOR, appended);
        if !h.contains_key(X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO, proto);
        }
        if let Some(host) = host {
            if !h.contains_key(X_FORWARDED_HOST) {
                h.insert(X_FORWARDED_HOST, host.clone());
            }
            h.insert(header::HOST, host);
        }
        return;
    }
    if let Some(host) = host {
        h.insert(X_FORWARDED_HOST, host.clone());
        h.insert(header::HOST, host);
    }
    h.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
    h.remove(header::FORWARDED);
    h.remove(X_REAL_IP);
    h.insert(X_FORWARDED_PROTO, proto);
}

/// Forwarding headers by name, dashes for underscores.
const FORWARDING: [&str; 6] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "x-request-id",
];

/// Drops `X_Forwarded_For` and the like, from anyone: CGI-style apps (PHP,
/// Perl) read `X_Forwarded_For` and `X-Forwarded-For` both as
/// `HTTP_X_FORWARDED_FOR`, so an underscore spelling could stand in for
/// what sessionward sets. (nginx drops headers with underscores by default
/// for the same reason.)
fn drop_underscore_spellings(h: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = h
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.contains('_')
                && FORWARDING.iter().any(|f| {
                    f.len() == name.len()
                        && f.bytes()
                            .zip(name.bytes())
                            .all(|(f, n)| f == n || (f == b'-' && n == b'_'))
                })
        })
        .cloned()
        .collect();
    for name in doomed {
        h.remove(name);
    }
}

/// The client's address as a trusted chain tells it: `X-Forwarded-For` read
/// right to left, skipping trusted proxies; the first untrusted hop is the
/// client. Without a trusted peer, the peer itself.
pub fn client_ip(
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    trusted: &[Cidr],
) -> std::net::IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let hops: Vec<std::net::IpAddr> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    hops.into_iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(*ip)))
        .unwrap_or(peer)
}

/// Logs a request path without copying it up front.
struct DisplayPath(Option<http::uri::PathAndQuery>);

impl std::fmt::Display for DisplayPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The path only: queries may carry tokens that do not belong in logs.
        f.write_str(self.0.as_ref().map_or("/", |p| p.path()))
    }
}

/// Refuses a `Cookie` header (all its fields together) over the limit: it
/// would be parsed on every request, and no store needs that much.
fn check_cookie_size(headers: &HeaderMap, max: usize) -> Result<(), ProxyError> {
    let size: usize = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.len() + 2)
        .sum();
    if size > max + 2 {
        return Err(ProxyError::HeaderTooLarge {
            name: "cookie",
            size: size.saturating_sub(2),
            max,
        });
    }
    Ok(())
}

/// Refuses what a reverse proxy for one app has no business forwarding:
/// CONNECT would turn sessionward into a tunnel to anywhere.
fn refuse_unsupported<B>(req: &Request<B>) -> Result<(), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(Method::CONNECT));
    }
    Ok(())
}

/// Removes the client's protocol headers and the hop-by-hop headers. Returns
/// whether the client asks for a WebSocket upgrade (its headers are kept).
/// Other upgrades (h2c above all) are stripped: a raw tunnel to the app
/// would bypass the token and the header protocol for everything after it.
pub fn strip_inbound_headers(
    headers: &mut HeaderMap,
    names: &HeaderNames,
    version: Version,
) -> bool {
    let upgrade = has_token(headers, header::CONNECTION, "upgrade")
        && has_token(headers, header::UPGRADE, "websocket");
    // An HTTP/1.1 upstream sends trailers only when asked; HTTP/2 clients
    // always take them, HTTP/1.1 clients say so with `TE: trailers`.
    let trailers = version == Version::HTTP_2 || has_token(headers, header::TE, "trailers");
    strip_hop_by_hop(headers, upgrade);
    protocol::strip_prefixed(headers, names);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    upgrade
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers and every header named in `Connection`; with
/// `keep_upgrade`, `Upgrade` and `Connection: upgrade` stay for the tunnel.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Takes the update headers off an upstream response. A 5xx response's are
/// stripped unread: nothing from it is applied.
pub fn take_update_headers(
    headers: &mut HeaderMap,
    names: &HeaderNames,
    status: StatusCode,
) -> Result<Changes, ProxyError> {
    if status.is_server_error() {
        protocol::strip_prefixed(headers, names);
        return Ok(Changes::default());
    }
    Ok(protocol::take_changes(headers, names)?)
}

/// Adds `Cookie` to `Vary`, merged with what is there.
pub fn add_vary_cookie(headers: &mut HeaderMap) {
    let existing: Vec<&str> = headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if existing.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static("Cookie"));
        return;
    }
    let covered = existing
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("cookie"));
    if !covered {
        let merged = format!("{}, Cookie", existing.join(", "));
        if let Ok(v) = HeaderValue::from_str(&merged) {
            headers.insert(header::VARY, v);
        }
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections.
fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((d, u)) => {
                let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                    debug!(error = %e, "upgraded connection closed with an error");
                }
            }
            Err(e) => warn!(error = %e, "upgrade failed"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HeaderNames {
        HeaderNames::new("x-session").unwrap()
    }

    use crate::protocol::tests::map as headers;

    #[test]
    fn underscore_spellings_of_forwarding_headers_never_reach_the_app() {
        let peer = Peer::new("10.0.0.9:1234".parse().unwrap(), false);
        for trusted in [false, true] {
            let mut h = headers(&[
                ("x_forwarded_for", "6.6.6.6"),
                ("x-forwarded_proto", "https"),
                ("x_real_ip", "6.6.6.6"),
                ("x_request_id", "forged"),
                ("x_custom", "kept"),
            ]);
            set_forwarding_headers(&mut h, None, &peer, trusted);
            let mut names: Vec<_> = h.keys().map(|n| n.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                ["x-forwarded-for", "x-forwarded-proto", "x_custom"],
                "trusted: {trusted}"
            );
            assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        }
    }

    #[test]
    fn inbound_strip_removes_forgeries_and_hop_by_hop() {
        let mut h = headers(&[
            ("x-session", "forged.token.here"),
            ("X-Session-Update", "{}"),
            ("connection", "keep-alive, x-custom"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip, trailers"),
            ("accept", "*/*"),
        ]);
        assert!(!strip_inbound_headers(&mut h, &names(), Version::HTTP_11));
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["accept", "te"]);
        assert_eq!(h["te"], "trailers", "only the trailers token survives");
    }

    #[test]
    fn connection_naming_the_token_header_cannot_keep_a_forgery() {
        let mut h = headers(&[("connection", "x-session"), ("x-session", "forged")]);
        strip_inbound_headers(&mut h, &names(), Version::HTTP_11);
        assert!(h.get("x-session").is_none());
    }

    #[test]
    fn upgrade_requests_keep_upgrade_headers() {
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
        ]);
        assert!(strip_inbound_headers(&mut h, &names(), Version::HTTP_11));
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn upgrade_header_without_connection_upgrade_is_dropped() {
        let mut h = headers(&[("upgrade", "websocket")]);
        assert!(!strip_inbound_headers(&mut h, &names(), Version::HTTP_11));
        assert!(h.is_empty());
    }

    #[test]
    fn only_websocket_upgrades_are_kept() {
        let mut h = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        assert!(!strip_inbound_headers(&mut h, &names(), Version::HTTP_11));
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn vary_is_added_and_merged_once() {
        let mut h = HeaderMap::new();
        add_vary_cookie(&mut h);
        assert_eq!(h["vary"], "Cookie");
        let mut h = headers(&[("vary", "Accept-Encoding")]);
        add_vary_cookie(&mut h);
        assert_eq!(h["vary"], "Accept-Encoding, Cookie");
        let mut h = headers(&[("vary", "accept, cookie")]);
        add_vary_cookie(&mut h);
        assert_eq!(h.get_all("vary").iter().count(), 1);
        assert_eq!(h["vary"], "accept, cookie");
    }

    #[test]
    fn server_error_updates_are_stripped_unread() {
        let mut h = headers(&[
            ("x-session-update", "not json"),
            ("x-session-action", "flush"),
        ]);
        let c = take_update_headers(&mut h, &names(), StatusCode::INTERNAL_SERVER_ERROR).unwrap();
        assert!(c.is_empty() && h.is_empty());
        let mut h = headers(&[("x-session-update", "not json")]);
        let err = take_update_headers(&mut h, &names(), StatusCode::OK).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(h.is_empty());
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<Cidr> = ["10.0.0.0/8", "192.168.1.1"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.7,10.1.1.1")]);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            client_ip(&h, ip("192.168.1.1"), &trusted),
            ip("203.0.113.7")
        );
        // An untrusted peer's claims are not read at all.
        assert_eq!(client_ip(&h, ip("8.8.8.8"), &trusted), ip("8.8.8.8"));
        // Only trusted hops: the leftmost one, the furthest known.
        let h = headers(&[("x-forwarded-for", "10.0.0.1")]);
        assert_eq!(client_ip(&h, ip("10.0.0.2"), &trusted), ip("10.0.0.2"));
    }
}
