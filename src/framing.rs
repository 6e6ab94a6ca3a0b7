//! HTTP/1 request framing, checked before hyper parses it.
//!
//! hyper (httparse) is lenient where RFC 9112 lets a server be: a lone LF
//! ends a line, and a request with both `Content-Length` and
//! `Transfer-Encoding` is read as chunked. A front end that reads the same
//! bytes strictly can then count a different number of requests than
//! sessionward forwards: request smuggling. So every byte of an HTTP/1
//! connection passes [`Framing`] first. A head reaches hyper only once it is
//! complete and unambiguous; bodies are followed to know where the next head
//! starts; and a refused head never reaches hyper at all. Once the requests
//! before it are answered, hyper sees the connection end, and the refusal
//! (400 or 431, `Connection: close`) is written as the connection shuts down.
//!
//! [`Screened`] is the I/O side: it sits between the socket (or TLS stream)
//! and hyper, and passes HTTP/2 and upgraded connections through untouched.
//! [`Answers`] is what the service tells it: which requests are answered,
//! and whether one was answered 101 (the connection then belongs to the new
//! protocol).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tracing::debug;

use crate::metrics::Metrics;

/// Header fields a request head may carry: hyper's own default, so that
/// both parsers give up at the same point.
pub const MAX_HEADERS: usize = 100;

/// What an HTTP/2 connection starts with (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Empty lines tolerated before a request line.
const MAX_EMPTY_LINES: usize = 4;

/// Longest chunk-size line (digits, whitespace and extensions): hyper's limit too.
const MAX_CHUNK_LINE: usize = 16 * 1024;

/// Why a request head was refused; the reason is also the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, or 431 for a head over the limits.
    pub status: u16,
    /// A short fixed text naming the rule broken.
    pub reason: &'static str,
}

impl Refusal {
    const fn bad(reason: &'static str) -> Self {
        Refusal {
            status: 400,
            reason,
        }
    }

    const fn too_large(reason: &'static str) -> Self {
        Refusal {
            status: 431,
            reason,
        }
    }

    /// The complete HTTP/1.1 response sent in place of an answer.
    pub fn response(&self) -> Bytes {
        let phrase = match self.status {
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        };
        let body = format!("bad request: {}\n", self.reason);
        Bytes::from(format!(
            "HTTP/1.1 {} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             cache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            self.status,
            body.len()
        ))
    }
}

/// How far a call to [`Framing::feed`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// How many bytes from the start are checked and may go to hyper.
    pub release: usize,
    /// What holds back the rest.
    pub outcome: Outcome,
}

/// What happens to the bytes after [`Step::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// None are left, or they start a head that is not complete yet: keep
    /// them and feed them again, from the head's start, with what follows.
    More,
    /// They start a refused head: drop them and end the connection.
    Refuse(Refusal),
    /// The body's chunked framing is broken: end the read side here; hyper
    /// reports the cut-off body.
    Halt,
    /// An upgrade request was released: keep the rest until its answer
    /// says whether the connection switched protocols ([`Framing::answered`]).
    Wait,
}

/// Where the next byte of the connection falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The connection's first bytes: an HTTP/2 preface or a first head.
    Start,
    /// A head, of which `scanned` bytes were searched for its end already.
    Head { scanned: usize },
    /// A body with a Content-Length: this many bytes left.
    Fixed(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// An upgrade request is out (the connection's request number so
    /// many); nothing is read until it is answered.
    AwaitAnswer(u64),
    /// Bytes pass unchecked: HTTP/2, or a connection that switched protocols.
    Passthrough,
    /// The read side ended (refused head, broken body).
    Halted,
}

/// Position inside a chunked body (RFC 9112 section 7.1), read as strictly
/// as hyper's decoder reads it, and stricter about bare LFs in trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a size's first digit.
    Start,
    Size {
        size: u64,
        line: usize,
    },
    /// Whitespace after the size.
    SizeWs {
        size: u64,
        line: usize,
    },
    Extension {
        size: u64,
        line: usize,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field or the final CRLF.
    TrailerStart {
        total: usize,
    },
    Trailer {
        total: usize,
    },
    TrailerLf {
        total: usize,
    },
    EndLf,
}

/// How far [`follow_chunks`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Every byte was part of the body, which goes on.
    Partial(Chunk),
    /// The body ended after this many bytes.
    Done(usize),
    /// The framing is broken at this byte; the ones before it were fine.
    Broken(usize),
}

/// What a checked head says about the bytes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    /// `None` for chunked, else the Content-Length (0 without one).
    length: Option<u64>,
    /// The request may switch protocols (`Upgrade`; sessionward never
    /// answers `CONNECT` with a 2xx, so that one never switches).
    upgrade: bool,
}

/// The framing state of one HTTP/1 connection, fed every byte a client sends.
#[derive(Debug)]
pub struct Framing {
    state: State,
    max_head: usize,
    /// The request being read asked to switch protocols.
    upgrade: bool,
    /// Heads released so far: the number of the next request.
    heads: u64,
}

impl Framing {
    /// A new connection's framing; heads over `max_head` bytes are refused with 431.
    pub fn new(max_head: usize) -> Self {
        Framing {
            state: State::Start,
            max_head,
            upgrade: false,
            heads: 0,
        }
    }

    /// Whether every further byte passes unchecked.
    pub fn passes_all(&self) -> bool {
        self.state == State::Passthrough
    }

    /// The number (from 0) of the upgrade request that waits for its answer.
    pub fn awaits_answer(&self) -> Option<u64> {
        match self.state {
            State::AwaitAnswer(request) => Some(request),
            _ => None,
        }
    }

    /// How many request heads were released.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// The upgrade request was answered: with 101 the connection belongs to
    /// the new protocol, otherwise HTTP/1 framing goes on.
    pub fn answered(&mut self, switched: bool) {
        if self.awaits_answer().is_some() {
            self.state = if switched {
                State::Passthrough
            } else {
                State::Head { scanned: 0 }
            };
        }
    }

    /// Follows `bytes`, which continue the connection right after the last
    /// released byte (so an unfinished head is fed again from its start).
    pub fn feed(&mut self, bytes: &[u8]) -> Step {
        let mut at = 0;
        loop {
            let stop = |outcome| Step {
                release: at,
                outcome,
            };
            let rest = &bytes[at..];
            match self.state {
                State::Passthrough => {
                    return Step {
                        release: bytes.len(),
                        outcome: Outcome::More,
                    };
                }
                State::Halted => return stop(Outcome::Halt),
                State::AwaitAnswer(_) => return stop(Outcome::Wait),
                _ if rest.is_empty() => return stop(Outcome::More),
                State::Start => {
                    let n = rest.len().min(H2_PREFACE.len());
                    if rest[..n] != H2_PREFACE[..n] {
                        self.state = State::Head { scanned: 0 };
                    } else if n == H2_PREFACE.len() {
                        self.state = State::Passthrough;
                    } else {
                        return stop(Outcome::More);
                    }
                }
                State::Head { scanned } => {
                    let checked = find_head_end(rest, scanned, self.max_head).and_then(|end| {
                        end.map(|end| check_head(&rest[..end]).map(|h| (end, h)))
                            .transpose()
                    });
                    match checked {
                        Err(refusal) => {
                            self.state = State::Halted;
                            return stop(Outcome::Refuse(refusal));
                        }
                        Ok(None) => {
                            // The last byte is looked at again: a CR there
                            // is only judged once the next byte is known.
                            self.state = State::Head {
                                scanned: rest.len() - 1,
                            };
                            return stop(Outcome::More);
                        }
                        Ok(Some((end, head))) => {
                            at += end;
                            self.heads += 1;
                            self.upgrade = head.upgrade;
                            self.state = match head.length {
                                None => State::Chunked(Chunk::Start),
                                Some(0) => self.after_body(),
                                Some(n) => State::Fixed(n),
                            };
                        }
                    }
                }
                State::Fixed(left) => {
                    let avail = rest.len() as u64;
                    if avail < left {
                        self.state = State::Fixed(left - avail);
                        at = bytes.len();
                    } else {
                        // `left` <= `avail`, a usize.
                        at += left as usize;
                        self.state = self.after_body();
                    }
                }
                State::Chunked(chunk) => match follow_chunks(chunk, rest, self.max_head) {
                    Progress::Partial(chunk) => {
                        self.state = State::Chunked(chunk);
                        at = bytes.len();
                    }
                    Progress::Done(used) => {
                        at += used;
                        self.state = self.after_body();
                    }
                    Progress::Broken(good) => {
                        // Released up to the break however the stream was cut.
                        at += good;
                        self.state = State::Halted;
                        return Step {
                            release: at,
                            outcome: Outcome::Halt,
                        };
                    }
                },
            }
        }
    }

    fn after_body(&self) -> State {
        if self.upgrade {
            State::AwaitAnswer(self.heads - 1)
        } else {
            State::Head { scanned: 0 }
        }
    }
}

/// Where the head at the start of `head` ends (after its empty line), once
/// it has; `scanned` bytes were searched by an earlier call. Every line must
/// end with CRLF.
fn find_head_end(head: &[u8], scanned: usize, max_head: usize) -> Result<Option<usize>, Refusal> {
    // Empty lines before a request line are skipped (RFC 9112 section 2.2),
    // by httparse too.
    let lead = head
        .chunks_exact(2)
        .take(MAX_EMPTY_LINES + 1)
        .take_while(|pair| *pair == b"\r\n")
        .count();
    if lead > MAX_EMPTY_LINES {
        return Err(Refusal::bad("too many empty lines before the request"));
    }
    let lead = lead * 2;
    for i in scanned..head.len() {
        match head[i] {
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Err(Refusal::bad("bare LF line ending"));
            }
            b'\n' if i >= lead + 3 && &head[i - 3..i] == b"\r\n\r" => {
                return if i + 1 > max_head {
                    Err(Refusal::too_large("request head too large"))
                } else {
                    Ok(Some(i + 1))
                };
            }
            b'\r' if head.get(i + 1).is_some_and(|b| *b != b'\n') => {
                return Err(Refusal::bad("bare CR in the request head"));
            }
            _ => {}
        }
    }
    if head.len() > max_head {
        return Err(Refusal::too_large("request head too large"));
    }
    Ok(None)
}

/// Checks a complete head and reads how its body is framed. One framing
/// only, unambiguous: anything two parsers could read differently is refused.
fn check_head(head: &[u8]) -> Result<Head, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::too_large("too many header fields"));
        }
        _ => return Err(Refusal::bad("malformed request head")),
    }
    let http10 = req.version == Some(0);
    let (mut hosts, mut length, mut chunked, mut upgrade) = (0, None, false, false);
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(field.value).ok_or(Refusal::bad("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::bad("differing Content-Length values"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err(Refusal::bad("repeated Transfer-Encoding"));
            }
            if !trim_ows(field.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Refusal::bad("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    if chunked && http10 {
        return Err(Refusal::bad("Transfer-Encoding in HTTP/1.0"));
    }
    if chunked && length.is_some() {
        return Err(Refusal::bad("Content-Length with Transfer-Encoding"));
    }
    match hosts {
        0 if !http10 => return Err(Refusal::bad("missing Host")),
        0 | 1 => {}
        _ => return Err(Refusal::bad("more than one Host")),
    }
    Ok(Head {
        length: if chunked {
            None
        } else {
            Some(length.unwrap_or(0))
        },
        // hyper hands over the connection for any HTTP/1.1 `Upgrade` answered 101.
        upgrade: upgrade && !http10,
    })
}

/// A Content-Length value: digits only, no sign, list or whitespace inside.
fn parse_length(value: &[u8]) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `value` without the spaces and tabs around it.
fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &value[start..end]
}

/// Follows a chunked body through `bytes` from position `chunk`.
fn follow_chunks(mut chunk: Chunk, bytes: &[u8], max_trailers: usize) -> Progress {
    use Chunk::*;
    let mut i = 0;
    while i < bytes.len() {
        if let Data(left) = chunk {
            let avail = (bytes.len() - i) as u64;
            if avail < left {
                return Progress::Partial(Data(left - avail));
            }
            // `left` <= `avail`, a usize.
            i += left as usize;
            chunk = DataCr;
            continue;
        }
        let b = bytes[i];
        i += 1;
        let digit = (b as char).to_digit(16).map(u64::from);
        chunk = match (chunk, b, digit) {
            (Start, _, Some(d)) => Size { size: d, line: 1 },
            (Size { size, line }, _, Some(d)) => {
                match size.checked_mul(16).and_then(|s| s.checked_add(d)) {
                    Some(size) => Size {
                        size,
                        line: line + 1,
                    },
                    None => return Progress::Broken(i - 1),
                }
            }
            (Size { size, line } | SizeWs { size, line }, b' ' | b'\t', _) => SizeWs {
                size,
                line: line + 1,
            },
            (Size { size, line } | SizeWs { size, line }, b';', _) => Extension {
                size,
                line: line + 1,
            },
            (Size { size, .. } | SizeWs { size, .. } | Extension { size, .. }, b'\r', _) => {
                SizeLf { size }
            }
            (Extension { size, line }, _, _) if b != b'\n' => Extension {
                size,
                line: line + 1,
            },
            (SizeLf { size: 0 }, b'\n', _) => TrailerStart { total: 0 },
            (SizeLf { size }, b'\n', _) => Data(size),
            (DataCr, b'\r', _) => DataLf,
            (DataLf, b'\n', _) => Start,
            (TrailerStart { .. }, b'\r', _) => EndLf,
            (TrailerStart { total } | Trailer { total }, _, _) if b != b'\r' && b != b'\n' => {
                Trailer { total: total + 1 }
            }
            (Trailer { total }, b'\r', _) => TrailerLf { total },
            (TrailerLf { total }, b'\n', _) => TrailerStart { total },
            (EndLf, b'\n', _) => return Progress::Done(i),
            _ => return Progress::Broken(i - 1),
        };
        let over = match chunk {
            Size { line, .. } | SizeWs { line, .. } | Extension { line, .. } => {
                line > MAX_CHUNK_LINE
            }
            Trailer { total } => total > max_trailers,
            _ => false,
        };
        if over {
            return Progress::Broken(i - 1);
        }
    }
    Progress::Partial(chunk)
}

/// What the service tells [`Screened`] about the requests it answers.
/// hyper serves an HTTP/1 connection's requests one at a time, in order, so
/// the service's n-th request is the n-th head the framing released.
#[derive(Debug, Default)]
pub struct Answers {
    /// Requests the service has taken.
    taken: AtomicU64,
    /// Requests whose answer's head is known.
    decided: AtomicU64,
    /// Requests whose answer is complete (its body sent or dropped).
    finished: AtomicU64,
    /// 1 + the number of the request answered 101; 0 for none.
    switched: AtomicU64,
    /// Set while [`Screened`] waits for one of the above to move.
    waiting: AtomicBool,
    reader: Mutex<Option<Waker>>,
}

impl Answers {
    /// The service takes the next request; returns its number.
    pub fn take(&self) -> u64 {
        self.taken.fetch_add(1, Ordering::SeqCst)
    }

    /// Request `number` is answered; `switched` if with 101.
    pub fn decide(&self, number: u64, switched: bool) {
        if switched {
            self.switched.store(number + 1, Ordering::SeqCst);
        }
        self.decided.fetch_max(number + 1, Ordering::SeqCst);
        self.wake();
    }

    /// One more answer is complete.
    pub fn finish(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        // No lock on the request path unless the reader is parked.
        if self.waiting.swap(false, Ordering::SeqCst)
            && let Some(waker) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            waker.wake();
        }
    }

    /// Parks the reader until the next change; false if `ready` already holds
    /// (checked again after parking, so no change is missed).
    fn park(&self, cx: &Context<'_>, ready: impl Fn(&Self) -> bool) -> bool {
        if ready(self) {
            return false;
        }
        *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        self.waiting.store(true, Ordering::SeqCst);
        !ready(self)
    }

    /// Whether request `number` is answered, and if so whether with 101.
    fn answer(&self, number: u64) -> Option<bool> {
        (self.decided.load(Ordering::SeqCst) > number)
            .then(|| self.switched.load(Ordering::SeqCst) == number + 1)
    }
}

/// A client connection whose HTTP/1 bytes reach hyper only once [`Framing`]
/// has checked them; HTTP/2 and upgraded connections pass through.
pub struct Screened<I> {
    inner: I,
    framing: Framing,
    answers: Arc<Answers>,
    /// Bytes read but not handed over: an unfinished head, or what follows
    /// an upgrade request until its answer.
    held: BytesMut,
    /// How many bytes at the front of `held` are checked and ready.
    ready: usize,
    /// The read side is over: hyper gets end-of-file (after the answers
    /// owed, when a head was refused).
    ended: bool,
    /// `held` holds bytes not fed to the framing yet (they followed an
    /// upgrade request that was then answered without switching).
    unfed: bool,
    /// The refusal still to be written before the connection shuts down.
    reply: Option<Bytes>,
    /// Until the first request is handed over: hyper's own header timeout
    /// only starts once it knows the protocol, and detecting it has no timer.
    first_request: Option<Pin<Box<Sleep>>>,
    peer: SocketAddr,
    metrics: Arc<Metrics>,
}

impl<I> Screened<I> {
    /// Screens `inner`; a client that sends no complete first request (or
    /// HTTP/2 preface) within `first_request_timeout` is disconnected.
    pub fn new(
        inner: I,
        answers: Arc<Answers>,
        max_head: usize,
        first_request_timeout: Duration,
        peer: SocketAddr,
        metrics: Arc<Metrics>,
    ) -> Self {
        Screened {
            inner,
            framing: Framing::new(max_head),
            answers,
            held: BytesMut::new(),
            ready: 0,
            ended: false,
            unfed: false,
            reply: None,
            first_request: Some(Box::pin(tokio::time::sleep(first_request_timeout))),
            peer,
            metrics,
        }
    }

    /// Acts on what [`Framing::feed`] found beyond the released bytes.
    fn settle(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::More | Outcome::Wait => {}
            Outcome::Refuse(refusal) => {
                tracing::warn!(client = %self.peer.ip(), status = refusal.status, reason = refusal.reason, "request refused before parsing");
                self.metrics.response(refusal.status, Duration::ZERO);
                self.reply = Some(refusal.response());
                self.held.truncate(self.ready);
                self.ended = true;
            }
            Outcome::Halt => {
                debug!(client = %self.peer.ip(), "malformed chunked body; reading stops");
                self.held.truncate(self.ready);
                self.ended = true;
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Screened<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let start = buf.filled().len();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if buf.filled().len() > start {
                this.first_request = None;
                return Poll::Ready(Ok(()));
            }
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.held[..n]);
                this.held.advance(n);
                this.ready -= n;
                continue;
            }
            if this.ended {
                // A refusal waits until every released request is answered:
                // end-of-file in the middle of one would cut its answer off.
                let owed = this.framing.heads();
                if this.reply.is_some()
                    && this
                        .answers
                        .park(cx, |a| a.finished.load(Ordering::SeqCst) >= owed)
                {
                    return Poll::Pending;
                }
                return Poll::Ready(Ok(()));
            }
            if this.framing.passes_all() {
                if !this.held.is_empty() {
                    this.ready = this.held.len();
                    continue;
                }
                this.first_request = None;
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let Some(request) = this.framing.awaits_answer() {
                match this.answers.answer(request) {
                    Some(switched) => {
                        this.framing.answered(switched);
                        this.unfed = !this.held.is_empty();
                        continue;
                    }
                    None => {
                        if this.answers.park(cx, |a| a.answer(request).is_some()) {
                            return Poll::Pending;
                        }
                        continue;
                    }
                }
            }
            if this.unfed {
                this.unfed = false;
                let step = this.framing.feed(&this.held);
                this.ready = step.release;
                this.settle(step.outcome);
                continue;
            }
            if let Some(deadline) = this.first_request.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no complete request within the header read timeout",
                )));
            }
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            if buf.filled().len() == start {
                // The client closed; an unfinished head goes nowhere.
                this.held.clear();
                this.ended = true;
                continue;
            }
            let step = if this.held.is_empty() {
                // The common case: checked in place, handed over without a copy.
                let step = this.framing.feed(&buf.filled()[start..]);
                if step.outcome == Outcome::More || step.outcome == Outcome::Wait {
                    this.held
                        .extend_from_slice(&buf.filled()[start + step.release..]);
                }
                buf.set_filled(start + step.release);
                step
            } else {
                this.held.extend_from_slice(&buf.filled()[start..]);
                buf.set_filled(start);
                let step = this.framing.feed(&this.held);
                this.ready = step.release;
                step
            };
            this.settle(step.outcome);
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Screened<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper shuts down once it has answered every request before the
        // refused one: the refusal goes last, then the connection closes.
        while let Some(reply) = this.reply.as_mut() {
            if reply.is_empty() {
                ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                this.reply = None;
                break;
            }
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, reply))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            reply.advance(n);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    fn feed_all(bytes: &[u8]) -> Step {
        Framing::new(8192).feed(bytes)
    }

    /// Feeds `bytes` in pieces of `size` the way [`Screened`] does (held
    /// bytes fed again with the next piece); returns the released bytes and
    /// the final outcome.
    fn feed_in_pieces(bytes: &[u8], size: usize) -> (Vec<u8>, Outcome) {
        let mut framing = Framing::new(8192);
        let (mut held, mut released) = (Vec::new(), Vec::new());
        let mut outcome = Outcome::More;
        for piece in bytes.chunks(size) {
            held.extend_from_slice(piece);
            let step = framing.feed(&held);
            released.extend(held.drain(..step.release));
            outcome = step.outcome;
            if outcome != Outcome::More {
                break;
            }
        }
        (released, outcome)
    }

    fn refused(bytes: &[u8]) -> Refusal {
        match feed_all(bytes).outcome {
            Outcome::Refuse(r) => r,
            other => panic!(
                "{:?} was not refused: {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    #[test]
    fn a_complete_head_is_released_whole_and_a_partial_one_kept() {
        assert_eq!(
            feed_all(GET),
            Step {
                release: GET.len(),
                outcome: Outcome::More
            }
        );
        let mut f = Framing::new(8192);
        assert_eq!(
            f.feed(&GET[..10]),
            Step {
                release: 0,
                outcome: Outcome::More
            }
        );
        assert_eq!(f.feed(&GET[..20]).release, 0);
        assert_eq!(f.feed(GET).release, GET.len());
    }

    #[test]
    fn pipelined_requests_are_followed_through_their_bodies_in_any_pieces() {
        let stream = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /x\
                       POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                       3;ext=1\r\nabc\r\n10 \r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n\
                       \r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n";
        for size in [1, 2, 3, 7, 64, stream.len()] {
            let (released, outcome) = feed_in_pieces(stream, size);
            assert_eq!(outcome, Outcome::More, "pieces of {size}");
            assert_eq!(released, stream.to_vec(), "pieces of {size}");
        }
        // Cut one byte short, the last head (and the empty line before it) stays held.
        let (released, _) = feed_in_pieces(&stream[..stream.len() - 1], 5);
        assert_eq!(
            released.len(),
            stream.len() - "\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n".len()
        );
    }

    #[test]
    fn an_http2_preface_passes_everything_through() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\nGET\n\n");
        for size in [1, 5, bytes.len()] {
            assert_eq!(feed_in_pieces(&bytes, size), (bytes.clone(), Outcome::More));
        }
        // "PRI" without the rest of the preface is an ordinary (bad) head.
        assert_eq!(
            refused(b"PRI * HTTP/2.0\r\n\r\nXY\r\n\r\n").reason,
            "malformed request head"
        );
    }

    #[test]
    fn ambiguous_heads_are_refused_with_their_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\nHost: a\n\n", "bare LF line ending"),
            (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare LF line ending"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", "bare LF line ending"),
            (b"GET / HTTP/1.1\r\nX: a\rb\r\nHost: a\r\n\r\n", "bare CR in the request head"),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Content-Length with Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "Content-Length with Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "differing Content-Length values",
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n", "invalid Content-Length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n", "invalid Content-Length"),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "Transfer-Encoding other than chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "repeated Transfer-Encoding",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "Transfer-Encoding in HTTP/1.0",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", "missing Host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", "malformed request head"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "malformed request head"),
        ];
        for (head, reason) in cases {
            let r = refused(head);
            assert_eq!(
                (r.status, r.reason),
                (400, *reason),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn accepted_variants_are_the_ones_every_parser_reads_alike() {
        for head in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n0\r\n\r\n",
        ] {
            assert_eq!(
                feed_all(head).release,
                head.len(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn heads_over_the_limits_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(9000, b'a');
        // Refused before the end arrives: nothing waits for more.
        assert_eq!(refused(&big).status, 431);
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many).reason, "too many header fields");
    }

    #[test]
    fn broken_chunked_bodies_halt_after_the_good_bytes() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"zz\r\n"[..],
            b"3\nabc",
            b"3;x\nabc",
            b"3\r\nabcdef\r\n",
            b"-3\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
        ] {
            let bytes = [&head[..], body].concat();
            let (released, outcome) = feed_in_pieces(&bytes, 4);
            assert_eq!(
                outcome,
                Outcome::Halt,
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(released.len() >= head.len() && released.len() < bytes.len());
        }
    }

    #[test]
    fn an_upgrade_waits_for_its_own_answer() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let after = b"\x81\x05hello";
        let bytes = [GET, &upgrade[..], after].concat();
        let mut f = Framing::new(8192);
        assert_eq!(
            f.feed(&bytes),
            Step {
                release: GET.len() + upgrade.len(),
                outcome: Outcome::Wait
            }
        );
        assert_eq!(
            f.awaits_answer(),
            Some(1),
            "the second request is the upgrade"
        );
        f.answered(true);
        assert_eq!(f.feed(after).release, after.len());

        let mut f = Framing::new(8192);
        f.feed(upgrade);
        f.answered(false);
        assert!(f.awaits_answer().is_none() && !f.passes_all());
        assert_eq!(
            f.feed(b"GET / HTTP/1.1\nHost: a\n\n").outcome,
            Outcome::Refuse(Refusal::bad("bare LF line ending"))
        );
        // CONNECT never switches here: sessionward answers it 405.
        let mut f = Framing::new(8192);
        assert_eq!(
            f.feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n").outcome,
            Outcome::More
        );
        assert!(f.awaits_answer().is_none());
    }

    #[test]
    fn many_empty_lines_before_a_request_are_refused() {
        let mut bytes = b"\r\n".repeat(MAX_EMPTY_LINES);
        bytes.extend_from_slice(GET);
        assert_eq!(feed_all(&bytes).release, bytes.len());
        let more = [&b"\r\n"[..], &bytes].concat();
        assert_eq!(
            refused(&more).reason,
            "too many empty lines before the request"
        );
    }

    #[test]
    fn the_refusal_is_a_complete_response_that_closes() {
        let bytes = Refusal::too_large("request head too large").response();
        let text = std::str::from_utf8(&bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert_eq!(body, "bad request: request head too large\n");
    }

    fn screened(
        io: tokio::io::DuplexStream,
        timeout: Duration,
    ) -> (Screened<tokio::io::DuplexStream>, Arc<Answers>) {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let answers = Arc::new(Answers::default());
        let io = Screened::new(
            io,
            answers.clone(),
            8192,
            timeout,
            peer,
            Arc::new(Metrics::default()),
        );
        (io, answers)
    }

    /// What the service does for one request: take it, answer it, finish.
    fn serve(answers: &Answers, status: u16) {
        let n = answers.take();
        answers.decide(n, status == 101);
        answers.finish();
    }

    /// Whether a read completes before the (paused) clock moves on.
    async fn reads<R: AsyncRead + Unpin>(io: &mut R) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some(buf)
    }

    #[tokio::test(start_paused = true)]
    async fn screened_hands_over_checked_bytes_and_refuses_after_the_answers_owed() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (mut io, answers) = screened(server, Duration::from_secs(60));
        // A good request in two writes, then a bad one.
        client.write_all(&GET[..7]).await.unwrap();
        client.write_all(&GET[7..]).await.unwrap();
        client
            .write_all(b"GET /evil HTTP/1.1\nHost: a\n\n")
            .await
            .unwrap();
        assert_eq!(reads(&mut io).await.as_deref(), Some(GET));
        // Its answer is not out yet: no end-of-file that would cut it off.
        assert_eq!(reads(&mut io).await, None);
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        serve(&answers, 200);
        assert_eq!(
            reads(&mut io).await.as_deref(),
            Some(&b""[..]),
            "now end-of-file"
        );
        io.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        let (first, refusal) = answer.split_at(answer.find("HTTP/1.1 400").expect("a 400"));
        assert_eq!(
            first, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "answers keep their order"
        );
        assert!(refusal.ends_with("bad request: bare LF line ending\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn screened_switches_only_on_the_upgrades_own_101() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        let frames = b"\x81\x05hello\nGET /x HTTP/1.1\n\n";
        for switch in [true, false] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            let (mut io, answers) = screened(server, Duration::from_secs(60));
            client
                .write_all(&[GET, &upgrade[..], frames].concat())
                .await
                .unwrap();
            let mut got = Vec::new();
            while got.len() < GET.len() + upgrade.len() {
                got.extend(reads(&mut io).await.expect("the two heads"));
            }
            assert_eq!(got, [GET, &upgrade[..]].concat());
            // The first request's answer says nothing about the upgrade.
            serve(&answers, 200);
            assert_eq!(reads(&mut io).await, None, "switch {switch}: still waiting");
            serve(&answers, if switch { 101 } else { 426 });
            let next = reads(&mut io).await.expect("decided");
            if switch {
                assert_eq!(next, frames, "the new protocol's bytes pass as they are");
            } else {
                assert_eq!(next, b"", "HTTP/1 again: the bare-LF head is refused");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_before_its_first_request() {
        let (_client, server) = tokio::io::duplex(1024);
        let (mut io, _) = screened(server, Duration::from_secs(5));
        let mut buf = [0u8; 16];
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_request_the_timer_is_hypers() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut io, _) = screened(server, Duration::from_secs(5));
        client.write_all(GET).await.unwrap();
        let mut buf = [0u8; 256];
        assert_eq!(io.read(&mut buf).await.unwrap(), GET.len());
        // Idle far past the first-request timeout: no error from here.
        let read = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting, not timed out: {read:?}");
    }
}
