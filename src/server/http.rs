//! The HTTP side of a new connection: read the request head, then either answer a
//! plain request (`/`, `/healthz`, `/metrics`, errors) or upgrade to WebSocket.

use log::{debug, info};

use super::auth_glue::Admission;
use super::conn::{Kind, Then, COUNTED, IN_CHAT, PROXIED, RELEASE};
use super::out::{finish_with, mark_dirty};
use super::timers::first_ping_early;
use super::{client_ip, metrics, Server};
use crate::chat::hub::{Caps, Connect, Identity};
use crate::ws::endpoint::Endpoint;
use crate::ws::frame::Role;
use crate::ws::handshake::{self, parse_request, write_response, HttpError, Request, Status};

/// The built-in web chat page, its script and its style sheet.
const PAGE: &str = include_str!("static/index.html");
const SCRIPT: &str = include_str!("static/app.js");
const STYLE: &str = include_str!("static/app.css");

/// The tab icon: a speech bubble, as SVG (browsers take it from
/// `/favicon.ico` by its content type), so the page loads without a 404.
const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<path fill=\"#2b6cb0\" d=\"M2 2h12a1 1 0 0 1 1 1v7a1 1 0 0 1-1 1H7l-4 3v-3H2a1 1 0 0 1-1-1V3a1 1 0 0 1 1-1z\"/>\
</svg>\n";

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
        /// The v2 query fields, boxed: absent for v1 clients.
        v2: Option<Box<V2Query>>,
    },
    /// Answered (or refused); close after the flush.
    Answered,
}

/// `?caps=`, `?resume=` and `?since=` of a chat upgrade.
struct V2Query {
    caps: Option<String>,
    resume: Option<String>,
    since: Option<String>,
}

impl V2Query {
    /// `None` when the request has none of the three.
    fn from_request(req: &Request<'_>) -> Option<Box<V2Query>> {
        // Browsers' URLSearchParams encode the list separators; nothing
        // else in these values ever needs decoding.
        let field = |name| {
            req.query_param(name).map(|v: &str| {
                v.replace("%2C", ",")
                    .replace("%2c", ",")
                    .replace("%3A", ":")
                    .replace("%3a", ":")
            })
        };
        let q = V2Query {
            caps: field("caps"),
            resume: field("resume"),
            since: field("since"),
        };
        (q.caps.is_some() || q.resume.is_some() || q.since.is_some()).then(|| Box::new(q))
    }
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
            v2,
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
            let v2 = v2.as_deref();
            let args = Connect {
                nick: nick.as_deref(),
                room: room.as_deref(),
                caps: v2.and_then(|q| q.caps.as_deref()).map(Caps::parse),
                resume: v2.and_then(|q| q.resume.as_deref()),
                since: v2.and_then(|q| q.since.as_deref()),
            };
            hub.connect_as(id, who, &args, now, &mut out);
            self.schedule(id);
        }
        if rest > 0 {
            if from_scratch {
                self.on_frames(id, &mut data[head_len..n]);
            } else {
                let end = buf.len();
                self.on_frames(id, &mut buf[head_len..end]);
            }
        } else if let Some(c) = self.conns.get_mut(id) {
            // Nothing else to say yet: the 101 (and WELCOME) go out with this
            // turn's flush, in one write with whatever else the turn brings it
            // (notices, broadcasts), and the buffer is given back once written,
            // so a connection storm does not hold one buffer per new connection
            // until the timer frees it (and leave the heap fragmented).
            c.set(RELEASE);
        }
    }

    fn refuse_request(&mut self, id: usize, e: &HttpError) {
        let c = &mut self.conns[id];
        debug!(conn = id, peer:% = c.ip, reason = e.reason(); "bad request: {e}");
        self.ctx.metrics.handshake_failed(e.reason());
        c.append(&mut self.ctx.outbox_bytes, |o| e.write_response(o));
        finish_with(&mut self.ctx, id, c, Then::Drain);
    }

    fn route(&mut self, id: usize, req: &Request<'_>) -> Route {
        let head = req.method == "HEAD";
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
                    head,
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
                // At info: a proxy rewriting Host makes every browser look
                // cross-origin, and the operator needs to see why. At most
                // once a second: any web page can make browsers repeat it.
                if let Some(more) = self.ctx.origin_log.allow(self.ctx.now_ms) {
                    info!(
                        conn = id, peer:% = self.conns[id].ip,
                        origin = req.origin.unwrap_or(""), host = req.host.unwrap_or(""),
                        suppressed = more;
                        "WebSocket upgrade refused: Origin is neither same-origin nor in \
                         --allow-origin ({more} more since the last such line)"
                    );
                }
                self.answer(id, head, 403, "text/plain", b"origin not allowed\n");
                return Route::Answered;
            }
            let admission = match kind {
                Kind::Chat => {
                    self.admission(id, req.query_param("token"), req.query_param("resume"))
                }
                _ => None,
            };
            let who = match admission {
                Some(Admission::Refuse(why)) => {
                    self.answer_with(
                        id,
                        false,
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
            // Declined offers are not an error: the connection goes on plain.
            let deflate = if self.ctx.cfg.compression {
                crate::ws::deflate::negotiate(up.extensions)
            } else {
                None
            };
            let answer = deflate.map(|a| a.response_value());
            c.append(&mut self.ctx.outbox_bytes, |o| {
                handshake::write_upgrade_response_ext(o, up.key, None, answer.as_deref())
            });
            c.ws = Endpoint::with_deflate(Role::Server, deflate);
            if deflate.is_some() {
                self.ctx.metrics.ws_deflate_total += 1;
            }
            let was = c.kind;
            c.upgraded(
                kind,
                self.ctx.tick,
                first_ping_early(self.ctx.timeouts.ping),
            );
            if c.kind != was {
                self.ctx.metrics.changed(was, c.kind);
            }
            mark_dirty(&mut self.ctx.dirty, id, c);
            self.ctx.metrics.ws_upgrades_total += 1;
            debug!(conn = id, peer:% = c.ip, kind:? = kind; "upgraded");
            self.schedule(id);
            let (nick, room, v2) = if kind == Kind::Chat {
                (
                    req.query_param("nick").map(str::to_owned),
                    req.query_param("room").map(str::to_owned),
                    V2Query::from_request(req),
                )
            } else {
                (None, None, None)
            };
            return Route::Upgraded {
                kind,
                nick,
                room,
                who,
                v2,
            };
        }
        self.ctx.metrics.http_requests_total += 1;
        let known = matches!(
            req.path,
            "/" | "/index.html" | "/app.js" | "/app.css" | "/favicon.ico" | "/healthz"
        ) || (req.path == "/metrics" && self.ctx.cfg.metrics_listen.is_none());
        if known && req.method != "GET" && req.method != "HEAD" {
            self.answer_with(
                id,
                head,
                405,
                "text/plain",
                &[("Allow", "GET, HEAD")],
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
                self.answer_with(id, head, 200, t, h, PAGE.as_bytes());
            }
            "/app.js" => {
                let (t, h) = page("text/javascript; charset=utf-8");
                self.answer_with(id, head, 200, t, h, SCRIPT.as_bytes());
            }
            "/app.css" => {
                let (t, h) = page("text/css; charset=utf-8");
                self.answer_with(id, head, 200, t, h, STYLE.as_bytes());
            }
            "/favicon.ico" => {
                let h = &[
                    ("Cache-Control", "public, max-age=86400"),
                    ("X-Content-Type-Options", "nosniff"),
                ];
                self.answer_with(id, head, 200, "image/svg+xml", h, FAVICON.as_bytes());
            }
            "/healthz" => self.answer(id, head, 200, "text/plain", b"ok\n"),
            // With --metrics-listen, only that listener serves it.
            "/metrics" if self.ctx.cfg.metrics_listen.is_none() => {
                let body = self.render_metrics();
                self.answer(id, head, 200, "text/plain; version=0.0.4", body.as_bytes());
            }
            _ => self.answer(id, head, 404, "text/plain", b"not found\n"),
        }
        Route::Answered
    }

    fn answer(&mut self, id: usize, head: bool, status: u16, ctype: &str, body: &[u8]) {
        self.answer_with(id, head, status, ctype, &[], body);
    }

    /// Answer and close; for a HEAD request (`head`), everything but the body
    /// (RFC 9110 9.3.2: the same head, Content-Length included, as for GET).
    #[allow(clippy::too_many_arguments)]
    fn answer_with(
        &mut self,
        id: usize,
        head: bool,
        status: u16,
        ctype: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let c = &mut self.conns[id];
        c.append(&mut self.ctx.outbox_bytes, |o| {
            write_response(o, status, ctype, headers, body);
            if head {
                o.truncate(o.len() - body.len());
            }
        });
        // Plain HTTP: the client may have sent more than we read (a body, a
        // pipelined request); linger so the answer is not lost to a reset.
        finish_with(&mut self.ctx, id, c, Then::Drain);
    }

    /// Render `/metrics`: counters kept as traffic flows and O(1) gauges, so the
    /// cost does not grow with the connections.
    pub(super) fn render_metrics(&self) -> String {
        let g = metrics::Gauges {
            chat_users: self.hub.connections(),
            rooms: self.hub.rooms(),
            sessions_detached: self.hub.detached_sessions(),
            sessions_resumed: self.hub.resumes(),
            outbox_bytes: Some(self.ctx.queued.total()),
            outbox_allocated: self.ctx.outbox_bytes,
            outbox_budget: self.ctx.cfg.outbox_total,
        };
        let mut s = String::with_capacity(8192);
        self.ctx.metrics.render(&g, &mut s);
        self.cluster_metrics(&mut s);
        s
    }
}
