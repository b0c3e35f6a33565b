//! The chat's output path and the few moves every part of the loop makes on a
//! connection: mark it for a flush, start closing it, drop it.

use log::debug;
use slab::Slab;

use super::conn::{Conn, Kind, Phase, Then, DIRTY, WRITABLE};
use super::Ctx;
use crate::chat::line::Line;
use crate::chat::{ConnId, Sink};
use crate::ws::frame::{encode_close, encode_frame, OpCode};

impl super::Server {
    /// One server line (`ERR`, `SYS`) to one connection, written by the
    /// protocol's own writer: the server's own answers follow the same rules
    /// as the hub's (fields, the text rule).
    pub(super) fn reply_line(&mut self, id: ConnId, line: Line<'_>) {
        let mut text = String::new();
        line.write_str(&mut text, None);
        self.reply(id, &text);
    }
}

/// The chat's output path: encode once, append to each recipient's outbox.
pub(super) struct Out<'a> {
    pub(super) conns: &'a mut Slab<Conn>,
    pub(super) ctx: &'a mut Ctx,
}

impl Sink for Out<'_> {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        let ctx = &mut *self.ctx;
        ctx.ws_frame.clear();
        ctx.ws_frame_z.clear();
        ctx.line_buf.clear();
        let threshold = ctx.cfg.compression_threshold;
        let mut behind_mark = over_budget_mark(ctx);
        // Counted here and added once: a broadcast reaches thousands.
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for &id in to {
            let Some(c) = self.conns.get_mut(id) else {
                continue;
            };
            if c.phase() != Phase::Open {
                continue;
            }
            let bytes: &[u8] = if c.kind == Kind::Line {
                if ctx.line_buf.is_empty() {
                    ctx.line_buf.extend_from_slice(line.as_bytes());
                    ctx.line_buf.push(b'\n');
                }
                &ctx.line_buf
            } else if c.ws.compresses(line.len(), threshold) {
                // Deflated once, on the first recipient that wants it; the
                // same frame then goes to every other (no context takeover).
                if ctx.ws_frame_z.is_empty() {
                    let z = &mut ctx.deflater;
                    z.encode_frame(&mut ctx.ws_frame_z, OpCode::Text, line.as_bytes(), None);
                    ctx.metrics.deflated_messages += 1;
                }
                &ctx.ws_frame_z
            } else {
                if ctx.ws_frame.is_empty() {
                    encode_frame(&mut ctx.ws_frame, OpCode::Text, true, line.as_bytes(), None);
                }
                &ctx.ws_frame
            };
            let pending = c.pending();
            // Behind: its socket refused bytes at the last flush. A reader that
            // keeps up has its outbox written out at the end of every turn and
            // is never held to the budget's lower marks.
            let behind = !c.has(WRITABLE);
            if pending >= ctx.cfg.outbox_soft || (behind && pending >= behind_mark) {
                dropped += 1;
                c.dropped = c.dropped.saturating_add(bytes.len() as u32);
                if c.over_since == u32::MAX {
                    c.over_since = ctx.tick;
                }
                let too_long = ctx.tick >= c.over_since.saturating_add(ctx.timeouts.grace);
                if pending + c.dropped as usize > ctx.cfg.outbox_hard || too_long {
                    ctx.metrics.slow_disconnects += 1;
                    debug!(conn = id, peer:% = c.ip, queued = pending; "slow consumer closed");
                    kill(ctx, id, c);
                }
                continue;
            }
            c.append(&mut ctx.outbox_bytes, |o| o.extend_from_slice(bytes));
            if ctx.outbox_bytes >= ctx.cfg.outbox_total {
                behind_mark = over_budget_mark(ctx);
            }
            delivered += 1;
            mark_dirty(&mut ctx.dirty, id, c);
        }
        ctx.metrics.deliveries += delivered;
        ctx.metrics.messages_out += delivered;
        ctx.metrics.slow_drops += dropped;
    }

    fn close(&mut self, id: ConnId, code: u16, reason: &str) {
        if let Some(c) = self.conns.get_mut(id) {
            begin_close(self.ctx, id, c, code, reason);
        }
    }
}

/// The backlog at which a reader that is behind (its socket refused bytes)
/// loses lines, from the budget's point of view: none under `--outbox-total`;
/// over it, an eighth of its own cap, so the readers furthest behind lose
/// lines first; over it by an eighth, any backlog at all. A reader that keeps
/// up is never held to these marks, and the process holds at most the budget,
/// an eighth more, and what one turn queues for readers that fall behind in it.
fn over_budget_mark(ctx: &Ctx) -> usize {
    let total = ctx.cfg.outbox_total;
    if ctx.outbox_bytes < total {
        usize::MAX
    } else if ctx.outbox_bytes < total.saturating_add(total / 8) {
        (ctx.cfg.outbox_soft / 8).max(1)
    } else {
        1
    }
}

pub(super) fn mark_dirty(dirty: &mut Vec<usize>, id: usize, c: &mut Conn) {
    if !c.has(DIRTY) {
        c.set(DIRTY);
        dirty.push(id);
    }
}

/// Start closing `c`: a WebSocket gets a close frame and waits for the peer's;
/// anything else is closed once its outbox is written.
pub(super) fn begin_close(ctx: &mut Ctx, id: usize, c: &mut Conn, code: u16, reason: &str) {
    if c.is_closing() {
        return;
    }
    debug!(conn = id, peer:% = c.ip, code = code, reason = reason; "closing");
    if c.is_ws() && c.phase() == Phase::Open {
        c.append(&mut ctx.outbox_bytes, |o| {
            encode_close(o, Some(code), reason, None)
        });
        ctx.metrics.close_sent(code);
        c.closing(ctx.tick);
    } else {
        // A line client may still be sending: do not let unread input reset
        // the connection under its last lines.
        c.flush_then(Then::Drain, ctx.tick);
    }
    mark_dirty(&mut ctx.dirty, id, c);
}

/// Drop `c` at the end of the turn, without another byte written.
pub(super) fn kill(ctx: &mut Ctx, id: usize, c: &mut Conn) {
    if c.die() {
        ctx.dead.push(id);
    }
}

/// Queue the flush of an answer that ends the conversation, then `then`.
pub(super) fn finish_with(ctx: &mut Ctx, id: usize, c: &mut Conn, then: Then) {
    c.flush_then(then, ctx.tick);
    mark_dirty(&mut ctx.dirty, id, c);
}
