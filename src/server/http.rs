//! The HTTP side of a new connection: read the request head, then either answer a
//! plain request (`/`, `/healthz`, `/metrics`, errors) or upgrade to WebSocket.

use log::debug;

use super::auth_glue::Admission;
use super::conn::{Kind, Then, COUNTED, IN_CHAT, PROXIED};
use super::out::{finish_with, mark_dirty};
use super::{client_ip, metrics, sys, Server};
use crate::chat::hub::Identity;
use crate::ws::handshake::{self, parse_request, write_response, HttpError, Request, Status};

/// The built-in web chat page, its script and its style sheet.
const PAGE: &str = include_str!("static/index.html");
const SCRIPT: &str = include_str!("static/app.js");
const STYLE: &str = include_str!("static/app.css");

/// Scripts and styles only from this server, no inline code, no framing: user
/// text that slipped into markup still could not run.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// What a complete request head turned into.
enum Route {
    /// Upgraded; the rest of the input is the first frames.
    Upgraded {
        kind: Kind,
        nick: Option<String>,
        room: Option<String>,
        /// With `--auth-key`: who the connection is (`None`: a guest).
        who: Option<Identity>,
    },
    /// Answered (or refused); close after the flush.
    Answered,
}

impl Server {
    /// Request-head bytes in `self.scratch[..n]` for connection `id`.
    pub(super) fn on_request_bytes(&mut self, id: usize, n: usize) {
        // Taken out so the request may borrow it while the server is mutated.
        let mut data = std::mem::take(&mut self.scratch);
        self.on_request(id, &mut data[..n]);
        self.scratch = data;
    }

    fn on_request(&mut self, id: usize, data: &mut [u8]) {
        let n = data.len();
        let max = self.ctx.cfg.max_header_bytes;
        let c = &mut self.conns[id];
        // Parse straight from the scratch buffer when the head arrives in one read
        // (the common case); only a partial head is copied into the connection.
        let mut buf = std::mem::take(&mut c.inbuf);
        let from_scratch = buf.is_empty();
        if !from_scratch {
            // Bounded: `buf` is below the head limit (else parsing failed) and
            // `data` is one read; the tail may hold pipelined frames.
            buf.extend_from_slice(data);
            // A head can only have ended if a line did: skip re-parsing the whole
            // buffer for every byte of a trickled request (quadratic otherwise).
            if !data.contains(&b'\n') && buf.len() <= max {
                self.conns[id].inbuf = buf;
                return;
            }
        }
        let (route, head_len) = {
            let input: &[u8] = if from_scratch { data } else { &buf };
            match parse_request(input, max) {
                Ok(Status::Partial) => {
                    if from_scratch {
                        buf.extend_from_slice(data);
                    }
                    self.conns[id].inbuf = buf;
                    return;
                }
                Err(e) => {
                    self.refuse_request(id, &e);
                    return;
                }
                Ok(Status::Complete(req)) => {
                    let len = req.len;
                    (self.route(id, &req), len)
                }
            }
        };
        let Route::Upgraded {
            kind,
            nick,
            room,
            who,
        } = route
        else {
            return;
        };
        // Frames pipelined behind the request head.
        let rest = if from_scratch {
            n - head_len
        } else {
            buf.len().saturating_sub(head_len)
        };
        if kind == Kind::Chat {
            self.conns[id].set(IN_CHAT);
            let now = self.ctx.now_ms;
            let who = who.unwrap_or(Identity::Guest(Default::default()));
            let (hub, mut out) = self.chat();
            hub.connect_as(id, who, nick.as_deref(), room.as_deref(), now, &mut out);
            self.schedule(id);
        }
        if rest > 0 {
            if from_scratch {
                self.on_frames(id, &mut data[head_len..n]);
            } else {
                let end = buf.len();
                self.on_frames(id, &mut buf[head_len..end]);
            }
        } else {
            // Nothing else to say yet: send the 101 (and WELCOME) now and give the
            // buffer back, so a connection storm does not hold one buffer per new
            // connection until the timer frees it (and leave the heap fragmented).
            self.flush_and_release(id);
        }
    }

    fn refuse_request(&mut self, id: usize, e: &HttpError) {
        let c = &mut self.conns[id];
        debug!("{}: bad request: {e:?} (id {id})", c.ip);
        self.ctx.metrics.handshake_failed(e.reason());
        e.write_response(&mut c.outbox);
        finish_with(&mut self.ctx, id, c, Then::Drain);
    }

    fn route(&mut self, id: usize, req: &Request<'_>) -> Route {
        if self.conns[id].has(PROXIED) {
            // Behind a trusted proxy: the client is named by X-Forwarded-For, and
            // that address is what per-IP limits and logs see.
            let c = &mut self.conns[id];
            c.clear(PROXIED);
            if let Some(ip) = req
                .forwarded_for
                .and_then(|x| client_ip(x, &self.ctx.cfg.trust_proxy))
            {
                c.ip = ip;
            }
            let ip = c.ip;
            if !self.count_ip(ip) {
                self.answer(
                    id,
                    429,
                    "text/plain",
                    b"too many connections from your address\n",
                );
                return Route::Answered;
            }
            self.conns[id].set(COUNTED);
        }
        let ws_kind = match req.path {
            "/ws" => Some(Kind::Chat),
            "/echo" => Some(Kind::Echo),
            _ => None,
        };
        if let Some(kind) = ws_kind {
            let up = match req.websocket() {
                Ok(up) => up,
                Err(e) => {
                    self.refuse_request(id, &e);
                    return Route::Answered;
                }
            };
            if !handshake::origin_allowed(req.origin, req.host, &self.ctx.cfg.allow_origin) {
                self.ctx
                    .metrics
                    .handshake_failed(HttpError::OriginForbidden.reason());
                self.answer(id, 403, "text/plain", b"origin not allowed\n");
                return Route::Answered;
            }
            let admission = match kind {
                Kind::Chat => self.admission(id, req.query_param("token")),
                _ => None,
            };
            let who = match admission {
                Some(Admission::Refuse(why)) => {
                    self.answer_with(
                        id,
                        401,
                        "text/plain",
                        &[("WWW-Authenticate", "Bearer realm=\"loopchat\"")],
                        why.as_bytes(),
                    );
                    return Route::Answered;
                }
                Some(Admission::Admit(who)) => Some(who),
                None => None,
            };
            let c = &mut self.conns[id];
            handshake::write_upgrade_response(&mut c.outbox, up.key, None);
            c.upgraded(kind, self.ctx.tick);
            mark_dirty(&mut self.ctx.dirty, id, c);
            self.ctx.metrics.ws_upgrades_total += 1;
            debug!("{}: upgraded to {kind:?} (id {id})", c.ip);
            self.schedule(id);
            let (nick, room) = if kind == Kind::Chat {
                (
                    req.query_param("nick").map(str::to_owned),
                    req.query_param("room").map(str::to_owned),
                )
            } else {
                (None, None)
            };
            return Route::Upgraded {
                kind,
                nick,
                room,
                who,
            };
        }
        self.ctx.metrics.http_requests_total += 1;
        let known = matches!(
            req.path,
            "/" | "/index.html" | "/app.js" | "/app.css" | "/healthz" | "/metrics"
        );
        if known && req.method != "GET" {
            self.answer_with(
                id,
                405,
                "text/plain",
                &[("Allow", "GET")],
                b"method not allowed\n",
            );
            return Route::Answered;
        }
        let page = |ctype| -> (&str, &[(&str, &str)]) {
            (
                ctype,
                &[
                    ("Content-Security-Policy", CSP),
                    ("X-Content-Type-Options", "nosniff"),
                ],
            )
        };
        match req.path {
            "/" | "/index.html" => {
                let (t, h) = page("text/html; charset=utf-8");
                self.answer_with(id, 200, t, h, PAGE.as_bytes());
            }
            "/app.js" => {
                let (t, h) = page("text/javascript; charset=utf-8");
                self.answer_with(id, 200, t, h, SCRIPT.as_bytes());
            }
            "/app.css" => {
                let (t, h) = page("text/css; charset=utf-8");
                self.answer_with(id, 200, t, h, STYLE.as_bytes());
            }
            "/healthz" => self.answer(id, 200, "text/plain", b"ok\n"),
            "/metrics" => {
                let body = self.render_metrics();
                self.answer(id, 200, "text/plain; version=0.0.4", body.as_bytes());
            }
            _ => self.answer(id, 404, "text/plain", b"not found\n"),
        }
        Route::Answered
    }

    fn answer(&mut self, id: usize, status: u16, ctype: &str, body: &[u8]) {
        self.answer_with(id, status, ctype, &[], body);
    }

    fn answer_with(
        &mut self,
        id: usize,
        status: u16,
        ctype: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let c = &mut self.conns[id];
        write_response(&mut c.outbox, status, ctype, headers, body);
        // Plain HTTP: the client may have sent more than we read (a body, a
        // pipelined request); linger so the answer is not lost to a reset.
        finish_with(&mut self.ctx, id, c, Then::Drain);
    }

    /// Render `/metrics`.
    fn render_metrics(&self) -> String {
        let mut ws = 0;
        let mut line = 0;
        let mut outbox = 0;
        for (_, c) in self.conns.iter() {
            match c.kind {
                Kind::Chat | Kind::Echo => ws += 1,
                Kind::Line => line += 1,
                Kind::Http => {}
            }
            outbox += c.pending();
        }
        let g = metrics::Gauges {
            connections: self.conns.len(),
            ws_connections: ws,
            line_connections: line,
            chat_users: self.hub.connections(),
            rooms: self.hub.rooms(),
            outbox_bytes: outbox,
            rss_bytes: sys::rss_bytes(),
            open_fds: sys::open_fds(),
            uptime_seconds: self.ctx.start.elapsed().as_secs_f64(),
        };
        let mut s = String::with_capacity(4096);
        self.ctx.metrics.render(&g, &mut s);
        self.cluster_metrics(&mut s);
        s
    }
}
