//! The HTTP/1 request framing check (`framing::Framing`): every byte a
//! client sends passes it before hyper does.
//!
//! Input: the first byte picks how the rest is cut into reads (1 to 64
//! bytes each); the rest is the client's byte stream. `Framing::feed` gets
//! it the way `Screened` gives it: held bytes again, with the next read.
//!
//! Invariants: no panic; a step never releases more than it was given; the
//! outcome and the released bytes do not depend on how the stream was cut
//! (the same as one read of everything); a refusal is 400 or 431; and when
//! the stream is not HTTP/2, no released byte is a LF without a CR before
//! it outside a body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sessionward::framing::{Framing, Outcome};

const MAX_HEAD: usize = 8192;

/// Feeds `stream` in reads of `size`; returns the released bytes and the
/// last outcome (reading stops where a real connection would).
fn run(stream: &[u8], size: usize) -> (Vec<u8>, Outcome) {
    let mut framing = Framing::new(MAX_HEAD);
    let (mut held, mut released) = (Vec::new(), Vec::new());
    let mut outcome = Outcome::More;
    for piece in stream.chunks(size) {
        held.extend_from_slice(piece);
        let step = framing.feed(&held);
        assert!(step.release <= held.len());
        released.extend(held.drain(..step.release));
        outcome = step.outcome;
        if outcome != Outcome::More {
            break;
        }
    }
    (released, outcome)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, stream)) = input.split_first() else {
        return;
    };
    let size = usize::from(cut % 64) + 1;
    let (released, outcome) = run(stream, size);
    let (whole, whole_outcome) = run(stream, stream.len().max(1));
    assert_eq!(outcome, whole_outcome, "reads of {size} changed the outcome");
    assert_eq!(released, whole, "reads of {size} changed what was released");
    if let Outcome::Refuse(r) = outcome {
        assert!(r.status == 400 || r.status == 431, "{r:?}");
    }
    // A released head that starts the stream (no body before it) is plain
    // CRLF text: hyper never sees a bare LF in it.
    if !stream.starts_with(b"PRI * HTTP/2.0") {
        if let Some(end) = released.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &released[..end + 4];
            for (i, &b) in head.iter().enumerate() {
                if b == b'\n' {
                    assert!(i > 0 && head[i - 1] == b'\r', "bare LF released: {head:?}");
                }
            }
        }
    }
});
