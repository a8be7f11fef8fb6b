//! What a peer may make patd do below the request layer: a meter over each
//! connection's bytes (decrypted, inside TLS) that reads the 9-byte HTTP/2
//! frame headers both ways (RFC 9113 §4.1) and closes the connection when
//! the peer
//!
//! - leaves an answer unsent longer than the send timeout: the answer
//!   waits for flow-control window the peer does not grant (RFC 9113
//!   §6.9), or for TCP to take bytes the peer does not read. An answer's
//!   starved time adds up over its life, so granting a byte now and then
//!   does not restart the clock. hyper's HTTP/2 server has no per-stream
//!   send deadline and keeps such a stream, with its answer, for ever;
//!   closing the connection frees all of it (as nginx's `send_timeout`
//!   does);
//! - sends control frames (PING, SETTINGS, WINDOW_UPDATE, PRIORITY,
//!   RST_STREAM, GOAWAY, CONTINUATION, DATA with no payload but padding,
//!   frame types patd does not know) beyond its allowance: each is cheap
//!   to send and costs patd work, and none is a request (Envoy's HTTP/2
//!   flood limits and gRPC's ping policy bound the same thing).
//!
//! The meter cannot see what hyper still has to send: an answer whose
//! window is spent counts as waiting even if it has nothing more to say
//! yet (a health Watch of a peer that announced a zero window).
//!
//! HTTP/1.1 connections (no HTTP/2 preface) get the TCP part only.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use crate::metrics;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Control frames a new connection may send before earning any (its
/// SETTINGS, a WINDOW_UPDATE, a few pings), and the most it may bank.
const CONTROL_BURST: i64 = 100;
const CONTROL_CAP: i64 = 1_000;
/// Control frames earned per second (keepalive pings and the like), per
/// stream the peer opens (a WINDOW_UPDATE and an RST_STREAM of its own),
/// and per DATA, PING or SETTINGS frame patd sends (the WINDOW_UPDATE or
/// BDP ping, the ACK, a reader sends back).
const CONTROL_PER_SECOND: i64 = 10;
const CONTROL_PER_STREAM: i64 = 2;
const CONTROL_PER_FRAME_SENT: i64 = 2;

/// The initial flow-control window of a stream and of the connection
/// until the peer's SETTINGS say otherwise (RFC 9113 §6.9.2).
const DEFAULT_WINDOW: i64 = 65_535;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;
const ACK: u8 = 0x1;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// Why a metered connection was closed (the `reason` label of
/// `patd_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// An answer waited longer than the send timeout.
    SendTimeout,
    /// More control frames than the allowance.
    ControlFlood,
}

impl Closed {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::SendTimeout => "send_timeout",
            Closed::ControlFlood => "control_flood",
        }
    }

    fn error(self) -> io::Error {
        match self {
            Closed::SendTimeout => io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no answer bytes within the send timeout",
            ),
            Closed::ControlFlood => {
                io::Error::other("the peer sent control frames beyond its allowance")
            }
        }
    }
}

/// One frame header as it goes by.
#[derive(Debug, Clone, Copy)]
struct Header {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Reads frame headers out of a byte stream cut anywhere, and the few
/// payload bytes the meter needs (WINDOW_UPDATE's increment, SETTINGS'
/// entries); payloads are otherwise skipped, never copied.
#[derive(Debug, Default)]
struct Framer {
    head: [u8; 9],
    head_len: usize,
    current: Option<Header>,
    /// Payload bytes of `current` still to come.
    remaining: usize,
    /// The payload unit being gathered (4 bytes of WINDOW_UPDATE, 6 of a
    /// SETTINGS entry).
    unit: [u8; 6],
    unit_len: usize,
}

/// What the framer saw: a complete header, or a payload unit of the
/// current frame.
enum Seen {
    Header(Header),
    Unit(Header, [u8; 6]),
}

impl Framer {
    /// Feeds `bytes`, calling `seen` for each header and payload unit.
    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Seen)) {
        while !bytes.is_empty() {
            let Some(header) = self.current else {
                let take = (9 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + take].copy_from_slice(&bytes[..take]);
                self.head_len += take;
                bytes = &bytes[take..];
                if self.head_len == 9 {
                    let h = &self.head;
                    let header = Header {
                        length: usize::from(h[0]) << 16
                            | usize::from(h[1]) << 8
                            | usize::from(h[2]),
                        kind: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    self.head_len = 0;
                    self.unit_len = 0;
                    self.remaining = header.length;
                    seen(Seen::Header(header));
                    if header.length > 0 {
                        self.current = Some(header);
                    }
                }
                continue;
            };
            let take = self.remaining.min(bytes.len());
            let unit = match header.kind {
                WINDOW_UPDATE => 4,
                SETTINGS => 6,
                _ => 0,
            };
            if unit > 0 {
                for &byte in &bytes[..take] {
                    if self.unit_len < unit {
                        self.unit[self.unit_len] = byte;
                        self.unit_len += 1;
                        if self.unit_len == unit {
                            seen(Seen::Unit(header, self.unit));
                            // WINDOW_UPDATE has one unit; SETTINGS one per
                            // six bytes.
                            if header.kind == SETTINGS {
                                self.unit_len = 0;
                            }
                        }
                    }
                }
            }
            self.remaining -= take;
            bytes = &bytes[take..];
            if self.remaining == 0 {
                self.current = None;
            }
        }
    }
}

/// A stream the peer opened, as patd sends on it: its send window and,
/// once patd has begun its answer (response HEADERS without END_STREAM),
/// how long that answer has been starved of its window.
#[derive(Debug)]
struct Stream {
    /// The send window, in bytes (RFC 9113 §6.9).
    window: i64,
    answering: bool,
    /// Since when the answer's window has been spent, if it is now.
    starved_since: Option<Instant>,
    /// Starved time before that: a peer that grants a few bytes now and
    /// then does not start the clock afresh.
    starved_for: Duration,
}

impl Stream {
    fn new(window: i64) -> Self {
        Self {
            window,
            answering: false,
            starved_since: None,
            starved_for: Duration::ZERO,
        }
    }

    /// Starts or stops the answer's clock; returns how the number of
    /// starved answers changes (+1, -1 or 0).
    fn update(&mut self, now: Instant) -> isize {
        let starved = self.answering && self.window <= 0;
        match (starved, self.starved_since) {
            (true, None) => {
                self.starved_since = Some(now);
                1
            }
            (false, Some(since)) => {
                self.starved_for += now - since;
                self.starved_since = None;
                -1
            }
            _ => 0,
        }
    }

    /// When the answer will have been starved for `limit` in all, if it is
    /// starved now.
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        self.starved_since
            .and_then(|since| since.checked_add(limit.saturating_sub(self.starved_for)))
    }
}

/// The protocol a connection speaks, known from its first bytes.
#[derive(Debug)]
enum Protocol {
    /// Fewer bytes than the preface so far, all matching it.
    Unknown(usize),
    Http1,
    Http2,
}

/// The HTTP/2 state the meter keeps: the peer's windows and streams, and
/// its control-frame allowance.
#[derive(Debug)]
struct Flow {
    initial_window: i64,
    connection_window: i64,
    /// Since when the connection window has stayed below
    /// [`CONNECTION_REOPENED`] while answers are under way, if it has.
    connection_starved_since: Option<Instant>,
    streams: HashMap<u32, Stream>,
    /// How many of `streams` patd is answering.
    answering: usize,
    /// How many of those are starved now: none, and the deadline needs no
    /// look at the streams (the usual case, read on every idle poll).
    starved: usize,
    /// The highest stream id the peer has opened (client streams only
    /// grow, RFC 9113 §5.1.1): only a new stream earns allowance.
    last_stream: u32,
    allowance: i64,
    refilled: Instant,
}

/// A connection window the peer has opened again: one frame's worth
/// (the default SETTINGS_MAX_FRAME_SIZE). Granting less now and then does
/// not count as reading.
const CONNECTION_REOPENED: i64 = 16_384;

/// Streams the meter follows at most; beyond them (only streams h2 drops
/// unanswered, after a GOAWAY, can get there) new ones go unfollowed.
const MAX_FOLLOWED: usize = 1_024;

impl Flow {
    fn new(now: Instant) -> Self {
        Self {
            initial_window: DEFAULT_WINDOW,
            connection_window: DEFAULT_WINDOW,
            connection_starved_since: None,
            streams: HashMap::new(),
            answering: 0,
            starved: 0,
            last_stream: 0,
            allowance: CONTROL_BURST,
            refilled: now,
        }
    }

    fn earn(&mut self, n: i64) {
        self.allowance = (self.allowance + n).min(CONTROL_CAP);
    }

    /// Spends one control frame; `false` once the allowance is gone.
    fn spend(&mut self, now: Instant) -> bool {
        let whole_seconds = (now - self.refilled).as_secs();
        if whole_seconds > 0 {
            let earned = i64::try_from(whole_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(CONTROL_PER_SECOND);
            self.earn(earned);
            self.refilled += Duration::from_secs(whole_seconds);
        }
        self.allowance -= 1;
        self.allowance >= 0
    }

    /// Starts or stops the connection's clock: it runs while answers are
    /// under way and the connection window is below one frame.
    fn mark_connection(&mut self, now: Instant) {
        let starved = self.connection_window < CONNECTION_REOPENED && self.answering > 0;
        match (starved, self.connection_starved_since) {
            (true, None) => self.connection_starved_since = Some(now),
            (false, Some(_)) => self.connection_starved_since = None,
            _ => {}
        }
    }

    /// Forgets `stream` (ended or reset).
    fn remove(&mut self, stream: u32) {
        if let Some(s) = self.streams.remove(&stream) {
            self.answering -= usize::from(s.answering);
            self.starved -= usize::from(s.starved_since.is_some());
        }
    }

    /// Moves the window of `stream` (if patd follows it) by `delta`.
    fn move_stream_window(&mut self, stream: u32, delta: i64, now: Instant) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.window = s.window.saturating_add(delta);
            self.starved = self.starved.saturating_add_signed(s.update(now));
        }
    }

    /// A frame the peer sent; `false` when it is one control frame too
    /// many.
    fn received(&mut self, seen: Seen, now: Instant) -> bool {
        match seen {
            Seen::Header(h) => {
                let control = match h.kind {
                    HEADERS if h.stream > self.last_stream => {
                        self.last_stream = h.stream;
                        if self.streams.len() < MAX_FOLLOWED {
                            self.streams
                                .insert(h.stream, Stream::new(self.initial_window));
                        }
                        self.earn(CONTROL_PER_STREAM);
                        false
                    }
                    // Trailers (or a stream id h2 will refuse).
                    HEADERS => false,
                    // DATA with nothing in it but, perhaps, padding.
                    DATA => {
                        h.flags & END_STREAM == 0
                            && (h.length == 0 || (h.flags & PADDED != 0 && h.length <= 256))
                    }
                    RST_STREAM => {
                        self.remove(h.stream);
                        self.mark_connection(now);
                        true
                    }
                    // PRIORITY, SETTINGS, PING, WINDOW_UPDATE, GOAWAY,
                    // CONTINUATION, and types this server does not know.
                    _ => true,
                };
                !control || self.spend(now)
            }
            Seen::Unit(h, unit) if h.kind == WINDOW_UPDATE => {
                let increment = i64::from(
                    u32::from_be_bytes([unit[0], unit[1], unit[2], unit[3]]) & 0x7fff_ffff,
                );
                if h.stream == 0 {
                    self.connection_window = self.connection_window.saturating_add(increment);
                    self.mark_connection(now);
                } else {
                    self.move_stream_window(h.stream, increment, now);
                }
                true
            }
            Seen::Unit(h, unit) => {
                // A SETTINGS entry (an ACK has no payload).
                let id = u16::from_be_bytes([unit[0], unit[1]]);
                if h.stream == 0 && id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let value = i64::from(u32::from_be_bytes([unit[2], unit[3], unit[4], unit[5]]));
                    // RFC 9113 §6.9.2: the change applies to every open
                    // stream's window (not the connection's).
                    let delta = value - self.initial_window;
                    self.initial_window = value;
                    for stream in self.streams.values_mut() {
                        stream.window = stream.window.saturating_add(delta);
                        self.starved = self.starved.saturating_add_signed(stream.update(now));
                    }
                }
                true
            }
        }
    }

    /// A frame patd sent.
    fn sent(&mut self, seen: Seen, now: Instant) {
        let Seen::Header(h) = seen else {
            return;
        };
        match h.kind {
            DATA => {
                self.earn(CONTROL_PER_FRAME_SENT);
                let length = i64::try_from(h.length).unwrap_or(i64::MAX);
                if h.flags & END_STREAM != 0 {
                    self.remove(h.stream);
                } else {
                    self.move_stream_window(h.stream, -length, now);
                }
                self.connection_window = self.connection_window.saturating_sub(length);
            }
            HEADERS if h.flags & END_STREAM != 0 => {
                self.remove(h.stream);
            }
            // Only a stream the peer opened and has not reset: h2 may
            // still write an answer it had encoded before the reset came.
            HEADERS => {
                if let Some(stream) = self.streams.get_mut(&h.stream)
                    && !stream.answering
                {
                    stream.answering = true;
                    self.starved = self.starved.saturating_add_signed(stream.update(now));
                    self.answering += 1;
                }
            }
            RST_STREAM => {
                self.remove(h.stream);
            }
            PING | SETTINGS if h.flags & ACK == 0 => self.earn(CONTROL_PER_FRAME_SENT),
            _ => {}
        }
        self.mark_connection(now);
    }

    /// When the most starved answer, or the connection, reaches `limit`.
    fn deadline(&self, limit: Duration) -> Option<Instant> {
        let streams = (self.starved > 0)
            .then(|| {
                self.streams
                    .values()
                    .filter_map(|s| s.deadline(limit))
                    .min()
            })
            .flatten();
        let connection = self
            .connection_starved_since
            .and_then(|since| since.checked_add(limit));
        match (streams, connection) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A connection under the meter. Fails every read and write once the peer
/// broke a rule, which makes hyper drop the connection and every stream
/// on it.
pub struct Metered<T> {
    inner: T,
    send_timeout: Duration,
    protocol: Protocol,
    incoming: Framer,
    outgoing: Framer,
    flow: Option<Flow>,
    /// Since when a write has been refused by the transport (TCP's send
    /// buffer full: the peer reads nothing).
    write_blocked_since: Option<Instant>,
    /// Fires at the current send deadline.
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
    closed: Option<Closed>,
}

impl<T> Metered<T> {
    /// Meters `inner`; an answer the peer leaves unsent for `send_timeout`
    /// closes it.
    pub fn new(inner: T, send_timeout: Duration) -> Self {
        Self {
            inner,
            send_timeout,
            protocol: Protocol::Unknown(0),
            incoming: Framer::default(),
            outgoing: Framer::default(),
            flow: None,
            write_blocked_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
            closed: None,
        }
    }

    fn close(&mut self, why: Closed) -> io::Error {
        if self.closed.is_none() {
            self.closed = Some(why);
            metrics::connection_closed(why.as_str());
            tracing::debug!(reason = why.as_str(), "connection closed by the meter");
        }
        why.error()
    }

    /// Takes the bytes the peer sent; `Err` when they broke a rule.
    fn on_read(&mut self, mut bytes: &[u8]) -> Result<(), Closed> {
        if let Protocol::Unknown(seen) = self.protocol {
            let take = (PREFACE.len() - seen).min(bytes.len());
            if bytes[..take] != PREFACE[seen..seen + take] {
                self.protocol = Protocol::Http1;
                return Ok(());
            }
            bytes = &bytes[take..];
            if seen + take == PREFACE.len() {
                self.protocol = Protocol::Http2;
                self.flow = Some(Flow::new(Instant::now()));
            } else {
                self.protocol = Protocol::Unknown(seen + take);
            }
        }
        let Some(flow) = self.flow.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let mut within = true;
        self.incoming
            .feed(bytes, |seen| within &= flow.received(seen, now));
        if within {
            Ok(())
        } else {
            Err(Closed::ControlFlood)
        }
    }

    fn on_written(&mut self, bytes: &[u8]) {
        let Some(flow) = self.flow.as_mut() else {
            return;
        };
        let now = Instant::now();
        self.outgoing.feed(bytes, |seen| flow.sent(seen, now));
    }

    /// The send deadline now, if an answer waits.
    fn deadline(&self) -> Option<Instant> {
        let flow = self
            .flow
            .as_ref()
            .and_then(|flow| flow.deadline(self.send_timeout));
        let transport = self
            .write_blocked_since
            .and_then(|since| since.checked_add(self.send_timeout));
        match (flow, transport) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The transport has nothing for now: wait, with the task woken at the
    /// send deadline too (the timer armed for it), or fail once that has
    /// passed.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let Some(deadline) = self.deadline() else {
            self.armed_for = None;
            return Poll::Pending;
        };
        if self.armed_for != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed_for = Some(deadline);
        }
        if Instant::now() >= deadline || self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(self.close(Closed::SendTimeout)));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(why) = self.closed {
            return Poll::Ready(Err(why.error()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                if let Err(why) = self.on_read(&buf.filled()[before..]) {
                    return Poll::Ready(Err(self.close(why)));
                }
                // A peer that keeps sending is not a peer that reads: the
                // deadline holds while bytes arrive too.
                if self.armed_for.is_some_and(|at| Instant::now() >= at)
                    && self.deadline().is_some_and(|at| Instant::now() >= at)
                {
                    return Poll::Ready(Err(self.close(Closed::SendTimeout)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.pending(cx),
            failed => failed,
        }
    }
}

impl<T> Metered<T> {
    /// The transport refused bytes: starts its stall clock (the kernel
    /// wakes a writer only once a third of the send buffer is free, so a
    /// peer that reads a byte now and then does not stop it), and fails
    /// once the send deadline has passed.
    fn refused<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        self.write_blocked_since.get_or_insert_with(Instant::now);
        self.pending(cx)
    }

    /// What a write did: bytes taken are metered, and stop the transport's
    /// stall clock.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
        written: impl FnOnce(&mut Self, usize),
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.write_blocked_since = None;
                }
                written(self, n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.refused(cx),
            failed => failed,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(why) = self.closed {
            return Poll::Ready(Err(why.error()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, polled, |me, n| me.on_written(&buf[..n]))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(why) = self.closed {
            return Poll::Ready(Err(why.error()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled, |me, mut n| {
            for buf in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(buf.len());
                me.on_written(&buf[..take]);
                n -= take;
            }
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(why) = self.closed {
            return Poll::Ready(Err(why.error()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.write_blocked_since = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.refused(cx),
            done => done,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(why) = self.closed {
            return Poll::Ready(Err(why.error()));
        }
        // A TLS close_notify a full send buffer cannot take waits no
        // longer than any other write.
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.refused(cx),
            done => done,
        }
    }
}

impl<T: Connected> Connected for Metered<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn settings_initial_window(value: u32) -> Vec<u8> {
        let mut entry = SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
        entry.extend_from_slice(&value.to_be_bytes());
        frame(SETTINGS, 0, 0, &entry)
    }

    fn window_update(stream: u32, increment: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
    }

    /// A meter over nothing, past the preface, fed `bytes` one byte at a
    /// time (frames cut anywhere).
    fn metered() -> Metered<()> {
        let mut m = Metered::new((), Duration::from_secs(2));
        m.on_read(PREFACE).expect("preface");
        m
    }

    fn read_bytewise(m: &mut Metered<()>, bytes: &[u8]) -> Result<(), Closed> {
        bytes
            .iter()
            .try_for_each(|b| m.on_read(std::slice::from_ref(b)))
    }

    /// The peer's request on `stream` (HEADERS, END_STREAM).
    fn request(stream: u32) -> Vec<u8> {
        frame(HEADERS, 0x5, stream, b"request")
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_without_window_sets_the_send_deadline() {
        let mut m = metered();
        read_bytewise(&mut m, &settings_initial_window(0)).expect("settings");
        read_bytewise(&mut m, &request(1)).expect("request");
        assert_eq!(m.deadline(), None, "no answer yet");
        m.on_written(&frame(HEADERS, 0x4, 1, b"hdrs"));
        let deadline = m.deadline().expect("the answer waits for window");
        assert_eq!(deadline, Instant::now() + Duration::from_secs(2));
        read_bytewise(&mut m, &window_update(1, 10)).expect("update");
        assert_eq!(m.deadline(), None, "window granted");
        m.on_written(&frame(DATA, 0, 1, &[0; 10]));
        assert!(m.deadline().is_some(), "spent again");
        m.on_written(&frame(HEADERS, END_STREAM | 0x4, 1, b"trailers"));
        assert_eq!(m.deadline(), None, "the answer is complete");
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_window_and_resets_count() {
        let mut m = metered();
        m.on_read(&request(1)).expect("request");
        m.on_read(&request(3)).expect("request");
        m.on_written(&frame(HEADERS, 0x4, 1, b"h"));
        m.on_written(&frame(HEADERS, 0x4, 3, b"h"));
        m.on_written(&frame(DATA, 0, 1, &[0; 65_535]));
        let deadline = m.deadline().expect("both windows spent");
        m.on_read(&window_update(1, 100)).expect("update");
        assert_eq!(
            m.deadline(),
            Some(deadline),
            "the connection window is still spent"
        );
        m.on_read(&window_update(0, 100)).expect("update");
        assert_eq!(
            m.deadline(),
            Some(deadline),
            "a hundred bytes do not reopen a connection"
        );
        m.on_read(&window_update(0, 65_535)).expect("update");
        assert_eq!(m.deadline(), None, "reopened");
        m.on_written(&frame(DATA, 0, 1, &[0; 100]));
        assert!(m.deadline().is_some(), "stream 1's own window is spent");
        m.on_read(&frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]))
            .expect("reset");
        assert_eq!(m.deadline(), None, "a reset stream waits for nothing");
        // An answer h2 had encoded before the reset came is not followed.
        m.on_written(&frame(HEADERS, 0x4, 1, b"late"));
        m.on_written(&frame(DATA, 0, 1, &[0; 10]));
        assert_eq!(m.deadline(), None);
        // Nor does an idle answer (stream 3, with window) wait on its own.
        let flow = m.flow.as_ref().expect("http/2");
        assert_eq!(flow.answering, 1);
        let starved = flow.streams.values().filter(|s| s.starved_since.is_some());
        assert_eq!(
            flow.starved,
            starved.count(),
            "the count follows the streams"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn granting_a_byte_now_and_then_does_not_restart_the_clock() {
        let mut m = metered();
        m.on_read(&settings_initial_window(0)).expect("settings");
        m.on_read(&request(1)).expect("request");
        m.on_written(&frame(HEADERS, 0x4, 1, b"h"));
        tokio::time::advance(Duration::from_millis(1500)).await;
        m.on_read(&window_update(1, 1)).expect("a byte");
        assert_eq!(m.deadline(), None);
        m.on_written(&frame(DATA, 0, 1, b"x"));
        assert_eq!(
            m.deadline(),
            Some(Instant::now() + Duration::from_millis(500)),
            "1.5 s of the 2 s are spent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn window_granted_before_the_answer_begins_counts() {
        let mut m = metered();
        m.on_read(&settings_initial_window(0)).expect("settings");
        m.on_read(&request(1)).expect("request");
        m.on_read(&window_update(1, 1000)).expect("update");
        m.on_written(&frame(HEADERS, 0x4, 1, b"h"));
        assert_eq!(m.deadline(), None, "the answer has 1000 bytes of window");
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_beyond_the_allowance_close_the_connection() {
        let mut m = metered();
        let ping = frame(PING, 0, 0, &[0; 8]);
        for _ in 0..CONTROL_BURST {
            m.on_read(&ping).expect("within the burst");
        }
        assert_eq!(m.on_read(&ping), Err(Closed::ControlFlood));

        // Time, streams and answers earn more.
        let mut m = metered();
        for _ in 0..CONTROL_BURST {
            m.on_read(&window_update(0, 1)).expect("within the burst");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..CONTROL_PER_SECOND {
            m.on_read(&ping).expect("earned by time");
        }
        m.on_read(&frame(HEADERS, 0x5, 3, b"h")).expect("a request");
        m.on_written(&frame(DATA, 0, 3, b"x"));
        // Trailers on the same stream earn nothing.
        m.on_read(&frame(HEADERS, 0x5, 3, b"t")).expect("trailers");
        for _ in 0..CONTROL_PER_STREAM + CONTROL_PER_FRAME_SENT {
            m.on_read(&ping).expect("earned by work");
        }
        assert_eq!(m.on_read(&ping), Err(Closed::ControlFlood));

        // Padding alone, GOAWAY and unknown types are control frames too.
        for kind in [
            (DATA, PADDED, 5, vec![4, 0, 0, 0, 0]),
            (0x7, 0, 0, vec![0; 8]),
            (0xfa, 0, 0, vec![]),
        ] {
            let mut m = metered();
            let f = frame(kind.0, kind.1, kind.2, &kind.3);
            for _ in 0..CONTROL_BURST {
                m.on_read(&f).expect("within the burst");
            }
            assert_eq!(m.on_read(&f), Err(Closed::ControlFlood), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn http1_is_not_framed() {
        let mut m = Metered::new((), Duration::from_secs(2));
        m.on_read(b"GET /healthz HTTP/1.1\r\n\r\n").expect("http/1");
        assert!(m.flow.is_none());
        m.on_written(&frame(HEADERS, 0x4, 1, b"h"));
        assert_eq!(m.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_is_closed_at_the_send_timeout() {
        // A transport that takes 64 bytes and then nothing more (a full
        // TCP send buffer).
        let (near, _far) = tokio::io::duplex(64);
        let mut m = Metered::new(near, Duration::from_secs(2));
        m.write_all(&[0; 64])
            .await
            .expect("the buffer takes 64 bytes");
        let stalled = tokio::time::timeout(Duration::from_secs(5), m.write_all(&[0; 64])).await;
        let error = stalled.expect("closed before 5 s").expect_err("closed");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(m.closed, Some(Closed::SendTimeout));
    }
}
