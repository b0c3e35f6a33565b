//! The server's side of `--redis`: the node ([`Cluster`], sans-I/O) asks for
//! connections with [`Cluster::poll_action`]; its two sockets live here, in
//! the same `Poll` under their own tokens. Bytes read go to
//! [`Cluster::on_bytes`], bytes to write come from [`Cluster::transmit`], and
//! the chat output the cluster produces goes through the same
//! [`Out`](super::out::Out) sink as local output (encoded once, appended to
//! every recipient's outbox).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::out::Out;
use super::Server;
use crate::chat::{Hub, Sink};
use crate::cluster::{Action, Cluster, Which};

/// The command/publish connection to Redis.
pub(super) const REDIS_CMD: Token = Token(usize::MAX - 5);
/// The subscriber connection to Redis.
pub(super) const REDIS_SUB: Token = Token(usize::MAX - 6);
/// Bytes read from one Redis connection per event; the rest next turn.
const READ_BUDGET: usize = 1 << 20;
/// Bytes per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// One socket the node asked for.
#[derive(Debug, Default)]
struct Sock {
    stream: Option<TcpStream>,
    /// The TCP connect completed.
    established: bool,
    writable: bool,
    /// A read stopped at its budget: read again next turn (readiness is
    /// edge-triggered, no new event will say so).
    more: bool,
}

/// The node and its sockets.
#[derive(Debug)]
pub(super) struct ClusterIo {
    node: Cluster,
    socks: [Sock; 2],
    buf: Vec<u8>,
}

fn index(w: Which) -> usize {
    match w {
        Which::Cmd => 0,
        Which::Sub => 1,
    }
}

fn token(w: Which) -> Token {
    match w {
        Which::Cmd => REDIS_CMD,
        Which::Sub => REDIS_SUB,
    }
}

const BOTH: [Which; 2] = [Which::Cmd, Which::Sub];

impl ClusterIo {
    /// Carry out what the node asked for, then write what it queued; a
    /// socket failure is reported back (which may ask for more).
    fn drive(&mut self, registry: &Registry, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        // Bounded: a failure only schedules a retry, it never connects again
        // within the same turn.
        for _ in 0..8 {
            while let Some(a) = self.node.poll_action() {
                match a {
                    Action::Connect(w) => {
                        if let Err(e) = self.connect(w, registry) {
                            self.node.on_closed(w, &e.to_string(), hub, sink, now);
                        }
                    }
                    Action::Close(w) => self.close(w, registry),
                }
            }
            let mut failed = false;
            for w in BOTH {
                if let Err(e) = self.write(w) {
                    self.node.on_closed(w, &e.to_string(), hub, sink, now);
                    failed = true;
                }
            }
            if !failed {
                return;
            }
        }
    }

    fn connect(&mut self, w: Which, registry: &Registry) -> io::Result<()> {
        self.close(w, registry);
        let mut stream = TcpStream::connect(self.node.addr())?;
        registry.register(
            &mut stream,
            token(w),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.socks[index(w)].stream = Some(stream);
        Ok(())
    }

    fn close(&mut self, w: Which, registry: &Registry) {
        let s = &mut self.socks[index(w)];
        if let Some(mut stream) = s.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        *s = Sock::default();
    }

    /// A writable event: the connect may have completed.
    fn on_writable(&mut self, w: Which) -> io::Result<()> {
        let s = &mut self.socks[index(w)];
        let Some(stream) = s.stream.as_ref() else {
            return Ok(());
        };
        s.writable = true;
        if s.established {
            return Ok(());
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        match stream.peer_addr() {
            Ok(_) => {
                s.established = true;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                s.writable = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Write what the node queued, until done or `WouldBlock`.
    fn write(&mut self, w: Which) -> io::Result<()> {
        let s = &mut self.socks[index(w)];
        let Some(stream) = s.stream.as_mut() else {
            return Ok(());
        };
        while s.established && s.writable && !self.node.transmit(w).is_empty() {
            match stream.write(self.node.transmit(w)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.node.advance(w, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => s.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read up to the budget, handing each chunk to the node.
    fn read(&mut self, w: Which, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        let mut total = 0;
        self.buf.resize(READ_CHUNK, 0);
        loop {
            let s = &mut self.socks[index(w)];
            let Some(stream) = s.stream.as_mut() else {
                return;
            };
            if total >= READ_BUDGET {
                s.more = true;
                return;
            }
            match stream.read(&mut self.buf) {
                Ok(0) => {
                    self.node
                        .on_closed(w, "connection closed by Redis", hub, sink, now);
                    return;
                }
                Ok(n) => {
                    total += n;
                    self.node.on_bytes(w, &self.buf[..n], hub, sink, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.node.on_closed(w, &e.to_string(), hub, sink, now);
                    return;
                }
            }
        }
    }
}

impl Server {
    /// Join the cluster when `--redis` is set: a node id, guest nicks tagged
    /// with it, and connections opened on the first turn.
    pub(super) fn start_cluster(&mut self) {
        let Some(cfg) = self.ctx.cfg.redis.clone() else {
            return;
        };
        if cfg.secret.is_none() {
            log::warn!(
                "cluster payloads are not signed: anyone who can PUBLISH to this Redis can \
                 forge chat lines; set --cluster-secret-file on every node"
            );
        }
        let addr = cfg.addr;
        let node = Cluster::new(cfg, Instant::now());
        self.hub.enable_cluster(&node.node_id()[..4]);
        log::info!("cluster node {} (redis {addr})", node.node_id());
        self.cluster = Some(Box::new(ClusterIo {
            node,
            socks: [Sock::default(), Sock::default()],
            buf: Vec::new(),
        }));
    }

    /// A poll event for a Redis connection.
    pub(super) fn cluster_event(&mut self, event: &Event) {
        let Some(io) = self.cluster.as_deref_mut() else {
            return;
        };
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        let now = Instant::now();
        let w = if event.token() == REDIS_CMD {
            Which::Cmd
        } else {
            Which::Sub
        };
        if event.is_writable() || event.is_error() {
            if let Err(e) = io.on_writable(w) {
                io.node
                    .on_closed(w, &e.to_string(), &mut self.hub, &mut out, now);
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            io.read(w, &mut self.hub, &mut out, now);
        }
        io.drive(self.poll.registry(), &mut self.hub, &mut out, now);
    }

    /// Once per turn: input left behind by the read budget, the hub's
    /// requests to Redis, timers, one write of each link. True when it
    /// queued output for local connections (flush again).
    pub(super) fn cluster_turn(&mut self) -> bool {
        let Some(io) = self.cluster.as_deref_mut() else {
            return false;
        };
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        let now = Instant::now();
        for w in BOTH {
            if std::mem::take(&mut io.socks[index(w)].more) {
                io.read(w, &mut self.hub, &mut out, now);
            }
        }
        io.node.turn(&mut self.hub, &mut out, now);
        io.drive(self.poll.registry(), &mut self.hub, &mut out, now);
        if io.buf.capacity() > READ_CHUNK {
            io.buf = Vec::new();
        }
        !self.ctx.dirty.is_empty() || !self.ctx.dead.is_empty()
    }

    /// `timeout`, shortened to the cluster's next deadline.
    pub(super) fn cluster_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        let Some(io) = self.cluster.as_deref() else {
            return timeout;
        };
        let now = Instant::now();
        let at = if io.socks.iter().any(|s| s.more) {
            Some(now)
        } else {
            io.node.poll_timeout(now)
        };
        let Some(at) = at else {
            return timeout;
        };
        let d = at.saturating_duration_since(now);
        Some(timeout.map_or(d, |t| t.min(d)))
    }

    /// The cluster's lines of `/metrics` (none without `--redis`).
    pub(super) fn cluster_metrics(&self, out: &mut String) {
        if let Some(io) = self.cluster.as_deref() {
            super::metrics::render_cluster(io.node.node_id(), &io.node.stats(), out);
        }
    }
}
