//! The mio shell: one thread, one `Poll`, connections in a `Slab`. It reads into
//! one shared scratch buffer, hands bytes to `ws` and `chat`, appends their output
//! to per-connection outboxes and flushes every dirty connection once at the end
//! of the loop turn.

mod auth_glue;
mod cluster_glue;
mod config;
mod conn;
mod http;
mod metrics;
mod sys;
mod timer;

pub use auth_glue::{AuthArgs, AuthConfig, GuestPolicy};
pub use config::{client_ip, Config, IpNet};
pub use conn::{Conn, Kind, Phase};
pub use metrics::Metrics;
pub use sys::raise_nofile_limit;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::chat::{ConnId, Hub, Sink};
use crate::ws::frame::{encode_close, encode_frame, OpCode};
use crate::ws::message::{Limits, Message, Receiver};
use conn::{COUNTED, DEAD, DIRTY, DRAIN, IN_CHAT, LINE_OVERFLOW, PAUSED, PROXIED, WRITABLE};
use timer::{Entry, Wheel, TICK_MS};

const LISTENER: Token = Token(usize::MAX - 1);
const LINE_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
const SIGNALS: Token = Token(usize::MAX - 4);

/// Shared read buffer: every connection reads through it, so none keeps its own.
const SCRATCH: usize = 64 * 1024;
/// Outbox capacity kept after a drain; larger buffers are given back at once.
const KEEP_OUTBOX: usize = 4 * 1024;
/// Connections accepted per listener per turn before the others get a go.
const ACCEPT_BUDGET: usize = 1024;
/// Pause after accept() fails for lack of descriptors, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Stops a running server from any thread: the same graceful shutdown as SIGTERM.
#[derive(Clone)]
pub struct Handle {
    // The one cross-thread object: the loop itself stays single-threaded.
    waker: Arc<Waker>,
}

impl Handle {
    /// Ask the server to shut down gracefully; returns at once.
    pub fn stop(&self) {
        let _ = self.waker.wake();
    }
}

/// What the chat and the read path need besides the connections themselves.
struct Ctx {
    cfg: Config,
    metrics: Metrics,
    /// Connections to flush at the end of this turn.
    dirty: Vec<usize>,
    /// Connections to remove at the end of this turn.
    dead: Vec<usize>,
    /// Connections with unread input left (read budget spent, or just unpaused).
    read_again: Vec<usize>,
    /// One broadcast encoded once, as a WebSocket text frame.
    ws_frame: Vec<u8>,
    /// The same broadcast as a `\n`-terminated line.
    line_buf: Vec<u8>,
    chat_limits: Limits,
    echo_limits: Limits,
    /// Milliseconds since start, read once per loop turn.
    now_ms: u64,
    /// `now_ms` in timer-wheel ticks.
    tick: u32,
    start: Instant,
}

/// The chat's output path: encode once, append to each recipient's outbox.
struct Out<'a> {
    conns: &'a mut Slab<Conn>,
    ctx: &'a mut Ctx,
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
            if c.phase != Phase::Open || c.has(DEAD) {
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
                if pending + c.dropped as usize > ctx.cfg.outbox_hard && !c.has(DEAD) {
                    ctx.metrics.slow_disconnects += 1;
                    debug!("{}: slow consumer closed ({pending} bytes queued)", c.ip);
                    c.set(DEAD);
                    ctx.dead.push(id);
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

fn mark_dirty(dirty: &mut Vec<usize>, id: usize, c: &mut Conn) {
    if !c.has(DIRTY) {
        c.set(DIRTY);
        dirty.push(id);
    }
}

/// Start closing `c`: a WebSocket gets a close frame and waits for the peer's;
/// anything else is closed once its outbox is written.
fn begin_close(ctx: &mut Ctx, id: usize, c: &mut Conn, code: u16, reason: &str) {
    if matches!(c.phase, Phase::Closing | Phase::Flushing | Phase::Draining) {
        return;
    }
    debug!("{}: closing with {code} {reason:?} (id {id})", c.ip);
    if c.is_ws() && c.phase == Phase::Open {
        encode_close(&mut c.outbox, Some(code), reason, None);
        ctx.metrics.close_sent(code);
        c.rx.set_closing();
        c.phase = Phase::Closing;
    } else {
        // A line client may still be sending: do not let unread input reset
        // the connection under its last lines.
        c.phase = Phase::Flushing;
        c.set(DRAIN);
    }
    c.since = ctx.tick;
    mark_dirty(&mut ctx.dirty, id, c);
}

fn kill(ctx: &mut Ctx, id: usize, c: &mut Conn) {
    if !c.has(DEAD) {
        c.set(DEAD);
        ctx.dead.push(id);
    }
}

/// A bound server, ready to `run`.
pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    line_listener: Option<TcpListener>,
    local_addr: SocketAddr,
    line_addr: Option<SocketAddr>,
    waker: Arc<Waker>,
    signals: Option<signal_hook_mio::v1_0::Signals>,
    conns: Slab<Conn>,
    hub: Hub,
    ctx: Ctx,
    per_ip: HashMap<IpAddr, u32>,
    wheel: Wheel,
    scratch: Box<[u8]>,
    accept_paused_until: Option<Instant>,
    accept_again: bool,
    shutdown_deadline: Option<Instant>,
    fired: Vec<Entry>,
    /// The Redis bridge (`--redis`); `None` runs alone.
    cluster: Option<Box<crate::cluster::Cluster>>,
    /// Signed tokens (`--auth-key`); `None` admits everyone as a guest.
    auth: Option<Box<auth_glue::Auth>>,
}

impl Server {
    /// Bind the listeners (port 0 picks a free port) and set up the loop.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = sys::listener(cfg.listen, cfg.reuse_port)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (line_listener, line_addr) = match cfg.line_listen {
            Some(a) => {
                let mut l = sys::listener(a, cfg.reuse_port)?;
                let addr = l.local_addr()?;
                poll.registry()
                    .register(&mut l, LINE_LISTENER, Interest::READABLE)?;
                (Some(l), Some(addr))
            }
            None => (None, None),
        };
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let signals = if cfg.handle_signals {
            let mut s = signal_hook_mio::v1_0::Signals::new([
                signal_hook::consts::SIGINT,
                signal_hook::consts::SIGTERM,
                signal_hook::consts::SIGHUP,
            ])?;
            poll.registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let chat_limits = Limits {
            max_frame: cfg.max_chat_message as u64,
            max_message: cfg.max_chat_message,
        };
        let echo_limits = Limits {
            max_frame: cfg.max_message as u64,
            max_message: cfg.max_message,
        };
        let mut server = Server {
            poll,
            listener: Some(listener),
            line_listener,
            local_addr,
            line_addr,
            waker,
            signals,
            conns: Slab::new(),
            hub: Hub::new(cfg.chat.clone()),
            ctx: Ctx {
                cfg,
                metrics: Metrics::default(),
                dirty: Vec::new(),
                dead: Vec::new(),
                read_again: Vec::new(),
                ws_frame: Vec::new(),
                line_buf: Vec::new(),
                chat_limits,
                echo_limits,
                now_ms: 0,
                tick: 0,
                start: Instant::now(),
            },
            per_ip: HashMap::new(),
            wheel: Wheel::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            accept_paused_until: None,
            accept_again: false,
            shutdown_deadline: None,
            fired: Vec::new(),
            cluster: None,
            auth: None,
        };
        server.start_auth()?;
        server.start_cluster();
        Ok(server)
    }

    /// The HTTP/WebSocket listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The line listener's address, if any.
    pub fn line_addr(&self) -> Option<SocketAddr> {
        self.line_addr
    }

    /// A handle that stops the server from another thread.
    pub fn handle(&self) -> Handle {
        Handle {
            waker: self.waker.clone(),
        }
    }

    /// Run until shut down (signal or `Handle::stop`) and every connection is
    /// closed or the shutdown timeout has passed.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.cluster_timeout(self.poll_timeout());
            let timeout = match (timeout, self.auth_timeout()) {
                (Some(t), Some(a)) => Some(t.min(a)),
                (t, a) => t.or(a),
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn_start = Instant::now();
            // One clock read per turn: chat rate limits and timers use it.
            self.ctx.now_ms = self.ctx.start.elapsed().as_millis() as u64;
            self.ctx.tick = (self.ctx.now_ms / TICK_MS) as u32;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(false),
                    LINE_LISTENER => self.accept(true),
                    WAKER => self.begin_shutdown("stop requested"),
                    SIGNALS => {
                        if self.on_signals() {
                            info!("second signal: exiting now");
                            return Ok(());
                        }
                    }
                    cluster_glue::REDIS_CMD | cluster_glue::REDIS_SUB => self.cluster_event(event),
                    Token(id) => {
                        if let Some(c) = self.conns.get_mut(id) {
                            if event.is_writable() {
                                c.set(WRITABLE);
                                if c.pending() > 0 {
                                    mark_dirty(&mut self.ctx.dirty, id, c);
                                }
                            }
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                self.read(id);
                            }
                        }
                    }
                }
            }
            if self.accept_again {
                self.accept_again = false;
                self.accept(false);
                self.accept(true);
            }
            if let Some(t) = self.accept_paused_until {
                if turn_start >= t {
                    self.accept_paused_until = None;
                    self.accept(false);
                    self.accept(true);
                }
            }
            let again = std::mem::take(&mut self.ctx.read_again);
            for id in again {
                self.read(id);
            }
            self.timers();
            self.expire_tokens();
            self.finish_turn();
            if self.cluster_turn() {
                self.finish_turn();
            }
            self.ctx
                .metrics
                .observe_turn(turn_start.elapsed().as_secs_f64());
            if let Some(deadline) = self.shutdown_deadline {
                if self.conns.is_empty() {
                    info!("shutdown complete");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    info!(
                        "shutdown timeout: closing {} remaining connections",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ctx.read_again.is_empty() || self.accept_again {
            return Some(Duration::ZERO);
        }
        if self.wheel.is_empty()
            && self.accept_paused_until.is_none()
            && self.shutdown_deadline.is_none()
        {
            return None;
        }
        let ms = self.ctx.start.elapsed().as_millis() as u64;
        let next_tick = (ms / TICK_MS + 1) * TICK_MS;
        Some(Duration::from_millis(next_tick - ms))
    }

    /// True when this is a second signal (exit at once).
    fn on_signals(&mut self) -> bool {
        let Some(signals) = self.signals.as_mut() else {
            return false;
        };
        let mut got = false;
        let mut hup = false;
        for s in signals.pending() {
            match s {
                signal_hook::consts::SIGHUP => hup = true,
                _ => got = true,
            }
        }
        if hup {
            self.reload_auth();
        }
        if !got {
            return false;
        }
        if self.shutdown_deadline.is_some() {
            return true;
        }
        self.begin_shutdown("signal received");
        false
    }

    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        info!(
            "{why}: shutting down, {} connections to close (timeout {:?})",
            self.conns.len(),
            self.ctx.cfg.shutdown_timeout
        );
        self.shutdown_deadline = Some(Instant::now() + self.ctx.cfg.shutdown_timeout);
        for mut l in [self.listener.take(), self.line_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        self.hub.broadcast_sys("server shutting down", &mut out);
        let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            let c = &mut self.conns[id];
            match c.phase {
                Phase::Handshake => kill(&mut self.ctx, id, c),
                _ => begin_close(&mut self.ctx, id, c, 1001, "server shutting down"),
            }
        }
    }

    fn accept(&mut self, line: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let l = if line {
                self.line_listener.as_ref()
            } else {
                self.listener.as_ref()
            };
            let Some(l) = l else { return };
            match l.accept() {
                Ok((sock, addr)) => self.admit(sock, addr, line),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.ctx.metrics.accept_errors += 1;
                    match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            warn!(
                                "accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} ({} connections open)",
                                self.conns.len()
                            );
                            self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                            return;
                        }
                        // A connection that died in the backlog: try the next one.
                        _ => debug!("accept: {e}"),
                    }
                }
            }
        }
        self.accept_again = true;
    }

    fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr, line: bool) {
        let ip = addr.ip();
        if self.conns.len() >= self.ctx.cfg.max_connections {
            self.ctx.metrics.refused("max_connections");
            refuse(&mut sock, line, 503, "server full");
            return;
        }
        // A trusted proxy's connections are counted once its request names the client.
        let proxied = !line && self.ctx.cfg.trust_proxy.iter().any(|n| n.contains(ip));
        if !proxied && !self.count_ip(ip) {
            refuse(
                &mut sock,
                line,
                429,
                "too many connections from your address",
            );
            return;
        }
        let _ = sock.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register: {e}");
            if !proxied {
                self.forget_ip(ip);
            }
            return;
        }
        let kind = if line { Kind::Line } else { Kind::Http };
        let mut c = Conn::new(sock, ip, kind, self.ctx.tick);
        c.set(if proxied { PROXIED } else { COUNTED });
        entry.insert(c);
        self.ctx.metrics.connections_total += 1;
        debug!("{addr}: accepted ({kind:?}, id {id})");
        self.schedule(id);
        if line {
            self.admit_line(id);
        }
    }

    /// Count a connection from `ip`; false (and counted as refused) over `--max-per-ip`.
    fn count_ip(&mut self, ip: IpAddr) -> bool {
        let max = self.ctx.cfg.max_per_ip;
        if max == 0 {
            return true;
        }
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n as usize >= max {
            self.ctx.metrics.refused("max_per_ip");
            return false;
        }
        *n += 1;
        true
    }

    fn forget_ip(&mut self, ip: IpAddr) {
        if self.ctx.cfg.max_per_ip > 0 {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }

    /// Read until `WouldBlock`, the read budget, or the connection stops reading.
    fn read(&mut self, id: usize) {
        let mut total = 0;
        loop {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            if c.has(DEAD) {
                return;
            }
            if c.has(PAUSED) {
                return;
            }
            if total >= self.ctx.cfg.read_budget {
                self.ctx.read_again.push(id);
                return;
            }
            match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    debug!("{}: peer closed its side (id {id})", c.ip);
                    if c.pending() > 0 && c.phase != Phase::Draining {
                        // A half-close (`nc -N`, `shutdown(SHUT_WR)`) still wants
                        // its answers: write them, then close (nothing to drain).
                        c.phase = Phase::Flushing;
                        c.clear(DRAIN);
                        c.since = self.ctx.tick;
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
                    debug!("{}: read: {e} (id {id})", c.ip);
                    kill(&mut self.ctx, id, c);
                    return;
                }
            }
        }
    }

    /// Handle `self.scratch[..n]`, just read from connection `id`.
    fn on_bytes(&mut self, id: usize, n: usize) {
        let c = &mut self.conns[id];
        if matches!(c.phase, Phase::Flushing | Phase::Draining) {
            // Nothing more is wanted from it: read only to see its end.
            return;
        }
        match (c.kind, c.phase) {
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
            if c.pending() > self.ctx.cfg.outbox_soft && !c.has(PAUSED) {
                // Its own output is backing up (an echo client that never reads):
                // stop reading until the outbox drains, so it cannot grow us.
                c.set(PAUSED);
            }
        }
    }

    /// WebSocket bytes: decode and act on every complete message.
    fn on_frames(&mut self, id: usize, data: &mut [u8]) {
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
                        "{}: protocol error, closing with {}: {e} (id {id})",
                        c.ip,
                        e.close_code()
                    );
                    if c.phase == Phase::Open {
                        let code = e.close_code();
                        encode_close(&mut c.outbox, Some(code), &e.to_string(), None);
                        self.ctx.metrics.close_sent(code);
                    }
                    // Fail the connection (RFC 6455 7.1.7): no waiting for the
                    // peer's close; its remaining input is discarded.
                    c.phase = Phase::Flushing;
                    c.set(DRAIN);
                    c.since = self.ctx.tick;
                    mark_dirty(&mut self.ctx.dirty, id, c);
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(id) {
            if c.phase == Phase::Closing {
                // The chat may have closed this connection while `rx` was out
                // (rate abuse, /quit): the placeholder got the flag, not `rx`.
                rx.set_closing();
            }
            if rx.heap_bytes() > 0 && !c.has(DEAD) {
                // A message delivered from the reassembly buffer frees it on the
                // next feed: do that now, so an idle connection holds no buffer.
                let _ = rx.feed(&mut [], &limits);
            }
            c.rx = rx;
        }
    }

    /// Act on one message; false when nothing more should be read from the connection.
    fn on_message(&mut self, id: usize, m: Message<'_>) -> bool {
        let ctx = &mut self.ctx;
        let Some(c) = self.conns.get_mut(id) else {
            return false;
        };
        match m {
            Message::Ping(p) => {
                encode_frame(&mut c.outbox, OpCode::Pong, true, p, None);
                mark_dirty(&mut ctx.dirty, id, c);
            }
            Message::Pong(_) => {}
            Message::Close { code, reason } => {
                debug!("{}: peer closed with {code:?} {reason:?} (id {id})", c.ip);
                ctx.metrics.close_received(code.unwrap_or(1005));
                if c.phase == Phase::Open {
                    let echo = code.unwrap_or(1000);
                    encode_close(&mut c.outbox, Some(echo), "", None);
                    ctx.metrics.close_sent(echo);
                }
                // Either way the handshake is complete: close once written.
                c.phase = Phase::Flushing;
                c.since = ctx.tick;
                mark_dirty(&mut ctx.dirty, id, c);
                return false;
            }
            Message::Text(t) => {
                ctx.metrics.messages_in += 1;
                if c.kind == Kind::Echo {
                    encode_frame(&mut c.outbox, OpCode::Text, true, t.as_bytes(), None);
                    ctx.metrics.messages_out += 1;
                    mark_dirty(&mut ctx.dirty, id, c);
                } else {
                    self.chat_line(id, t);
                }
            }
            Message::Binary(b) => {
                ctx.metrics.messages_in += 1;
                if c.kind == Kind::Echo {
                    encode_frame(&mut c.outbox, OpCode::Binary, true, b, None);
                    ctx.metrics.messages_out += 1;
                    mark_dirty(&mut ctx.dirty, id, c);
                } else {
                    // tsung sends chat lines as binary frames by default.
                    match std::str::from_utf8(b) {
                        Ok(t) => self.chat_line(id, t),
                        Err(_) => {
                            let mut out = Out {
                                conns: &mut self.conns,
                                ctx: &mut self.ctx,
                            };
                            out.deliver(
                                &[id],
                                "ERR bad-command binary messages must hold UTF-8 text",
                            );
                        }
                    }
                }
            }
        }
        self.conns
            .get(id)
            .is_some_and(|c| !c.has(DEAD) && matches!(c.phase, Phase::Open | Phase::Closing))
    }

    fn chat_line(&mut self, id: usize, line: &str) {
        if self.auth_line(id, line) {
            return;
        }
        let now = self.ctx.now_ms;
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        self.hub.handle(id, line, now, &mut out);
    }

    /// Line-protocol bytes: one command per `\n`-terminated line.
    fn on_line_bytes(&mut self, id: usize, n: usize) {
        let max = self.ctx.cfg.chat.max_line;
        let data = std::mem::take(&mut self.scratch);
        let mut rest = &data[..n];
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let part = &rest[..pos];
            rest = &rest[pos + 1..];
            let c = &mut self.conns[id];
            if c.phase != Phase::Open || c.has(DEAD) {
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

    fn line(&mut self, id: usize, raw: &[u8]) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        self.ctx.metrics.messages_in += 1;
        if raw.len() > self.ctx.cfg.chat.max_line {
            self.too_long(id);
            return;
        }
        match std::str::from_utf8(raw) {
            Ok(t) => self.chat_line(id, t),
            Err(_) => {
                let mut out = Out {
                    conns: &mut self.conns,
                    ctx: &mut self.ctx,
                };
                out.deliver(&[id], "ERR bad-command lines must be UTF-8 text");
            }
        }
    }

    fn too_long(&mut self, id: usize) {
        let text = format!(
            "ERR too-long lines are limited to {} bytes",
            self.ctx.cfg.chat.max_line
        );
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        out.deliver(&[id], &text);
    }

    fn schedule(&mut self, id: usize) {
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

    fn timers(&mut self) {
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

    fn on_timer(&mut self, id: usize, now: u32) {
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

    /// Flush dirty connections, remove dead ones; repeat while closing one
    /// produces output for others (LEFT notices).
    fn finish_turn(&mut self) {
        // Bounded: each pass removes the dead it found, and a connection dies once.
        loop {
            let dirty = std::mem::take(&mut self.ctx.dirty);
            for &id in &dirty {
                self.flush(id);
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty;
            }
            let dead = std::mem::take(&mut self.ctx.dead);
            if dead.is_empty() && self.ctx.dirty.is_empty() {
                self.ctx.dead = dead;
                return;
            }
            for &id in &dead {
                self.remove(id);
            }
        }
    }

    fn flush(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.clear(DIRTY);
        if c.has(DEAD) {
            return;
        }
        while c.has(WRITABLE) && c.pending() > 0 {
            match c.sock.write(&c.outbox[c.out_pos as usize..]) {
                Ok(0) => {
                    kill(&mut self.ctx, id, c);
                    return;
                }
                Ok(n) => {
                    c.out_pos += n as u32;
                    self.ctx.metrics.bytes_out += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.clear(WRITABLE),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("{}: write: {e} (id {id})", c.ip);
                    kill(&mut self.ctx, id, c);
                    return;
                }
            }
        }
        if c.pending() == 0 {
            c.out_pos = 0;
            c.dropped = 0;
            if c.outbox.capacity() > KEEP_OUTBOX {
                c.outbox = Vec::new();
            } else {
                c.outbox.clear();
            }
            if c.phase == Phase::Flushing && !c.has(DRAIN) {
                kill(&mut self.ctx, id, c);
                return;
            }
            if c.phase == Phase::Flushing {
                // Half-close and wait for the peer's end (see `Phase::Draining`).
                if c.sock.shutdown(std::net::Shutdown::Write).is_err() {
                    kill(&mut self.ctx, id, c);
                    return;
                }
                c.phase = Phase::Draining;
                c.since = self.ctx.tick;
            }
        } else if c.out_pos as usize > c.outbox.len() / 2 {
            // Compact so the written prefix does not pin memory.
            c.outbox.drain(..c.out_pos as usize);
            c.out_pos = 0;
        }
        if c.has(PAUSED) && c.pending() <= self.ctx.cfg.outbox_soft / 2 {
            c.clear(PAUSED);
            self.ctx.read_again.push(id);
        }
        if c.phase != Phase::Open {
            self.schedule(id);
        }
    }

    /// Flush now and, when everything was written, free the outbox: for output
    /// that is not part of a stream (a handshake answer, a ping to an idle
    /// connection), whose buffer would otherwise sit idle until the timer.
    fn flush_and_release(&mut self, id: usize) {
        self.flush(id);
        if let Some(c) = self.conns.get_mut(id) {
            if c.pending() == 0 && !c.has(DEAD) {
                c.outbox = Vec::new();
                c.out_pos = 0;
            }
        }
    }

    fn remove(&mut self, id: usize) {
        if !self.conns.contains(id) {
            return;
        }
        let mut c = self.conns.remove(id);
        let _ = self.poll.registry().deregister(&mut c.sock);
        debug!("{}: closed (id {id}, {:?})", c.ip, c.kind);
        if c.has(COUNTED) {
            self.forget_ip(c.ip);
        }
        if c.has(IN_CHAT) {
            let mut out = Out {
                conns: &mut self.conns,
                ctx: &mut self.ctx,
            };
            self.hub.disconnect(id, &mut out);
        }
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

fn append_bounded(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    // Keep a few bytes past the limit so the caller can tell "too long" apart.
    let room = (max + 4).saturating_sub(buf.len());
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Best effort refusal at accept: one non-blocking write, then close.
fn refuse(sock: &mut TcpStream, line: bool, status: u16, text: &str) {
    let mut buf = Vec::new();
    if line {
        buf.extend_from_slice(format!("ERR server-full {text}\n").as_bytes());
    } else {
        crate::ws::handshake::write_response(&mut buf, status, "text/plain", &[], text.as_bytes());
    }
    let _ = sock.write(&buf);
}
