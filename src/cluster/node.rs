//! One node of the cluster, sans-I/O: two Redis links (commands and
//! publishing; subscriptions, each a [`Link`]), the hub's requests turned into
//! RESP, and what arrives from the other nodes turned back into hub calls.
//!
//! The caller owns the sockets and the clock: it carries out
//! [`Cluster::poll_action`]s (connect, close), writes [`Cluster::transmit`],
//! feeds what it reads to [`Cluster::on_bytes`] and failures to
//! [`Cluster::on_closed`], calls [`Cluster::turn`] once per loop turn with
//! `now`, and sleeps at most until [`Cluster::poll_timeout`]. Every timer
//! (reconnects, stall and heartbeat per link, nick refresh, liveness,
//! reservation and query deadlines, pruning) is a field read there.
//!
//! Channels and keys (all names folded to lowercase):
//! - `lc:room:ROOM`: the lines of a room (`MSG`, `JOINED`, `LEFT`); a node is
//!   subscribed while it has local members in ROOM;
//! - `lc:all`: `NICK` notices, `/who`/`/rooms` questions, liveness notices
//!   and "this dropped session was resumed here" notices, every node
//!   subscribed;
//! - `lc:node:NODE`: private messages and answers to questions for one node;
//! - `lc:nick:NICK`: `"NODE REGISTERED_MS DISPLAY[ signed][ away]"` while
//!   NODE holds the nick (set with `SET NX PX ttl`, refreshed every ttl/3, so
//!   a dead node's nicks expire; on conflict the earlier registration wins;
//!   `away` while only a dropped session holds it);
//! - `lc:sess:HASH`: a dropped session's record, `NODE NICKKEY RECORD` (see
//!   `chat::hub::record`), until its TTL; `used` once a node took it.
//!
//! - `lc:seq:ROOM`: the room's message counter (hash: `e` its epoch, `s` the
//!   last number), expiring [`COUNTER_IDLE`] (or `--history-ttl`, if longer)
//!   after the room's last message: a counter that expired or was lost
//!   starts a new, later epoch, so ids are never reused either way;
//! - `lc:hist:ROOM`: the room's last `--history` messages, `ID TIME LINE`,
//!   expiring `--history-ttl` after the last one;
//! - `lc:applied:NODE`: the last sequence number of NODE's room messages
//!   numbered, so a resend after a lost reply is not numbered twice.
//!
//! Room messages (`MSG`) are ordered by Redis: while the command link is up
//! and nothing older waits, a `MSG` is not delivered anywhere before
//! [`SAY_SCRIPT`] has numbered it, stored it in `lc:hist:ROOM` and published
//! it, all in one atomic script. Every node subscribed to the room, the
//! sender's included, delivers it when it arrives, so every member sees the
//! order in which Redis published, and the hub drops any copy whose id is not
//! above the last it delivered (exactly once). The id and time are written by
//! Redis in front of the signed payload (`!ID TIME PAYLOAD`), outside the
//! signature: they come from Redis, which the nodes trust for ordering anyway.
//! Right after a room's first local join Redis may not have taken the node's
//! `SUBSCRIBE` yet, so the room's messages from this node wait (bounded)
//! until it is confirmed; if the subscriber link fails with messages in
//! flight, those are delivered here from the script's reply. While Redis is away the node falls back to the
//! v1 path (delivered here at once, relayed later as a plain line). A
//! message Redis will not number (the backlog is full, or the script fails)
//! is delivered here unnumbered and its sender told, like any line the
//! cluster cannot carry.
//!
//! Payloads are [`super::wire`] envelopes, signed with a cluster secret. A
//! node ignores its own, and drops one whose sequence number is not above the
//! last it saw from that node: what a node publishes while its link is down
//! waits in a bounded backlog and is sent in order after the reconnect, a
//! publish whose reply was lost goes again, and receivers drop duplicates.
//!
//! Invariants: a nick is never granted without the registry's answer (held
//! connections fail closed to a guest nick); every buffer and table is
//! bounded; what cannot be kept is counted and its sender told.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::link::{Link, LinkState};
use super::query::{self, Ask, Queries, Step};
use super::resp::{Limits, Value};
use super::wire::{split_id_time, split_numbered, valid_node, Body, Envelope, Signer};
use crate::chat::line::{self, Line};
use crate::chat::names::{valid_nick, Folded};
use crate::chat::remote::{Claim, Fetched, Request};
use crate::chat::{ConnId, Hub, Sink};

/// First reconnect delay; doubled per failure up to [`MAX_BACKOFF`], with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A link whose oldest outstanding request has waited this long for its
/// reply is considered dead and reconnected.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle link sends a `PING` this often, well inside [`STALL_TIMEOUT`], so a
/// dead link is noticed while it is quiet and a live one never looks stalled.
const HEARTBEAT: Duration = Duration::from_millis(2500);
/// After a reconnect, what was published while the link was down waits at
/// most this long for every node known before the outage to announce itself
/// again (so that it is subscribed when the backlog arrives).
const BACKLOG_WAIT: Duration = Duration::from_secs(10);
/// Channels per `SUBSCRIBE` command when resubscribing.
const SUBSCRIBE_BATCH: usize = 512;
/// Most (room, nick) pairs remembered per other node, for its `LEFT`s when it dies.
const MAX_PEER_MEMBERS: usize = 65_536;
/// Forget the last sequence number of a node not heard from for this long.
const FORGET_NODE: Duration = Duration::from_secs(600);
/// A room's message counter in Redis expires this long after the room's
/// last message (unless `--history-ttl` is longer), so rooms that were used
/// once do not stay in Redis for ever.
const COUNTER_IDLE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Sessions resumed from memory while Redis was away, remembered to be
/// marked used there.
const MAX_USES_WAITING: usize = 4096;
/// Most other nodes whose sequence numbers are remembered.
const MAX_NODES: usize = 65_536;

/// Refresh a nick registration (`KEYS[1]`; `ARGV`: value, `NODE `, ttl in
/// ms, registration time in ms, `1` when a token vouches for the nick): keep
/// the key when it is free or ours; against another holder, a signed
/// registration beats an unsigned one whatever the times (the token holder
/// wins); between two unsigned ones the earlier wins (IRC's rule: after a
/// Redis restart or an outage, ties to the holder), between two signed ones
/// the later (a second sign-in replaces the first); refuse otherwise. Values
/// are `NODE REGISTERED_MS DISPLAY`, plus ` signed` for a token holder's.
const REFRESH_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
local mine = v == false or string.sub(v, 1, string.len(ARGV[2])) == ARGV[2] \
if not mine then local theirs = string.match(v, '^%S+ %d+ %S+ signed') ~= nil \
local me = ARGV[5] == '1' \
if me ~= theirs then mine = me else \
local ts = tonumber(string.match(v, '^%S+ (%d+) ')) \
if me then mine = ts == nil or tonumber(ARGV[4]) > ts \
else mine = ts == nil or tonumber(ARGV[4]) < ts end end end \
if mine then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3]) return 1 end return 0";
/// One room message (see the module docs): number it in the room's order,
/// keep it in the room's history, and publish it with its id, atomically.
/// `KEYS`: `lc:seq:ROOM` (hash: `e` the room's epoch, `s` its counter),
/// `lc:hist:ROOM`, `lc:applied:NODE`. `ARGV`: channel, payload, the node's
/// sequence number, history length, history TTL in ms (0: none), TTL of
/// `lc:applied:NODE` in ms, the line, the idle lifetime of `lc:seq:ROOM` in
/// ms. A payload the node sends again after a
/// lost reply is recognised by its sequence number and not numbered twice
/// (nil reply). The reply is `ID TIME`; what is published is `!ID TIME `
/// followed by the payload. TIME is Redis' clock in ms; the epoch is that
/// clock when the room's counter was created, so a counter lost with a Redis
/// flush starts a later epoch instead of reusing ids.
const SAY_SCRIPT: &str = "local last = tonumber(redis.call('GET', KEYS[3]) or '0') \
if tonumber(ARGV[3]) <= last then return false end \
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[6]) \
local t = redis.call('TIME') \
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) \
local e = redis.call('HGET', KEYS[1], 'e') \
if not e then e = now redis.call('HSET', KEYS[1], 'e', e) end \
local id = e .. '-' .. redis.call('HINCRBY', KEYS[1], 's', 1) \
redis.call('PEXPIRE', KEYS[1], ARGV[8]) \
local k = tonumber(ARGV[4]) \
if k > 0 then redis.call('RPUSH', KEYS[2], id .. ' ' .. now .. ' ' .. ARGV[7]) \
redis.call('LTRIM', KEYS[2], -k, -1) \
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end end \
redis.call('PUBLISH', ARGV[1], '!' .. id .. ' ' .. now .. ' ' .. ARGV[2]) \
return id .. ' ' .. now";

/// Read a room's history (`KEYS`: `lc:seq:ROOM`, `lc:hist:ROOM`; `ARGV`: the
/// most entries to read): the counter's epoch and last number (nil when
/// none) and the entries, oldest first, in one consistent snapshot.
const HISTORY_SCRIPT: &str = "local c = redis.call('HMGET', KEYS[1], 'e', 's') \
return {c[1], c[2], redis.call('LRANGE', KEYS[2], -tonumber(ARGV[1]), -1)}";

/// Take a stored session (`KEYS[1]`: `lc:sess:HASH`, whose value is `NODE
/// NICKKEY RECORD`, see `chat::hub::record`): single use, the value becomes
/// the tombstone `used`, kept `ARGV[4]` ms longer than the record would
/// have been (so the storing node's expiry, which comes at about the
/// record's end, still finds it), and the nick's registration moves to this
/// node, with its registration time, when the storing node holds it or it is
/// free. `ARGV`: this node's prefix (`NODE `), the nick TTL in ms, now in ms,
/// the tombstone's extra life in ms. Reply: nil (no such session), `used`,
/// or `{RECORD, 1 when the nick is now ours, STORING NODE, REGISTERED MS}`.
const TAKE_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false then return false end \
if v == 'used' then return 'used' end \
local pt = redis.call('PTTL', KEYS[1]) \
if pt < 0 then pt = 0 end \
redis.call('SET', KEYS[1], 'used', 'PX', pt + tonumber(ARGV[4])) \
local old, key, rest = string.match(v, '^(%S+) (%S+) (.*)$') \
if not old then return {'', 0, '', '0'} end \
local disp, exp = string.match(rest, '^(%S+) %S+ %S+ (%S+)') \
if not disp then return {rest, 0, old, '0'} end \
local nk = 'lc:nick:' .. key \
local nv = redis.call('GET', nk) \
local ours = 0 \
local at = ARGV[3] \
if nv == false then \
local signed = '' if exp ~= '-' then signed = ' signed' end \
redis.call('SET', nk, ARGV[1] .. ARGV[3] .. ' ' .. disp .. signed, 'PX', ARGV[2]) ours = 1 \
elseif string.sub(nv, 1, string.len(old) + 1) == old .. ' ' then \
at = string.match(nv, '^%S+ (%d+) ') or ARGV[3] \
local head, flags = string.match(string.sub(nv, string.len(old) + 2), '^(%d+ %S+)(.*)$') \
local here = string.sub(nv, string.len(old) + 2) \
if head then here = head .. string.gsub(flags, ' away', '') end \
redis.call('SET', nk, ARGV[1] .. here, 'PX', ARGV[2]) ours = 1 \
elseif string.sub(nv, 1, string.len(ARGV[1])) == ARGV[1] then \
at = string.match(nv, '^%S+ (%d+) ') or ARGV[3] ours = 1 end \
return {rest, ours, old, at}";
/// Put back a session taken for a connection that closed before the answer
/// (`KEYS`: `lc:sess:HASH`, `lc:nick:NICK`; `ARGV`: the record's value, this
/// node's prefix, the storing node's prefix, the tombstone's extra life in
/// ms, the nick TTL in ms): the record as it was, for the rest of its life,
/// and the nick's registration back to the storing node (away). 0 when the
/// tombstone is gone.
const RESTORE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) ~= 'used' then return 0 end \
local pt = redis.call('PTTL', KEYS[1]) - tonumber(ARGV[4]) \
if pt <= 0 then return 0 end \
redis.call('SET', KEYS[1], ARGV[1], 'PX', pt) \
local nv = redis.call('GET', KEYS[2]) \
if nv and string.sub(nv, 1, string.len(ARGV[2])) == ARGV[2] then \
redis.call('SET', KEYS[2], ARGV[3] .. string.sub(nv, string.len(ARGV[2]) + 1) .. ' away', 'PX', ARGV[5]) end \
return 1";
/// How much longer than the record a taken session's tombstone lives.
const TOMBSTONE_EXTRA: Duration = Duration::from_secs(120);

/// End a stored session whose time ran out on the node that stored it
/// (`KEYS[1]`: `lc:sess:HASH`): 0 when another node took it (the tombstone),
/// else deleted and 1.
const END_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == 'used' then return 0 end \
redis.call('DEL', KEYS[1]) return 1";

/// The reply of [`HISTORY_SCRIPT`]: the room's counter (epoch, last number)
/// and its stored entries.
fn history_snapshot(items: &[Value]) -> (Option<(u64, u64)>, Vec<&[u8]>) {
    let num = |i: usize| {
        items
            .get(i)
            .and_then(Value::as_bytes)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok())
    };
    let entries = match items.get(2) {
        Some(Value::Array(Some(list))) => list.iter().filter_map(Value::as_bytes).collect(),
        _ => Vec::new(),
    };
    (num(0).zip(num(1)), entries)
}

/// The scripts' `EVALSHA` names (the SHA-1 of their text, in hex). Each
/// command-link handshake loads every script (`SCRIPT LOAD`), so a message
/// carries 40 bytes of name instead of the script's text (about 1 KB) and
/// Redis does not hash the text again per call. A `NOSCRIPT` reply (an
/// operator's `SCRIPT FLUSH`) fails the link: the reconnect loads them again
/// and resends what was unanswered.
#[derive(Debug)]
struct Scripts {
    say: String,
    history: String,
    refresh: String,
    release: String,
    take: String,
    end: String,
    restore: String,
}

/// Every script, loaded in each handshake.
const ALL_SCRIPTS: [&str; 7] = [
    SAY_SCRIPT,
    HISTORY_SCRIPT,
    REFRESH_SCRIPT,
    RELEASE_SCRIPT,
    TAKE_SCRIPT,
    END_SCRIPT,
    RESTORE_SCRIPT,
];

fn script_sha(script: &str) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(script.as_bytes())
        .iter()
        .fold(String::with_capacity(40), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            say: script_sha(SAY_SCRIPT),
            history: script_sha(HISTORY_SCRIPT),
            refresh: script_sha(REFRESH_SCRIPT),
            release: script_sha(RELEASE_SCRIPT),
            take: script_sha(TAKE_SCRIPT),
            end: script_sha(END_SCRIPT),
            restore: script_sha(RESTORE_SCRIPT),
        }
    }
}

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
    /// Longest wait for other nodes' answers to `/who` and `/rooms`, and for
    /// the registry's answer to a nick claim.
    pub query_timeout: Duration,
    /// The shared secret of `--cluster-secret-file`: payloads are signed and
    /// checked with HMAC-SHA256. `None` sends and accepts unsigned payloads.
    pub secret: Option<Vec<u8>>,
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
            secret: None,
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
    /// `/who` and `/rooms` questions this node asked the others (one at a
    /// time; repeated questions are answered from a cache).
    pub queries: u64,
    /// Nicks lost to another node (renamed to a guest nick).
    pub nick_conflicts: u64,
    /// Payloads dropped as unsigned or badly signed (with a secret).
    pub rejected: u64,
    /// Payloads dropped as not well-formed.
    pub malformed: u64,
    /// Other nodes declared dead (silent for the nick TTL).
    pub dead_nodes: u64,
    /// Bytes waiting in the backlog (published while the link was down).
    pub backlog_bytes: u64,
    /// Nick claims refused because the registry could not confirm them in
    /// time (Redis down, buffer full, or `--redis-query-timeout`).
    pub nick_unconfirmed: u64,
}

/// Which of the node's two Redis connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Commands and publishing.
    Cmd,
    /// Subscriptions.
    Sub,
}

/// Socket work the node asks of its caller (see [`Cluster::poll_action`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the configured address for this link; report
    /// bytes with [`Cluster::on_bytes`] and failure with [`Cluster::on_closed`].
    Connect(Which),
    /// Drop this link's connection (the node has given up on it).
    Close(Which),
}

/// What a reply on the command link answers.
#[derive(Debug)]
enum Pending {
    /// AUTH / SELECT: an error fails the link.
    Handshake,
    /// PING after the handshake: the link is ready.
    Ready,
    /// PUBLISH (or the room message script); kept so it can be sent again
    /// after a reconnect.
    Publish {
        bytes: Box<[u8]>,
        query: Option<u64>,
        /// The connection whose line it carries (told if it is lost), or CANCELLED.
        sender: ConnId,
        /// A room message numbered by Redis: its room and line.
        say: Option<Box<Say>>,
    },
    /// PUBLISH of a liveness notice (never sent again).
    Alive,
    /// SET NX for a reservation made at `at` (ms since the epoch).
    Reserve { id: ConnId, nick: Box<str>, at: u64 },
    /// The refresh script for a nick in use.
    Refresh { id: ConnId, nick: Box<str> },
    /// The release script (no answer needed).
    Release,
    /// A heartbeat `PING` (no answer needed beyond its arrival).
    Ping,
    /// The history script for `/history`.
    History {
        id: ConnId,
        room: Box<str>,
        after: Option<Box<str>>,
        limit: u32,
    },
    /// GET of a nick for `/msg`.
    Lookup {
        id: ConnId,
        from: Box<str>,
        text: Box<str>,
    },
    /// SET of a dropped session's record (no answer needed).
    StoreSession,
    /// The take script for a resume.
    TakeSession { id: ConnId, key: Box<str> },
    /// The end script for a session that timed out here.
    EndSession { key: Box<str> },
    /// The history script for a resumed connection's catch-up in `room`.
    Catchup { id: ConnId, room: Box<str> },
    /// `HMGET` of a newly subscribed room's counter.
    Counter { room: Box<str> },
}

/// Marks a pending entry whose connection left.
const CANCELLED: ConnId = ConnId::MAX;

/// An encoded PUBLISH waiting in the backlog.
#[derive(Debug)]
struct Outgoing {
    bytes: Box<[u8]>,
    sender: ConnId,
    say: Option<Box<Say>>,
}

/// A room message sent through [`SAY_SCRIPT`]: what this node delivers from
/// the script's reply when its own copy cannot come back by pub/sub.
#[derive(Debug)]
struct Say {
    /// Folded room name.
    room: Box<str>,
    /// The `MSG` line.
    line: Box<str>,
}

/// A room as another node spells it, and that node's members in it.
type RoomMembers = (Box<str>, Vec<Box<str>>);

/// What this node knows of another node.
#[derive(Debug)]
struct Peer {
    /// Last payload from it.
    heard: Instant,
    /// It announced itself since this node's links came back.
    announced: bool,
    /// Its members as seen in its room lines: folded room → (room as it
    /// spells it, nicks).
    members: HashMap<Box<str>, RoomMembers>,
    /// Pairs in `members` (bounded by [`MAX_PEER_MEMBERS`]).
    count: usize,
}

impl Peer {
    fn new(now: Instant) -> Peer {
        Peer {
            heard: now,
            announced: false,
            members: HashMap::new(),
            count: 0,
        }
    }

    /// Follow membership from one of its room lines (`room` folded).
    fn track(&mut self, room: &str, line: &str) {
        // A `MSG` (one per message: the hot path) names its sender second;
        // the full parse would scan the whole text for nothing here.
        if let Some(rest) = line.strip_prefix("MSG ") {
            let mut it = rest.splitn(3, ' ');
            if let (Some(display), Some(nick), Some(_)) = (it.next(), it.next(), it.next()) {
                self.add(room, display, nick);
            }
            return;
        }
        match line::parse(line) {
            Ok((
                _,
                Line::Joined {
                    room: display,
                    nick,
                },
            )) => self.add(room, display, nick),
            Ok((_, Line::Left { nick, .. })) => self.remove(room, nick),
            _ => {}
        }
    }

    /// `nick` left `room` (folded) there.
    fn remove(&mut self, room: &str, nick: &str) {
        if let Some(e) = self.members.get_mut(room) {
            if let Some(i) = e.1.iter().position(|n| **n == *nick) {
                e.1.swap_remove(i);
                self.count -= 1;
            }
            if e.1.is_empty() {
                self.members.remove(room);
            }
        }
    }

    /// `nick` is in `room` (folded; `display` as the node spells it) there.
    fn add(&mut self, room: &str, display: &str, nick: &str) {
        if self.count >= MAX_PEER_MEMBERS {
            return;
        }
        let e = self
            .members
            .entry(room.into())
            .or_insert_with(|| (display.into(), Vec::new()));
        if !e.1.iter().any(|n| **n == *nick) {
            e.1.push(nick.into());
            self.count += 1;
        }
    }

    /// `NICK OLD NEW` from it: rename in every room.
    fn rename(&mut self, line: &str) {
        let Ok((_, Line::Nick { old, new })) = line::parse(line) else {
            return;
        };
        for (_, nicks) in self.members.values_mut() {
            for n in nicks.iter_mut().filter(|n| ***n == *old) {
                *n = new.into();
            }
        }
    }
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
    /// `EVALSHA` names of the scripts.
    scripts: Scripts,
    own_channel: Vec<u8>,
    /// Commands and publishing.
    cmd: Link,
    /// Subscriptions.
    sub: Link,
    /// Socket work for the caller, oldest first.
    actions: VecDeque<Action>,
    /// Requests on the command link awaiting their reply, oldest first, with
    /// the time each was queued (stall detection runs from the oldest).
    pending: VecDeque<(Instant, Pending)>,
    /// Replies the subscriber link owes for AUTH / SELECT.
    sub_handshake: usize,
    /// The time of the current turn or event, stamped on queued requests.
    now: Instant,
    /// PUBLISH commands waiting for the link, oldest first: published while
    /// it was down or its buffer full, or sent but unanswered when it failed.
    /// At most `max_buffer` bytes; sent in order once the link is back.
    backlog: VecDeque<Outgoing>,
    backlog_bytes: usize,
    /// Senders of lines that could not be kept: told with a `SYS` line.
    undelivered: Vec<ConnId>,
    /// Room messages Redis will not number (the backlog was full, or the
    /// script failed): delivered to this node's members unnumbered, so at
    /// least they see them (bounded as `undelivered`).
    unnumbered: Vec<(Say, ConnId)>,
    /// Room messages waiting for their room's subscription to be confirmed
    /// (see `say`), oldest first (each with its `say`), their bytes in
    /// `early_bytes`.
    early: Vec<Outgoing>,
    early_bytes: usize,
    /// When both links were last fully up (every channel subscribed again);
    /// `None` while either is down or still resubscribing.
    up_since: Option<Instant>,
    /// Channels still to subscribe on the subscriber link (sent in batches).
    resub: Vec<Vec<u8>>,
    /// Channels sent in `SUBSCRIBE`s and confirmed, since the link connected.
    sub_sent: u64,
    sub_confirmed: u64,
    /// Other nodes heard from: liveness and the members they announced.
    peers: HashMap<Box<str>, Peer>,
    /// When the next liveness notice is due.
    next_alive: Instant,
    seq: u64,
    last_seen: HashMap<Box<str>, (u64, Instant)>,
    /// Rooms (folded) with local members: subscribed while the link is up.
    rooms: HashSet<Box<str>>,
    /// Rooms of `rooms` whose subscription Redis has confirmed: a message
    /// this node publishes there comes back to it by pub/sub.
    confirmed: HashSet<Box<str>>,
    /// Catch-ups of resumed connections waiting for their room's
    /// subscription to be confirmed (bounded by the connections held).
    catchup_wait: Vec<(ConnId, Box<str>)>,
    /// Sessions resumed from memory while the command link was down, to be
    /// marked used when it is back (at most [`MAX_USES_WAITING`]).
    uses_waiting: Vec<Box<str>>,
    /// `/who` and `/rooms` asked of the other nodes, one at a time.
    queries: Queries,
    /// This node's answer to `/rooms`, reused for [`query::CACHE_FOR`]
    /// however many nodes ask.
    rooms_answer: Option<(Instant, String)>,
    next_heartbeat: Instant,
    next_prune: Instant,
    reported_up: Option<bool>,
    rng: crate::rng::Rng,
    requests: Vec<Request>,
    /// When each nick this node holds (folded) was registered, in ms since
    /// the Unix epoch: stored with the key and compared on conflicts.
    registered: HashMap<Box<str>, u64>,
    /// Leading entries of `pending` already checked against the query
    /// timeout (a reservation past it was answered `TimedOut`).
    timed_out: usize,
    /// Nicks whose refresh is still to be sent (this heartbeat).
    refresh_queue: Vec<(ConnId, Box<str>, bool)>,
    payload: Vec<u8>,
    /// Signs what this node publishes and checks what it receives.
    signer: Signer,
    stats: ClusterStats,
}

impl Cluster {
    /// A node with a fresh random id; it connects on its first [`Cluster::turn`].
    pub fn new(cfg: ClusterConfig, now: Instant) -> Cluster {
        Cluster::with_id(cfg, random_id(), now)
    }

    /// A node with the given id (nonzero; tests use fixed ones).
    pub fn with_id(cfg: ClusterConfig, id: u64, now: Instant) -> Cluster {
        let node = format!("{id:016x}");
        let limits = Limits::default();
        let signer = Signer::new(cfg.secret.as_deref());
        let queries = Queries::new(cfg.query_timeout);
        Cluster {
            node_prefix: format!("{node} "),
            scripts: Scripts::new(),
            own_channel: format!("lc:node:{node}").into_bytes(),
            cmd: Link::new(cfg.max_buffer, limits, MIN_BACKOFF, now),
            sub: Link::new(cfg.max_buffer, limits, MIN_BACKOFF, now),
            actions: VecDeque::new(),
            node,
            cfg,
            pending: VecDeque::new(),
            sub_handshake: 0,
            now,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            undelivered: Vec::new(),
            unnumbered: Vec::new(),
            early: Vec::new(),
            early_bytes: 0,
            up_since: None,
            resub: Vec::new(),
            sub_sent: 0,
            sub_confirmed: 0,
            peers: HashMap::new(),
            next_alive: now,
            seq: 0,
            last_seen: HashMap::new(),
            rooms: HashSet::new(),
            confirmed: HashSet::new(),
            catchup_wait: Vec::new(),
            uses_waiting: Vec::new(),
            queries,
            rooms_answer: None,
            next_heartbeat: now,
            next_prune: now + FORGET_NODE,
            reported_up: None,
            rng: crate::rng::Rng::new(id),
            requests: Vec::new(),
            refresh_queue: Vec::new(),
            registered: HashMap::new(),
            timed_out: 0,
            payload: Vec::new(),
            signer,
            stats: ClusterStats::default(),
        }
    }

    /// The Redis server's address (where [`Action::Connect`] connects).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.cfg.addr
    }

    /// This node's id (16 hex digits).
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> ClusterStats {
        ClusterStats {
            backlog_bytes: self.backlog_bytes as u64,
            ..self.stats.clone()
        }
    }

    /// The next socket operation the caller must carry out, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The bytes to write on `which`'s connection (once it is established).
    pub fn transmit(&self, which: Which) -> &[u8] {
        self.link(which).transmit()
    }

    /// `n` bytes of [`Cluster::transmit`] were written.
    pub fn advance(&mut self, which: Which, n: usize) {
        self.link_mut(which).advance(n);
    }

    fn link(&self, which: Which) -> &Link {
        match which {
            Which::Cmd => &self.cmd,
            Which::Sub => &self.sub,
        }
    }

    fn link_mut(&mut self, which: Which) -> &mut Link {
        match which {
            Which::Cmd => &mut self.cmd,
            Which::Sub => &mut self.sub,
        }
    }

    /// When the loop must come back at the latest (the earliest entry of the
    /// node's timers), as seen at `now`.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let mut at = Some(self.next_heartbeat);
        if !self.refresh_queue.is_empty() || !self.resub.is_empty() || !self.backlog.is_empty() {
            // Come back soon (not at once: the buffer may be full for a while).
            at = Some(self.next_heartbeat.min(now + Duration::from_millis(10)));
        }
        if self.up_since.is_some() {
            at = at.map(|a| a.min(self.next_alive));
        }
        let mut min = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a: Instant| a.min(t)));
            }
        };
        min(self.cmd.retry);
        min(self.sub.retry);
        min(Some(self.next_prune));
        min(self.queries.deadline());
        if let Some((at, _)) = self.pending.front() {
            min(Some(*at + STALL_TIMEOUT));
        }
        if let Some(at) = self.sub.ping {
            min(Some(at + STALL_TIMEOUT));
        }
        if let Some((at, _)) = self.pending.get(self.timed_out) {
            min(Some(*at + self.cfg.query_timeout));
        }
        if self.cmd.state == LinkState::Ready {
            min(Some(self.cmd.beat + HEARTBEAT));
        }
        if self.sub.state == LinkState::Ready {
            min(Some(self.sub.beat + HEARTBEAT));
        }
        at
    }
}

/// A registry value `NODE REGISTERED_MS DISPLAY`: the node and the nick.
fn parse_registration(v: &str) -> Option<(&str, &str)> {
    let mut it = v.split(' ');
    let node = it.next()?;
    it.next()?.parse::<u64>().ok()?;
    Some((node, it.next()?))
}

/// A registry value: `NODE REGISTERED_MS DISPLAY`, plus ` signed` when a
/// token vouches for the nick (`prefix` is `NODE `).
/// True when a registry value is marked `away` (a flag after `NODE TIME NICK`,
/// so a nick spelled `away` is not one).
fn is_away(v: &str) -> bool {
    v.split(' ').skip(3).any(|f| f == "away")
}

/// A nick's registry value; `away` marks a dropped session's nick (held
/// for its resume: nobody else may take it, but `/msg` finds nobody).
fn registration(prefix: &str, at: u64, nick: &str, signed: bool, away: bool) -> String {
    let mark = if signed { " signed" } else { "" };
    let away = if away { " away" } else { "" };
    format!("{prefix}{at} {nick}{mark}{away}")
}

/// Milliseconds since the Unix epoch (registration times are compared across
/// nodes, so they come from the wall clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn nick_key(nick: &str) -> Option<Vec<u8>> {
    let f = Folded::new(nick)?;
    Some(format!("lc:nick:{}", f.as_str()).into_bytes())
}

impl Cluster {
    /// Both links up (commands and subscriptions).
    pub fn is_up(&self) -> bool {
        self.cmd.state == LinkState::Ready && self.sub.state == LinkState::Ready
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
    /// and the hub's requests turned into commands. Then the caller carries
    /// out [`Cluster::poll_action`]s and writes [`Cluster::transmit`].
    pub fn turn(&mut self, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        self.now = now;
        if self.cmd.retry.is_some_and(|t| now >= t) {
            self.connect_cmd(now);
        }
        if self.sub.retry.is_some_and(|t| now >= t) {
            self.connect_sub(now);
        }
        if self.cmd.state != LinkState::Down
            && self
                .pending
                .front()
                .is_some_and(|(at, _)| now >= *at + STALL_TIMEOUT)
        {
            self.fail_cmd(hub, sink, now, "no reply within 10s");
        }
        if self.sub.state != LinkState::Down
            && self.sub.ping.is_some_and(|at| now >= at + STALL_TIMEOUT)
        {
            self.fail_sub(now, "no heartbeat reply within 10s");
        }
        self.heartbeat(now);
        self.expire_reservations(hub, sink, now);
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
            if self.cmd.state == LinkState::Ready {
                self.refresh_nicks(hub);
            }
        }
        self.refresh_some();
        self.subscribe_some();
        self.liveness(hub, sink, now);
        self.drain_backlog(now);
        for (say, sender) in std::mem::take(&mut self.unnumbered) {
            hub.deliver_room(&say.room, &say.line, sink);
            if sender != CANCELLED {
                // Not coming back from Redis: its sender's `/quit` need not wait.
                hub.said(sender, &say.room, None, sink);
            }
        }
        for id in std::mem::take(&mut self.undelivered) {
            hub.not_relayed(id, sink);
        }
        self.finish_queries(false, hub, sink, now);
        hub.set_ordered(self.cmd.state == LinkState::Ready && self.backlog.is_empty());
        if now >= self.next_prune {
            self.next_prune = now + FORGET_NODE;
            self.last_seen
                .retain(|_, (_, t)| now.saturating_duration_since(*t) < FORGET_NODE);
        }
    }

    /// Bytes read from `which`'s connection: its replies are handled.
    pub fn on_bytes(
        &mut self,
        which: Which,
        bytes: &[u8],
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        self.now = now;
        if !self.link(which).is_open() {
            return;
        }
        let res = self.link_mut(which).receive(bytes);
        match which {
            Which::Cmd => self.cmd_replies(hub, sink, now),
            Which::Sub => self.sub_values(hub, sink, now),
        }
        if let Err(e) = res {
            self.on_closed(which, &e.to_string(), hub, sink, now);
        }
    }

    /// `which`'s connection failed or was closed by Redis (or could not be
    /// opened): the link goes down and reconnects with backoff.
    pub fn on_closed(
        &mut self,
        which: Which,
        reason: &str,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        self.now = now;
        if !self.link(which).is_open() {
            return;
        }
        match which {
            Which::Cmd => self.fail_cmd(hub, sink, now, reason),
            Which::Sub => self.fail_sub(now, reason),
        }
    }

    fn connect_cmd(&mut self, now: Instant) {
        self.cmd.open(now);
        self.actions.push_back(Action::Connect(Which::Cmd));
        for p in self.handshake_commands(true) {
            self.expect(p);
        }
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
            for script in ALL_SCRIPTS {
                conn.queue(&[b"SCRIPT", b"LOAD", script.as_bytes()]);
                out.push(Pending::Handshake);
            }
            conn.queue(&[b"PING"]);
            out.push(Pending::Ready);
        }
        out
    }

    fn connect_sub(&mut self, now: Instant) {
        self.sub.open(now);
        self.actions.push_back(Action::Connect(Which::Sub));
        self.sub_handshake = self.handshake_commands(false).len();
        // Every channel again, in batches paced by the buffer (see
        // `subscribe_some`); the node's own channels go first.
        self.resub.clear();
        self.resub.extend(
            self.rooms
                .iter()
                .map(|r| format!("lc:room:{r}").into_bytes()),
        );
        self.resub.push(self.own_channel.clone());
        self.resub.push(b"lc:all".to_vec());
        self.sub_sent = 0;
        self.sub_confirmed = 0;
    }

    /// Queue `SUBSCRIBE`s for waiting channels while the buffer toward Redis
    /// is under half full; the rest wait for the next turn (nothing is given
    /// up: a channel leaves `resub` only once its command is queued).
    fn subscribe_some(&mut self) {
        if !self.sub.is_open() {
            return;
        }
        while !self.resub.is_empty() && self.sub.queued() < self.cfg.max_buffer / 2 {
            let from = self.resub.len().saturating_sub(SUBSCRIBE_BATCH);
            let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
            args.extend(self.resub[from..].iter().rev().map(Vec::as_slice));
            if !self.sub.queue(&args) {
                break;
            }
            self.sub_sent += (self.resub.len() - from) as u64;
            self.resub.truncate(from);
        }
        if self.resub.is_empty() && self.resub.capacity() > 1024 {
            self.resub = Vec::new();
        }
    }

    fn fail_cmd(&mut self, hub: &mut Hub, sink: &mut impl Sink, now: Instant, reason: &str) {
        debug!("redis command link: {reason}");
        self.cmd.close();
        self.actions.push_back(Action::Close(Which::Cmd));
        let delay = self.jittered(self.cmd.backoff);
        self.cmd.retry = Some(now + delay);
        self.cmd.backoff = (self.cmd.backoff * 2).min(MAX_BACKOFF);
        self.timed_out = 0;
        self.went_down();
        // Unanswered publishes go back to the front of the backlog, in order
        // (they are older than anything in it): receivers drop the copies
        // they already had by sequence number.
        let mut unanswered = Vec::new();
        for (_, p) in std::mem::take(&mut self.pending) {
            match p {
                Pending::Publish {
                    bytes, sender, say, ..
                } => {
                    unanswered.push(Outgoing { bytes, sender, say });
                }
                // Redis cannot say: fail closed.
                Pending::Reserve { id, nick, .. } if id != CANCELLED => {
                    self.stats.nick_unconfirmed += 1;
                    hub.nick_reserved(id, &nick, Claim::Unreachable, sink);
                }
                Pending::Lookup { id, .. } if id != CANCELLED => {
                    hub.private_not_found(id, sink);
                }
                Pending::History { id, .. } if id != CANCELLED => {
                    hub.history_unavailable(id, sink);
                }
                Pending::TakeSession { id, .. } if id != CANCELLED => {
                    hub.session_taken(id, Fetched::Unreachable, sink);
                }
                Pending::EndSession { key } => hub.session_ended(&key, true, sink),
                Pending::Catchup { id, room } if id != CANCELLED => {
                    hub.catchup_unavailable(id, &room, sink);
                }
                _ => {}
            }
        }
        for (id, room) in std::mem::take(&mut self.catchup_wait) {
            hub.catchup_unavailable(id, &room, sink);
        }
        for o in unanswered.into_iter().rev() {
            if self.backlog_bytes + o.bytes.len() <= self.cfg.max_buffer {
                self.backlog_bytes += o.bytes.len();
                self.backlog.push_front(o);
            } else {
                self.lost(o.sender);
                if let Some(say) = o.say {
                    if self.unnumbered.len() < 4096 {
                        self.unnumbered.push((*say, o.sender));
                    }
                }
            }
        }
        self.report(Some(reason));
    }

    /// A line that cannot reach the other nodes: counted, and its sender told.
    fn lost(&mut self, sender: ConnId) {
        self.stats.dropped += 1;
        if sender != CANCELLED && self.undelivered.len() < 4096 {
            self.undelivered.push(sender);
        }
    }

    /// Either link went down: the node is no longer caught up, and after it
    /// comes back it waits for the other nodes to announce themselves again.
    fn went_down(&mut self) {
        self.up_since = None;
        for p in self.peers.values_mut() {
            p.announced = false;
        }
    }

    fn fail_sub(&mut self, now: Instant, reason: &str) {
        debug!("redis subscriber link: {reason}");
        self.sub.close();
        self.actions.push_back(Action::Close(Which::Sub));
        self.went_down();
        self.confirmed.clear();
        // Not coming back by pub/sub now: numbered at once, delivered here
        // from the script's reply.
        self.release_early(None);
        self.stats.subscriptions = 0;
        let delay = self.jittered(self.sub.backoff);
        self.sub.retry = Some(now + delay);
        self.sub.backoff = (self.sub.backoff * 2).min(MAX_BACKOFF);
        self.report(Some(reason));
    }

    fn cmd_replies(&mut self, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        loop {
            match self.cmd.next_value() {
                Ok(Some(v)) => {
                    if let Err(reason) = self.on_reply(v, hub, sink, now) {
                        self.fail_cmd(hub, sink, now, &reason);
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    self.fail_cmd(hub, sink, now, &e.to_string());
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
        if matches!(&v, Value::Error(e) if e.starts_with(b"NOSCRIPT")) {
            // Scripts flushed under us: reconnect, load them, resend.
            return Err("scripts not loaded (SCRIPT FLUSH?)".into());
        }
        self.timed_out = self.timed_out.saturating_sub(1);
        let Some((_, p)) = self.pending.pop_front() else {
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
                self.cmd.state = LinkState::Ready;
                self.cmd.backoff = MIN_BACKOFF;
                self.stats.connects += 1;
                for key in std::mem::take(&mut self.uses_waiting) {
                    self.use_session(&key);
                }
                // Register every local nick again right away.
                self.next_heartbeat = now;
                self.report(None);
            }
            Pending::Publish {
                say: Some(say),
                sender,
                ..
            } => {
                let numbered = v
                    .as_bytes()
                    .and_then(split_id_time)
                    .filter(|(_, _, rest)| rest.is_empty());
                if sender != CANCELLED {
                    let n = numbered.map(|(id, time, _)| (id, time));
                    hub.said(sender, &say.room, n, sink);
                }
                match numbered {
                    // The subscriber link failed (or the room was left) after
                    // the message went out: its copy cannot come back by
                    // pub/sub, so it is delivered from the reply (a later
                    // pub/sub copy has the same id and is dropped by the hub).
                    Some((id, time, _)) if !self.confirmed.contains(&say.room) => {
                        hub.deliver_ordered(&say.room, id, time, &say.line, sink);
                    }
                    Some(_) => {}
                    // Nil: already numbered before a reconnect.
                    None if matches!(v, Value::Bulk(None)) => {}
                    // The script failed: not numbered, not published.
                    None => {
                        self.lost(sender);
                        hub.deliver_room(&say.room, &say.line, sink);
                    }
                }
            }
            Pending::Publish { query, .. } => {
                if let (Some(qid), Some(n)) = (query, v.as_int()) {
                    // The count includes this node's own subscription.
                    self.queries.expect(qid, (n.max(1) - 1) as usize);
                    self.finish_queries(false, hub, sink, now);
                }
            }
            Pending::Reserve { id, nick, at } => {
                let claim = match &v {
                    Value::Simple(s) if s == b"OK" => Claim::Granted,
                    Value::Error(_) => Claim::Unreachable,
                    _ => Claim::Taken,
                };
                let granted = claim == Claim::Granted;
                if granted {
                    if let Some(k) = Folded::new(&nick) {
                        self.registered.insert(k.as_str().into(), at);
                    }
                }
                let kept = id != CANCELLED && hub.nick_reserved(id, &nick, claim, sink);
                if granted && !kept {
                    self.release(&nick);
                }
            }
            Pending::Refresh { id, nick } => {
                if v.as_int() == Some(1) {
                    // (A connection that dropped since keeps its nick in its
                    // session: still ours.)
                    let still = hub.holds_detached_nick(&nick)
                        || (id != CANCELLED
                            && hub
                                .nick(id)
                                .and_then(Folded::new)
                                .zip(Folded::new(&nick))
                                .is_some_and(|(a, b)| a.as_str() == b.as_str()));
                    if !still {
                        self.release(&nick);
                    }
                } else if matches!(v, Value::Integer(0)) {
                    self.stats.nick_conflicts += 1;
                    if id != CANCELLED {
                        if let Some(k) = Folded::new(&nick) {
                            self.registered.remove(k.as_str());
                        }
                        hub.nick_reserved(id, &nick, Claim::Taken, sink);
                    } else {
                        // A dropped session's nick went to someone else (or
                        // with the session, to another node): Redis says
                        // which, and the session ends accordingly. Its
                        // registration time is kept meanwhile, so a later
                        // refresh never wins the nick back by being newer.
                        hub.held_nick_refused(&nick, sink);
                    }
                }
            }
            Pending::Release | Pending::Ping | Pending::Alive | Pending::StoreSession => {}
            Pending::TakeSession { id, key } => {
                let text = |i: usize, items: &[Value]| {
                    items
                        .get(i)
                        .and_then(Value::as_bytes)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .map(str::to_string)
                };
                let (old, at) = match &v {
                    Value::Array(Some(items)) => (
                        text(2, items),
                        text(3, items).and_then(|t| t.parse::<u64>().ok()),
                    ),
                    _ => (None, None),
                };
                let from = old.as_deref().filter(|o| valid_node(o) && *o != self.node);
                let fetched = match &v {
                    Value::Bulk(None) | Value::Array(None) => Fetched::Missing,
                    Value::Array(Some(items)) => match (items.first(), items.get(1)) {
                        (Some(rec), Some(ours)) => Fetched::Found {
                            record: rec
                                .as_bytes()
                                .and_then(|b| std::str::from_utf8(b).ok())
                                .unwrap_or(""),
                            nick_ours: ours.as_int() == Some(1),
                            from,
                        },
                        _ => Fetched::Missing,
                    },
                    Value::Error(_) => Fetched::Unreachable,
                    _ => Fetched::Used,
                };
                if let (Fetched::Found { record, .. }, Some(old), true) =
                    (fetched, &old, id == CANCELLED)
                {
                    // Its connection closed before the answer: the session is
                    // put back as it was, still the storing node's.
                    self.restore_session(&key, record, old);
                    return Ok(());
                }
                if let Fetched::Found {
                    record,
                    nick_ours: true,
                    ..
                } = fetched
                {
                    // The registration keeps its time: the storing node's
                    // copy, refreshing it with the same time, never wins it
                    // back.
                    if let Some(k) = record.split(' ').next().and_then(Folded::new) {
                        self.registered
                            .insert(k.as_str().into(), at.unwrap_or_else(unix_ms));
                    }
                }
                if id != CANCELLED {
                    hub.session_taken(id, fetched, sink);
                }
            }
            Pending::Counter { room } => {
                if let Value::Array(Some(items)) = &v {
                    let (counter, _) = history_snapshot(items);
                    hub.room_counter(&room, counter);
                }
            }
            Pending::EndSession { key } => {
                hub.session_ended(&key, v.as_int() != Some(0), sink);
            }
            Pending::Catchup { id, room } => {
                if id == CANCELLED {
                    return Ok(());
                }
                let Value::Array(Some(items)) = &v else {
                    hub.catchup_unavailable(id, &room, sink);
                    return Ok(());
                };
                let (counter, entries) = history_snapshot(items);
                hub.answer_catchup(id, &room, counter, &entries, unix_ms(), sink);
            }
            Pending::History {
                id,
                room,
                after,
                limit,
            } => {
                if id == CANCELLED {
                    return Ok(());
                }
                let Value::Array(Some(items)) = &v else {
                    hub.history_unavailable(id, sink);
                    return Ok(());
                };
                let (counter, entries) = history_snapshot(items);
                hub.answer_history(
                    id,
                    &room,
                    after.as_deref(),
                    limit,
                    counter,
                    &entries,
                    unix_ms(),
                    sink,
                );
            }
            Pending::Lookup { id, from, text } => {
                if id == CANCELLED {
                    return Ok(());
                }
                // A dropped session's nick (`away`) has nobody to deliver to.
                let found = v
                    .as_bytes()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .filter(|v| !is_away(v))
                    .and_then(parse_registration)
                    .filter(|(node, nick)| *node != self.node && valid_nick(nick))
                    .map(|(node, nick)| (node.to_string(), nick.to_string()));
                match found {
                    Some((node, to)) => {
                        let line = hub.private_found(id, &from, &to, &text, sink);
                        let key = Folded::new(&to).map(|f| f.as_str().to_string());
                        self.send(
                            format!("lc:node:{node}").as_bytes(),
                            Body::Private {
                                to: key.as_deref().unwrap_or_default(),
                                line: &line,
                            },
                            None,
                            id,
                        );
                    }
                    None => hub.private_not_found(id, sink),
                }
            }
        }
        Ok(())
    }

    fn sub_values(&mut self, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        loop {
            let v = match self.sub.next_value() {
                Ok(Some(v)) => v,
                Ok(None) => return,
                Err(e) => {
                    self.fail_sub(now, &e.to_string());
                    return;
                }
            };
            if let Err(reason) = self.on_sub_value(v, hub, sink, now) {
                self.fail_sub(now, &reason);
                return;
            }
        }
    }

    /// Feed one value as if the subscriber link had received it; for the
    /// fuzz target and tests (with the links down, publishes wait in the
    /// backlog or are dropped and counted, as while Redis is down).
    #[doc(hidden)]
    pub fn feed_subscriber(&mut self, v: Value, hub: &mut Hub, sink: &mut impl Sink) {
        let now = self.now;
        self.feed_at(v, hub, sink, now);
    }

    /// [`Cluster::feed_subscriber`] at `now`.
    #[doc(hidden)]
    pub fn feed_at(&mut self, v: Value, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        self.now = now;
        let _ = self.on_sub_value(v, hub, sink, now);
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
            b"pong" => self.sub.ping = None,
            b"message" => {
                if let (Some(ch), Some(p)) = (
                    items.get(1).and_then(Value::as_bytes),
                    items.get(2).and_then(Value::as_bytes),
                ) {
                    self.on_message(ch, p, hub, sink, now);
                }
            }
            b"subscribe" | b"unsubscribe" => {
                if let Some(room) = items
                    .get(1)
                    .and_then(Value::as_bytes)
                    .and_then(|c| c.strip_prefix(b"lc:room:"))
                    .and_then(|r| std::str::from_utf8(r).ok())
                {
                    if kind == b"subscribe" {
                        if self.rooms.contains(room) {
                            self.confirmed.insert(room.into());
                            let room = room.to_string();
                            self.release_early(Some(&room));
                            self.catchups_confirmed(&room, hub, sink);
                        }
                    } else {
                        self.confirmed.remove(room);
                    }
                }
                if let Some(n) = items.get(2).and_then(Value::as_int) {
                    self.stats.subscriptions = n.max(0) as u64;
                }
                if kind == b"subscribe" {
                    self.sub_confirmed += 1;
                }
                if kind == b"subscribe" && self.sub.state != LinkState::Ready {
                    self.sub.state = LinkState::Ready;
                    self.sub.beat = now;
                    self.sub.backoff = MIN_BACKOFF;
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
        // A room message numbered by Redis: the id and time come first,
        // outside the signature (Redis, not the sender, writes them).
        let (numbered, payload) = match split_numbered(payload) {
            Some((id, time, rest)) => (Some((id, time)), rest),
            None => (None, payload),
        };
        // The signature (with a secret) is checked before anything is read:
        // a forged payload never reaches the sequence numbers below.
        let env = match self.signer.open(channel, payload) {
            Ok(env) => env,
            Err(e) => {
                if e.is_signature() {
                    self.stats.rejected += 1;
                } else {
                    self.stats.malformed += 1;
                }
                return;
            }
        };
        let (node, seq) = (env.node, env.seq);
        if let (Some((id, time)), Body::Room { line }) = (numbered, env.body) {
            if !line.starts_with("MSG ") {
                self.stats.malformed += 1;
                return;
            }
            // Delivered from every node, this one's own included, in the
            // order Redis published them; the hub drops copies by id.
            if let Some(room) = channel
                .strip_prefix(b"lc:room:")
                .and_then(|r| std::str::from_utf8(r).ok())
            {
                if node != self.node {
                    if let Some(peer) = self.peers.get_mut(node) {
                        peer.heard = now;
                    }
                    self.stats.received += 1;
                }
                let before = hub.deliveries();
                if hub.deliver_ordered(room, id, time, line, sink) && node != self.node {
                    self.stats.remote_deliveries += hub.deliveries() - before;
                }
            }
            return;
        }
        if node == self.node {
            return;
        }
        if self.peers.len() < MAX_NODES || self.peers.contains_key(node) {
            let peer = self
                .peers
                .entry(node.into())
                .or_insert_with(|| Peer::new(now));
            peer.heard = now;
            // Outside the sequence (see `announce`).
            if matches!(env.body, Body::Alive { .. }) {
                peer.announced = self.up_since.is_some();
            }
        }
        if matches!(env.body, Body::Alive { .. }) {
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
        if let Body::Resumed {
            from,
            selector,
            key,
            nick,
            rooms,
        } = env.body
        {
            if from == self.node {
                hub.session_moved(selector, key);
            }
            // Its memberships now live on the sender: a death of either node
            // then says `LEFT` for it exactly when it should.
            let rooms = rooms.split(',').filter(|r| *r != "-");
            for display in rooms {
                let Some(room) = Folded::new(display) else {
                    continue;
                };
                if let Some(old) = self.peers.get_mut(from) {
                    old.remove(room.as_str(), nick);
                }
                if let Some(new) = self.peers.get_mut(node) {
                    new.add(room.as_str(), display, nick);
                }
            }
            return;
        }
        if let Some(peer) = self.peers.get_mut(node) {
            match env.body {
                Body::Room { line } => {
                    if let Some(room) = channel
                        .strip_prefix(b"lc:room:")
                        .and_then(|r| std::str::from_utf8(r).ok())
                    {
                        peer.track(room, line);
                    }
                }
                Body::Nick { line, .. } => peer.rename(line),
                // Members named in an answer to this node's `/who`.
                Body::WhoAnswer { qid, nicks, .. } => {
                    if let Some(room) = self.queries.who_room(qid) {
                        for n in nicks.split(' ').filter(|n| valid_nick(n)) {
                            peer.add(room, room, n);
                        }
                    }
                }
                _ => {}
            }
        }
        match env.body {
            Body::Room { line } if line.starts_with("JOINED ") || line.starts_with("LEFT ") => {
                if let Some(room) = channel
                    .strip_prefix(b"lc:room:")
                    .and_then(|r| std::str::from_utf8(r).ok())
                {
                    self.queries.membership_changed(room);
                }
            }
            Body::Nick { .. } => self.queries.nicks_changed(),
            _ => {}
        }
        let before = hub.deliveries();
        match env.body {
            Body::Room { line } => {
                if let Some(room) = channel
                    .strip_prefix(b"lc:room:")
                    .and_then(|r| std::str::from_utf8(r).ok())
                {
                    hub.deliver_remote_room(room, line, sink);
                }
            }
            Body::Nick { rooms, line } => {
                let rooms: Vec<&str> = rooms.split(',').take(64).collect();
                hub.deliver_nick(&rooms, line, sink);
            }
            Body::Private { to, line } => {
                hub.deliver_private(to, line, sink);
            }
            Body::Resumed { .. } => {}
            Body::WhoAsk { qid, room } => {
                let (nicks, total) = hub.local_who(room);
                let nicks = nicks.join(" ");
                self.send(
                    format!("lc:node:{node}").as_bytes(),
                    Body::WhoAnswer {
                        qid,
                        total: total as u64,
                        nicks: &nicks,
                    },
                    None,
                    CANCELLED,
                );
            }
            Body::RoomsAsk { qid } => {
                // Built at most once per cache period, however many ask.
                let rooms = match self.rooms_answer.take() {
                    Some((at, r)) if now < at + query::CACHE_FOR => (at, r),
                    _ => {
                        let mut r = String::new();
                        for (name, n) in hub.local_rooms().into_iter().take(query::MAX_ROOMS) {
                            if !r.is_empty() {
                                r.push(' ');
                            }
                            let _ = write!(r, "{name}={n}");
                        }
                        (now, r)
                    }
                };
                let (at, rooms) = rooms;
                self.send(
                    format!("lc:node:{node}").as_bytes(),
                    Body::RoomsAnswer { qid, rooms: &rooms },
                    None,
                    CANCELLED,
                );
                self.rooms_answer = Some((at, rooms));
            }
            Body::WhoAnswer { qid, total, nicks } => {
                self.queries.who_answer(qid, total, nicks);
                self.finish_queries(false, hub, sink, now);
            }
            Body::RoomsAnswer { qid, rooms } => {
                self.queries.rooms_answer(qid, rooms);
                self.finish_queries(false, hub, sink, now);
            }
            Body::Alive { .. } => {}
        }
        self.stats.remote_deliveries += hub.deliveries() - before;
    }

    /// Answer the question out when every node answered or its time is up
    /// (at once with `force`: it could not be asked), then ask the next.
    fn finish_queries(&mut self, force: bool, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        let mut force = force;
        // Bounded: each round finishes one question; the next one is asked
        // and stays out unless it cannot be sent.
        for _ in 0..query::MAX_WAITING {
            let Some(done) = self.queries.finished(now, force) else {
                return;
            };
            if done.timed_out && !force {
                self.stats.query_timeouts += 1;
            }
            for (id, room) in &done.askers {
                match done.ask {
                    Ask::Who(_) => {
                        hub.answer_who(*id, room, &done.merged.nicks, done.merged.total, sink)
                    }
                    Ask::Rooms => hub.answer_rooms(*id, &done.merged.rooms, sink),
                }
            }
            let Some((qid, ask)) = self.queries.next(now) else {
                return;
            };
            force = !self.ask_others(qid, &ask);
        }
    }

    /// Publish question `qid`; false when it cannot go out.
    fn ask_others(&mut self, qid: u64, ask: &Ask) -> bool {
        if !self.is_up() || !self.backlog.is_empty() {
            return false;
        }
        let body = match ask {
            Ask::Who(room) => Body::WhoAsk { qid, room },
            Ask::Rooms => Body::RoomsAsk { qid },
        };
        self.stats.queries += 1;
        self.send(b"lc:all", body, Some(qid), CANCELLED)
    }

    /// Reservations waiting longer than the query timeout are refused
    /// (`TimedOut`): a connection never waits on a slow Redis for its nick.
    /// A late grant is then released (the entry is marked cancelled).
    fn expire_reservations(&mut self, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        while let Some((at, p)) = self.pending.get_mut(self.timed_out) {
            if now < *at + self.cfg.query_timeout {
                break;
            }
            self.timed_out += 1;
            if let Pending::Reserve { id, nick, .. } = p {
                if *id != CANCELLED {
                    let (id, nick) = (std::mem::replace(id, CANCELLED), nick.clone());
                    self.stats.nick_unconfirmed += 1;
                    hub.nick_reserved(id, &nick, Claim::TimedOut, sink);
                }
            }
        }
    }

    /// Record a request just queued on the command link.
    fn expect(&mut self, p: Pending) {
        self.pending.push_back((self.now, p));
    }

    /// Send a `PING` on each ready link that has been quiet for a heartbeat
    /// period (the subscriber link answers it in subscribe mode too).
    fn heartbeat(&mut self, now: Instant) {
        if self.cmd.state == LinkState::Ready && now >= self.cmd.beat + HEARTBEAT {
            self.cmd.beat = now;
            if self.pending.is_empty() && self.cmd.queue(&[b"PING"]) {
                self.expect(Pending::Ping);
            }
        }
        if self.sub.state == LinkState::Ready && now >= self.sub.beat + HEARTBEAT {
            self.sub.beat = now;
            if self.sub.ping.is_none() && self.sub.queue(&[b"PING"]) {
                self.sub.ping = Some(now);
            }
        }
    }

    /// Encode (and sign) a payload with the next sequence number and
    /// publish it to `channel`; false (counted) when it cannot be sent.
    fn send(&mut self, channel: &[u8], body: Body<'_>, query: Option<u64>, sender: ConnId) -> bool {
        let keep = matches!(
            body,
            Body::Room { .. } | Body::Nick { .. } | Body::Private { .. }
        );
        self.seq += 1;
        let env = Envelope {
            node: &self.node,
            seq: self.seq,
            body,
        };
        self.signer.encode(channel, &env, &mut self.payload);
        let mut bytes = Vec::with_capacity(self.payload.len() + channel.len() + 40);
        super::resp::encode_command(&mut bytes, &[b"PUBLISH", channel, &self.payload]);
        self.publish(bytes, query, keep, sender, None)
    }

    /// A room's `MSG` line: through [`SAY_SCRIPT`], which numbers it, keeps
    /// it in the room's history and publishes it to every node, this one
    /// included (it is delivered here when it comes back).
    fn say(&mut self, room: &str, line: &str, sender: ConnId, keep: usize, ttl_ms: u64) {
        let channel = format!("lc:room:{room}");
        self.seq += 1;
        let env = Envelope {
            node: &self.node,
            seq: self.seq,
            body: Body::Room { line },
        };
        self.signer
            .encode(channel.as_bytes(), &env, &mut self.payload);
        let seq = self.seq.to_string();
        let keep = keep.to_string();
        let ttl = ttl_ms.to_string();
        let applied_ttl = (FORGET_NODE.as_millis() as u64).to_string();
        let counter_ttl = (COUNTER_IDLE.as_millis() as u64).max(ttl_ms).to_string();
        let mut bytes = Vec::with_capacity(self.payload.len() + 2 * line.len() + 220);
        super::resp::encode_command(
            &mut bytes,
            &[
                b"EVALSHA",
                self.scripts.say.as_bytes(),
                b"3",
                format!("lc:seq:{room}").as_bytes(),
                format!("lc:hist:{room}").as_bytes(),
                format!("lc:applied:{}", self.node).as_bytes(),
                channel.as_bytes(),
                &self.payload,
                seq.as_bytes(),
                keep.as_bytes(),
                ttl.as_bytes(),
                applied_ttl.as_bytes(),
                line.as_bytes(),
                counter_ttl.as_bytes(),
            ],
        );
        let say = Box::new(Say {
            room: room.into(),
            line: line.into(),
        });
        // Right after the room's first local join, Redis may not have taken
        // this node's SUBSCRIBE yet: numbered now, the message would not come
        // back here, and delivering it from the reply could put it ahead of
        // another node's message numbered earlier. So it waits until Redis
        // confirms the subscription (one round trip), then comes back in
        // order like every other.
        if self.sub.is_open()
            && !self.confirmed.contains(room)
            && self.early_bytes + bytes.len() <= self.cfg.max_buffer
        {
            self.early_bytes += bytes.len();
            self.early.push(Outgoing {
                bytes: bytes.into_boxed_slice(),
                sender,
                say: Some(say),
            });
            return;
        }
        self.publish(bytes, None, true, sender, Some(say));
    }

    /// Send the room messages held by `say` for `room` (every room: `None`).
    fn release_early(&mut self, room: Option<&str>) {
        if self.early.is_empty() {
            return;
        }
        let (go, stay): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.early)
                .into_iter()
                .partition(|o| match (room, &o.say) {
                    (None, _) => true,
                    (Some(r), Some(say)) => *say.room == *r,
                    (Some(_), None) => false,
                });
        self.early = stay;
        for o in go {
            self.early_bytes -= o.bytes.len();
            self.publish(o.bytes.into_vec(), None, true, o.sender, o.say);
        }
    }

    /// Publish `self.payload` to `channel`. While the link is down, its
    /// buffer full, or older payloads still wait, a payload worth keeping
    /// (`keep`: a room, nick or private line) joins the backlog, sent in order
    /// once the link is back; false (counted, the sender told) when it cannot
    /// be kept. Queries are never kept (they are answered locally instead).
    fn publish(
        &mut self,
        bytes: Vec<u8>,
        query: Option<u64>,
        keep: bool,
        sender: ConnId,
        say: Option<Box<Say>>,
    ) -> bool {
        if self.cmd.state == LinkState::Ready
            && self.backlog.is_empty()
            && self.cmd.queue_raw(&bytes)
        {
            self.stats.published += 1;
            self.expect(Pending::Publish {
                bytes: bytes.into_boxed_slice(),
                query,
                sender,
                say,
            });
            return true;
        }
        if !keep || self.backlog_bytes + bytes.len() > self.cfg.max_buffer {
            self.lost(if keep { sender } else { CANCELLED });
            if let Some(say) = say {
                if self.unnumbered.len() < 4096 {
                    self.unnumbered
                        .push((*say, if keep { sender } else { CANCELLED }));
                }
            }
            return false;
        }
        self.backlog_bytes += bytes.len();
        self.backlog.push_back(Outgoing {
            bytes: bytes.into_boxed_slice(),
            sender,
            say,
        });
        true
    }

    /// True when the backlog may go out: the command link is ready, this
    /// node is caught up, and every node heard from within the nick TTL
    /// before the outage has announced itself since (or [`BACKLOG_WAIT`]
    /// passed): they are subscribed again, so nothing is published to nobody.
    fn backlog_open(&self, now: Instant) -> bool {
        let Some(up) = self.up_since else {
            return false;
        };
        self.cmd.state == LinkState::Ready
            && (now >= up + BACKLOG_WAIT
                || self
                    .peers
                    .values()
                    .all(|p| p.announced || p.heard + self.cfg.nick_ttl <= up))
    }

    /// Move backlog entries to the command link while it takes them.
    fn drain_backlog(&mut self, now: Instant) {
        if self.backlog.is_empty() || !self.backlog_open(now) {
            return;
        }
        while let Some(o) = self.backlog.front() {
            if self.cmd.queued() >= self.cfg.max_buffer / 2 || !self.cmd.queue_raw(&o.bytes) {
                break;
            }
            let Some(o) = self.backlog.pop_front() else {
                break;
            };
            self.backlog_bytes -= o.bytes.len();
            self.stats.published += 1;
            self.expect(Pending::Publish {
                bytes: o.bytes,
                query: None,
                sender: o.sender,
                say: o.say,
            });
        }
        if self.backlog.is_empty() && self.backlog.capacity() > 1024 {
            self.backlog = VecDeque::new();
        }
    }

    /// Publish this node's liveness notice on `lc:all` (outside the sequence:
    /// receivers do not deduplicate it, so it never waits in the backlog).
    fn announce(&mut self, members: usize) {
        let env = Envelope {
            node: &self.node,
            seq: self.seq,
            body: Body::Alive {
                members: members as u64,
            },
        };
        self.signer.encode(b"lc:all", &env, &mut self.payload);
        let mut bytes = Vec::with_capacity(self.payload.len() + 40);
        super::resp::encode_command(&mut bytes, &[b"PUBLISH", b"lc:all", &self.payload]);
        if self.cmd.queue_raw(&bytes) {
            self.expect(Pending::Alive);
        }
    }

    /// Liveness: catch up after a reconnect, announce this node, and
    /// declare dead the nodes silent for the nick TTL while this one was up
    /// (their members leave, their nicks are freed).
    fn liveness(&mut self, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        let caught_up = self.cmd.state == LinkState::Ready
            && self.sub.state == LinkState::Ready
            && self.resub.is_empty()
            && self.sub_confirmed >= self.sub_sent;
        if !caught_up {
            return;
        }
        if self.up_since.is_none() {
            self.up_since = Some(now);
            self.next_alive = now;
        }
        if now < self.next_alive {
            return;
        }
        self.next_alive = now + self.alive_every();
        self.announce(hub.connections());
        let up = self.up_since.unwrap_or(now);
        let ttl = self.cfg.nick_ttl;
        let dead: Vec<Box<str>> = self
            .peers
            .iter()
            .filter(|(_, p)| now >= p.heard.max(up) + ttl)
            .map(|(n, _)| n.clone())
            .collect();
        for node in dead {
            let Some(peer) = self.peers.remove(&node) else {
                continue;
            };
            self.last_seen.remove(&node);
            self.stats.dead_nodes += 1;
            info!(
                "node {node} silent for {ttl:?}: {} of its members leave",
                peer.count
            );
            let prefix = format!("{node} ");
            for (room, (display, nicks)) in peer.members {
                for nick in nicks {
                    // Someone with that nick is in the room through a live
                    // node (a user who reconnected elsewhere): not a leave.
                    let elsewhere = self.peers.values().any(|p| {
                        p.members
                            .get(&room)
                            .is_some_and(|(_, n)| n.iter().any(|n| n.eq_ignore_ascii_case(&nick)))
                    }) || hub.local_owner(&nick).is_some();
                    if elsewhere {
                        continue;
                    }
                    hub.remote_left(&room, &display, &nick, sink);
                    // Free the nick now rather than at its expiry, if the
                    // dead node still holds it.
                    if let Some(key) = nick_key(&nick) {
                        self.queue_release(&key, prefix.as_bytes());
                    }
                }
            }
        }
    }

    /// How often this node announces itself: well inside the nick TTL, at
    /// most every heartbeat.
    fn alive_every(&self) -> Duration {
        (self.cfg.nick_ttl / 4).clamp(Duration::from_millis(50), HEARTBEAT)
    }

    /// Queue the script that deletes the registry `key` only while
    /// `owner_prefix` (a node's `NODE ` prefix) still holds it.
    fn queue_release(&mut self, key: &[u8], owner_prefix: &[u8]) -> bool {
        let queued = self.cmd.queue(&[
            b"EVALSHA",
            self.scripts.release.as_bytes(),
            b"1",
            key,
            owner_prefix,
        ]);
        if queued {
            self.expect(Pending::Release);
        }
        queued
    }

    fn release(&mut self, nick: &str) {
        let Some(key) = nick_key(nick) else {
            return;
        };
        if let Some(k) = Folded::new(nick) {
            self.registered.remove(k.as_str());
        }
        if self.cmd.state == LinkState::Down {
            return;
        }
        let prefix = self.node_prefix.clone();
        if !self.queue_release(&key, prefix.as_bytes()) {
            self.stats.dropped += 1;
        }
    }

    /// Start a refresh of every local nick; the commands go out over the
    /// next turns, as the buffer toward Redis has room (see `refresh_some`).
    fn refresh_nicks(&mut self, hub: &Hub) {
        self.refresh_queue.clear();
        self.refresh_queue.extend(hub.nicks().map(|(id, n)| {
            let signed = hub.claims_signed(id);
            (id, Box::<str>::from(n), signed)
        }));
        // A dropped session's nick stays registered while it may resume.
        self.refresh_queue.extend(
            hub.held_nicks()
                .map(|(n, signed)| (CANCELLED, Box::<str>::from(n), signed)),
        );
    }

    /// Queue refresh commands while the outgoing buffer is under half full, so
    /// a heartbeat for many nicks never crowds out (or drops) chat traffic.
    fn refresh_some(&mut self) {
        // Called every loop turn: nothing to allocate when nothing waits.
        if self.cmd.state != LinkState::Ready || self.refresh_queue.is_empty() {
            return;
        }
        let ttl = self.ttl_ms();
        let prefix = self.node_prefix.clone();
        while self.cmd.queued() < self.cfg.max_buffer / 2 {
            let Some((id, nick, signed)) = self.refresh_queue.pop() else {
                break;
            };
            let Some(key) = nick_key(&nick) else {
                continue;
            };
            let folded = Folded::new(&nick);
            let at = folded
                .and_then(|k| self.registered.get(k.as_str()).copied())
                .unwrap_or_else(unix_ms);
            // A dropped session's nick (no connection) is registered away.
            let value = registration(&prefix, at, &nick, signed, id == CANCELLED);
            let at = at.to_string();
            if self.cmd.queue(&[
                b"EVALSHA",
                self.scripts.refresh.as_bytes(),
                b"1",
                &key,
                value.as_bytes(),
                prefix.as_bytes(),
                ttl.as_bytes(),
                at.as_bytes(),
                if signed { b"1" } else { b"0" },
            ]) {
                self.expect(Pending::Refresh { id, nick });
            } else {
                self.stats.dropped += 1;
            }
        }
        if self.refresh_queue.is_empty() && self.refresh_queue.capacity() > 1024 {
            self.refresh_queue = Vec::new();
        }
    }

    /// `id` asks the cluster `ask`: answered from the cache, sent, or queued.
    fn ask(
        &mut self,
        id: ConnId,
        ask: Ask,
        room: &str,
        hub: &mut Hub,
        sink: &mut impl Sink,
        now: Instant,
    ) {
        let is_who = matches!(ask, Ask::Who(_));
        match self.queries.ask(id, ask, room, now) {
            Step::Answer(m) if is_who => hub.answer_who(id, room, &m.nicks, m.total, sink),
            Step::Answer(m) => hub.answer_rooms(id, &m.rooms, sink),
            Step::Send(qid, ask) => {
                if !self.ask_others(qid, &ask) {
                    self.finish_queries(true, hub, sink, now);
                }
            }
            Step::Wait => {}
        }
    }

    /// Undo a take whose connection closed before the answer.
    fn restore_session(&mut self, key: &str, record: &str, old: &str) {
        let Some(nick) = record.split(' ').next().and_then(Folded::new) else {
            return;
        };
        if !valid_node(old) {
            return;
        }
        self.registered.remove(nick.as_str());
        let value = format!("{old} {} {record}", nick.as_str());
        let nick_key = format!("lc:nick:{}", nick.as_str());
        let old_prefix = format!("{old} ");
        let extra = (TOMBSTONE_EXTRA.as_millis() as u64).to_string();
        let ttl = self.ttl_ms();
        if self.cmd.queue(&[
            b"EVALSHA",
            self.scripts.restore.as_bytes(),
            b"2",
            key.as_bytes(),
            nick_key.as_bytes(),
            value.as_bytes(),
            self.node_prefix.as_bytes(),
            old_prefix.as_bytes(),
            extra.as_bytes(),
            ttl.as_bytes(),
        ]) {
            self.expect(Pending::StoreSession);
        }
    }

    /// Mark the session under `key` used (it was resumed from memory here).
    fn use_session(&mut self, key: &str) {
        let set: &[&[u8]] = &[b"SET", key.as_bytes(), b"used", b"XX", b"KEEPTTL"];
        if self.cmd.queue(set) {
            self.expect(Pending::StoreSession);
        }
    }

    /// Queue [`HISTORY_SCRIPT`] for `room`'s last `keep` entries; false when
    /// the link cannot take it.
    fn queue_history(&mut self, room: &str, keep: usize) -> bool {
        let keep = keep.to_string();
        self.cmd.state == LinkState::Ready
            && self.cmd.queue(&[
                b"EVALSHA",
                self.scripts.history.as_bytes(),
                b"2",
                format!("lc:seq:{room}").as_bytes(),
                format!("lc:hist:{room}").as_bytes(),
                keep.as_bytes(),
            ])
    }

    /// Read `room`'s history for `id`'s catch-up (the subscription is confirmed).
    fn read_catchup(&mut self, id: ConnId, room: Box<str>, hub: &mut Hub, sink: &mut impl Sink) {
        if self.queue_history(&room, hub.config().history.keep.max(1)) {
            self.expect(Pending::Catchup { id, room });
        } else {
            hub.catchup_unavailable(id, &room, sink);
        }
    }

    /// Redis confirmed the subscription to `room`: its waiting catch-ups read.
    fn catchups_confirmed(&mut self, room: &str, hub: &mut Hub, sink: &mut impl Sink) {
        if self.catchup_wait.is_empty() {
            return;
        }
        let (now, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.catchup_wait)
            .into_iter()
            .partition(|(_, r)| &**r == room);
        self.catchup_wait = wait;
        for (id, room) in now {
            self.read_catchup(id, room, hub, sink);
        }
    }

    fn on_request(&mut self, r: Request, hub: &mut Hub, sink: &mut impl Sink, now: Instant) {
        match r {
            Request::Subscribe(room) => {
                // Sent by `subscribe_some` with any resubscription in progress.
                let ch = format!("lc:room:{room}");
                // Where the room stands now, for sessions that drop before
                // any line comes (read before the subscription takes: what
                // is said between the two is then replayed, not lost).
                let seq = format!("lc:seq:{room}");
                if self.cmd.state == LinkState::Ready
                    && self.cmd.queue(&[b"HMGET", seq.as_bytes(), b"e", b"s"])
                {
                    self.expect(Pending::Counter { room: room.clone() });
                }
                if self.rooms.insert(room) && self.sub.is_open() {
                    self.resub.push(ch.into_bytes());
                }
            }
            Request::Unsubscribe(room) => {
                self.confirmed.remove(&room);
                self.release_early(Some(&room));
                let ch = format!("lc:room:{room}");
                if self.rooms.remove(&room) && self.sub.is_open() {
                    let waiting = self.resub.len();
                    self.resub.retain(|c| *c != ch.as_bytes());
                    // Not yet subscribed: nothing to undo. Otherwise an
                    // UNSUBSCRIBE that does not fit only costs unwanted
                    // messages, which find no local room.
                    if self.resub.len() == waiting
                        && !self.sub.queue(&[b"UNSUBSCRIBE", ch.as_bytes()])
                    {
                        self.stats.dropped += 1;
                    }
                }
            }
            Request::Room { room, line } => {
                // The sender of a MSG line, told if it cannot reach the other nodes.
                let sender = line
                    .strip_prefix("MSG ")
                    .and_then(|r| r.split(' ').nth(1))
                    .and_then(|nick| hub.local_owner(nick))
                    .unwrap_or(CANCELLED);
                self.send(
                    format!("lc:room:{room}").as_bytes(),
                    Body::Room { line: &line },
                    None,
                    sender,
                );
            }
            Request::Say { room, line } => {
                let sender = line
                    .strip_prefix("MSG ")
                    .and_then(|r| r.split(' ').nth(1))
                    .and_then(|nick| hub.local_owner(nick))
                    .unwrap_or(CANCELLED);
                let h = &hub.config().history;
                let (keep, ttl) = (h.keep, h.ttl_ms);
                self.say(&room, &line, sender, keep, ttl);
            }
            Request::Kick {
                id,
                room,
                nick,
                line,
            } => {
                let key = Folded::new(&nick);
                let key = key.as_ref().map(|k| k.as_str());
                let there = self.peers.values().any(|p| {
                    p.members.get(&room).is_some_and(|(_, nicks)| {
                        nicks
                            .iter()
                            .any(|n| Folded::new(n).as_ref().map(|k| k.as_str()) == key)
                    })
                });
                if there {
                    hub.kick_confirmed(&room, &line, sink);
                    self.send(
                        format!("lc:room:{room}").as_bytes(),
                        Body::Room { line: &line },
                        None,
                        id,
                    );
                } else {
                    hub.kick_not_found(id, sink);
                }
            }
            Request::Nick { rooms, line } => {
                if rooms.is_empty() {
                    return;
                }
                let rooms = rooms.join(",");
                self.send(
                    b"lc:all",
                    Body::Nick {
                        rooms: &rooms,
                        line: &line,
                    },
                    None,
                    CANCELLED,
                );
            }
            Request::Reserve { id, nick } => {
                let Some(key) = nick_key(&nick) else {
                    return;
                };
                let at = unix_ms();
                // A token holder takes its nick from whoever has it (a guest
                // elsewhere is renamed, an older sign-in replaced, at their
                // node's next refresh); anyone else only a free nick.
                let signed = hub.claims_signed(id);
                let value = registration(&self.node_prefix, at, &nick, signed, false);
                let ttl = self.ttl_ms();
                let set: &[&[u8]] = if signed {
                    &[b"SET", &key, value.as_bytes(), b"PX", ttl.as_bytes()]
                } else {
                    &[b"SET", &key, value.as_bytes(), b"NX", b"PX", ttl.as_bytes()]
                };
                if self.cmd.state != LinkState::Down && self.cmd.queue(set) {
                    self.expect(Pending::Reserve { id, nick, at });
                } else {
                    // Nobody can confirm the nick: fail closed.
                    if self.cmd.state != LinkState::Down {
                        self.stats.dropped += 1;
                    }
                    self.stats.nick_unconfirmed += 1;
                    hub.nick_reserved(id, &nick, Claim::Unreachable, sink);
                }
            }
            Request::Release { nick } => self.release(&nick),
            Request::Renew { nick, id, signed } => {
                // Registered again at the next turn, as what it is now: a
                // connection's, or a dropped session's (away); an older
                // entry for it in the queue would undo that.
                self.refresh_queue
                    .retain(|(_, n, _)| !n.eq_ignore_ascii_case(&nick));
                self.refresh_queue
                    .push((id.unwrap_or(CANCELLED), nick, signed));
            }
            Request::Private { id, from, to, text } => {
                let key = nick_key(&to);
                match key {
                    Some(key)
                        if self.cmd.state != LinkState::Down && self.cmd.queue(&[b"GET", &key]) =>
                    {
                        self.expect(Pending::Lookup { id, from, text });
                    }
                    _ => hub.private_not_found(id, sink),
                }
            }
            Request::History {
                id,
                room,
                after,
                limit,
            } => {
                if self.queue_history(&room, hub.config().history.keep) {
                    self.expect(Pending::History {
                        id,
                        room,
                        after,
                        limit,
                    });
                } else {
                    hub.history_unavailable(id, sink);
                }
            }
            Request::Who { id, room } => {
                let ask = query::who(&room);
                match ask {
                    Some(ask) if self.is_up() && self.backlog.is_empty() => {
                        self.ask(id, ask, &room, hub, sink, now)
                    }
                    _ => hub.answer_who(id, &room, &[], 0, sink),
                }
            }
            Request::Rooms { id } => {
                if self.is_up() && self.backlog.is_empty() {
                    self.ask(id, Ask::Rooms, "", hub, sink, now);
                } else {
                    hub.answer_rooms(id, &[], sink);
                }
            }
            Request::StoreSession {
                key,
                nick,
                record,
                ttl_ms,
            } => {
                let value = format!("{}{nick} {record}", self.node_prefix);
                let ttl = ttl_ms.to_string();
                let set: &[&[u8]] = &[
                    b"SET",
                    key.as_bytes(),
                    value.as_bytes(),
                    b"PX",
                    ttl.as_bytes(),
                ];
                if self.cmd.state == LinkState::Ready && self.cmd.queue(set) {
                    self.expect(Pending::StoreSession);
                }
            }
            Request::TakeSession { id, key } => {
                // A retry while the take of a connection that closed is
                // still out: that answer is this one's.
                let earlier = self.pending.iter_mut().find_map(|(_, p)| match p {
                    Pending::TakeSession { id: i, key: k } if *i == CANCELLED && *k == key => {
                        Some(i)
                    }
                    _ => None,
                });
                if let Some(i) = earlier {
                    *i = id;
                    return;
                }
                let ttl = self.ttl_ms();
                let at = unix_ms().to_string();
                let extra = (TOMBSTONE_EXTRA.as_millis() as u64).to_string();
                let prefix = self.node_prefix.clone();
                if self.cmd.state == LinkState::Ready
                    && self.cmd.queue(&[
                        b"EVALSHA",
                        self.scripts.take.as_bytes(),
                        b"1",
                        key.as_bytes(),
                        prefix.as_bytes(),
                        ttl.as_bytes(),
                        at.as_bytes(),
                        extra.as_bytes(),
                    ])
                {
                    self.expect(Pending::TakeSession { id, key });
                } else {
                    hub.session_taken(id, Fetched::Unreachable, sink);
                }
            }
            Request::Moved {
                from,
                selector,
                key,
                nick,
                rooms,
            } => {
                let rooms = if rooms.is_empty() {
                    "-".to_string()
                } else {
                    rooms.join(",")
                };
                self.send(
                    b"lc:all",
                    Body::Resumed {
                        from: &from,
                        selector,
                        key: &key,
                        nick: &nick,
                        rooms: &rooms,
                    },
                    None,
                    CANCELLED,
                );
            }
            Request::UseSession { key } => {
                if self.cmd.state == LinkState::Ready {
                    self.use_session(&key);
                } else if self.uses_waiting.len() < MAX_USES_WAITING {
                    // Resumed from this node's memory while Redis was away:
                    // marked used as soon as the link is back, before any
                    // other node can take it there.
                    self.uses_waiting.push(key);
                }
            }
            Request::EndSession { key } => {
                if self.cmd.state == LinkState::Ready
                    && self.cmd.queue(&[
                        b"EVALSHA",
                        self.scripts.end.as_bytes(),
                        b"1",
                        key.as_bytes(),
                    ])
                {
                    self.expect(Pending::EndSession { key });
                } else {
                    // Nobody can say another node took it: it ends here.
                    hub.session_ended(&key, true, sink);
                }
            }
            Request::Catchup { id, room } => {
                if self.cmd.state != LinkState::Ready {
                    hub.catchup_unavailable(id, &room, sink);
                } else if self.confirmed.contains(&room) {
                    self.read_catchup(id, room, hub, sink);
                } else {
                    // Read once Redis confirms the subscription: every line
                    // after the snapshot then reaches this node live.
                    self.catchup_wait.push((id, room));
                }
            }
            Request::Gone(id) => {
                self.catchup_wait.retain(|(i, _)| *i != id);
                for (_, p) in self.pending.iter_mut() {
                    match p {
                        Pending::Reserve { id: i, .. }
                        | Pending::Refresh { id: i, .. }
                        | Pending::Lookup { id: i, .. }
                        | Pending::History { id: i, .. }
                        | Pending::TakeSession { id: i, .. }
                        | Pending::Catchup { id: i, .. }
                        | Pending::Publish { sender: i, .. }
                            if *i == id =>
                        {
                            *i = CANCELLED;
                        }
                        _ => {}
                    }
                }
                self.queries.gone(id);
                for o in self
                    .backlog
                    .iter_mut()
                    .chain(self.early.iter_mut())
                    .filter(|o| o.sender == id)
                {
                    o.sender = CANCELLED;
                }
                self.undelivered.retain(|&i| i != id);
                if !self.refresh_queue.is_empty() {
                    self.refresh_queue.retain(|(i, _, _)| *i != id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (id, nick) in [(0, "a"), (1, "b")] {
            hub.connect(id, Some(nick), Some("r"), 0, &mut sink);
            hub.nick_reserved(id, nick, Claim::Granted, &mut sink);
        }
        let mut node = Cluster::new(
            ClusterConfig::new("127.0.0.1:9".parse().unwrap()),
            Instant::now(),
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
    fn numbered_messages_are_delivered_once_in_id_order_own_ones_included() {
        let mut hub = Hub::new(crate::chat::ChatConfig {
            rate_limit: 0,
            ..crate::chat::ChatConfig::default()
        });
        hub.enable_cluster("t");
        let mut sink = Lines::default();
        hub.connect(0, Some("a"), Some("r"), 0, &mut sink);
        hub.nick_reserved(0, "a", Claim::Granted, &mut sink);
        hub.connect(1, Some("b"), Some("r"), 0, &mut sink);
        hub.nick_reserved(1, "b", Claim::Granted, &mut sink);
        hub.handle(1, "/caps ids", 0, &mut sink);
        let mut node = Cluster::new(
            ClusterConfig::new("127.0.0.1:9".parse().unwrap()),
            Instant::now(),
        );
        // While Redis can order, a MSG is not delivered here before it
        // comes back numbered.
        hub.set_ordered(true);
        let mut reqs = Vec::new();
        hub.take_requests(&mut reqs);
        reqs.clear();
        sink.0.clear();
        hub.handle(0, "mine", 0, &mut sink);
        assert!(sink.0.is_empty(), "{:?}", sink.0);
        hub.take_requests(&mut reqs);
        assert_eq!(
            reqs,
            [Request::Say {
                room: "r".into(),
                line: "MSG r a mine".into()
            }]
        );
        let own = format!("!7-1 1000 M {} 3 MSG r a mine", node.node_id());
        let other = "!7-2 1001 M other 9 MSG r z hi";
        for p in [own.as_str(), other, own.as_str(), other] {
            node.feed_subscriber(message("lc:room:r", p), &mut hub, &mut sink);
        }
        assert_eq!(
            sink.0,
            [
                (0, "MSG r a mine".to_string()),
                (
                    1,
                    "@id=7-1;time=1970-01-01T00:00:01.000Z MSG r a mine".to_string()
                ),
                (0, "MSG r z hi".to_string()),
                (
                    1,
                    "@id=7-2;time=1970-01-01T00:00:01.001Z MSG r z hi".to_string()
                ),
            ]
        );
        // An older id of the same epoch is a copy; a new epoch starts over;
        // a numbered line that is not a MSG, or a malformed id, is refused.
        sink.0.clear();
        for p in [
            "!7-1 1000 M other 10 MSG r z old",
            "!9-1 1002 M other 11 MSG r z new epoch",
            "!9-2 1003 M other 12 JOINED r z",
            "!9x2 1003 M other 13 MSG r z bad",
        ] {
            node.feed_subscriber(message("lc:room:r", p), &mut hub, &mut sink);
        }
        assert_eq!(sink.0.len(), 2, "{:?}", sink.0);
        assert_eq!(sink.0[0], (0, "MSG r z new epoch".to_string()));
        assert_eq!(node.stats().malformed, 2);
        // Redis away: delivered here at once, relayed as a plain line.
        hub.set_ordered(false);
        sink.0.clear();
        hub.handle(0, "alone", 0, &mut sink);
        assert_eq!(sink.0[0], (0, "MSG r a alone".to_string()));
        hub.take_requests(&mut reqs);
        assert!(
            matches!(reqs.last(), Some(Request::Room { .. })),
            "{reqs:?}"
        );
    }

    #[test]
    fn questions_go_out_one_at_a_time_and_answers_are_merged_and_checked() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.publish_reply = 3;
        h.up();
        for (id, nick) in [(0, "a"), (1, "b")] {
            h.hub.connect(id, Some(nick), Some("r"), 0, &mut h.sink);
        }
        h.turn();
        h.turn();
        h.sink.0.clear();
        h.hub.handle(0, "/who r", 0, &mut h.sink);
        h.hub.handle(1, "/rooms", 0, &mut h.sink);
        h.turn();
        let asks = |h: &Harness| {
            h.seen[0]
                .iter()
                .filter(|(n, c)| n == "PUBLISH" && c == "lc:all")
                .count()
        };
        let before = asks(&h);
        let huge = usize::MAX.to_string();
        for p in [
            format!("w n1 1 1 {huge} b <bad> c"),
            format!("w n2 1 1 {huge} d"),
        ] {
            h.feed("lc:node:me", &p);
        }
        let who = &h.sink.0[0];
        assert_eq!(who.0, 0);
        assert!(who.1.starts_with("WHO r a b b c d +"), "{}", who.1);
        // Only now the second question goes out.
        h.io();
        assert_eq!(asks(&h), before + 1);
        for p in [
            format!("r n1 3 2 r={huge} x=2 bad!=1 y"),
            "r n2 3 2 X=3".to_string(),
        ] {
            h.feed("lc:node:me", &p);
        }
        assert_eq!(h.sink.0[1], (1, format!("ROOMS r={huge} x=5")));
        // Asked again at once: the cached answer, no new question.
        h.hub.handle(1, "/rooms", 0, &mut h.sink);
        h.turn();
        assert_eq!(h.sink.0[2], (1, format!("ROOMS r={huge} x=5")));
        assert_eq!(asks(&h), before + 1);
    }

    /// A node driven by hand: replies are fed as bytes, time is advanced
    /// explicitly, and no socket exists.
    struct Harness {
        node: Cluster,
        hub: Hub,
        sink: Lines,
        now: Instant,
        /// Commands seen on each link (command name and first argument).
        seen: [Vec<(String, String)>; 2],
        /// Answer the command link's requests automatically.
        answer: bool,
        /// Subscribers a PUBLISH reaches (this node included).
        publish_reply: i64,
        /// The room script's reply.
        say_reply: &'static [u8],
    }

    impl Harness {
        fn new(ttl: Duration) -> Harness {
            let now = Instant::now();
            let mut cfg = ClusterConfig::new("127.0.0.1:9".parse().unwrap());
            cfg.nick_ttl = ttl;
            let mut hub = Hub::new(crate::chat::ChatConfig {
                rate_limit: 0,
                ..crate::chat::ChatConfig::default()
            });
            hub.enable_cluster("me");
            Harness {
                node: Cluster::with_id(cfg, 0xabc, now),
                hub,
                sink: Lines::default(),
                now,
                seen: [Vec::new(), Vec::new()],
                answer: true,
                publish_reply: 2,
                say_reply: b"$6\r\n1-1 10\r\n",
            }
        }

        fn idx(w: Which) -> usize {
            match w {
                Which::Cmd => 0,
                Which::Sub => 1,
            }
        }

        /// One turn at `now`, then every action, then the links' output
        /// read (and answered, on the command link, when `answer`).
        fn turn(&mut self) -> Vec<Action> {
            self.node.turn(&mut self.hub, &mut self.sink, self.now);
            self.io()
        }

        fn io(&mut self) -> Vec<Action> {
            let actions: Vec<Action> = std::iter::from_fn(|| self.node.poll_action()).collect();
            for w in [Which::Cmd, Which::Sub] {
                let out = self.node.transmit(w).to_vec();
                self.node.advance(w, out.len());
                let mut pos = 0;
                while let Ok(Some((v, used))) =
                    super::super::resp::parse(&out[pos..], &Limits::default())
                {
                    pos += used;
                    let Value::Array(Some(args)) = v else {
                        panic!("not a command")
                    };
                    let arg = |i: usize| {
                        args.get(i)
                            .and_then(Value::as_bytes)
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                            .unwrap_or_default()
                    };
                    let (mut name, mut first) = (arg(0), arg(1));
                    // A script by name, seen as its text.
                    if name == "EVALSHA" {
                        if let Some(text) = ALL_SCRIPTS.iter().find(|t| script_sha(t) == first) {
                            (name, first) = ("EVAL".into(), text.to_string());
                        }
                    }
                    // The room message script, seen as what it does.
                    if name == "EVAL" && arg(3).starts_with("lc:seq:") {
                        (name, first) = ("SAY".into(), arg(6));
                    }
                    let reply: Option<Vec<u8>> = match (w, name.as_str()) {
                        (Which::Cmd, _) if !self.answer => None,
                        (Which::Cmd, "PING") => Some(b"+PONG\r\n".to_vec()),
                        (Which::Cmd, "SCRIPT") => {
                            Some(b"$40\r\n0000000000000000000000000000000000000000\r\n".to_vec())
                        }
                        (Which::Cmd, "SET") => Some(b"+OK\r\n".to_vec()),
                        (Which::Cmd, "EVAL") => Some(b":1\r\n".to_vec()),
                        (Which::Cmd, "SAY") => Some(self.say_reply.to_vec()),
                        (Which::Cmd, "PUBLISH") => {
                            Some(format!(":{}\r\n", self.publish_reply).into_bytes())
                        }
                        (Which::Cmd, _) => Some(b"$-1\r\n".to_vec()),
                        (Which::Sub, "PING") => Some(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n".to_vec()),
                        (Which::Sub, "SUBSCRIBE") => {
                            let mut r = Vec::new();
                            for i in 1..args.len() {
                                let ch = arg(i);
                                r.extend_from_slice(
                                    format!(
                                        "*3\r\n$9\r\nsubscribe\r\n${}\r\n{ch}\r\n:{i}\r\n",
                                        ch.len()
                                    )
                                    .as_bytes(),
                                );
                            }
                            Some(r)
                        }
                        _ => None,
                    };
                    self.seen[Self::idx(w)].push((name, first));
                    if let Some(r) = reply {
                        self.node
                            .on_bytes(w, &r, &mut self.hub, &mut self.sink, self.now);
                    }
                }
            }
            let more: Vec<Action> = std::iter::from_fn(|| self.node.poll_action()).collect();
            actions.into_iter().chain(more).collect()
        }

        fn advance(&mut self, d: Duration) -> Vec<Action> {
            self.now += d;
            self.turn()
        }

        /// Both links connected and subscribed.
        fn up(&mut self) {
            let a = self.turn();
            assert_eq!(
                a,
                vec![Action::Connect(Which::Cmd), Action::Connect(Which::Sub)]
            );
            self.turn();
            assert!(self.node.is_up());
        }

        /// PUBLISHes to room r.
        fn room_publishes(&self) -> usize {
            self.seen[0]
                .iter()
                .filter(|(n, c)| (n == "PUBLISH" || n == "SAY") && c == "lc:room:r")
                .count()
        }

        fn seen(&self, w: Which, name: &str) -> usize {
            self.seen[Self::idx(w)]
                .iter()
                .filter(|(n, _)| n == name)
                .count()
        }

        fn feed(&mut self, channel: &str, payload: &str) {
            self.node.feed_at(
                message(channel, payload),
                &mut self.hub,
                &mut self.sink,
                self.now,
            );
        }
    }

    #[test]
    fn a_quiet_node_keeps_its_links_with_heartbeats() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        h.hub.connect(0, Some("alice"), Some("r"), 0, &mut h.sink);
        h.turn();
        assert_eq!(h.hub.nick(0), Some("alice"));
        // Two minutes of silence, a turn per second: refreshes every 10 s,
        // heartbeats every 2.5 s on both links, all answered; no drop.
        for _ in 0..120 {
            let a = h.advance(Duration::from_secs(1));
            assert!(a.is_empty(), "{a:?}");
        }
        assert!(
            h.seen(Which::Cmd, "PING") >= 40,
            "{}",
            h.seen(Which::Cmd, "PING")
        );
        assert!(h.seen(Which::Sub, "PING") >= 40);
        assert!(h.seen(Which::Cmd, "EVAL") >= 12);
        assert_eq!(h.node.stats().connects, 2);
        assert!(h
            .node
            .poll_timeout(h.now)
            .is_some_and(|t| t <= h.now + HEARTBEAT));
    }

    #[test]
    fn a_stall_is_measured_from_the_oldest_request() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        h.hub.connect(0, Some("alice"), Some("r"), 0, &mut h.sink);
        // The claim is answered during the first turn, the JOINED goes in the second.
        h.turn();
        h.turn();
        h.answer = false;
        h.hub.handle(0, "hello", 0, &mut h.sink);
        h.turn();
        assert_eq!(h.room_publishes(), 2, "JOINED and MSG");
        let a = h.advance(STALL_TIMEOUT - Duration::from_millis(1));
        assert!(a.is_empty(), "{a:?}");
        let a = h.advance(Duration::from_millis(1));
        assert_eq!(a, vec![Action::Close(Which::Cmd)]);
        // The unanswered publish waits in the backlog for the next link.
        assert!(h.node.stats().backlog_bytes > 0);
        assert_eq!(h.node.stats().dropped, 0);
        h.answer = true;
        h.advance(MAX_BACKOFF);
        h.advance(Duration::from_millis(10));
        assert_eq!(h.node.stats().backlog_bytes, 0);
        assert_eq!(h.room_publishes(), 3);
    }

    #[test]
    fn an_unanswered_claim_fails_closed_and_a_late_grant_is_released() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        h.answer = false;
        h.hub.connect(0, Some("alice"), Some("r"), 0, &mut h.sink);
        h.turn();
        assert!(h.sink.0.is_empty(), "held: {:?}", h.sink.0);
        assert_eq!(h.seen(Which::Cmd, "SET"), 1);
        h.advance(h.node.cfg.query_timeout);
        let lines: Vec<&str> = h.sink.0.iter().map(|(_, l)| l.as_str()).collect();
        assert!(lines[0].starts_with("WELCOME guest-me-"), "{lines:?}");
        assert_eq!(
            lines[1],
            "ERR nick-unavailable nick registry did not answer in time, using a guest nick"
        );
        // The late grant of alice: given back at once.
        let evals = h.seen(Which::Cmd, "EVAL");
        h.node
            .on_bytes(Which::Cmd, b"+OK\r\n", &mut h.hub, &mut h.sink, h.now);
        h.io();
        assert_eq!(h.seen(Which::Cmd, "EVAL"), evals + 1, "release");
        assert_eq!(h.node.stats().nick_unconfirmed, 1);
    }

    #[test]
    fn a_silent_node_is_declared_dead_and_its_members_leave() {
        let ttl = Duration::from_secs(3);
        let mut h = Harness::new(ttl);
        h.up();
        h.hub.connect(0, Some("bob"), Some("r"), 0, &mut h.sink);
        h.turn();
        h.feed("lc:all", "H other 1 1");
        h.feed("lc:room:r", "M other 2 JOINED R alice");
        h.feed("lc:room:r", "M other 3 JOINED R carol");
        h.feed("lc:room:r", "M other 4 LEFT R carol");
        h.sink.0.clear();
        for _ in 0..5 {
            h.advance(ttl / 6);
        }
        assert!(h.sink.0.is_empty(), "{:?}", h.sink.0);
        h.advance(ttl / 6 + Duration::from_millis(1));
        assert_eq!(h.sink.0, vec![(0, "LEFT R alice".to_string())]);
        assert!(h.seen[0].contains(&("EVAL".to_string(), RELEASE_SCRIPT.to_string())));
        assert_eq!(h.node.stats().dead_nodes, 1);
        // Only once.
        h.advance(ttl);
        assert_eq!(h.sink.0.len(), 1);
        // A user who reconnected through another node is not made to leave
        // when the old node is declared dead.
        h.feed("lc:room:r", "M old 1 JOINED R dave");
        h.feed("lc:room:r", "M new 1 JOINED R dave");
        h.sink.0.clear();
        for _ in 0..8 {
            h.feed("lc:all", "H new 2 1");
            h.feed("lc:all", "H new 3 1");
            h.advance(ttl / 4);
        }
        assert_eq!(h.node.stats().dead_nodes, 2, "old");
        assert!(h.sink.0.is_empty(), "{:?}", h.sink.0);
    }

    #[test]
    fn the_backlog_waits_for_the_nodes_known_before_the_outage() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        h.hub.connect(0, Some("alice"), Some("r"), 0, &mut h.sink);
        h.turn();
        h.turn();
        h.feed("lc:all", "H other 1 1");
        h.node
            .on_closed(Which::Cmd, "test", &mut h.hub, &mut h.sink, h.now);
        h.hub.handle(0, "while down", 0, &mut h.sink);
        h.turn();
        let published = h.room_publishes();
        assert!(h.node.stats().backlog_bytes > 0);
        // Back: but `other` has not announced itself again yet.
        h.advance(MAX_BACKOFF);
        h.advance(Duration::from_secs(1));
        assert!(h.node.is_up());
        assert_eq!(h.room_publishes(), published);
        // Queries are answered locally meanwhile.
        h.sink.0.clear();
        h.hub.handle(0, "/who", 0, &mut h.sink);
        h.turn();
        assert_eq!(h.sink.0, vec![(0, "WHO r alice".to_string())]);
        h.feed("lc:all", "H other 2 1");
        h.turn();
        assert_eq!(h.room_publishes(), published + 1);
        assert_eq!(h.node.stats().backlog_bytes, 0);
    }

    #[test]
    fn a_message_redis_cannot_number_is_still_seen_here() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        h.hub.connect(0, Some("alice"), Some("r"), 0, &mut h.sink);
        h.turn();
        h.turn();
        // Numbered: not delivered before it comes back by pub/sub.
        h.sink.0.clear();
        h.hub.handle(0, "one", 0, &mut h.sink);
        h.turn();
        assert_eq!(h.room_publishes(), 2, "JOINED and the message");
        assert!(h.sink.0.is_empty(), "{:?}", h.sink.0);
        let own = format!("!1-1 10 M {} 3 MSG r alice one", h.node.node_id());
        h.feed("lc:room:r", &own);
        assert_eq!(h.sink.0, [(0, "MSG r alice one".to_string())]);
        // The script fails: seen here anyway, and the sender told.
        h.say_reply = b"-ERR script failed\r\n";
        h.sink.0.clear();
        h.hub.handle(0, "two", 0, &mut h.sink);
        h.turn();
        h.turn();
        assert_eq!(h.sink.0[0], (0, "MSG r alice two".to_string()));
        assert!(
            h.sink.0[1].1.starts_with("SYS not delivered"),
            "{:?}",
            h.sink.0
        );
        assert_eq!(h.node.stats().dropped, 1);
    }

    #[test]
    fn a_rooms_first_messages_wait_for_its_subscription() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        h.hub.connect(0, Some("alice"), None, 0, &mut h.sink);
        h.turn();
        // Joined and spoke before Redis confirmed the room's subscription:
        // the message waits for the confirmation, then goes out.
        h.hub.handle(0, "/join r", 0, &mut h.sink);
        h.hub.handle(0, "early", 0, &mut h.sink);
        for _ in 0..4 {
            h.node.turn(&mut h.hub, &mut h.sink, h.now);
        }
        assert_eq!(h.room_publishes(), 0);
        assert_eq!(h.node.early.len(), 1);
        h.io();
        assert!(h.node.early.is_empty());
        h.turn();
        assert_eq!(h.room_publishes(), 2, "JOINED and the message");
        // The subscriber link fails with a message in flight: delivered
        // here from the script's reply.
        h.answer = false;
        h.sink.0.clear();
        h.hub.handle(0, "late", 0, &mut h.sink);
        h.turn();
        h.node
            .on_closed(Which::Sub, "test", &mut h.hub, &mut h.sink, h.now);
        h.node.on_bytes(
            Which::Cmd,
            b"$6\r\n1-2 11\r\n",
            &mut h.hub,
            &mut h.sink,
            h.now,
        );
        assert_eq!(h.sink.0, [(0, "MSG r alice late".to_string())]);
    }

    #[test]
    fn node_ids_differ() {
        assert_ne!(random_id(), random_id());
    }

    #[test]
    fn a_renew_for_a_resumed_nick_is_not_undone_by_its_pending_away_refresh() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        // alice dropped here a moment ago: her away refresh is still queued
        // (the command buffer is over half full on a busy node)...
        h.node
            .refresh_queue
            .push((CANCELLED, "alice".into(), false));
        // ...when she resumes here (live again) and the hub asks to renew.
        h.hub.connect(0, Some("alice"), Some("r"), 0, &mut h.sink);
        h.hub.nick_reserved(0, "alice", Claim::Granted, &mut h.sink);
        let mut sink = Lines::default();
        let now = h.now;
        h.node.on_request(
            Request::Renew {
                nick: "alice".into(),
                id: Some(0),
                signed: false,
            },
            &mut h.hub,
            &mut sink,
            now,
        );
        // The queue is sent from its end: the last refresh to reach Redis
        // for alice is the first one in it.
        let last_sent = h
            .node
            .refresh_queue
            .iter()
            .find(|(_, n, _)| &**n == "alice")
            .map(|(id, _, _)| *id);
        assert_eq!(
            last_sent,
            Some(0),
            "alice, live, ends up registered away: {:?}",
            h.node.refresh_queue
        );
    }

    #[test]
    fn a_session_resumed_on_another_node_leaves_no_registration_time_here() {
        let mut h = Harness::new(Duration::from_secs(30));
        h.up();
        let mut keys = Vec::new();
        for i in 0..50 {
            let nick = format!("alice{i}");
            h.hub.connect(i, Some(&nick), Some("r"), 0, &mut h.sink);
            h.turn();
            h.hub.handle(i, "/caps resume", 0, &mut h.sink);
            let token = h
                .sink
                .take(i)
                .iter()
                .find_map(|l| l.strip_prefix("SESSION ").map(str::to_string))
                .expect("SESSION");
            let token = crate::chat::session::Token::parse(&token).unwrap();
            keys.push((token.selector(), token.redis_key(), nick));
            h.hub.disconnect(i, &mut h.sink);
            h.turn();
        }
        assert_eq!(h.node.registered.len(), 50);
        // Every session is resumed on node n2, which tells every node (S).
        let me = h.node.node_id().to_string();
        for (seq, (selector, key, nick)) in keys.iter().enumerate() {
            let s = format!("S n2 {} {me} {selector} {key} {nick} r", seq + 1);
            h.feed("lc:all", &s);
            h.turn();
        }
        assert_eq!(h.hub.detached_sessions(), 0, "copies forgotten");
        assert!(
            h.node.registered.is_empty(),
            "{} registration times kept for nicks now held by another node",
            h.node.registered.len()
        );
    }
}
