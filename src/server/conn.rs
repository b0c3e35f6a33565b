//! One connection's entry in the slab: its socket, where it is in its life, its
//! frame receiver and its outbox. Kept small: an idle connection holds no heap
//! buffer (reads go through the loop's shared scratch buffer).

use std::net::IpAddr;
use std::time::Duration;

use mio::net::TcpStream;

use super::timer::TICK_MS;
use crate::ws::endpoint::Endpoint;
use crate::ws::frame::Role;

/// What the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Waiting for (or answering) an HTTP request.
    Http,
    /// WebSocket on `/ws`: the chat.
    Chat,
    /// WebSocket on `/echo`.
    Echo,
    /// Plain TCP, one chat command per line.
    Line,
}

/// What a `Flushing` connection does once its outbox is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Then {
    /// Close the socket: the close handshake is complete, or the peer has
    /// already ended its side (RFC 6455 7.1.1: the server closes first).
    Close,
    /// Half-close and discard the peer's input until it goes (`Draining`):
    /// our last bytes answer input the peer may still be sending, and closing
    /// with unread input makes the kernel reset the connection under the answer.
    Drain,
}

/// Where the connection is in its life. The transition table, enforced by
/// [`Conn`]'s transition methods (the only code that changes the phase):
///
/// | from | to | when |
/// |---|---|---|
/// | `Handshake` | `Open` | upgrade ([`Conn::upgraded`]); line clients start `Open` |
/// | `Open` | `Closing` | we sent a close frame ([`Conn::closing`]) |
/// | `Handshake`, `Open`, `Closing` | `Flushing` | an HTTP answer or refusal, our answer to the peer's close, a protocol error, a line client's end ([`Conn::flush_then`]) |
/// | `Flushing { then: Drain }` | `Flushing { then: Close }` | the peer ended its side while we flush ([`Conn::peer_ended`]) |
/// | `Flushing { then: Drain }` | `Draining` | the outbox is written and our side shut down ([`Conn::draining`]) |
/// | any but `Dead` | `Dead` | removed at the end of the turn ([`Conn::die`]) |
///
/// `Flushing { then: Close }` ends in `Dead` once the outbox is written.
/// `Closing`, `Flushing` and `Draining` all end at the close timeout,
/// `Handshake` at the handshake timeout (see [`Conn::deadline`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP request head.
    Handshake,
    /// Exchanging messages.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// Input is discarded; once the outbox is written, `then`.
    Flushing { then: Then },
    /// Our side is shut down; discard input until the peer closes.
    Draining,
    /// Queued for removal at the end of the turn; nothing more happens to it.
    Dead,
}

impl Phase {
    /// The transition table above, as code.
    fn allows(self, to: Phase) -> bool {
        use Phase::*;
        match (self, to) {
            (Dead, _) => false,
            (_, Dead) => true,
            (Handshake, Open) | (Open, Closing) => true,
            (Handshake | Open | Closing, Flushing { .. }) => true,
            (Flushing { then: Then::Drain }, Flushing { then: Then::Close } | Draining) => true,
            _ => false,
        }
    }
}

/// In the dirty list: flush at the end of the turn.
pub(crate) const DIRTY: u8 = 1;
/// The socket accepted all we wrote last time (no `WouldBlock` since the last writable event).
pub(crate) const WRITABLE: u8 = 2;
/// Not read from while its own outbox is over the soft cap.
pub(crate) const PAUSED: u8 = 4;
/// Registered with the chat hub (must be disconnected from it on close).
pub(crate) const IN_CHAT: u8 = 8;
/// A line client whose current line overflowed the limit; skip to the next newline.
pub(crate) const LINE_OVERFLOW: u8 = 16;
/// Counted in the per-IP table under `ip` (must be uncounted on close).
pub(crate) const COUNTED: u8 = 32;
/// Came from a trusted proxy: `ip` is replaced by the `X-Forwarded-For` client.
pub(crate) const PROXIED: u8 = 64;
/// Give the outbox's allocation back as soon as a flush empties it (a fresh
/// upgrade: nothing more may come for a long time).
pub(crate) const RELEASE: u8 = 128;

/// The per-connection time limits in timer ticks, computed once from the
/// configuration; `None` is off.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) handshake: u32,
    pub(crate) close: u32,
    pub(crate) idle: Option<u32>,
    pub(crate) ping: Option<u32>,
    /// How long a drained outbox keeps its capacity for the next message.
    pub(crate) release: u32,
    /// How long a reader may stay behind (losing lines) before it is closed.
    pub(crate) grace: u32,
}

impl Timeouts {
    /// Tick counts for `cfg`'s durations (at least one tick each).
    pub(crate) fn new(cfg: &super::Config) -> Self {
        let ticks = |d: Duration| (d.as_millis() as u64).div_ceil(TICK_MS).max(1) as u32;
        let opt = |d: Duration| (!d.is_zero()).then(|| ticks(d));
        Timeouts {
            handshake: ticks(cfg.handshake_timeout),
            close: ticks(cfg.close_timeout),
            idle: opt(cfg.idle_timeout),
            ping: opt(cfg.ping_interval),
            release: ticks(Duration::from_secs(10)),
            grace: ticks(cfg.outbox_grace),
        }
    }
}

/// What a connection's next deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// The request head did not arrive in time: drop it.
    Handshake,
    /// The close handshake or the final flush did not finish in time: drop it.
    Close,
    /// Nothing read for `--idle-timeout`: close it.
    Idle,
    /// A line client (`nc`) has read nothing back for two thirds of
    /// `--idle-timeout`: tell it how to stay (it gets no pings to answer).
    IdleWarn,
    /// Time to ping (WebSocket only).
    Ping,
    /// The outbox has been empty for a while: give its capacity back.
    Release,
    /// An `/echo` client has not read its output back for `--outbox-grace`
    /// since its outbox passed its cap (or the budget): close it as a slow
    /// consumer, as a chat reader that stays behind is.
    Slow,
}

/// A connection entry in the slab.
pub(crate) struct Conn {
    pub(crate) sock: TcpStream,
    /// The WebSocket endpoint: receiver, close state, negotiated compression.
    pub(crate) ws: Endpoint,
    /// Bytes queued for the socket; `out_pos` of them are already written.
    pub(crate) outbox: Vec<u8>,
    /// Partial HTTP request head or partial line; for an `/echo` client whose
    /// outbox filled, the rest of the read that filled it; empty (no heap) otherwise.
    pub(crate) inbuf: Vec<u8>,
    pub(crate) ip: IpAddr,
    pub(crate) out_pos: u32,
    /// Chat bytes dropped since the outbox last drained (slow-consumer accounting).
    pub(crate) dropped: u32,
    /// Tick of the first dropped line since the outbox last drained (the
    /// reader has been behind since then); for an `/echo` client, of the
    /// first time it was paused for its output; `u32::MAX` while it keeps up.
    pub(crate) over_since: u32,
    /// Tick of the last inbound byte.
    pub(crate) last_rx: u32,
    /// Tick of the last ping we sent; for line clients, which get no pings,
    /// the tick of the last idle warning. At the upgrade it is set up to half
    /// an interval in the past ([`Conn::upgraded`]), before tick 0 (wrapped)
    /// early in the process's life: the ping deadline adds with wrapping.
    pub(crate) last_ping: u32,
    /// Tick the current phase started (accept time for `Handshake`); in
    /// `Open`, the tick the outbox last became empty (see [`Due::Release`]).
    since: u32,
    /// Tick of this connection's live timer-wheel entry.
    pub(crate) timer_at: u32,
    pub(crate) kind: Kind,
    phase: Phase,
    flags: u8,
}

impl Conn {
    /// A freshly accepted connection.
    pub(crate) fn new(sock: TcpStream, ip: IpAddr, kind: Kind, now: u32) -> Self {
        Conn {
            sock,
            ws: Endpoint::new(Role::Server),
            outbox: Vec::new(),
            inbuf: Vec::new(),
            ip,
            out_pos: 0,
            dropped: 0,
            over_since: u32::MAX,
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

    /// Where the connection is in its life.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// True once queued for removal.
    pub(crate) fn is_dead(&self) -> bool {
        self.phase == Phase::Dead
    }

    /// True while it may be read from for messages (`Open` or `Closing`).
    pub(crate) fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Closing)
    }

    /// True from the moment the close began (any phase past `Open`).
    pub(crate) fn is_closing(&self) -> bool {
        !matches!(self.phase, Phase::Handshake | Phase::Open)
    }

    /// Move to `to` if the table allows it; false (and no change) otherwise.
    fn go(&mut self, to: Phase, now: u32) -> bool {
        if !self.phase.allows(to) {
            // Only a dead connection may be asked to move and refuse: it is
            // gone for every purpose but its removal.
            debug_assert!(
                self.phase == Phase::Dead,
                "illegal transition {:?} -> {to:?}",
                self.phase
            );
            return false;
        }
        self.phase = to;
        self.since = now;
        true
    }

    /// `Handshake → Open` as `kind`: the upgrade was accepted. The first ping
    /// comes `ping_early` ticks before a full interval, so that connections
    /// accepted in one tick are not all pinged in one tick (a burst of pings,
    /// then of pongs, in one turn) for the rest of their lives.
    pub(crate) fn upgraded(&mut self, kind: Kind, now: u32, ping_early: u32) {
        if self.go(Phase::Open, now) {
            self.kind = kind;
            self.last_rx = now;
            self.last_ping = now.wrapping_sub(ping_early);
        }
    }

    /// `Open → Closing`: our close frame is queued; the receiver now expects
    /// only the peer's answer.
    pub(crate) fn closing(&mut self, now: u32) {
        if self.go(Phase::Closing, now) {
            self.ws.set_closing();
        }
    }

    /// `→ Flushing { then }`: write what is queued, then close or drain.
    pub(crate) fn flush_then(&mut self, then: Then, now: u32) -> bool {
        self.go(Phase::Flushing { then }, now)
    }

    /// The peer ended its side (read returned 0). True when there is still
    /// output to write (now `Flushing { then: Close }`); false when the
    /// connection should simply go.
    pub(crate) fn peer_ended(&mut self, now: u32) -> bool {
        if self.pending() == 0 {
            return false;
        }
        match self.phase {
            Phase::Flushing { then: Then::Close } => true,
            Phase::Draining | Phase::Dead => false,
            _ => self.go(Phase::Flushing { then: Then::Close }, now),
        }
    }

    /// `Flushing { then: Drain } → Draining`, once our side is shut down.
    pub(crate) fn draining(&mut self, now: u32) {
        self.go(Phase::Draining, now);
    }

    /// `→ Dead`. True the first time (the caller queues it for removal).
    pub(crate) fn die(&mut self) -> bool {
        let since = self.since;
        self.go(Phase::Dead, since)
    }

    /// The outbox just became empty: in `Open`, the release clock starts.
    /// True when the connection must be filed again: it kept capacity whose
    /// release falls before its filed timer (else the capacity would stay
    /// counted in the budget until some later deadline, a ping 30 s away).
    /// A later release than the filed timer needs nothing: that timer fires,
    /// finds nothing due and files the connection under the new deadline.
    pub(crate) fn outbox_emptied(&mut self, now: u32, t: &Timeouts) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        self.since = now;
        self.outbox.capacity() > 0 && now.saturating_add(t.release) < self.timer_at
    }

    /// The next deadline and what it is for; `None` when nothing is due ever.
    /// Both filing the timer and acting on it use this one function, so they
    /// cannot disagree. When deadlines tie, the first listed wins (idle before
    /// ping before a slow echo before release).
    pub(crate) fn deadline(&self, t: &Timeouts) -> Option<(u32, Due)> {
        let after = |from: u32, ticks: u32| from.saturating_add(ticks);
        match self.phase {
            Phase::Handshake => Some((after(self.since, t.handshake), Due::Handshake)),
            Phase::Closing | Phase::Flushing { .. } | Phase::Draining => {
                Some((after(self.since, t.close), Due::Close))
            }
            Phase::Dead => None,
            Phase::Open => {
                let mut next: Option<(u32, Due)> = None;
                let mut consider = |at: u32, due: Due| {
                    if next.map_or(true, |(n, _)| at < n) {
                        next = Some((at, due));
                    }
                };
                if let Some(idle) = t.idle {
                    consider(after(self.last_rx, idle), Due::Idle);
                    // Once per quiet spell: not again until input moves `last_rx`.
                    let warn = after(self.last_rx, idle / 3 * 2);
                    if self.kind == Kind::Line && idle >= 3 && self.last_ping < warn {
                        consider(warn, Due::IdleWarn);
                    }
                }
                if let (true, Some(ping)) = (self.is_ws(), t.ping) {
                    // Wrapping: see `last_ping`. Not past `now` + interval
                    // unless a caller spread by more than an interval.
                    consider(self.last_ping.wrapping_add(ping), Due::Ping);
                }
                if self.kind == Kind::Echo && self.over_since != u32::MAX {
                    consider(after(self.over_since, t.grace), Due::Slow);
                }
                if self.outbox.capacity() > 0 && self.pending() == 0 {
                    consider(after(self.since, t.release), Due::Release);
                }
                next
            }
        }
    }

    /// Append to the outbox through `f`, adding the growth of its allocation
    /// to `total` (the process's outbox budget counts capacity, not length:
    /// a doubling `Vec` may hold twice what it queues).
    pub(crate) fn append<R>(&mut self, total: &mut usize, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let before = self.outbox.capacity();
        let r = f(&mut self.outbox);
        *total = total.saturating_add(self.outbox.capacity().saturating_sub(before));
        r
    }

    /// Give the outbox's allocation back, taking it off `total`. Only for an
    /// outbox with nothing left to write.
    pub(crate) fn release_outbox(&mut self, total: &mut usize) {
        *total = total.saturating_sub(self.outbox.capacity());
        self.outbox = Vec::new();
        self.out_pos = 0;
    }

    /// Everything queued was written: reuse a small buffer, free a large one.
    pub(crate) fn outbox_written(&mut self, total: &mut usize, keep: usize) {
        if self.outbox.capacity() > keep {
            self.release_outbox(total);
        } else {
            self.outbox.clear();
            self.out_pos = 0;
        }
        self.dropped = 0;
        self.over_since = u32::MAX;
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> usize {
        self.outbox.len() - self.out_pos as usize
    }

    /// True for a WebSocket connection past its handshake.
    pub(crate) fn is_ws(&self) -> bool {
        matches!(self.kind, Kind::Chat | Kind::Echo)
    }

    /// Set a flag.
    pub(crate) fn set(&mut self, f: u8) {
        self.flags |= f;
    }

    /// Clear a flag.
    pub(crate) fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }

    /// Test a flag.
    pub(crate) fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(kind: Kind) -> Conn {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let ip = s.local_addr().unwrap().ip();
        Conn::new(TcpStream::from_std(s), ip, kind, 0)
    }

    fn limits() -> Timeouts {
        Timeouts {
            handshake: 100,
            close: 50,
            idle: Some(900),
            ping: Some(300),
            release: 100,
            grace: 100,
        }
    }

    #[test]
    fn the_table_allows_only_its_rows() {
        use Phase::*;
        let drain = Flushing { then: Then::Drain };
        let close = Flushing { then: Then::Close };
        let all = [Handshake, Open, Closing, drain, close, Draining, Dead];
        let legal = [
            (Handshake, Open),
            (Open, Closing),
            (Handshake, drain),
            (Handshake, close),
            (Open, drain),
            (Open, close),
            (Closing, drain),
            (Closing, close),
            (drain, close),
            (drain, Draining),
        ];
        for from in all {
            for to in all {
                let want = legal.contains(&(from, to)) || (to == Dead && from != Dead);
                assert_eq!(from.allows(to), want, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn a_life_from_upgrade_to_removal() {
        let t = limits();
        let mut c = conn(Kind::Http);
        assert_eq!(c.deadline(&t), Some((100, Due::Handshake)));
        c.upgraded(Kind::Chat, 10, 0);
        assert_eq!((c.phase(), c.kind), (Phase::Open, Kind::Chat));
        // Ping (10 + 300) comes before idle (10 + 900).
        assert_eq!(c.deadline(&t), Some((310, Due::Ping)));
        c.last_ping = 620;
        c.last_rx = 20;
        // Idle wins a tie with ping.
        assert_eq!(c.deadline(&t), Some((920, Due::Idle)));
        c.closing(400);
        assert_eq!(c.deadline(&t), Some((450, Due::Close)));
        assert!(c.flush_then(Then::Close, 420));
        assert_eq!(c.deadline(&t), Some((470, Due::Close)));
        assert!(c.die());
        assert!(!c.die(), "dies once");
        assert_eq!(c.deadline(&t), None);
    }

    #[test]
    fn the_first_ping_comes_early_by_the_spread_then_every_interval() {
        let t = limits();
        let mut c = conn(Kind::Http);
        c.upgraded(Kind::Chat, 10, 120);
        // 10 + 300 - 120, also when the spread reaches back before tick 0.
        assert_eq!(c.deadline(&t), Some((190, Due::Ping)));
        c.last_ping = 190; // pinged
        assert_eq!(c.deadline(&t), Some((490, Due::Ping)));
        let mut d = conn(Kind::Http);
        d.upgraded(Kind::Echo, 2, 150);
        assert_eq!(d.deadline(&t), Some((152, Due::Ping)));
    }

    #[test]
    fn a_drained_outbox_is_released_after_a_while() {
        let t = limits();
        let mut c = conn(Kind::Line);
        c.timer_at = 600;
        assert!(!c.outbox_emptied(30, &t), "no capacity: nothing to release");
        c.outbox.reserve(64);
        assert!(
            c.outbox_emptied(40, &t),
            "release (140) before the timer (600)"
        );
        assert_eq!(c.deadline(&t), Some((140, Due::Release)));
        c.timer_at = 140;
        assert!(!c.outbox_emptied(50, &t), "the filed timer comes first");
        assert_eq!(c.deadline(&t), Some((150, Due::Release)));
        c.outbox.push(1);
        assert_eq!(
            c.deadline(&t),
            Some((600, Due::IdleWarn)),
            "not while it holds bytes"
        );
    }

    #[test]
    fn an_echo_client_behind_is_due_for_closing_after_the_grace() {
        let t = limits();
        let mut c = conn(Kind::Http);
        c.upgraded(Kind::Echo, 0, 0);
        assert_eq!(c.deadline(&t), Some((300, Due::Ping)));
        c.over_since = 50;
        assert_eq!(c.deadline(&t), Some((150, Due::Slow)));
        c.outbox_written(&mut 0, 64);
        assert_eq!(
            c.deadline(&t),
            Some((300, Due::Ping)),
            "drained: it keeps up"
        );
        // A chat reader behind is judged when lines are dropped for it.
        let mut chat = conn(Kind::Http);
        chat.upgraded(Kind::Chat, 0, 0);
        chat.over_since = 50;
        assert_eq!(chat.deadline(&t), Some((300, Due::Ping)));
    }

    #[test]
    fn a_quiet_line_client_is_warned_once_before_the_idle_close() {
        let t = limits();
        let mut c = conn(Kind::Line);
        // Two thirds of the 900-tick idle timeout.
        assert_eq!(c.deadline(&t), Some((600, Due::IdleWarn)));
        c.last_ping = 600; // warned
        assert_eq!(c.deadline(&t), Some((900, Due::Idle)));
        // Input starts a new quiet spell, with a new warning.
        c.last_rx = 700;
        assert_eq!(c.deadline(&t), Some((1300, Due::IdleWarn)));
        // WebSocket clients answer pings instead: no warning.
        let mut w = conn(Kind::Http);
        w.upgraded(Kind::Chat, 0, 0);
        w.last_ping = 900;
        assert_eq!(w.deadline(&t), Some((900, Due::Idle)));
    }

    #[test]
    fn a_peer_that_ends_while_we_flush_is_closed_after_the_flush() {
        let mut c = conn(Kind::Line);
        assert!(!c.peer_ended(5), "nothing queued: just go");
        c.outbox.push(b'x');
        assert!(c.flush_then(Then::Drain, 5));
        assert!(c.peer_ended(6));
        assert_eq!(c.phase(), Phase::Flushing { then: Then::Close });
        assert!(c.peer_ended(7));
        c.outbox.clear();
        assert!(!c.peer_ended(8));
    }

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
        let ws = std::mem::size_of::<Endpoint>();
        println!("slab entry {entry} B, Conn {conn} B, Endpoint {ws} B");
        assert!(entry <= 176, "slab entry grew to {entry} bytes");
    }
}
