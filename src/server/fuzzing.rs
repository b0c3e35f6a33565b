//! A whole connection driven without I/O, for the `connection` fuzz target and
//! tests: bytes go through the same code as bytes read from a socket (request
//! head, upgrade, frames or lines, chat commands, closing), output is captured
//! instead of written, and the loop's end-of-turn work (timers, flush, removal)
//! runs after every chunk. The connection's socket is a real loopback socket
//! only because the entry holds one; nothing is read from or written to it.
//!
//! After every chunk the harness asserts the invariants the server relies on:
//! the partial request head or line, the message being reassembled and the
//! outbox stay within their limits; the outbox total matches the one outbox;
//! and (in debug builds) every phase change follows the table in `conn.rs`.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::conn::{Conn, Kind, COUNTED, IN_CHAT};
use super::timer::TICK_MS;
use super::{Config, Server, KEEP_OUTBOX, SCRATCH};
use crate::chat::ChatConfig;

/// Limits small enough for a fuzzer to reach every one of them.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        handle_signals: false,
        max_header_bytes: 1024,
        max_message: 4096,
        max_chat_message: 1024,
        outbox_soft: 8192,
        outbox_hard: 32 * 1024,
        outbox_total: 64 * 1024,
        ping_interval: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(1),
        chat: ChatConfig {
            max_line: 256,
            rooms_limit: 8,
            who_limit: 8,
            max_rooms: 4,
            max_rooms_total: 16,
            ..ChatConfig::default()
        },
        ..Config::default()
    }
}

/// One server and a spare socket to hang connections on.
pub struct Harness {
    server: Server,
    /// Our end of a loopback pair; each connection gets a duplicate.
    local: TcpStream,
    /// The other end, kept open so the duplicates stay connected.
    _peer: TcpStream,
    now_ms: u64,
}

impl Harness {
    /// A server with [`config`]'s limits.
    pub fn new() -> io::Result<Harness> {
        Harness::with_config(config())
    }

    /// A server with `cfg` (its listener is bound but never polled).
    pub fn with_config(cfg: Config) -> io::Result<Harness> {
        let mut server = Server::bind(cfg)?;
        server.capture = Some(Vec::new());
        let l = TcpListener::bind("127.0.0.1:0")?;
        let local = TcpStream::connect(l.local_addr()?)?;
        let (peer, _) = l.accept()?;
        Ok(Harness {
            server,
            local,
            _peer: peer,
            now_ms: 0,
        })
    }

    /// One connection from accept to removal: on the line listener when
    /// `line`, else on the HTTP/WebSocket port. Each chunk is one read (cut to
    /// the scratch buffer's size), taken `gap_ms` after the previous one; the
    /// connection is removed after the last. Returns everything the server
    /// wrote to it.
    pub fn run<'a>(
        &mut self,
        line: bool,
        chunks: impl IntoIterator<Item = (u16, &'a [u8])>,
    ) -> io::Result<Vec<u8>> {
        let s = &mut self.server;
        let sock = mio::net::TcpStream::from_std(self.local.try_clone()?);
        let ip = self.local.peer_addr()?.ip();
        let kind = if line { Kind::Line } else { Kind::Http };
        self.now_ms += 1000;
        set_clock(s, self.now_ms);
        let mut c = Conn::new(sock, ip, kind, s.ctx.tick);
        c.set(COUNTED);
        let id = s.conns.insert(c);
        s.schedule(id);
        if line {
            s.conns[id].set(IN_CHAT);
            let now = s.ctx.now_ms;
            let (hub, mut out) = s.chat();
            hub.connect(id, None, None, now, &mut out);
        }
        s.turn_end();
        for (gap_ms, bytes) in chunks {
            self.now_ms += u64::from(gap_ms);
            set_clock(s, self.now_ms);
            s.timers();
            let Some(c) = s.conns.get_mut(id) else {
                break;
            };
            if c.is_dead() {
                break;
            }
            let n = bytes.len().min(SCRATCH);
            if n > 0 && !c.has(super::conn::PAUSED) {
                s.scratch[..n].copy_from_slice(&bytes[..n]);
                c.last_rx = s.ctx.tick;
                s.on_bytes(id, n);
            }
            s.turn_end();
            if !s.conns.contains(id) {
                break;
            }
            check(s, id);
        }
        if s.conns.contains(id) {
            s.remove(id);
            s.turn_end();
        }
        assert_eq!(s.ctx.outbox_bytes, 0, "outbox total drifted");
        assert!(s.conns.is_empty());
        Ok(std::mem::take(s.capture.as_mut().expect("capturing")))
    }
}

fn set_clock(s: &mut Server, now_ms: u64) {
    s.ctx.now_ms = now_ms;
    s.ctx.arrived_ms = now_ms;
    s.ctx.tick = (now_ms / TICK_MS) as u32;
}

impl Server {
    /// The end of a loop turn without I/O: flush (into the capture) and
    /// remove, and forget reads the real loop would retry.
    fn turn_end(&mut self) {
        self.finish_turn();
        self.ctx.read_again.clear();
    }
}

/// The per-connection invariants, after a turn.
fn check(s: &Server, id: usize) {
    let c = &s.conns[id];
    let cfg = &s.ctx.cfg;
    // A WebSocket keeps at most one read that came after its outbox filled.
    let head_or_line = match c.is_ws() {
        true => SCRATCH,
        false => cfg.max_header_bytes.max(cfg.chat.max_line + 4),
    };
    assert!(
        c.inbuf.len() <= head_or_line,
        "partial head or line of {} bytes",
        c.inbuf.len()
    );
    // Compressed fragments may hold up to the wire bound of the limit.
    let max = crate::ws::message::wire_limit(cfg.max_message.max(cfg.max_chat_message));
    assert!(
        c.ws.heap_bytes() <= max + crate::ws::frame::MAX_CONTROL_PAYLOAD,
        "reassembly holds {} bytes",
        c.ws.heap_bytes()
    );
    assert_eq!(c.pending(), 0, "a flush into the capture writes everything");
    assert!(
        c.outbox.capacity() <= KEEP_OUTBOX,
        "a drained outbox kept {} bytes",
        c.outbox.capacity()
    );
    assert_eq!(s.ctx.outbox_bytes, c.outbox.capacity(), "outbox total");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{encode_close, encode_frame, OpCode, Role};
    use crate::ws::message::{Limits, Receiver};

    fn masked(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        encode_frame(&mut f, op, true, payload, Some([9, 8, 7, 6]));
        f
    }

    /// Server frames after the 101 head, as owned messages.
    fn frames(out: &mut [u8]) -> Vec<crate::ws::message::OwnedMessage> {
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let mut rx = Receiver::new(Role::Client);
        let limits = Limits {
            max_frame: 1 << 20,
            max_message: 1 << 20,
        };
        let mut rest = &mut out[end..];
        let mut msgs = Vec::new();
        while !rest.is_empty() {
            let (used, m) = rx.feed(rest, &limits).unwrap();
            if let Some(m) = m {
                msgs.push(m.to_owned_message());
            }
            rest = &mut rest[used..];
        }
        msgs
    }

    #[test]
    fn a_chat_session_through_the_harness() {
        use crate::ws::message::OwnedMessage::{Close, Text};
        let mut h = Harness::new().unwrap();
        let up = "GET /ws?nick=ann HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                  Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                  Sec-WebSocket-Version: 13\r\n\r\n";
        let mut close = Vec::new();
        encode_close(&mut close, Some(1000), "", Some([1, 2, 3, 4]));
        let hi = masked(OpCode::Text, b"hi\x1b[2J");
        let chunks: [(u16, &[u8]); 4] = [
            (0, up.as_bytes()),
            (10, &hi[..3]),
            (10, &hi[3..]),
            (10, &close),
        ];
        let mut out = h.run(false, chunks).unwrap();
        assert!(out.starts_with(b"HTTP/1.1 101 "));
        let msgs = frames(&mut out);
        assert_eq!(
            msgs,
            [
                Text("WELCOME ann".into()),
                Text("JOINED lobby ann".into()),
                Text("MSG lobby ann hi\u{FFFD}[2J".into()),
                Close(Some(1000), String::new()),
            ]
        );
        // The hub forgot the connection: the next one may take the nick.
        let mut out = h.run(false, [(0, up.as_bytes())]).unwrap();
        assert_eq!(frames(&mut out)[0], Text("WELCOME ann".into()));
    }

    /// A drained outbox keeps a little capacity for the next line, counted in
    /// the budget; it is given back on time, not at the connection's next
    /// unrelated deadline (here there is none: no idle timeout, no pings for
    /// a line client).
    #[test]
    fn a_drained_outbox_is_released_on_time() {
        let mut cfg = config();
        cfg.idle_timeout = Duration::ZERO;
        let mut h = Harness::with_config(cfg).unwrap();
        let s = &mut h.server;
        let sock = mio::net::TcpStream::from_std(h.local.try_clone().unwrap());
        let ip = h.local.peer_addr().unwrap().ip();
        set_clock(s, 1000);
        let id = s.conns.insert(Conn::new(sock, ip, Kind::Line, s.ctx.tick));
        s.schedule(id);
        s.conns[id].set(IN_CHAT);
        let (hub, mut out) = s.chat();
        hub.connect(id, None, None, 1000, &mut out);
        s.turn_end();
        let kept = s.conns[id].outbox.capacity();
        assert!(kept > 0 && kept <= KEEP_OUTBOX, "kept {kept} bytes");
        assert_eq!(s.ctx.outbox_bytes, kept);
        let release_ms = u64::from(s.ctx.timeouts.release) * TICK_MS;
        set_clock(s, 1000 + release_ms - TICK_MS);
        s.timers();
        assert_eq!(s.conns[id].outbox.capacity(), kept, "not before its time");
        set_clock(s, 1000 + release_ms);
        s.timers();
        assert_eq!(s.conns[id].outbox.capacity(), 0, "released on time");
        assert_eq!(s.ctx.outbox_bytes, 0);
        s.remove(id);
        s.turn_end();
        assert!(s.conns.is_empty());
    }

    #[test]
    fn limits_hold_for_hostile_input() {
        let mut h = Harness::new().unwrap();
        // A request head that never ends, in small pieces.
        let junk = [b'a'; 100];
        let out = h.run(false, (0..50).map(|_| (1, &junk[..]))).unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 431 "),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        // A line that never ends, then one too long, then a good one.
        let long = [b'x'; 200];
        let mut chunks: Vec<(u16, &[u8])> = (0..10).map(|_| (1, &long[..])).collect();
        chunks.push((1, b"\n/ping ok\n"));
        let out = String::from_utf8(h.run(true, chunks).unwrap()).unwrap();
        assert!(out.contains("ERR too-long"), "{out}");
        assert!(out.ends_with("PONG ok\n"), "{out}");
        // A handshake that stalls past its timeout.
        let out = h.run(false, [(0, &b"GET / HT"[..]), (5000, b"")]).unwrap();
        assert!(out.is_empty());
    }
}
