//! The upstream app: a keep-alive connection pool and the timeouts around it.

use std::error::Error as _;
use std::time::Duration;

use http::uri::{PathAndQuery, Uri};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Relayed;
use crate::config::Timeouts;
use crate::error::ProxyError;

/// A pooled HTTP/1.1 client bound to one upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Relayed>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    timeouts: Timeouts,
}

impl Upstream {
    /// A client for `base` (scheme and authority, validated by config).
    pub fn new(base: &Uri, timeouts: Timeouts) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeouts.upstream_connect));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            client,
            scheme: base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP),
            authority: base
                .authority()
                .cloned()
                .unwrap_or_else(|| http::uri::Authority::from_static("127.0.0.1")),
            timeouts,
        }
    }

    /// The upstream URI for a downstream request's path and query (shared, not copied).
    pub fn uri_for(&self, downstream: &Uri) -> Result<Uri, ProxyError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            downstream
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts)
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))
    }

    /// Sends the request and waits for the response headers; the body streams later.
    pub async fn send(&self, req: Request<Relayed>) -> Result<Response<Incoming>, ProxyError> {
        let limit = self.timeouts.upstream_response;
        match tokio::time::timeout(limit, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(limit)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if is_timeout(&e) => {
                Err(ProxyError::UpstreamTimeout(self.timeouts.upstream_connect))
            }
            Ok(Err(e)) => Err(ProxyError::UpstreamUnreachable(chain(&e))),
        }
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its causes on one line, for the log.
fn chain(e: &hyper_util::client::legacy::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}
