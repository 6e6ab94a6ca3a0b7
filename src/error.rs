//! One error type for the request path and its one table from error to status.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::protocol::ProtocolError;
use crate::session::{ApplyError, StoreError, UpdateError};

/// Seconds a client is told to wait after a store failure.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Everything that can end a request early. Details go to the log; the
/// client gets a status and a short fixed text.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream refused or dropped the connection.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream did not answer in time.
    #[error("upstream did not respond within {0:?}")]
    UpstreamTimeout(Duration),
    /// The session store failed; never read as "no session".
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upstream sent update headers that do not parse.
    #[error("invalid session update from upstream: {0}")]
    Protocol(#[from] ProtocolError),
    /// The update parsed but cannot be applied (too large, corrupt data).
    #[error("session update refused: {0}")]
    Apply(#[from] ApplyError),
    /// The session was deleted by a concurrent request (Django's SessionInterrupted).
    #[error("the session was deleted by a concurrent request; nothing was applied")]
    SessionInterrupted,
    /// The client's request cannot be forwarded.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's request body could not be read (broken framing, cut off).
    #[error("the request body could not be read: {0}")]
    BadRequestBody(String),
    /// A request header is over its configured limit.
    #[error("request header {name} is {size} bytes, over the limit of {max}")]
    HeaderTooLarge {
        /// Which header.
        name: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A method sessionward never forwards (CONNECT).
    #[error("method {0} is not forwarded")]
    MethodNotAllowed(http::Method),
    /// Something on our side that should not fail did (the OS RNG).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<UpdateError> for ProxyError {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::Store(e) => ProxyError::Store(e),
            UpdateError::Apply(e) => ProxyError::Apply(e),
        }
    }
}

impl ProxyError {
    /// The status the client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Protocol(_) | ProxyError::Apply(_) => StatusCode::BAD_GATEWAY,
            ProxyError::SessionInterrupted
            | ProxyError::BadRequest(_)
            | ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The short body the client sees; never the details.
    pub fn public_message(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnreachable(_) => "upstream unreachable\n",
            ProxyError::UpstreamTimeout(_) => "upstream timed out\n",
            ProxyError::Store(_) => "session store unavailable, retry shortly\n",
            ProxyError::Protocol(_) | ProxyError::Apply(_) => {
                "invalid session update from upstream\n"
            }
            ProxyError::SessionInterrupted => "session was interrupted by a concurrent request\n",
            ProxyError::BadRequest(_) => "bad request\n",
            ProxyError::BadRequestBody(_) => "bad request: the request body could not be read\n",
            ProxyError::HeaderTooLarge { .. } => "request header too large\n",
            ProxyError::MethodNotAllowed(_) => "method not allowed\n",
            ProxyError::Internal(_) => "internal error\n",
        }
    }

    /// The response sent in place of the upstream's.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            self.public_message().as_bytes(),
        )));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, ProxyError::Store(_)) {
            h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let store = || StoreError {
            op: "load",
            message: "down".into(),
        };
        let table: Vec<(ProxyError, u16)> = vec![
            (ProxyError::UpstreamUnreachable("refused".into()), 502),
            (ProxyError::UpstreamTimeout(Duration::from_secs(1)), 504),
            (ProxyError::Store(store()), 503),
            (ProxyError::from(UpdateError::Store(store())), 503),
            (
                ProxyError::Protocol(ProtocolError::UnknownAction {
                    header: "x".into(),
                    value: "y".into(),
                }),
                502,
            ),
            (
                ProxyError::from(UpdateError::Apply(ApplyError::TooLarge { size: 2, max: 1 })),
                502,
            ),
            (ProxyError::SessionInterrupted, 400),
            (ProxyError::BadRequest("x".into()), 400),
            (ProxyError::BadRequestBody("incomplete".into()), 400),
            (
                ProxyError::HeaderTooLarge {
                    name: "cookie",
                    size: 2,
                    max: 1,
                },
                431,
            ),
            (ProxyError::MethodNotAllowed(http::Method::CONNECT), 405),
            (ProxyError::Internal("rng".into()), 500),
        ];
        for (err, status) in table {
            let resp = err.to_response();
            assert_eq!(resp.status().as_u16(), status, "{err}");
            assert_eq!(
                resp.headers().contains_key(header::RETRY_AFTER),
                status == 503,
                "{err}"
            );
        }
    }

    #[test]
    fn public_message_never_leaks_details() {
        let err = ProxyError::UpstreamUnreachable("connect 10.1.2.3:8000 refused".into());
        assert!(!err.public_message().contains("10.1.2.3"));
        assert!(err.to_string().contains("10.1.2.3"));
    }
}
