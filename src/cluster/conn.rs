//! One non-blocking connection to Redis, registered in the server's `mio::Poll`.
//!
//! It owns only bytes: an outgoing buffer (bounded; commands are appended as
//! they come and written once per loop turn) and an incoming buffer parsed
//! with [`super::resp::parse`]. Which reply belongs to which request is the
//! caller's business (replies come back in request order).

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::resp::{self, encode_command, Limits, RespError, Value};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Input capacity kept after a drain; larger buffers are given back.
const KEEP_IN: usize = 64 * 1024;

/// Why a connection stopped.
#[derive(Debug)]
pub enum ConnError {
    /// A socket error, or the server closed the connection.
    Io(io::Error),
    /// Redis sent bytes that are not RESP2 (or over the limits).
    Protocol(RespError),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "{e}"),
            ConnError::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// A connection attempt or an established connection.
#[derive(Debug)]
pub struct RedisConn {
    token: Token,
    sock: Option<TcpStream>,
    /// The TCP connect completed.
    established: bool,
    writable: bool,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    in_pos: usize,
    max_out: usize,
    limits: Limits,
}

impl RedisConn {
    /// A closed connection that will use `token` in the poll.
    pub fn new(token: Token, max_out: usize, limits: Limits) -> Self {
        RedisConn {
            token,
            sock: None,
            established: false,
            writable: false,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            in_pos: 0,
            max_out,
            limits,
        }
    }

    /// True while a socket exists (connecting or connected).
    pub fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    /// True once the TCP handshake completed.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Start a non-blocking connect; completion is reported by a writable event.
    pub fn connect(&mut self, addr: SocketAddr, registry: &Registry) -> io::Result<()> {
        self.close(registry);
        let mut sock = TcpStream::connect(addr)?;
        registry.register(
            &mut sock,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.sock = Some(sock);
        Ok(())
    }

    /// Drop the socket and every buffered byte.
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut s) = self.sock.take() {
            let _ = registry.deregister(&mut s);
        }
        self.established = false;
        self.writable = false;
        self.out = Vec::new();
        self.out_pos = 0;
        self.inbuf = Vec::new();
        self.in_pos = 0;
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queue one command; false (nothing queued) when the socket is closed or
    /// the outgoing buffer would pass its bound.
    pub fn queue(&mut self, args: &[&[u8]]) -> bool {
        if self.sock.is_none() {
            return false;
        }
        let size: usize = 16 + args.iter().map(|a| a.len() + 16).sum::<usize>();
        if self.queued() + size > self.max_out {
            return false;
        }
        encode_command(&mut self.out, args);
        true
    }

    /// Queue bytes already encoded as commands (a resend), with the same bound.
    pub fn queue_raw(&mut self, bytes: &[u8]) -> bool {
        if self.sock.is_none() || self.queued() + bytes.len() > self.max_out {
            return false;
        }
        self.out.extend_from_slice(bytes);
        true
    }

    /// A writable event: the connect may have completed. Returns true when
    /// it just did.
    pub fn on_writable(&mut self) -> Result<bool, ConnError> {
        let Some(sock) = self.sock.as_ref() else {
            return Ok(false);
        };
        self.writable = true;
        if self.established {
            return Ok(false);
        }
        if let Some(e) = sock.take_error().map_err(ConnError::Io)? {
            return Err(ConnError::Io(e));
        }
        match sock.peer_addr() {
            Ok(_) => {
                self.established = true;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                self.writable = false;
                Ok(false)
            }
            Err(e) => Err(ConnError::Io(e)),
        }
    }

    /// Write queued bytes until done or `WouldBlock`.
    pub fn flush(&mut self) -> Result<(), ConnError> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        while self.established && self.writable && self.out_pos < self.out.len() {
            match sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(ConnError::Io(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
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
        Ok(())
    }

    /// Read what has arrived (until `WouldBlock` or `budget` bytes). True
    /// when the budget ran out: more may be waiting, and since readiness is
    /// edge-triggered no new event will say so; call again next turn.
    pub fn read(&mut self, budget: usize) -> Result<bool, ConnError> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        let mut total = 0;
        // Bounded: the largest value plus a little framing.
        let cap = self.limits.max_bulk + 64 * 1024;
        while total < budget {
            if self.inbuf.len() - self.in_pos > cap {
                return Err(ConnError::Protocol(RespError::BulkTooLong(
                    (self.inbuf.len() - self.in_pos) as u64,
                )));
            }
            let len = self.inbuf.len();
            self.inbuf.resize(len + READ_CHUNK, 0);
            match sock.read(&mut self.inbuf[len..]) {
                Ok(0) => {
                    self.inbuf.truncate(len);
                    return Err(ConnError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by Redis",
                    )));
                }
                Ok(n) => {
                    self.inbuf.truncate(len + n);
                    total += n;
                }
                Err(e) => {
                    self.inbuf.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(false),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(ConnError::Io(e)),
                    }
                }
            }
        }
        Ok(true)
    }

    /// The next complete reply, if one has arrived.
    pub fn next_value(&mut self) -> Result<Option<Value>, ConnError> {
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
            Ok(None) => {
                if self.in_pos > 0 {
                    self.inbuf.drain(..self.in_pos);
                    self.in_pos = 0;
                }
                Ok(None)
            }
            Err(e) => Err(ConnError::Protocol(e)),
        }
    }
}
