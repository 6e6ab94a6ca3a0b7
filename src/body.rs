//! Bodies passing through: streamed frame by frame, with protocol headers
//! removed from trailers too (a trailer is a header that arrives late).

use std::pin::Pin;
use std::sync::Arc;
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
}

impl Relayed {
    /// Wraps a body read from one side, to be written to the other.
    pub fn new(inner: Incoming, names: Arc<HeaderNames>) -> Self {
        Self { inner, names }
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
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map_ok(|mut frame| {
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
