//! The admin listener, for operators and orchestrators only (never on the
//! proxy's port): `/healthz` (the process is up), `/readyz` (the store and
//! the upstream answer), `/metrics` (Prometheus text), and
//! `/.well-known/jwks.json` (the public keys of EdDSA/ES256 tokens).
//!
//! It runs on a thread and runtime of its own, so a probe is answered even
//! when every worker is saturated: a liveness probe that queued behind
//! client traffic would get a healthy but busy proxy restarted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, error};

use crate::metrics::Metrics;
use crate::session::SessionStore;

/// Longest a readiness check waits for the store or the upstream.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin endpoints look at.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// The session store, pinged by `/readyz`.
    pub store: Arc<dyn SessionStore>,
    /// `host:port` of the upstream, connected to by `/readyz`.
    pub upstream: String,
    /// The upstream's Unix socket, connected to instead when set.
    pub upstream_socket: Option<std::path::PathBuf>,
    /// The public keys apps verify tokens with (`{"keys":[]}` for HS256).
    pub jwks: String,
}

impl Admin {
    /// Serves `listener` on a thread of its own until `stopped` turns true.
    pub fn spawn(
        self,
        listener: std::net::TcpListener,
        stopped: watch::Receiver<bool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("sessionward-admin".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "cannot start the admin runtime");
                        return;
                    }
                };
                runtime.block_on(self.serve(listener, stopped));
            })
    }

    async fn serve(self, listener: std::net::TcpListener, mut stopped: watch::Receiver<bool>) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot register the admin listener");
                return;
            }
        };
        let admin = Arc::new(self);
        loop {
            let stream = tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        continue;
                    }
                },
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.ready().await,
            "/.well-known/jwks.json" => {
                let mut resp = text(StatusCode::OK, self.jwks.clone());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/jwk-set+json"),
                );
                // Apps may cache it briefly; a rotation publishes the new key
                // before it signs (keys[1..] still verify).
                resp.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("max-age=60"),
                );
                resp
            }
            "/metrics" => {
                let mut resp = text(StatusCode::OK, self.metrics.render());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz, /readyz or /metrics\n".into(),
            ),
        }
    }

    /// 200 when the store answers and the upstream accepts a connection;
    /// 503 naming what failed otherwise.
    async fn ready(&self) -> Response<Full<Bytes>> {
        let store = async {
            match tokio::time::timeout(CHECK_TIMEOUT, self.store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("store: {e}")),
                Err(_) => Err(format!("store: no answer within {CHECK_TIMEOUT:?}")),
            }
        };
        let upstream = async {
            let connected = match &self.upstream_socket {
                Some(path) => {
                    tokio::time::timeout(CHECK_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map(|r| r.map(drop))
                }
                None => tokio::time::timeout(CHECK_TIMEOUT, TcpStream::connect(&self.upstream))
                    .await
                    .map(|r| r.map(drop)),
            };
            match connected {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("upstream {}: {e}", self.upstream)),
                Err(_) => Err(format!(
                    "upstream {}: no connection within {CHECK_TIMEOUT:?}",
                    self.upstream
                )),
            }
        };
        let (store, upstream) = tokio::join!(store, upstream);
        let problems: Vec<String> = [store, upstream]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if problems.is_empty() {
            text(StatusCode::OK, "ready\n".into())
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", problems.join("; ")),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `host:port` of an upstream URI, with the scheme's default port.
pub fn authority_of(uri: &http::Uri) -> String {
    let host = uri.host().unwrap_or("localhost");
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]:{port}"),
        Err(_) => format!("{host}:{port}"),
    }
}

/// Binds the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_authority_has_a_port() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            authority_of(&uri("http://127.0.0.1:8000")),
            "127.0.0.1:8000"
        );
        assert_eq!(authority_of(&uri("http://app")), "app:80");
        assert_eq!(authority_of(&uri("https://app")), "app:443");
        assert_eq!(authority_of(&uri("http://[::1]:81")), "[::1]:81");
    }
}
