//! The read path: read through the shared scratch buffer, then hand the bytes
//! to the HTTP parser, the WebSocket receiver or the line splitter.

use std::io::{self, Read};

use log::debug;

use super::conn::{Kind, Phase, Then, LINE_OVERFLOW, PAUSED};
use super::out::{finish_with, kill, mark_dirty};
use super::{Server, KEEP_OUTBOX};
use crate::ws::frame::{encode_close, encode_frame, OpCode};
use crate::ws::message::{Message, Receiver};

impl Server {
    /// Read until `WouldBlock`, the read budget, or the connection stops reading.
    pub(super) fn read(&mut self, id: usize) {
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
            let over_budget = self.ctx.outbox_bytes >= self.ctx.cfg.outbox_total;
            let backed_up =
                c.pending() > self.ctx.cfg.outbox_soft || (over_budget && c.pending() > 0);
            if backed_up && !c.has(PAUSED) {
                // Its own output is backing up (an echo client that never reads),
                // or all outboxes together are over the budget and this one has
                // output left: stop reading until it drains, so it cannot grow us.
                c.set(PAUSED);
            }
        }
    }

    /// WebSocket bytes: decode and act on every complete message.
    pub(super) fn on_frames(&mut self, id: usize, data: &mut [u8]) {
        let c = &mut self.conns[id];
        let chat = c.kind == Kind::Chat;
        // Taken out so that the chat may touch every connection (this one too)
        // while a message still borrows the receiver.
        let mut rx = std::mem::replace(&mut c.rx, Receiver::new(crate::ws::frame::Role::Server));
        let limits = if chat {
            self.ctx.chat_limits
        } else {
            self.ctx.echo_limits
        };
        let mut off = 0;
        while off < data.len() {
            match rx.feed(&mut data[off..], &limits) {
                Ok((used, msg)) => {
                    off += used;
                    let go_on = match msg {
                        Some(m) => self.on_message(id, m),
                        None => used > 0,
                    };
                    if !go_on {
                        break;
                    }
                }
                Err(e) => {
                    let Some(c) = self.conns.get_mut(id) else {
                        break;
                    };
                    debug!(
                        conn = id, peer:% = c.ip, code = e.close_code();
                        "protocol error: {e}"
                    );
                    if c.phase() == Phase::Open {
                        let code = e.close_code();
                        let reason = e.to_string();
                        c.append(&mut self.ctx.outbox_bytes, |o| {
                            encode_close(o, Some(code), &reason, None)
                        });
                        self.ctx.metrics.close_sent(code);
                    }
                    // Fail the connection (RFC 6455 7.1.7): no waiting for the
                    // peer's close; its remaining input is discarded.
                    finish_with(&mut self.ctx, id, c, Then::Drain);
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(id) {
            if c.phase() == Phase::Closing {
                // The chat may have closed this connection while `rx` was out
                // (rate abuse, /quit): the placeholder got the flag, not `rx`.
                rx.set_closing();
            }
            if rx.heap_bytes() > 0 && !c.is_dead() {
                // A message delivered from the reassembly buffer frees it on the
                // next feed: do that now, so an idle connection holds no buffer.
                let _ = rx.feed(&mut [], &limits);
            }
            c.rx = rx;
        }
    }

    /// Act on one message; false when nothing more should be read from the connection.
    pub(super) fn on_message(&mut self, id: usize, m: Message<'_>) -> bool {
        let ctx = &mut self.ctx;
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        match m {
            Message::Ping(p) => {
                c.append(&mut ctx.outbox_bytes, |o| {
                    encode_frame(o, OpCode::Pong, true, p, None)
                });
                mark_dirty(&mut ctx.dirty, id, c);
            }
            Message::Pong(_) => {}
            Message::Close { code, reason } => {
                debug!(conn = id, peer:% = c.ip, code = code.unwrap_or(1005), reason = reason; "peer closed");
                ctx.metrics.close_received(code.unwrap_or(1005));
                if c.phase() == Phase::Open {
                    let echo = code.unwrap_or(1000);
                    c.append(&mut ctx.outbox_bytes, |o| {
                        encode_close(o, Some(echo), "", None)
                    });
                    ctx.metrics.close_sent(echo);
                }
                // Either way the handshake is complete: close once written.
                finish_with(ctx, id, c, Then::Close);
                return false;
            }
            Message::Text(t) => {
                ctx.metrics.messages_in += 1;
                if c.kind == Kind::Echo {
                    c.append(&mut ctx.outbox_bytes, |o| {
                        encode_frame(o, OpCode::Text, true, t.as_bytes(), None)
                    });
                    ctx.metrics.messages_out += 1;
                    mark_dirty(&mut ctx.dirty, id, c);
                } else {
                    self.chat_line(id, t);
                }
            }
            Message::Binary(b) => {
                ctx.metrics.messages_in += 1;
                if c.kind == Kind::Echo {
                    c.append(&mut ctx.outbox_bytes, |o| {
                        encode_frame(o, OpCode::Binary, true, b, None)
                    });
                    ctx.metrics.messages_out += 1;
                    mark_dirty(&mut ctx.dirty, id, c);
                } else {
                    // tsung sends chat lines as binary frames by default.
                    match std::str::from_utf8(b) {
                        Ok(t) => self.chat_line(id, t),
                        Err(_) => {
                            self.reply(id, "ERR bad-command binary messages must hold UTF-8 text")
                        }
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
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
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
            Err(_) => self.reply(id, "ERR bad-command lines must be UTF-8 text"),
        }
    }

    pub(super) fn too_long(&mut self, id: usize) {
        let text = format!(
            "ERR too-long lines are limited to {} bytes",
            self.ctx.cfg.chat.max_line
        );
        self.reply(id, &text);
    }
}

fn append_bounded(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    // Keep a few bytes past the limit so the caller can tell "too long" apart.
    let room = (max + 4).saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}
