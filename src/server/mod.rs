//! The mio shell: one thread, one `Poll`, connections in a `Slab`. It reads into
//! one shared scratch buffer, hands bytes to `ws` and `chat`, appends their output
//! to per-connection outboxes and flushes every dirty connection once at the end
//! of the loop turn.

mod accept;
mod auth_glue;
mod cluster_glue;
mod config;
mod conn;
mod http;
mod metrics;
mod metrics_port;
mod out;
mod read;
mod timer;
mod timers;
mod write;

pub use auth_glue::{AuthArgs, AuthConfig, GuestPolicy};
#[doc(hidden)]
pub mod fuzzing;

pub use crate::sys::raise_nofile_limit;
pub use config::{client_ip, Config, IpNet};
pub use metrics::Metrics;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::chat::{Hub, Sink};
use crate::sys;
use crate::ws::deflate::{Deflater, Inflater};
use crate::ws::message::Limits;
use conn::{Conn, Phase, Timeouts, WRITABLE};
use out::{begin_close, kill, mark_dirty, Out};
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
/// A poll that returns this much later than its timeout was a stall (the
/// process stopped or starved), not scheduling noise.
const STALL_SLACK: Duration = Duration::from_millis(10);
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
    /// The same broadcast compressed once (permessage-deflate), for every
    /// recipient that negotiated it; built on the first such recipient.
    ws_frame_z: Vec<u8>,
    /// The loop's one compressor: broadcasts and echo replies.
    deflater: Deflater,
    /// The same broadcast as a `\n`-terminated line.
    line_buf: Vec<u8>,
    chat_limits: Limits,
    echo_limits: Limits,
    /// Bytes left in each outbox after its last flush, for `/metrics`.
    queued: metrics::Queued,
    /// Refused-Origin log lines, at most one a second.
    origin_log: crate::logging::Throttle,
    /// Milliseconds since start, read once per loop turn.
    now_ms: u64,
    /// The earliest time (as `now_ms`) input read this turn can have arrived:
    /// `now_ms`, or earlier after a stall of the loop.
    arrived_ms: u64,
    /// `now_ms` in timer-wheel ticks.
    tick: u32,
    start: Instant,
    /// The configured time limits in ticks.
    timeouts: Timeouts,
    /// Bytes allocated by all outboxes together (capacity, not length): kept
    /// exact by [`Conn::append`] and friends, held under `cfg.outbox_total`.
    outbox_bytes: usize,
}
/// An episode of accept() failing for lack of descriptors (or memory).
struct Starved {
    since: Instant,
    /// Failed accepts in it (one per retry).
    failures: u64,
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
    /// Accepting has been failing for lack of descriptors since then.
    starved: Option<Starved>,
    shutdown_deadline: Option<Instant>,
    fired: Vec<Entry>,
    /// Where flushes go instead of the sockets when set: the sans-I/O
    /// harness of [`fuzzing`] drives connections without writing to them.
    capture: Option<Vec<u8>>,
    /// The Redis bridge (`--redis`); `None` runs alone.
    cluster: Option<Box<cluster_glue::ClusterIo>>,
    /// The `--metrics-listen` listener and its scrapers.
    metrics_port: Option<metrics_port::MetricsPort>,
    /// Signed tokens (`--auth-key`); `None` admits everyone as a guest.
    auth: Option<Box<auth_glue::Auth>>,
    /// The loop's one decompressor, lent to the read path (`None` while lent).
    inflater: Option<Box<Inflater>>,
}

/// A bind error that says which listener failed, so a taken `--line-listen`
/// port is not reported as the `--listen` address.
fn naming(e: io::Error, flag: &str, addr: std::net::SocketAddr) -> io::Error {
    io::Error::new(e.kind(), format!("{flag} {addr}: {e}"))
}

impl Server {
    /// Bind the listeners (port 0 picks a free port) and set up the loop.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = sys::listener(cfg.listen, cfg.reuse_port, cfg.send_buffer)
            .map_err(|e| naming(e, "--listen", cfg.listen))?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let (line_listener, line_addr) = match cfg.line_listen {
            Some(a) => {
                let mut l = sys::listener(a, cfg.reuse_port, cfg.send_buffer)
                    .map_err(|e| naming(e, "--line-listen", a))?;
                let addr = l.local_addr()?;
                poll.registry()
                    .register(&mut l, LINE_LISTENER, Interest::READABLE)?;
                (Some(l), Some(addr))
            }
            None => (None, None),
        };
        let metrics_port = match cfg.metrics_listen {
            Some(a) => {
                let mut l =
                    sys::listener(a, false, 0).map_err(|e| naming(e, "--metrics-listen", a))?;
                poll.registry().register(
                    &mut l,
                    metrics_port::METRICS_LISTENER,
                    Interest::READABLE,
                )?;
                Some(metrics_port::MetricsPort::new(l))
            }
            None => None,
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
        let timeouts = Timeouts::new(&cfg);
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
                ws_frame_z: Vec::new(),
                deflater: Deflater::new(),
                line_buf: Vec::new(),
                chat_limits,
                echo_limits,
                queued: metrics::Queued::default(),
                origin_log: crate::logging::Throttle::default(),
                now_ms: 0,
                arrived_ms: 0,
                tick: 0,
                start: Instant::now(),
                timeouts,
                outbox_bytes: 0,
            },
            per_ip: HashMap::new(),
            wheel: Wheel::new(),
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            accept_paused_until: None,
            accept_again: false,
            starved: None,
            shutdown_deadline: None,
            fired: Vec::new(),
            capture: None,
            cluster: None,
            metrics_port,
            auth: None,
            inflater: Some(Box::default()),
        };
        server.start_auth()?;
        // Message ids are EPOCH-SEQ with EPOCH the start time, and `time` tags
        // are EPOCH plus the monotonic clock (chat::history).
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        server.hub.set_epoch(epoch);
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

    /// The `--metrics-listen` listener's address, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_port.as_ref().and_then(|m| m.local_addr().ok())
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
        // When the last turn ended and how long it took: what the loop needs
        // to tell a stall (a long turn, or a poll that overslept because the
        // process was stopped or starved) from waiting for events.
        let mut last_end = Instant::now();
        let mut last_took = Duration::ZERO;
        loop {
            let timeout = self.cluster_timeout(self.poll_timeout());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn_start = Instant::now();
            // One clock read per turn: chat rate limits and timers use it.
            self.ctx.now_ms = turn_start.duration_since(self.ctx.start).as_millis() as u64;
            self.ctx.tick = (self.ctx.now_ms / TICK_MS) as u32;
            // Input read this turn arrived during the last turn or the poll,
            // and no earlier than the start of a stall: that is what the rate
            // limiter charges it by. Without a poll timeout nothing tells a
            // stall from an idle wait, so an idle wait is never credited.
            let overslept = timeout.map_or(Duration::ZERO, |t| {
                turn_start
                    .duration_since(last_end)
                    .saturating_sub(t + STALL_SLACK)
            });
            let late = (overslept + last_took).as_millis() as u64;
            self.ctx.arrived_ms = self.ctx.now_ms.saturating_sub(late);
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
                    metrics_port::METRICS_LISTENER => {
                        if let Some(m) = self.metrics_port.as_mut() {
                            m.accept(self.poll.registry(), turn_start);
                        }
                    }
                    t if metrics_port::scraper_of(t).is_some() => {
                        self.scraper_event(metrics_port::scraper_of(t).unwrap_or(0), event);
                    }
                    Token(id) => {
                        if let Some(c) = self.conns.get_mut(id) {
                            if event.is_writable() {
                                c.set(WRITABLE);
                                if c.pending() > 0 {
                                    mark_dirty(&mut self.ctx.dirty, id, c);
                                }
                            }
                            let closed = event.is_read_closed() || event.is_error();
                            if event.is_readable() || closed {
                                self.read(id, !closed);
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
                self.read(id, false);
            }
            self.timers();
            self.chat_timers();
            if let Some(m) = self.metrics_port.as_mut() {
                if m.accept_pending() {
                    m.accept(self.poll.registry(), turn_start);
                }
                if m.busy() {
                    m.expire(self.poll.registry(), turn_start);
                }
            }
            self.finish_turn();
            if self.cluster_turn() {
                self.finish_turn();
            }
            last_end = Instant::now();
            last_took = last_end.duration_since(turn_start);
            self.ctx.metrics.observe_turn(last_took.as_secs_f64());
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

    /// Dropped chat sessions whose grace period ran out (`--session-ttl`).
    fn chat_timers(&mut self) {
        let now = self.ctx.now_ms;
        if self.hub.poll_timeout().is_some_and(|at| at <= now) {
            let (hub, mut out) = self.chat();
            hub.handle_timeout(now, &mut out);
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ctx.read_again.is_empty()
            || self.accept_again
            || self
                .metrics_port
                .as_ref()
                .is_some_and(|m| m.accept_pending())
        {
            return Some(Duration::ZERO);
        }
        if self.metrics_port.as_ref().is_some_and(|m| m.busy()) {
            // A scraper is open: wake for its timeout even with no timers.
            return Some(Duration::from_millis(TICK_MS));
        }
        if self.wheel.is_empty()
            && self.accept_paused_until.is_none()
            && self.shutdown_deadline.is_none()
        {
            // Only a dropped session's expiry is left to wake up for.
            let ms = self.ctx.start.elapsed().as_millis() as u64;
            return self
                .hub
                .poll_timeout()
                .map(|at| Duration::from_millis(at.saturating_sub(ms)));
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
        let (hub, mut out) = self.chat();
        hub.broadcast_sys("server shutting down", &mut out);
        let ids: Vec<usize> = self.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            let c = &mut self.conns[id];
            match c.phase() {
                Phase::Handshake => kill(&mut self.ctx, id, c),
                _ => begin_close(&mut self.ctx, id, c, 1001, "server shutting down"),
            }
        }
    }

    /// The hub and the sink its output goes into, borrowed apart.
    fn chat(&mut self) -> (&mut Hub, Out<'_>) {
        (
            &mut self.hub,
            Out {
                conns: &mut self.conns,
                ctx: &mut self.ctx,
            },
        )
    }

    /// One line of chat output to one connection (an error, a notice).
    fn reply(&mut self, id: usize, text: &str) {
        self.chat().1.deliver(&[id], text);
    }
}
