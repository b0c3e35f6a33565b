//! One connection's entry in the slab: its socket, where it is in its life, its
//! frame receiver and its outbox. Kept small: an idle connection holds no heap
//! buffer (reads go through the loop's shared scratch buffer).

use std::net::IpAddr;

use mio::net::TcpStream;

use crate::ws::frame::Role;
use crate::ws::message::Receiver;

/// What the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Waiting for (or answering) an HTTP request.
    Http,
    /// WebSocket on `/ws`: the chat.
    Chat,
    /// WebSocket on `/echo`.
    Echo,
    /// Plain TCP, one chat command per line.
    Line,
}

/// Where the connection is in its life. Transitions:
/// `Handshake → Open` (upgrade or line accept), `Handshake → Flushing` (HTTP answer
/// or refused upgrade), `Open → Closing` (we sent a close frame), `Open → Flushing`
/// (we answered the peer's close, or a line client quit), `Closing → Flushing`
/// (the peer answered, or its input broke the protocol). `Flushing` ends with the
/// socket closed once the outbox is written (the server closes first after a
/// close handshake, RFC 6455 7.1.1), or, when the connection is marked `DRAIN`,
/// in `Draining`: our side shut down, the peer's input read and discarded until
/// it goes. `Closing`, `Flushing` and `Draining` all end at the close timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Handshake,
    /// Exchanging messages.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// Input is discarded; shut down our side once the outbox is written.
    Flushing,
    /// Our side is shut down; discard input until the peer closes.
    Draining,
}

/// In the dirty list: flush at the end of the turn.
pub const DIRTY: u16 = 1;
/// The socket accepted all we wrote last time (no `WouldBlock` since the last writable event).
pub const WRITABLE: u16 = 2;
/// Not read from while its own outbox is over the soft cap.
pub const PAUSED: u16 = 4;
/// Queued for removal at the end of the turn.
pub const DEAD: u16 = 8;
/// Registered with the chat hub (must be disconnected from it on close).
pub const IN_CHAT: u16 = 16;
/// A line client whose current line overflowed the limit; skip to the next newline.
pub const LINE_OVERFLOW: u16 = 32;
/// Counted in the per-IP table under `ip` (must be uncounted on close).
pub const COUNTED: u16 = 64;
/// Came from a trusted proxy: `ip` is replaced by the `X-Forwarded-For` client.
pub const PROXIED: u16 = 128;
/// Our last bytes answer bad input: after the flush, half-close and discard the
/// peer's input until it goes (`Phase::Draining`), since closing with unread
/// input makes the kernel reset the connection and can destroy the answer.
pub const DRAIN: u16 = 256;

/// A connection entry in the slab.
pub struct Conn {
    pub sock: TcpStream,
    pub rx: Receiver,
    /// Bytes queued for the socket; `out_pos` of them are already written.
    pub outbox: Vec<u8>,
    /// Partial HTTP request head or partial line; empty (no heap) otherwise.
    pub inbuf: Vec<u8>,
    pub ip: IpAddr,
    pub out_pos: u32,
    /// Chat bytes dropped since the outbox last drained (slow-consumer accounting).
    pub dropped: u32,
    /// Tick of the last inbound byte.
    pub last_rx: u32,
    /// Tick of the last ping we sent.
    pub last_ping: u32,
    /// Tick the current phase started (accept time for `Handshake`).
    pub since: u32,
    /// Tick of this connection's live timer-wheel entry.
    pub timer_at: u32,
    pub kind: Kind,
    pub phase: Phase,
    pub flags: u16,
}

impl Conn {
    /// A freshly accepted connection.
    pub fn new(sock: TcpStream, ip: IpAddr, kind: Kind, now: u32) -> Self {
        Conn {
            sock,
            rx: Receiver::new(Role::Server),
            outbox: Vec::new(),
            inbuf: Vec::new(),
            ip,
            out_pos: 0,
            dropped: 0,
            last_rx: now,
            last_ping: now,
            since: now,
            timer_at: u32::MAX,
            kind,
            phase: if kind == Kind::Line {
                Phase::Open
            } else {
                Phase::Handshake
            },
            flags: WRITABLE,
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.outbox.len() - self.out_pos as usize
    }

    /// True for a WebSocket connection past its handshake.
    pub fn is_ws(&self) -> bool {
        matches!(self.kind, Kind::Chat | Kind::Echo)
    }

    /// Set a flag.
    pub fn set(&mut self, f: u16) {
        self.flags |= f;
    }

    /// Clear a flag.
    pub fn clear(&mut self, f: u16) {
        self.flags &= !f;
    }

    /// Test a flag.
    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection pays for this entry (plus its socket in the kernel);
    /// density depends on keeping it small. Raise the bound only on purpose.
    #[test]
    fn connection_entry_stays_small() {
        // The shape of slab's private entry type.
        #[allow(dead_code)]
        enum SlabEntry {
            Vacant(usize),
            Occupied(Conn),
        }
        let entry = std::mem::size_of::<SlabEntry>();
        let conn = std::mem::size_of::<Conn>();
        let rx = std::mem::size_of::<Receiver>();
        println!("slab entry {entry} B, Conn {conn} B, Receiver {rx} B");
        assert!(entry <= 176, "slab entry grew to {entry} bytes");
    }
}
