//! One node of the cluster: two Redis connections (commands and publishing;
//! subscriptions), the hub's requests turned into RESP, and what arrives from
//! the other nodes turned back into hub calls.
//!
//! Channels and keys (all names folded to lowercase):
//! - `lc:room:ROOM`: the lines of a room (`MSG`, `JOINED`, `LEFT`); a node is
//!   subscribed while it has local members in ROOM;
//! - `lc:all`: `NICK` notices and `/who`/`/rooms` requests, every node subscribed;
//! - `lc:node:NODE`: private messages and answers to requests for one node;
//! - `lc:nick:NICK`: `"NODE DISPLAY"` while NODE holds the nick (set with
//!   `SET NX PX ttl`, refreshed every ttl/3, so a dead node's nicks expire).
//!
//! Every payload starts with `KIND NODE SEQ `: the publishing node's id and a
//! per-node sequence number. A node ignores its own payloads, and drops one
//! whose sequence number is not above the last it saw from that node (a
//! publish whose reply was lost in a reconnect is sent again; its receivers
//! drop the duplicate). Kinds: `M` room line, `N` nick notice (`ROOMS LINE`,
//! rooms comma-separated), `P` private line (`NICK LINE`), `W`/`w` who
//! request/answer, `R`/`r` rooms request/answer.
//!
//! `/who` and `/rooms` ask every node over `lc:all`; `PUBLISH` answers how
//! many subscribers got the request, so the asker knows how many answers to
//! wait for, and gives up after the query timeout (answering with what it has).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::{Registry, Token};

use super::conn::RedisConn;
use super::resp::{Limits, Value};
use crate::chat::names::{valid_nick, valid_room, Folded};
use crate::chat::remote::Request;
use crate::chat::{ConnId, Hub, Sink};

/// First reconnect delay; doubled per failure up to [`MAX_BACKOFF`], with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A command link with replies outstanding and none arriving for this long is
/// considered dead and reconnected.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from one Redis connection per event.
const READ_BUDGET: usize = 1 << 20;
/// Forget the last sequence number of a node not heard from for this long.
const FORGET_NODE: Duration = Duration::from_secs(600);
/// Most other nodes whose sequence numbers are remembered.
const MAX_NODES: usize = 65_536;
/// Most rooms one node lists in an answer to `/rooms`.
const MAX_ROOMS_ANSWER: usize = 10_000;

/// Refresh a nick registration: keep (or take back, after a Redis restart)
/// the key when it is free or ours, refuse when another node holds it.
const REFRESH_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or string.sub(v, 1, string.len(ARGV[2])) == ARGV[2] then \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 1 end return 0";
/// Delete a nick registration only when it is ours.
const RELEASE_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if v ~= false and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then \
redis.call('DEL', KEYS[1]) end return 0";

/// Settings of the cluster link (`--redis*` flags).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The Redis server, resolved before the loop starts.
    pub addr: SocketAddr,
    /// `AUTH` user name (Redis 6 ACL), if any.
    pub username: Option<String>,
    /// `AUTH` password, if any.
    pub password: Option<String>,
    /// `SELECT` database (0 sends none).
    pub db: u32,
    /// Lifetime of a nick registration; refreshed every third of it.
    pub nick_ttl: Duration,
    /// Bytes queued toward Redis per connection; beyond, commands are dropped and counted.
    pub max_buffer: usize,
    /// Longest wait for other nodes' answers to `/who` and `/rooms`.
    pub query_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults for everything but the address.
    pub fn new(addr: SocketAddr) -> Self {
        ClusterConfig {
            addr,
            username: None,
            password: None,
            db: 0,
            nick_ttl: Duration::from_secs(30),
            max_buffer: 8 << 20,
            query_timeout: Duration::from_millis(500),
        }
    }
}

/// Counters and gauges for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ClusterStats {
    /// Both connections are up and subscribed.
    pub up: bool,
    /// Channels the subscriber connection has confirmed.
    pub subscriptions: u64,
    /// Messages published.
    pub published: u64,
    /// Messages (and other commands) not sent because Redis was down or slow.
    pub dropped: u64,
    /// Messages received from other nodes and acted on.
    pub received: u64,
    /// Duplicates dropped by sequence number.
    pub duplicates: u64,
    /// Lines delivered to local connections from other nodes, per recipient.
    pub remote_deliveries: u64,
    /// Successful (re)connections of either link.
    pub connects: u64,
    /// Queries answered after the timeout without every node's answer.
    pub query_timeouts: u64,
    /// Nicks lost to another node (renamed to a guest nick).
    pub nick_conflicts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Down,
    Connecting,
    Ready,
}

/// What a reply on the command link answers.
#[derive(Debug)]
enum Pending {
    /// AUTH / SELECT: an error fails the link.
    Handshake,
    /// PING after the handshake: the link is ready.
    Ready,
    /// PUBLISH; kept so it can be sent again after a reconnect.
    Publish {
        bytes: Box<[u8]>,
        query: Option<u64>,
    },
    /// SET NX for a reservation.
    Reserve { id: ConnId, nick: Box<str> },
    /// The refresh script for a nick in use.
    Refresh { id: ConnId, nick: Box<str> },
    /// The release script (no answer needed).
    Release,
    /// GET of a nick for `/msg`.
    Lookup {
        id: ConnId,
        from: Box<str>,
        text: Box<str>,
    },
}

/// Marks a pending entry whose connection left.
const CANCELLED: ConnId = ConnId::MAX;

#[derive(Debug)]
enum QueryKind {
    Who {
        room: Box<str>,
        nicks: Vec<String>,
        total: usize,
    },
    Rooms {
        rooms: Vec<(String, usize)>,
    },
}

#[derive(Debug)]
struct Query {
    id: ConnId,
    kind: QueryKind,
    expected: Option<usize>,
    got: usize,
    deadline: Instant,
}

/// A random 64-bit node id (never zero).
fn random_id() -> u64 {
    crate::rng::random_u64() | 1
}

/// The cluster side of one process.
#[derive(Debug)]
pub struct Cluster {
    cfg: ClusterConfig,
    node: String,
    /// `NODE ` (registry values start with it).
    node_prefix: String,
    own_channel: Vec<u8>,
    cmd: RedisConn,
    sub: RedisConn,
    cmd_token: Token,
    sub_token: Token,
    cmd_link: Link,
    sub_link: Link,
    cmd_retry: Option<Instant>,
    sub_retry: Option<Instant>,
    cmd_backoff: Duration,
    sub_backoff: Duration,
    pending: VecDeque<Pending>,
    /// Replies the subscriber link owes for AUTH / SELECT.
    sub_handshake: usize,
    last_progress: Instant,
    /// Publishes whose reply was lost in a disconnect, sent again first.
    resend: Vec<Box<[u8]>>,
    resend_bytes: usize,
    seq: u64,
    last_seen: HashMap<Box<str>, (u64, Instant)>,
    /// Rooms (folded) with local members: subscribed while the link is up.
    rooms: HashSet<Box<str>>,
    queries: HashMap<u64, Query>,
    next_query: u64,
    next_heartbeat: Instant,
    next_prune: Instant,
    reported_up: Option<bool>,
    rng: crate::rng::Rng,
    requests: Vec<Request>,
    /// A read stopped at its budget: read again next turn.
    cmd_more: bool,
    sub_more: bool,
    /// Nicks whose refresh is still to be sent (this heartbeat).
    refresh_queue: Vec<(ConnId, Box<str>)>,
    payload: Vec<u8>,
    stats: ClusterStats,
}

impl Cluster {
    /// A node with a fresh random id; it connects on its first [`Cluster::turn`].
    pub fn new(cfg: ClusterConfig, cmd_token: Token, sub_token: Token) -> Cluster {
        let id = random_id();
        let node = format!("{id:016x}");
        let limits = Limits::default();
        let now = Instant::now();
        Cluster {
            node_prefix: format!("{node} "),
            own_channel: format!("lc:node:{node}").into_bytes(),
            cmd: RedisConn::new(cmd_token, cfg.max_buffer, limits),
            sub: RedisConn::new(sub_token, cfg.max_buffer, limits),
            cmd_token,
            sub_token,
            node,
            cfg,
            cmd_link: Link::Down,
            sub_link: Link::Down,
            cmd_retry: Some(now),
            sub_retry: Some(now),
            cmd_backoff: MIN_BACKOFF,
            sub_backoff: MIN_BACKOFF,
            pending: VecDeque::new(),
            sub_handshake: 0,
            last_progress: now,
            resend: Vec::new(),
            resend_bytes: 0,
            seq: 0,
            last_seen: HashMap::new(),
            rooms: HashSet::new(),
            queries: HashMap::new(),
            next_query: 1,
            next_heartbeat: now,
            next_prune: now + FORGET_NODE,
            reported_up: None,
            rng: crate::rng::Rng::new(id),
            requests: Vec::new(),
            cmd_more: false,
            sub_more: false,
            refresh_queue: Vec::new(),
            payload: Vec::new(),
            stats: ClusterStats::default(),
        }
    }

    /// This node's id (16 hex digits).
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// True when `token` is one of this node's Redis connections.
    pub fn owns(&self, token: Token) -> bool {
        token == self.cmd_token || token == self.sub_token
    }

    /// When the loop must come back at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.cmd_more || self.sub_more {
            return Some(Instant::now());
        }
        let mut at = Some(self.next_heartbeat);
        if !self.refresh_queue.is_empty() {
            // Come back soon (not at once: the buffer may be full for a while).
            at = Some(
                self.next_heartbeat
                    .min(Instant::now() + Duration::from_millis(10)),
            );
        }
        let mut min = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a: Instant| a.min(t)));
            }
        };
        min(self.cmd_retry);
        min(self.sub_retry);
        min(Some(self.next_prune));
        for q in self.queries.values() {
            min(Some(q.deadline));
        }
        if !self.pending.is_empty() {
            min(Some(self.last_progress + STALL_TIMEOUT));
        }
        at
    }
}

/// `KIND NODE SEQ REST` split into its parts.
fn split_payload(p: &str) -> Option<(&str, &str, u64, &str)> {
    let mut it = p.splitn(4, ' ');
    let kind = it.next()?;
    let node = it.next()?;
    let seq = it.next()?.parse().ok()?;
    Some((kind, node, seq, it.next().unwrap_or("")))
}

fn nick_key(nick: &str) -> Option<Vec<u8>> {
    let f = Folded::new(nick)?;
    Some(format!("lc:nick:{}", f.as_str()).into_bytes())
}

impl Cluster {
    /// Both links up (commands and subscriptions).
    pub fn is_up(&self) -> bool {
        self.cmd_link == Link::Ready && self.sub_link == Link::Ready
    }

    fn ttl_ms(&self) -> String {
        self.cfg.nick_ttl.as_millis().max(100).to_string()
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        crate::rng::jitter(base, self.rng.next_u64())
    }

    fn report(&mut self, reason: Option<&str>) {
        let up = self.is_up();
        self.stats.up = up;
        if self.reported_up == Some(up) {
            return;
        }
        if up {
            info!(
                "redis up at {} (node {}, {} local rooms)",
                self.cfg.addr,
                self.node,
                self.rooms.len()
            );
            self.reported_up = Some(true);
        } else if let Some(reason) = reason {
            // Logged once per outage, not once per attempt.
            warn!(
                "redis down at {}: {reason}; local chat goes on, reconnecting with backoff",
                self.cfg.addr
            );
            self.reported_up = Some(false);
        }
    }

    /// Per loop turn, after the hub ran: reconnects and timers that are due,
    /// the hub's requests turned into commands, and one flush of each link.
    pub fn turn(&mut self, registry: &Registry, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        // Input left behind by the read budget (no new edge will announce it).
        if std::mem::take(&mut self.cmd_more) {
            self.read_cmd(registry, hub, sink, now);
        }
        if std::mem::take(&mut self.sub_more) {
            self.read_sub(registry, hub, sink, now);
        }
        if self.cmd_retry.is_some_and(|t| now >= t) {
            self.cmd_retry = None;
            self.connect_cmd(registry, hub, sink, now);
        }
        if self.sub_retry.is_some_and(|t| now >= t) {
            self.sub_retry = None;
            self.connect_sub(registry, now);
        }
        if self.cmd_link != Link::Down
            && !self.pending.is_empty()
            && now >= self.last_progress + STALL_TIMEOUT
        {
            self.fail_cmd(registry, hub, sink, now, "no reply within 10s");
        }
        // Answers may make the hub ask for more (a refused claim renames to a
        // guest, which is claimed in turn): a few rounds, the rest next turn.
        for _ in 0..4 {
            let mut reqs = std::mem::take(&mut self.requests);
            hub.take_requests(&mut reqs);
            if reqs.is_empty() {
                self.requests = reqs;
                break;
            }
            for r in reqs.drain(..) {
                self.on_request(r, hub, sink, now);
            }
            self.requests = reqs;
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + (self.cfg.nick_ttl / 3).max(Duration::from_millis(50));
            if self.cmd_link == Link::Ready {
                self.refresh_nicks(hub);
            }
        }
        self.refresh_some();
        let expired: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| now >= q.deadline)
            .map(|(&k, _)| k)
            .collect();
        for qid in expired {
            self.finish_query(qid, true, hub, sink);
        }
        if now >= self.next_prune {
            self.next_prune = now + FORGET_NODE;
            self.last_seen
                .retain(|_, (_, t)| now.saturating_duration_since(*t) < FORGET_NODE);
        }
        self.flush(registry, hub, sink, now);
    }

    fn flush(&mut self, registry: &Registry, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        if let Err(e) = self.cmd.flush() {
            self.fail_cmd(registry, hub, sink, now, &e.to_string());
        }
        if let Err(e) = self.sub.flush() {
            self.fail_sub(registry, now, &e.to_string());
        }
    }

    /// A poll event for one of the Redis connections.
    #[allow(clippy::too_many_arguments)]
    pub fn on_event(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        registry: &Registry,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        if token == self.cmd_token {
            if writable {
                if let Err(e) = self.cmd.on_writable() {
                    self.fail_cmd(registry, hub, sink, now, &e.to_string());
                    return;
                }
            }
            if readable {
                self.read_cmd(registry, hub, sink, now);
            }
        } else if token == self.sub_token {
            if writable {
                if let Err(e) = self.sub.on_writable() {
                    self.fail_sub(registry, now, &e.to_string());
                    return;
                }
            }
            if readable {
                self.read_sub(registry, hub, sink, now);
            }
        }
    }

    fn read_cmd(&mut self, registry: &Registry, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        let res = self.cmd.read(READ_BUDGET);
        self.cmd_more = matches!(res, Ok(true));
        // What arrived before an error is handled first.
        self.cmd_replies(registry, hub, sink, now);
        if let Err(e) = res {
            if self.cmd.is_open() {
                self.fail_cmd(registry, hub, sink, now, &e.to_string());
            }
        }
    }

    fn read_sub(&mut self, registry: &Registry, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        let res = self.sub.read(READ_BUDGET);
        self.sub_more = matches!(res, Ok(true));
        self.sub_values(registry, hub, sink, now);
        if let Err(e) = res {
            if self.sub.is_open() {
                self.fail_sub(registry, now, &e.to_string());
            }
        }
    }

    fn connect_cmd(
        &mut self,
        registry: &Registry,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        if let Err(e) = self.cmd.connect(self.cfg.addr, registry) {
            self.fail_cmd(registry, hub, sink, now, &e.to_string());
            return;
        }
        self.cmd_link = Link::Connecting;
        self.last_progress = now;
        for p in self.handshake_commands(true) {
            self.pending.push_back(p);
        }
        for bytes in std::mem::take(&mut self.resend) {
            if self.cmd.queue_raw(&bytes) {
                self.pending
                    .push_back(Pending::Publish { bytes, query: None });
            } else {
                self.stats.dropped += 1;
            }
        }
        self.resend_bytes = 0;
    }

    /// Queue AUTH / SELECT (and PING on the command link); returns what each
    /// reply answers.
    fn handshake_commands(&mut self, cmd: bool) -> Vec<Pending> {
        let conn = if cmd { &mut self.cmd } else { &mut self.sub };
        let mut out = Vec::new();
        match (&self.cfg.username, &self.cfg.password) {
            (Some(u), Some(p)) => {
                conn.queue(&[b"AUTH", u.as_bytes(), p.as_bytes()]);
                out.push(Pending::Handshake);
            }
            (None, Some(p)) => {
                conn.queue(&[b"AUTH", p.as_bytes()]);
                out.push(Pending::Handshake);
            }
            _ => {}
        }
        if self.cfg.db != 0 {
            conn.queue(&[b"SELECT", self.cfg.db.to_string().as_bytes()]);
            out.push(Pending::Handshake);
        }
        if cmd {
            conn.queue(&[b"PING"]);
            out.push(Pending::Ready);
        }
        out
    }

    fn connect_sub(&mut self, registry: &Registry, now: Instant) {
        if let Err(e) = self.sub.connect(self.cfg.addr, registry) {
            self.fail_sub(registry, now, &e.to_string());
            return;
        }
        self.sub_link = Link::Connecting;
        self.sub_handshake = self.handshake_commands(false).len();
        let mut channels: Vec<Vec<u8>> = vec![b"lc:all".to_vec(), self.own_channel.clone()];
        channels.extend(
            self.rooms
                .iter()
                .map(|r| format!("lc:room:{r}").into_bytes()),
        );
        for chunk in channels.chunks(512) {
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(chunk.iter().map(Vec::as_slice));
            if !self.sub.queue(&args) {
                self.stats.dropped += 1;
            }
        }
    }

    fn fail_cmd(
        &mut self,
        registry: &Registry,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
        reason: &str,
    ) {
        debug!("redis command link: {reason}");
        self.cmd.close(registry);
        self.cmd_link = Link::Down;
        let delay = self.jittered(self.cmd_backoff);
        self.cmd_retry = Some(now + delay);
        self.cmd_backoff = (self.cmd_backoff * 2).min(MAX_BACKOFF);
        for p in std::mem::take(&mut self.pending) {
            match p {
                Pending::Publish { bytes, .. } => {
                    if self.resend_bytes + bytes.len() <= self.cfg.max_buffer {
                        self.resend_bytes += bytes.len();
                        self.resend.push(bytes);
                    } else {
                        self.stats.dropped += 1;
                    }
                }
                // Redis cannot say: the node decides alone, and the nick is
                // registered again (or lost to an earlier holder) on reconnect.
                Pending::Reserve { id, nick } if id != CANCELLED => {
                    hub.nick_reserved(id, &nick, true, sink);
                }
                Pending::Lookup { id, .. } if id != CANCELLED => {
                    sink.deliver(&[id], "ERR no-such-nick no such nick");
                }
                _ => {}
            }
        }
        self.report(Some(reason));
    }

    fn fail_sub(&mut self, registry: &Registry, now: Instant, reason: &str) {
        debug!("redis subscriber link: {reason}");
        self.sub.close(registry);
        self.sub_link = Link::Down;
        self.stats.subscriptions = 0;
        let delay = self.jittered(self.sub_backoff);
        self.sub_retry = Some(now + delay);
        self.sub_backoff = (self.sub_backoff * 2).min(MAX_BACKOFF);
        self.report(Some(reason));
    }

    fn cmd_replies(
        &mut self,
        registry: &Registry,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        loop {
            match self.cmd.next_value() {
                Ok(Some(v)) => {
                    self.last_progress = now;
                    if let Err(reason) = self.on_reply(v, hub, sink, now) {
                        self.fail_cmd(registry, hub, sink, now, &reason);
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.fail_cmd(registry, hub, sink, now, &e.to_string());
                    return;
                }
            }
        }
    }

    fn on_reply(
        &mut self,
        v: Value,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) -> Result<(), String> {
        let Some(p) = self.pending.pop_front() else {
            return Err("reply without a request".into());
        };
        match p {
            Pending::Handshake => {
                if let Value::Error(e) = v {
                    return Err(format!("refused: {}", String::from_utf8_lossy(&e)));
                }
            }
            Pending::Ready => {
                if let Value::Error(e) = v {
                    return Err(format!("PING refused: {}", String::from_utf8_lossy(&e)));
                }
                self.cmd_link = Link::Ready;
                self.cmd_backoff = MIN_BACKOFF;
                self.stats.connects += 1;
                // Register every local nick again right away.
                self.next_heartbeat = now;
                self.report(None);
            }
            Pending::Publish { query, .. } => {
                if let (Some(qid), Some(n)) = (query, v.as_int()) {
                    if let Some(q) = self.queries.get_mut(&qid) {
                        // The count includes this node's own subscription.
                        q.expected = Some((n.max(1) - 1) as usize);
                    }
                    self.finish_query(qid, false, hub, sink);
                }
            }
            Pending::Reserve { id, nick } => {
                let granted = matches!(&v, Value::Simple(s) if s == b"OK");
                let kept = id != CANCELLED && hub.nick_reserved(id, &nick, granted, sink);
                if granted && !kept {
                    self.release(&nick);
                }
            }
            Pending::Refresh { id, nick } => {
                if v.as_int() == Some(1) {
                    let still = id != CANCELLED
                        && hub
                            .nick(id)
                            .and_then(Folded::new)
                            .zip(Folded::new(&nick))
                            .is_some_and(|(a, b)| a.as_str() == b.as_str());
                    if !still {
                        self.release(&nick);
                    }
                } else if id != CANCELLED && matches!(v, Value::Integer(0)) {
                    self.stats.nick_conflicts += 1;
                    hub.nick_reserved(id, &nick, false, sink);
                }
            }
            Pending::Release => {}
            Pending::Lookup { id, from, text } => {
                if id == CANCELLED {
                    return Ok(());
                }
                let found = v
                    .as_bytes()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.split_once(' '))
                    .filter(|(node, nick)| *node != self.node && valid_nick(nick))
                    .map(|(node, nick)| (node.to_string(), nick.to_string()));
                match found {
                    Some((node, to)) => {
                        let line = format!("PRIV {from} {to} {text}");
                        let key = Folded::new(&to).map(|f| f.as_str().to_string());
                        self.seq += 1;
                        self.payload.clear();
                        self.payload.extend_from_slice(
                            format!(
                                "P {} {} {} {line}",
                                self.node,
                                self.seq,
                                key.unwrap_or_default()
                            )
                            .as_bytes(),
                        );
                        self.publish(format!("lc:node:{node}").as_bytes(), None);
                        sink.deliver(&[id], &line);
                    }
                    None => sink.deliver(&[id], "ERR no-such-nick no such nick"),
                }
            }
        }
        Ok(())
    }

    fn sub_values(
        &mut self,
        registry: &Registry,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        loop {
            let v = match self.sub.next_value() {
                Ok(Some(v)) => v,
                Ok(None) => return,
                Err(e) => {
                    self.fail_sub(registry, now, &e.to_string());
                    return;
                }
            };
            if let Err(reason) = self.on_sub_value(v, hub, sink, now) {
                self.fail_sub(registry, now, &reason);
                return;
            }
        }
    }

    /// Feed one value as if the subscriber link had received it; for the
    /// fuzz target and tests (no socket involved: publishes are dropped and
    /// counted as while Redis is down).
    #[doc(hidden)]
    pub fn feed_subscriber(&mut self, v: Value, hub: &mut Hub, sink: &mut impl Sink) {
        let _ = self.on_sub_value(v, hub, sink, Instant::now());
    }

    /// One value on the subscriber link: Err fails the link.
    fn on_sub_value(
        &mut self,
        v: Value,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) -> Result<(), String> {
        let items = match v {
            Value::Array(Some(items)) => items,
            Value::Error(e) => {
                return Err(format!("refused: {}", String::from_utf8_lossy(&e)));
            }
            _ => {
                self.sub_handshake = self.sub_handshake.saturating_sub(1);
                return Ok(());
            }
        };
        let kind = items.first().and_then(Value::as_bytes).unwrap_or(b"");
        match kind {
            b"message" => {
                if let (Some(ch), Some(p)) = (
                    items.get(1).and_then(Value::as_bytes),
                    items.get(2).and_then(Value::as_bytes),
                ) {
                    self.on_message(ch, p, hub, sink, now);
                }
            }
            b"subscribe" | b"unsubscribe" => {
                if let Some(n) = items.get(2).and_then(Value::as_int) {
                    self.stats.subscriptions = n.max(0) as u64;
                }
                if kind == b"subscribe" && self.sub_link != Link::Ready {
                    self.sub_link = Link::Ready;
                    self.sub_backoff = MIN_BACKOFF;
                    self.stats.connects += 1;
                    self.report(None);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        channel: &[u8],
        payload: &[u8],
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        // Our nodes never publish CR or LF (text has them replaced): a line
        // that has one did not come from a node and must not split a line.
        let Ok(p) = std::str::from_utf8(payload) else {
            return;
        };
        if p.contains(['\r', '\n']) {
            return;
        }
        let Some((kind, node, seq, rest)) = split_payload(p) else {
            return;
        };
        if node == self.node {
            return;
        }
        match self.last_seen.get_mut(node) {
            Some((last, seen)) => {
                if seq <= *last {
                    self.stats.duplicates += 1;
                    return;
                }
                *last = seq;
                *seen = now;
            }
            None => {
                // Bounded even if something floods Redis with made-up node
                // ids: beyond the cap, new ids are simply not deduplicated.
                if self.last_seen.len() < MAX_NODES {
                    self.last_seen.insert(node.into(), (seq, now));
                }
            }
        }
        self.stats.received += 1;
        let before = hub.deliveries();
        match kind {
            "M" => {
                if let Some(room) = channel
                    .strip_prefix(b"lc:room:")
                    .and_then(|r| std::str::from_utf8(r).ok())
                {
                    // Presence notices obey the presence limit here too,
                    // counted with this node's members.
                    let presence = rest.starts_with("JOINED ") || rest.starts_with("LEFT ");
                    if !presence || hub.room_len(room) <= hub.config().presence_limit {
                        hub.deliver_room(room, rest, sink);
                    }
                }
            }
            "N" => {
                if let Some((rooms, line)) = rest.split_once(' ') {
                    let rooms: Vec<&str> = rooms.split(',').take(64).collect();
                    hub.deliver_nick(&rooms, line, sink);
                }
            }
            "P" => {
                if let Some((to, line)) = rest.split_once(' ') {
                    hub.deliver_private(to, line, sink);
                }
            }
            "W" => {
                if let Some((qid, room)) = rest.split_once(' ') {
                    let (nicks, total) = hub.local_who(room);
                    self.seq += 1;
                    let mut s = format!("w {} {} {qid} {total}", self.node, self.seq);
                    for n in nicks {
                        s.push(' ');
                        s.push_str(n);
                    }
                    self.payload.clear();
                    self.payload.extend_from_slice(s.as_bytes());
                    self.publish(format!("lc:node:{node}").as_bytes(), None);
                }
            }
            "R" => {
                self.seq += 1;
                let mut s = format!("r {} {} {rest}", self.node, self.seq);
                for (name, n) in hub.local_rooms().into_iter().take(MAX_ROOMS_ANSWER) {
                    s.push_str(&format!(" {name}={n}"));
                }
                self.payload.clear();
                self.payload.extend_from_slice(s.as_bytes());
                self.publish(format!("lc:node:{node}").as_bytes(), None);
            }
            "w" => {
                let mut it = rest.split(' ');
                let qid = it.next().and_then(|q| q.parse::<u64>().ok());
                let total = it.next().and_then(|t| t.parse::<usize>().ok());
                if let (Some(qid), Some(total)) = (qid, total) {
                    if let Some(Query {
                        kind:
                            QueryKind::Who {
                                nicks, total: t, ..
                            },
                        got,
                        ..
                    }) = self.queries.get_mut(&qid)
                    {
                        *t = t.saturating_add(total);
                        *got += 1;
                        nicks.extend(it.filter(|n| valid_nick(n)).take(4096).map(str::to_string));
                        self.finish_query(qid, false, hub, sink);
                    }
                }
            }
            "r" => {
                let mut it = rest.split(' ');
                if let Some(qid) = it.next().and_then(|q| q.parse::<u64>().ok()) {
                    if let Some(Query {
                        kind: QueryKind::Rooms { rooms },
                        got,
                        ..
                    }) = self.queries.get_mut(&qid)
                    {
                        *got += 1;
                        for part in it.take(MAX_ROOMS_ANSWER) {
                            if let Some((name, n)) =
                                part.rsplit_once('=').filter(|(name, _)| valid_room(name))
                            {
                                if let Ok(n) = n.parse() {
                                    rooms.push((name.to_string(), n));
                                }
                            }
                        }
                        self.finish_query(qid, false, hub, sink);
                    }
                }
            }
            _ => {}
        }
        self.stats.remote_deliveries += hub.deliveries() - before;
    }

    /// Answer query `qid` when every node answered, or at once with `force`.
    fn finish_query(&mut self, qid: u64, force: bool, hub: &mut Hub, sink: &mut impl Sink) {
        let done = self
            .queries
            .get(&qid)
            .is_some_and(|q| force || q.expected.is_some_and(|e| q.got >= e));
        if !done {
            return;
        }
        let Some(q) = self.queries.remove(&qid) else {
            return;
        };
        if !q.expected.is_some_and(|e| q.got >= e) {
            self.stats.query_timeouts += 1;
        }
        match q.kind {
            QueryKind::Who { room, nicks, total } => {
                hub.answer_who(q.id, &room, &nicks, total, sink)
            }
            QueryKind::Rooms { rooms } => hub.answer_rooms(q.id, &rooms, sink),
        }
    }

    /// Publish `self.payload` to `channel`: false (counted) when Redis is down
    /// or the buffer toward it is full.
    fn publish(&mut self, channel: &[u8], query: Option<u64>) -> bool {
        if self.cmd_link == Link::Down {
            self.stats.dropped += 1;
            return false;
        }
        let mut bytes = Vec::with_capacity(self.payload.len() + channel.len() + 40);
        super::resp::encode_command(&mut bytes, &[b"PUBLISH", channel, &self.payload]);
        if !self.cmd.queue_raw(&bytes) {
            self.stats.dropped += 1;
            return false;
        }
        self.stats.published += 1;
        self.pending.push_back(Pending::Publish {
            bytes: bytes.into_boxed_slice(),
            query,
        });
        true
    }

    fn release(&mut self, nick: &str) {
        let Some(key) = nick_key(nick) else {
            return;
        };
        if self.cmd_link == Link::Down {
            return;
        }
        let prefix = self.node_prefix.clone();
        if self.cmd.queue(&[
            b"EVAL",
            RELEASE_SCRIPT.as_bytes(),
            b"1",
            &key,
            prefix.as_bytes(),
        ]) {
            self.pending.push_back(Pending::Release);
        } else {
            self.stats.dropped += 1;
        }
    }

    /// Start a refresh of every local nick; the commands go out over the
    /// next turns, as the buffer toward Redis has room (see `refresh_some`).
    fn refresh_nicks(&mut self, hub: &Hub) {
        self.refresh_queue.clear();
        self.refresh_queue
            .extend(hub.nicks().map(|(id, n)| (id, Box::<str>::from(n))));
    }

    /// Queue refresh commands while the outgoing buffer is under half full, so
    /// a heartbeat for many nicks never crowds out (or drops) chat traffic.
    fn refresh_some(&mut self) {
        if self.cmd_link != Link::Ready {
            return;
        }
        let ttl = self.ttl_ms();
        let prefix = self.node_prefix.clone();
        while self.cmd.queued() < self.cfg.max_buffer / 2 {
            let Some((id, nick)) = self.refresh_queue.pop() else {
                break;
            };
            let Some(key) = nick_key(&nick) else {
                continue;
            };
            let value = format!("{prefix}{nick}");
            if self.cmd.queue(&[
                b"EVAL",
                REFRESH_SCRIPT.as_bytes(),
                b"1",
                &key,
                value.as_bytes(),
                prefix.as_bytes(),
                ttl.as_bytes(),
            ]) {
                self.pending.push_back(Pending::Refresh { id, nick });
            } else {
                self.stats.dropped += 1;
            }
        }
        if self.refresh_queue.is_empty() && self.refresh_queue.capacity() > 1024 {
            self.refresh_queue = Vec::new();
        }
    }

    fn on_request(&mut self, r: Request, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        match r {
            Request::Subscribe(room) => {
                let ch = format!("lc:room:{room}");
                if self.rooms.insert(room)
                    && self.sub.is_open()
                    && !self.sub.queue(&[b"SUBSCRIBE", ch.as_bytes()])
                {
                    self.stats.dropped += 1;
                }
            }
            Request::Unsubscribe(room) => {
                let ch = format!("lc:room:{room}");
                if self.rooms.remove(&room)
                    && self.sub.is_open()
                    && !self.sub.queue(&[b"UNSUBSCRIBE", ch.as_bytes()])
                {
                    self.stats.dropped += 1;
                }
            }
            Request::Room { room, line } => {
                self.seq += 1;
                self.payload.clear();
                self.payload
                    .extend_from_slice(format!("M {} {} {line}", self.node, self.seq).as_bytes());
                self.publish(format!("lc:room:{room}").as_bytes(), None);
            }
            Request::Nick { rooms, line } => {
                if rooms.is_empty() {
                    return;
                }
                self.seq += 1;
                self.payload.clear();
                self.payload.extend_from_slice(
                    format!("N {} {} {} {line}", self.node, self.seq, rooms.join(",")).as_bytes(),
                );
                self.publish(b"lc:all", None);
            }
            Request::Reserve { id, nick } => {
                let Some(key) = nick_key(&nick) else {
                    return;
                };
                let value = format!("{}{nick}", self.node_prefix);
                let ttl = self.ttl_ms();
                if self.cmd_link != Link::Down
                    && self.cmd.queue(&[
                        b"SET",
                        &key,
                        value.as_bytes(),
                        b"NX",
                        b"PX",
                        ttl.as_bytes(),
                    ])
                {
                    self.pending.push_back(Pending::Reserve { id, nick });
                } else {
                    // Redis is unreachable: decide locally; the heartbeat
                    // registers it once Redis is back.
                    if self.cmd_link != Link::Down {
                        self.stats.dropped += 1;
                    }
                    hub.nick_reserved(id, &nick, true, sink);
                }
            }
            Request::Release { nick } => self.release(&nick),
            Request::Private { id, from, to, text } => {
                let key = nick_key(&to);
                match key {
                    Some(key) if self.cmd_link != Link::Down && self.cmd.queue(&[b"GET", &key]) => {
                        self.pending.push_back(Pending::Lookup { id, from, text });
                    }
                    _ => sink.deliver(&[id], "ERR no-such-nick no such nick"),
                }
            }
            Request::Who { id, room } => {
                if !self.is_up() {
                    hub.answer_who(id, &room, &[], 0, sink);
                    return;
                }
                let qid = self.next_query;
                self.next_query += 1;
                self.seq += 1;
                self.payload.clear();
                self.payload.extend_from_slice(
                    format!("W {} {} {qid} {room}", self.node, self.seq).as_bytes(),
                );
                self.queries.insert(
                    qid,
                    Query {
                        id,
                        kind: QueryKind::Who {
                            room,
                            nicks: Vec::new(),
                            total: 0,
                        },
                        expected: None,
                        got: 0,
                        deadline: now + self.cfg.query_timeout,
                    },
                );
                if !self.publish(b"lc:all", Some(qid)) {
                    self.finish_query(qid, true, hub, sink);
                }
            }
            Request::Rooms { id } => {
                if !self.is_up() {
                    hub.answer_rooms(id, &[], sink);
                    return;
                }
                let qid = self.next_query;
                self.next_query += 1;
                self.seq += 1;
                self.payload.clear();
                self.payload
                    .extend_from_slice(format!("R {} {} {qid}", self.node, self.seq).as_bytes());
                self.queries.insert(
                    qid,
                    Query {
                        id,
                        kind: QueryKind::Rooms { rooms: Vec::new() },
                        expected: None,
                        got: 0,
                        deadline: now + self.cfg.query_timeout,
                    },
                );
                if !self.publish(b"lc:all", Some(qid)) {
                    self.finish_query(qid, true, hub, sink);
                }
            }
            Request::Gone(id) => {
                for p in self.pending.iter_mut() {
                    match p {
                        Pending::Reserve { id: i, .. }
                        | Pending::Refresh { id: i, .. }
                        | Pending::Lookup { id: i, .. }
                            if *i == id =>
                        {
                            *i = CANCELLED;
                        }
                        _ => {}
                    }
                }
                self.queries.retain(|_, q| q.id != id);
                if !self.refresh_queue.is_empty() {
                    self.refresh_queue.retain(|(i, _)| *i != id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split() {
        assert_eq!(
            split_payload("M abc 7 MSG r a hi there"),
            Some(("M", "abc", 7, "MSG r a hi there"))
        );
        assert_eq!(split_payload("R abc 8"), Some(("R", "abc", 8, "")));
        assert_eq!(split_payload("M abc x y"), None);
        assert_eq!(split_payload("M"), None);
    }

    use crate::chat::Lines;

    fn message(channel: &str, payload: &str) -> Value {
        Value::Array(Some(vec![
            Value::Bulk(Some(b"message".to_vec())),
            Value::Bulk(Some(channel.as_bytes().to_vec())),
            Value::Bulk(Some(payload.as_bytes().to_vec())),
        ]))
    }

    #[test]
    fn remote_lines_are_deduplicated_and_filtered() {
        let mut hub = Hub::new(crate::chat::ChatConfig {
            rate_limit: 0,
            presence_limit: 1,
            ..crate::chat::ChatConfig::default()
        });
        hub.enable_cluster("t");
        let mut sink = Lines::default();
        hub.connect(0, Some("a"), Some("r"), 0, &mut sink);
        hub.connect(1, Some("b"), Some("r"), 0, &mut sink);
        let mut node = Cluster::new(
            ClusterConfig::new("127.0.0.1:9".parse().unwrap()),
            Token(1),
            Token(2),
        );
        sink.0.clear();
        node.feed_subscriber(
            message("lc:room:r", "M other 5 MSG r z hi"),
            &mut hub,
            &mut sink,
        );
        assert_eq!(sink.0.len(), 2, "to both members, once");
        // The same sequence number again (a resend after a reconnect): dropped.
        node.feed_subscriber(
            message("lc:room:r", "M other 5 MSG r z hi"),
            &mut hub,
            &mut sink,
        );
        node.feed_subscriber(
            message("lc:room:r", "M other 4 MSG r z old"),
            &mut hub,
            &mut sink,
        );
        assert_eq!(sink.0.len(), 2);
        assert_eq!(node.stats().duplicates, 2);
        // Our own payloads are ignored; presence over the limit is not delivered.
        let own = format!("M {} 9 MSG r a mine", node.node_id());
        node.feed_subscriber(message("lc:room:r", &own), &mut hub, &mut sink);
        node.feed_subscriber(
            message("lc:room:r", "M other 6 JOINED r z"),
            &mut hub,
            &mut sink,
        );
        // A payload with a line break did not come from a node.
        node.feed_subscriber(
            message("lc:room:r", "M other 7 MSG r z a\nERR x"),
            &mut hub,
            &mut sink,
        );
        assert_eq!(sink.0.len(), 2, "{:?}", sink.0);
        node.feed_subscriber(
            message("lc:all", "N other 8 r NICK z y"),
            &mut hub,
            &mut sink,
        );
        node.feed_subscriber(
            message("lc:node:x", "P other 9 B PRIV z b hi"),
            &mut hub,
            &mut sink,
        );
        assert_eq!(
            sink.0[2..],
            [
                (0, "NICK z y".to_string()),
                (1, "NICK z y".to_string()),
                (1, "PRIV z b hi".to_string())
            ]
        );
        assert_eq!(node.stats().remote_deliveries, 5);
    }

    #[test]
    fn answers_from_other_nodes_are_merged_and_checked() {
        let mut hub = Hub::new(crate::chat::ChatConfig {
            rate_limit: 0,
            ..crate::chat::ChatConfig::default()
        });
        hub.enable_cluster("t");
        let mut sink = Lines::default();
        hub.connect(0, Some("a"), Some("r"), 0, &mut sink);
        let mut node = Cluster::new(
            ClusterConfig::new("127.0.0.1:9".parse().unwrap()),
            Token(1),
            Token(2),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        for (qid, kind) in [
            (
                1,
                QueryKind::Who {
                    room: "r".into(),
                    nicks: Vec::new(),
                    total: 0,
                },
            ),
            (2, QueryKind::Rooms { rooms: Vec::new() }),
        ] {
            node.queries.insert(
                qid,
                Query {
                    id: 0,
                    kind,
                    expected: Some(2),
                    got: 0,
                    deadline,
                },
            );
        }
        sink.0.clear();
        let huge = usize::MAX.to_string();
        for p in [
            format!("w n1 1 1 {huge} b <bad> c"),
            format!("w n2 1 1 {huge} d"),
            format!("r n1 2 2 r={huge} x=2 bad!=1 y"),
            "r n2 2 2 X=3".to_string(),
        ] {
            node.feed_subscriber(message("lc:node:me", &p), &mut hub, &mut sink);
        }
        assert!(node.queries.is_empty(), "both complete");
        let who = &sink.0[0].1;
        assert!(who.starts_with("WHO r a b c d +"), "{who}");
        assert_eq!(sink.0[1].1, format!("ROOMS r={huge} x=5"));
    }

    #[test]
    fn node_ids_differ() {
        assert_ne!(random_id(), random_id());
    }
}
