//! Per-connection deadlines: handshake, idle, ping and close timeouts, filed
//! in the timer wheel and acted on when they fire. Both sides ask
//! [`Conn::deadline`](super::conn::Conn::deadline) what is due and when; a
//! signed chat connection is also filed under its token's expiry
//! (`auth_glue.rs`).

use std::time::Duration;

use log::debug;

use super::conn::{Due, Kind};
use super::out::{begin_close, kill, mark_dirty};
use super::timer::{Entry, TICK_MS};
use super::Server;
use crate::chat::line::Line;
use crate::ws::frame::{encode_frame, OpCode};

impl Server {
    /// File connection `id` under its next deadline (if it changed).
    pub(super) fn schedule(&mut self, id: usize) {
        let token_at = self.token_tick(id);
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let conn_at = c.deadline(&self.ctx.timeouts).map(|(at, _)| at);
        let at = match (conn_at, token_at) {
            (Some(a), Some(t)) if !c.is_closing() => a.min(t),
            (Some(a), _) => a,
            (None, _) => {
                c.timer_at = u32::MAX;
                return;
            }
        };
        if c.timer_at != at {
            c.timer_at = at;
            self.wheel.insert(
                at as u64,
                Entry {
                    key: id as u32,
                    tick: at,
                },
            );
        }
    }

    /// Act on every connection whose deadline has come, and file it again.
    pub(super) fn timers(&mut self) {
        let now = self.ctx.tick;
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.expire(now as u64, &mut fired);
        for e in &fired {
            let id = e.key as usize;
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.timer_at != e.tick || c.is_dead() {
                continue;
            }
            c.timer_at = u32::MAX;
            // An entry clamped into the wheel's span fires early: nothing is
            // due yet and it is simply filed again.
            self.expire_token(id);
            self.on_timer(id, now);
            self.schedule(id);
        }
        fired.clear();
        self.fired = fired;
    }

    /// Everything due for `id` at `now`, earliest first.
    fn on_timer(&mut self, id: usize, now: u32) {
        // Bounded: every action moves its own deadline past `now` or ends the
        // phase, and a connection has at most four kinds of deadline in `Open`
        // (idle, ping or idle warning, a slow echo, release).
        for _ in 0..4 {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            let Some((at, due)) = c.deadline(&self.ctx.timeouts) else {
                return;
            };
            if at > now {
                return;
            }
            match due {
                Due::Handshake => {
                    debug!(conn = id, peer:% = c.ip; "handshake timeout");
                    self.ctx.metrics.timeout("handshake");
                    kill(&mut self.ctx, id, c);
                }
                Due::Close => {
                    debug!(conn = id, peer:% = c.ip; "close timeout");
                    self.ctx.metrics.timeout("close");
                    kill(&mut self.ctx, id, c);
                }
                Due::Idle => {
                    debug!(conn = id, peer:% = c.ip; "idle timeout");
                    self.ctx.metrics.timeout("idle");
                    if c.kind == Kind::Line {
                        self.reply_line(id, Line::Sys("idle timeout"));
                    }
                    let c = &mut self.conns[id];
                    begin_close(&mut self.ctx, id, c, 1000, "idle timeout");
                }
                Due::IdleWarn => {
                    c.last_ping = now;
                    let idle = self.ctx.timeouts.idle.unwrap_or(0);
                    let left = c.last_rx.saturating_add(idle).saturating_sub(now);
                    let secs = (u64::from(left) * TICK_MS).div_ceil(1000);
                    let total = (u64::from(idle) * TICK_MS).div_ceil(1000);
                    let text = format!(
                        "idle: this connection closes in {secs} s (after {total} s without \
                         input); send /ping or any line to stay"
                    );
                    self.reply_line(id, Line::Sys(&text));
                }
                Due::Ping => {
                    c.last_ping = now;
                    let idle = c.pending() == 0;
                    c.append(&mut self.ctx.outbox_bytes, |o| {
                        encode_frame(o, OpCode::Ping, true, b"", None)
                    });
                    mark_dirty(&mut self.ctx.dirty, id, c);
                    if idle {
                        self.flush_and_release(id);
                    }
                }
                Due::Release => c.release_outbox(&mut self.ctx.outbox_bytes),
                Due::Slow => {
                    debug!(conn = id, peer:% = c.ip, queued = c.pending(); "slow echo client closed");
                    self.ctx.metrics.slow_disconnects += 1;
                    kill(&mut self.ctx, id, c);
                }
            }
        }
    }
}

/// How many ticks before a full ping interval (`ping`, in ticks) a new
/// connection's first ping comes: the first ping falls uniformly in
/// `[interval/2, interval]` (the one jitter formula, [`crate::rng::jitter`]),
/// so connections accepted in one tick are pinged spread over half an
/// interval, not all in one turn 30 s later.
pub(super) fn first_ping_early(ping: Option<u32>) -> u32 {
    let Some(ping) = ping else { return 0 };
    let d = Duration::from_millis(u64::from(ping) * TICK_MS);
    let first = crate::rng::with_thread_rng(|r| crate::rng::jitter(d, r.next_u64()));
    let early = (d - first).as_millis() as u64 / TICK_MS;
    early.min(u64::from(ping / 2)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pings_spread_over_half_an_interval() {
        assert_eq!(first_ping_early(None), 0);
        let ping = 300;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2_000 {
            let e = first_ping_early(Some(ping));
            assert!(e <= ping / 2, "{e}");
            seen.insert(e);
        }
        // 151 possible values, 2,000 draws: a stuck or narrow generator shows.
        assert!(seen.len() > 120, "only {} distinct offsets", seen.len());
        assert!(seen.first() == Some(&0) || seen.first() <= Some(&3));
        assert!(seen.last() >= Some(&147));
    }
}
