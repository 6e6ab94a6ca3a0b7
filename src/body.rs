//! Bodies passing through: streamed frame by frame, with protocol headers
//! removed from trailers too (a trailer is a header that arrives late).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::protocol::{self, HeaderNames};

/// A body streamed through unchanged, except that trailers lose every
/// header carrying the protocol prefix.
#[derive(Debug)]
pub struct Relayed {
    inner: Incoming,
    names: Arc<HeaderNames>,
    failure: Option<Failure>,
}

impl Relayed {
    /// Wraps a body read from one side, to be written to the other.
    pub fn new(inner: Incoming, names: Arc<HeaderNames>) -> Self {
        Self {
            inner,
            names,
            failure: None,
        }
    }

    /// Like [`Relayed::new`], and a read error is kept in `failure`: a
    /// request body the client framed wrongly must not pass for an upstream fault.
    pub fn watched(inner: Incoming, names: Arc<HeaderNames>, failure: Failure) -> Self {
        Self {
            inner,
            names,
            failure: Some(failure),
        }
    }
}

/// Why a watched body could not be read, once it could not.
#[derive(Debug, Clone, Default)]
pub struct Failure(Arc<OnceLock<String>>);

impl Failure {
    /// The read error, if there was one.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Err(e))), Some(failure)) = (&polled, &this.failure) {
            let _ = failure.0.set(e.to_string());
        }
        polled.map_ok(|mut frame| {
            if let Some(trailers) = frame.trailers_mut() {
                protocol::strip_prefixed(trailers, &this.names);
            }
            frame
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
