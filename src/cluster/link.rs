//! One Redis connection as the node sees it, without a socket: its state,
//! its reconnect backoff and heartbeat times, the bytes queued toward Redis
//! and the bytes received and not yet parsed. The node has two (commands
//! and publishing; subscriptions), the same type for both.
//!
//! The socket lives in the server's glue, which writes [`Link::transmit`]
//! and reports it with [`Link::advance`], and hands over what it reads with
//! [`Link::receive`]. Which reply belongs to which request is the node's
//! business (replies come back in request order).
//!
//! Invariants: the outgoing buffer never holds more than `max_out` bytes
//! (a command that would pass it is refused, nothing is queued); the
//! incoming buffer never holds more than the largest value plus a little
//! framing ([`LinkError::TooLarge`] otherwise); closing drops both.

use std::fmt;
use std::time::{Duration, Instant};

use super::resp::{self, encode_command, Limits, RespError, Value};

/// Input capacity kept after a drain; larger buffers are given back.
const KEEP_IN: usize = 64 * 1024;

/// Where a link is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No connection; a retry may be scheduled.
    Down,
    /// Connecting, or connected and still in its handshake.
    Connecting,
    /// Usable.
    Ready,
}

/// Why a link's input was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// Redis sent bytes that are not RESP2 (or over the limits).
    Protocol(RespError),
    /// More unparsed input than any value may take.
    TooLarge(usize),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkError::Protocol(e) => write!(f, "protocol error: {e}"),
            LinkError::TooLarge(n) => write!(f, "{n} bytes of input without a complete reply"),
        }
    }
}

impl std::error::Error for LinkError {}

/// One connection's state and buffers.
#[derive(Debug)]
pub struct Link {
    /// Where the link is.
    pub state: LinkState,
    /// When to connect again (while down).
    pub retry: Option<Instant>,
    /// The next reconnect delay (doubled per failure, reset when ready).
    pub backoff: Duration,
    /// When the link last sent a heartbeat (or was opened).
    pub beat: Instant,
    /// When an outstanding heartbeat `PING` was sent, if it is the one
    /// measured (the subscriber link; the command link measures its oldest
    /// request instead).
    pub ping: Option<Instant>,
    open: bool,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    in_pos: usize,
    max_out: usize,
    limits: Limits,
}

impl Link {
    /// A closed link that connects at `now`.
    pub fn new(max_out: usize, limits: Limits, backoff: Duration, now: Instant) -> Link {
        Link {
            state: LinkState::Down,
            retry: Some(now),
            backoff,
            beat: now,
            ping: None,
            open: false,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            in_pos: 0,
            max_out,
            limits,
        }
    }

    /// True while a connection exists (connecting or connected).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// A connection is being made: empty buffers, `Connecting`.
    pub fn open(&mut self, now: Instant) {
        self.close();
        self.open = true;
        self.state = LinkState::Connecting;
        self.retry = None;
        self.beat = now;
    }

    /// The connection is gone: `Down`, every buffered byte dropped.
    pub fn close(&mut self) {
        self.open = false;
        self.state = LinkState::Down;
        self.ping = None;
        self.out = Vec::new();
        self.out_pos = 0;
        self.inbuf = Vec::new();
        self.in_pos = 0;
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queue one command; false (nothing queued) when the link is closed or
    /// the outgoing buffer would pass its bound.
    pub fn queue(&mut self, args: &[&[u8]]) -> bool {
        if !self.open {
            return false;
        }
        let size: usize = 16 + args.iter().map(|a| a.len() + 16).sum::<usize>();
        if self.queued() + size > self.max_out {
            return false;
        }
        encode_command(&mut self.out, args);
        true
    }

    /// Queue bytes already encoded as commands, with the same bound.
    pub fn queue_raw(&mut self, bytes: &[u8]) -> bool {
        if !self.open || self.queued() + bytes.len() > self.max_out {
            return false;
        }
        self.out.extend_from_slice(bytes);
        true
    }

    /// The bytes to write next.
    pub fn transmit(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Link::transmit`] were written.
    pub fn advance(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out_pos = 0;
            if self.out.capacity() > self.max_out.min(1 << 20) {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        } else if self.out_pos > self.out.len() / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Bytes read from the connection.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        let held = self.inbuf.len() - self.in_pos + bytes.len();
        // Bounded: the largest value plus a little framing.
        if held > self.limits.max_bulk + 64 * 1024 {
            return Err(LinkError::TooLarge(held));
        }
        if self.in_pos > 0 && self.in_pos >= self.inbuf.len() / 2 {
            self.inbuf.drain(..self.in_pos);
            self.in_pos = 0;
        }
        self.inbuf.extend_from_slice(bytes);
        Ok(())
    }

    /// The next complete reply, if one has arrived.
    pub fn next_value(&mut self) -> Result<Option<Value>, LinkError> {
        match resp::parse(&self.inbuf[self.in_pos..], &self.limits) {
            Ok(Some((v, used))) => {
                self.in_pos += used;
                if self.in_pos == self.inbuf.len() {
                    self.in_pos = 0;
                    if self.inbuf.capacity() > KEEP_IN {
                        self.inbuf = Vec::new();
                    } else {
                        self.inbuf.clear();
                    }
                }
                Ok(Some(v))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(LinkError::Protocol(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        Link::new(
            64,
            Limits::default(),
            Duration::from_millis(100),
            Instant::now(),
        )
    }

    #[test]
    fn output_is_bounded_and_written_in_pieces() {
        let mut l = link();
        assert!(!l.queue(&[b"PING"]), "closed: nothing queued");
        l.open(Instant::now());
        assert_eq!(l.state, LinkState::Connecting);
        assert!(l.queue(&[b"PING"]));
        assert_eq!(l.transmit(), b"*1\r\n$4\r\nPING\r\n");
        assert!(!l.queue(&[&[b'x'; 40][..]]), "would pass 64 bytes");
        l.advance(4);
        assert_eq!(l.transmit(), b"$4\r\nPING\r\n");
        l.advance(100);
        assert_eq!(l.queued(), 0);
        l.close();
        assert_eq!(l.state, LinkState::Down);
        assert!(!l.queue_raw(b"x"));
    }

    #[test]
    fn input_arrives_in_any_pieces_and_is_bounded() {
        let mut l = link();
        l.open(Instant::now());
        for b in b"+PONG\r\n:4" {
            l.receive(&[*b]).unwrap();
        }
        assert_eq!(l.next_value(), Ok(Some(Value::Simple(b"PONG".to_vec()))));
        assert_eq!(l.next_value(), Ok(None), "incomplete is normal");
        l.receive(b"2\r\n").unwrap();
        assert_eq!(l.next_value(), Ok(Some(Value::Integer(42))));
        l.receive(b"?").unwrap();
        assert!(matches!(l.next_value(), Err(LinkError::Protocol(_))));
        let big = vec![b'$'; Limits::default().max_bulk + 70_000];
        assert!(matches!(l.receive(&big), Err(LinkError::TooLarge(_))));
    }
}
