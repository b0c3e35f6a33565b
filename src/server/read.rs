//! The read path: read through the shared scratch buffer, then hand the bytes
//! to the HTTP parser, the WebSocket receiver or the line splitter.

use std::io::{self, Read};

use log::debug;

use super::conn::{Conn, Kind, Phase, Then, LINE_OVERFLOW, PAUSED};
use super::out::{finish_with, kill, mark_dirty};
use super::{Ctx, Server, KEEP_OUTBOX};
use crate::chat::line::Line;
use crate::chat::ErrorCode;
use crate::ws::endpoint::{CloseState, Endpoint, SendPolicy};
use crate::ws::frame::{encode_frame, OpCode, Role};
use crate::ws::message::Message;

impl Server {
    /// Read until `WouldBlock`, the read budget, or the connection stops reading.
    ///
    /// `short_read_drains`: the call answers a readable event that reported no
    /// end of input, so a read shorter than the buffer has emptied the socket
    /// and any later byte raises a new (edge-triggered) event: the read that
    /// would only return `WouldBlock` is skipped. Without an event (input left
    /// over from an earlier turn) an end of input may be pending unseen, so
    /// such a call reads on until `WouldBlock`.
    pub(super) fn read(&mut self, id: usize, short_read_drains: bool) {
        let mut total = 0;
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            if c.is_dead() || c.has(PAUSED) {
                return;
            }
            if total >= self.ctx.cfg.read_budget {
                self.ctx.read_again.push(id);
                return;
            }
            if c.is_ws() && !c.inbuf.is_empty() {
                // Frames an echo client sent past the message that filled its
                // outbox (see `on_frames`): theirs is the next turn, before the socket.
                let kept = std::mem::take(&mut c.inbuf);
                let n = kept.len().min(self.scratch.len());
                self.scratch[..n].copy_from_slice(&kept[..n]);
                total += n;
                self.on_bytes(id, n);
                continue;
            }
            match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    debug!(conn = id, peer:% = c.ip; "peer closed its side");
                    if c.peer_ended(self.ctx.tick) {
                        // A half-close (`nc -N`, `shutdown(SHUT_WR)`) still wants
                        // its answers: write them, then close (nothing to drain).
                        mark_dirty(&mut self.ctx.dirty, id, c);
                    } else {
                        kill(&mut self.ctx, id, c);
                    }
                    return;
                }
                Ok(n) => {
                    total += n;
                    c.last_rx = self.ctx.tick;
                    self.ctx.metrics.bytes_in += n as u64;
                    self.on_bytes(id, n);
                    if short_read_drains && n < self.scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!(conn = id, peer:% = c.ip; "read: {e}");
                    kill(&mut self.ctx, id, c);
                    return;
                }
            }
        }
    }

    /// Handle `self.scratch[..n]`, just read from connection `id`.
    pub(super) fn on_bytes(&mut self, id: usize, n: usize) {
        let c = &mut self.conns[id];
        if !matches!(c.phase(), Phase::Handshake | Phase::Open | Phase::Closing) {
            // Nothing more is wanted from it: read only to see its end.
            return;
        }
        match (c.kind, c.phase()) {
            (Kind::Http, Phase::Handshake) => self.on_request_bytes(id, n),
            (Kind::Line, _) => self.on_line_bytes(id, n),
            (Kind::Chat | Kind::Echo, Phase::Open | Phase::Closing) => {
                let mut data = std::mem::take(&mut self.scratch);
                self.on_frames(id, &mut data[..n]);
                self.scratch = data;
            }
            _ => {}
        }
        if let Some(c) = self.conns.get_mut(id) {
            if backed_up(&self.ctx, c) {
                // Its own output is backing up (an echo client that never reads),
                // or all outboxes together are over the budget and this one has
                // output left: stop reading until it drains, so it cannot grow us.
                c.set(PAUSED);
                if c.kind == Kind::Echo && c.over_since == u32::MAX {
                    // And it has `--outbox-grace` to drain it all once
                    // (`Due::Slow`), as a chat reader that falls behind has.
                    c.over_since = self.ctx.tick;
                    self.schedule(id);
                }
            }
        }
    }

    /// WebSocket bytes: decode and act on every complete message.
    pub(super) fn on_frames(&mut self, id: usize, data: &mut [u8]) {
        let c = &mut self.conns[id];
        let chat = c.kind == Kind::Chat;
        // Taken out so that the chat may touch every connection (this one too)
        // while a message still borrows the endpoint. The stand-in keeps the
        // negotiated compression, so this connection's own broadcasts match.
        let policy = c.ws.policy();
        let mut ws = std::mem::replace(&mut c.ws, Endpoint::with_policy(Role::Server, policy));
        let mut inflater = self.inflater.take();
        let limits = if chat {
            self.ctx.chat_limits
        } else {
            self.ctx.echo_limits
        };
        let mut off = 0;
        while off < data.len() {
            let Some(c) = self.conns.get_mut(id) else {
                break;
            };
            if c.phase() != Phase::Open {
                // The chat may have closed it while `ws` was out (rate
                // abuse, /quit): no second close, data is dropped.
                ws.set_closing();
            }
            let was_open = ws.state() == CloseState::Open;
            let (queued, cap) = (c.outbox.len(), c.outbox.capacity());
            let read = ws.read(
                &mut data[off..],
                &limits,
                inflater.as_deref_mut(),
                &mut c.outbox,
                None,
            );
            if c.outbox.len() > queued {
                // A pong or a close the protocol obliges us to send; its
                // growth counts in the outbox budget as `Conn::append` would.
                self.ctx.outbox_bytes = self
                    .ctx
                    .outbox_bytes
                    .saturating_add(c.outbox.capacity().saturating_sub(cap));
                mark_dirty(&mut self.ctx.dirty, id, c);
            }
            match read {
                Ok((used, msg)) => {
                    off += used;
                    let go_on = match msg {
                        Some(m) => self.on_message(id, m, was_open, policy),
                        None => used > 0,
                    };
                    if !go_on {
                        break;
                    }
                    if let Some(c) = self.conns.get_mut(id) {
                        if !chat && off < data.len() && backed_up(&self.ctx, c) {
                            // An echo's outbox is over its cap: keep the rest of
                            // this read for when it drains instead of echoing it
                            // now. One read of compressed frames may inflate to
                            // many messages of `--max-message`; stopping here
                            // holds the outbox to its cap plus one message.
                            c.inbuf.clear();
                            c.inbuf.extend_from_slice(&data[off..]);
                            c.set(PAUSED);
                            break;
                        }
                    }
                }
                Err(e) => {
                    debug!(
                        conn = id, peer:% = c.ip, code = e.close_code();
                        "protocol error: {e}"
                    );
                    if was_open {
                        self.ctx.metrics.close_sent(e.close_code());
                    }
                    // Fail the connection (RFC 6455 7.1.7): no waiting for the
                    // peer's close; its remaining input is discarded.
                    finish_with(&mut self.ctx, id, c, Then::Drain);
                    break;
                }
            }
        }
        if let Some(inf) = inflater.as_deref_mut() {
            // A big message leaves a big shared buffer: give it back.
            inf.trim();
        }
        self.inflater = inflater;
        if let Some(c) = self.conns.get_mut(id) {
            if c.phase() == Phase::Closing {
                ws.set_closing();
            }
            if !c.is_dead() {
                // A message delivered from the reassembly buffer frees it on the
                // next read: do that now, so an idle connection holds no buffer.
                ws.release(&limits);
            }
            c.ws = ws;
        }
    }

    /// Act on one message; false when nothing more should be read from the
    /// connection. `was_open`: the endpoint was open before this message, so
    /// it answered a Close itself; `policy`: this connection's compression.
    pub(super) fn on_message(
        &mut self,
        id: usize,
        m: Message<'_>,
        was_open: bool,
        policy: SendPolicy,
    ) -> bool {
        let ctx = &mut self.ctx;
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        match m {
            // The endpoint queued the pong.
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Close { code, reason } => {
                debug!(conn = id, peer:% = c.ip, code = code.unwrap_or(1005), reason = reason; "peer closed");
                ctx.metrics.close_received(code.unwrap_or(1005));
                if was_open {
                    // The endpoint echoed it.
                    ctx.metrics.close_sent(code.unwrap_or(1000));
                }
                // Either way the handshake is complete: close once written.
                finish_with(ctx, id, c, Then::Close);
                return false;
            }
            Message::Text(t) => {
                ctx.metrics.messages_in += 1;
                if c.kind == Kind::Echo {
                    echo(ctx, id, c, OpCode::Text, t.as_bytes(), policy);
                } else {
                    self.chat_line(id, t);
                }
            }
            Message::Binary(b) => {
                ctx.metrics.messages_in += 1;
                if c.kind == Kind::Echo {
                    echo(ctx, id, c, OpCode::Binary, b, policy);
                } else {
                    // tsung sends chat lines as binary frames by default.
                    match std::str::from_utf8(b) {
                        Ok(t) => self.chat_line(id, t),
                        Err(_) => self.reply_line(
                            id,
                            Line::Err {
                                code: ErrorCode::BadCommand,
                                text: "binary messages must hold UTF-8 text",
                            },
                        ),
                    }
                }
            }
        }
        self.conns.get(id).is_some_and(|c| c.is_live())
    }

    pub(super) fn chat_line(&mut self, id: usize, line: &str) {
        if self.auth_line(id, line) {
            return;
        }
        let (arrived, now) = (self.ctx.arrived_ms, self.ctx.now_ms);
        let (hub, mut out) = self.chat();
        hub.handle_arrived(id, line, arrived, now, &mut out);
        // A resumed signed session brings its token's expiry along.
        if self.auth.is_some() && line.starts_with("/resume") {
            self.schedule(id);
        }
    }

    /// Line-protocol bytes: one command per `\n`-terminated line.
    pub(super) fn on_line_bytes(&mut self, id: usize, n: usize) {
        let max = self.ctx.cfg.chat.max_line;
        let data = std::mem::take(&mut self.scratch);
        let mut rest = &data[..n];
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let part = &rest[..pos];
            rest = &rest[pos + 1..];
            let c = &mut self.conns[id];
            if c.phase() != Phase::Open {
                break;
            }
            if c.inbuf.is_empty() && !c.has(LINE_OVERFLOW) {
                self.line(id, part);
            } else {
                let mut buf = std::mem::take(&mut c.inbuf);
                let overflow = c.has(LINE_OVERFLOW);
                c.clear(LINE_OVERFLOW);
                append_bounded(&mut buf, part, max);
                if overflow || buf.len() > max {
                    self.too_long(id);
                } else {
                    self.line(id, &buf);
                }
                if let Some(c) = self.conns.get_mut(id) {
                    buf.clear();
                    if buf.capacity() <= KEEP_OUTBOX {
                        c.inbuf = buf;
                    }
                }
            }
        }
        if let Some(c) = self.conns.get_mut(id) {
            if !rest.is_empty() && !c.has(LINE_OVERFLOW) {
                append_bounded(&mut c.inbuf, rest, max);
                if c.inbuf.len() > max {
                    c.set(LINE_OVERFLOW);
                    c.inbuf = Vec::new();
                }
            }
        }
        self.scratch = data;
    }

    pub(super) fn line(&mut self, id: usize, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        self.ctx.metrics.messages_in += 1;
        if raw.len() > self.ctx.cfg.chat.max_line {
            self.too_long(id);
            return;
        }
        match std::str::from_utf8(raw) {
            Ok(t) => self.chat_line(id, t),
            Err(_) => self.reply_line(
                id,
                Line::Err {
                    code: ErrorCode::BadCommand,
                    text: "lines must be UTF-8 text",
                },
            ),
        }
    }

    pub(super) fn too_long(&mut self, id: usize) {
        let text = format!("lines are limited to {} bytes", self.ctx.cfg.chat.max_line);
        let code = ErrorCode::TooLong;
        self.reply_line(id, Line::Err { code, text: &text });
    }
}

/// Output is backing up on `c`: over its soft cap, or holding any while all
/// outboxes together are over the budget. Such a connection is not read from
/// until it drains (its own requests and echoes would grow it further).
fn backed_up(ctx: &Ctx, c: &Conn) -> bool {
    let over_budget = ctx.outbox_bytes >= ctx.cfg.outbox_total;
    c.pending() > ctx.cfg.outbox_soft || (over_budget && c.pending() > 0)
}

/// Send an echo reply, compressed when the connection negotiated it and the
/// message reaches the threshold.
fn echo(ctx: &mut Ctx, id: usize, c: &mut Conn, op: OpCode, payload: &[u8], policy: SendPolicy) {
    if c.phase() != Phase::Open {
        return;
    }
    if policy.compresses(payload.len(), ctx.cfg.compression_threshold) {
        let z = &mut ctx.deflater;
        c.append(&mut ctx.outbox_bytes, |o| {
            z.encode_frame(o, op, payload, None)
        });
        ctx.metrics.deflated_messages += 1;
    } else {
        c.append(&mut ctx.outbox_bytes, |o| {
            encode_frame(o, op, true, payload, None)
        });
    }
    ctx.metrics.messages_out += 1;
    mark_dirty(&mut ctx.dirty, id, c);
}

fn append_bounded(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    // Keep a few bytes past the limit so the caller can tell "too long" apart.
    let room = (max + 4).saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}
