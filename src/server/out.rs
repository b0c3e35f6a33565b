//! The chat's output path and the few moves every part of the loop makes on a
//! connection: mark it for a flush, start closing it, drop it.

use log::debug;
use slab::Slab;

use super::conn::{Conn, Kind, Phase, Then, DIRTY};
use super::Ctx;
use crate::chat::{ConnId, Sink};
use crate::ws::frame::{encode_close, encode_frame, OpCode};

/// The chat's output path: encode once, append to each recipient's outbox.
pub(super) struct Out<'a> {
    pub(super) conns: &'a mut Slab<Conn>,
    pub(super) ctx: &'a mut Ctx,
}

impl Sink for Out<'_> {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        let ctx = &mut *self.ctx;
        ctx.ws_frame.clear();
        ctx.line_buf.clear();
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
            } else {
                if ctx.ws_frame.is_empty() {
                    encode_frame(&mut ctx.ws_frame, OpCode::Text, true, line.as_bytes(), None);
                }
                &ctx.ws_frame
            };
            let pending = c.pending();
            if pending >= ctx.cfg.outbox_soft {
                ctx.metrics.slow_drops += 1;
                c.dropped = c.dropped.saturating_add(bytes.len() as u32);
                if pending + c.dropped as usize > ctx.cfg.outbox_hard {
                    ctx.metrics.slow_disconnects += 1;
                    debug!("{}: slow consumer closed ({pending} bytes queued)", c.ip);
                    kill(ctx, id, c);
                }
                continue;
            }
            c.outbox.extend_from_slice(bytes);
            ctx.metrics.deliveries += 1;
            ctx.metrics.messages_out += 1;
            mark_dirty(&mut ctx.dirty, id, c);
        }
    }

    fn close(&mut self, id: ConnId, code: u16, reason: &str) {
        if let Some(c) = self.conns.get_mut(id) {
            begin_close(self.ctx, id, c, code, reason);
        }
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
    debug!("{}: closing with {code} {reason:?} (id {id})", c.ip);
    if c.is_ws() && c.phase() == Phase::Open {
        encode_close(&mut c.outbox, Some(code), reason, None);
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
