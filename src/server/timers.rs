//! Per-connection deadlines: handshake, idle, ping and close timeouts, filed
//! in the timer wheel and acted on when they fire.

use std::time::Duration;

use log::debug;

use super::conn::{Kind, Phase, DEAD};
use super::out::{begin_close, kill, mark_dirty, Out};
use super::timer::{Entry, TICK_MS};
use super::Server;
use crate::chat::Sink;
use crate::ws::frame::{encode_frame, OpCode};

impl Server {
    pub(super) fn schedule(&mut self, id: usize) {
        let cfg = &self.ctx.cfg;
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let ticks = |d: Duration| (d.as_millis() as u64).div_ceil(TICK_MS).max(1) as u32;
        let at = match c.phase {
            Phase::Handshake => c.since.saturating_add(ticks(cfg.handshake_timeout)),
            Phase::Closing | Phase::Flushing | Phase::Draining => {
                c.since.saturating_add(ticks(cfg.close_timeout))
            }
            Phase::Open => {
                let mut at = u32::MAX;
                if !cfg.idle_timeout.is_zero() {
                    at = at.min(c.last_rx.saturating_add(ticks(cfg.idle_timeout)));
                }
                if c.is_ws() && !cfg.ping_interval.is_zero() {
                    at = at.min(c.last_ping.saturating_add(ticks(cfg.ping_interval)));
                }
                if c.outbox.capacity() > 0 && c.pending() == 0 {
                    // Come back soon to give an idle connection's buffer back.
                    at = at.min(self.ctx.tick.saturating_add(ticks(Duration::from_secs(10))));
                }
                at
            }
        };
        if at == u32::MAX {
            c.timer_at = u32::MAX;
            return;
        }
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

    pub(super) fn timers(&mut self) {
        let now = self.ctx.tick;
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.expire(now as u64, &mut fired);
        for e in &fired {
            let id = e.key as usize;
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.timer_at != e.tick || c.has(DEAD) {
                continue;
            }
            c.timer_at = u32::MAX;
            if e.tick > now {
                // Clamped into the wheel's span: not due yet.
                self.schedule(id);
                continue;
            }
            self.on_timer(id, now);
            self.schedule(id);
        }
        fired.clear();
        self.fired = fired;
    }

    pub(super) fn on_timer(&mut self, id: usize, now: u32) {
        let cfg = &self.ctx.cfg;
        let ticks = |d: Duration| (d.as_millis() as u64).div_ceil(TICK_MS).max(1) as u32;
        let c = &mut self.conns[id];
        match c.phase {
            Phase::Handshake => {
                if now >= c.since.saturating_add(ticks(cfg.handshake_timeout)) {
                    debug!("{}: handshake timeout (id {id})", c.ip);
                    self.ctx.metrics.timeout("handshake");
                    kill(&mut self.ctx, id, c);
                }
            }
            Phase::Closing | Phase::Flushing | Phase::Draining => {
                if now >= c.since.saturating_add(ticks(cfg.close_timeout)) {
                    debug!("{}: close timeout (id {id})", c.ip);
                    self.ctx.metrics.timeout("close");
                    kill(&mut self.ctx, id, c);
                }
            }
            Phase::Open => {
                if !cfg.idle_timeout.is_zero()
                    && now >= c.last_rx.saturating_add(ticks(cfg.idle_timeout))
                {
                    debug!("{}: idle timeout (id {id})", c.ip);
                    self.ctx.metrics.timeout("idle");
                    if c.kind == Kind::Line {
                        let mut out = Out {
                            conns: &mut self.conns,
                            ctx: &mut self.ctx,
                        };
                        out.deliver(&[id], "SYS idle timeout");
                    }
                    let c = &mut self.conns[id];
                    begin_close(&mut self.ctx, id, c, 1000, "idle timeout");
                    return;
                }
                if c.is_ws()
                    && !cfg.ping_interval.is_zero()
                    && now >= c.last_ping.saturating_add(ticks(cfg.ping_interval))
                {
                    c.last_ping = now;
                    let idle = c.pending() == 0;
                    encode_frame(&mut c.outbox, OpCode::Ping, true, b"", None);
                    mark_dirty(&mut self.ctx.dirty, id, c);
                    if idle {
                        self.flush_and_release(id);
                    }
                } else if c.pending() == 0 && c.outbox.capacity() > 0 {
                    c.outbox = Vec::new();
                    c.out_pos = 0;
                }
            }
        }
    }
}
