//! The hub: users, rooms, membership, and the lines of PROTOCOL.md.
//!
//! Layout, chosen so that the hot paths (say in a room, join, leave) are O(1)
//! and allocation-free in steady state:
//! - users live in a `Vec<Option<User>>` indexed by [`ConnId`] (the server's
//!   dense slab key), grown on demand;
//! - rooms are interned as `u32` ids in a slab-like `Vec<Option<Room>>` with a
//!   free list, plus an ordered map from the case-folded name to the id, which
//!   is also `/rooms`' sorted index: listing the first `rooms_limit` rooms
//!   walks that many entries, whatever the number of rooms;
//! - a room's members are a `Vec<ConnId>`, so a broadcast is one
//!   [`Sink::deliver`] with that slice; each user keeps, per room, its position
//!   in that vector, so leaving is a `swap_remove` plus fixing the moved
//!   member's position;
//! - a user's rooms are a small ordered `Vec` (join order): the last one is the
//!   current room, and after leaving it the most recently joined remaining room
//!   becomes current;
//! - output lines are written by [`super::line::Line`] (the one definition
//!   of the server lines) into one reusable `String` owned by the hub;
//! - the v2 parts (capabilities, `ids` tags, `/history`, resumable sessions)
//!   live in `hub/resume.rs`; a connection without capabilities takes
//!   exactly the v1 paths.
//!
//! Semantics where PROTOCOL.md is silent:
//! - `connect` sends `WELCOME`, then `ERR bad-nick`/`ERR nick-taken` if the
//!   requested nick was refused, then `JOINED`, then `ERR bad-room` if the
//!   requested room was refused. An empty `?nick=`/`?room=` counts as absent.
//! - `/join` of a room the connection is already in makes it current and sends
//!   nothing (no duplicate `JOINED`).
//! - `JOINED`/`LEFT` count the subject: a room "has more than presence_limit
//!   members" after the join / before the leave.
//! - `/nick` to the connection's own nick with other letter case is a display
//!   change and is propagated like any change; to exactly the same nick it is
//!   confirmed to the subject only.
//! - `/who ROOM` works for any room, member or not; a room that does not exist
//!   is listed as empty (`WHO ROOM`).
//! - `/rooms` lists rooms sorted case-insensitively, at most `rooms_limit`, then
//!   `+N`; `/who` lists members in room order, at most `who_limit`, then `+N`.
//!   Both cost O(what they list) and take `query_cost` rate-limit tokens.
//! - `/help` answers with one `SYS` line per command.
//! - A connection is in at most `max_rooms` rooms; one more `/join` gets
//!   `ERR bad-room` and changes nothing. At most `max_rooms_total` rooms exist;
//!   a `/join` that would create one more gets `ERR bad-room` too (the default
//!   room is exempt, so a new connection always has somewhere to be).
//! - `/quit [TEXT]` sends `LEFT` to its rooms at once and asks the sink to close
//!   with 1000 and TEXT (default `bye`, cut to 123 bytes) as the reason; the
//!   nick stays taken until [`Hub::disconnect`]. Lines that arrive after a
//!   close was requested (quit or rate abuse) are ignored.
//! - Every line, empty ones included, counts against the rate limit; a refused
//!   line gets `ERR rate-limited`; on abuse (see [`super::rate`]) the hub sends
//!   `ERR rate-limited` and closes with 1008; `LEFT` follows at disconnect.
//!
//! As one node of a cluster ([`Hub::enable_cluster`], see `hub/cluster.rs` and
//! [`super::remote`]) the hub also records requests for the other nodes: room
//! lines to publish, rooms to (un)subscribe, nicks to reserve and release,
//! private messages and queries for nicks and rooms elsewhere. `/nick` then
//! waits for the reservation (the old nick stays meanwhile), `/who` and
//! `/rooms` are answered by [`Hub::answer_who`] / [`Hub::answer_rooms`], and
//! guest nicks carry the node's tag. Without it nothing changes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::access::{Access, Role};
use super::command::{parse, Command};
use super::compact::{InlineList, NickIndex};
use super::history::{IdGen, MsgId, RoomHistory};
use super::line::Line;
use super::names::{reserved_nick, valid_nick, valid_room, Folded};
use super::rate::{RateDecision, RateLimiter};
use super::remote::Request;
use super::session::Sessions;
use super::{ChatConfig, ConnId, ErrorCode, Sink};
use cluster::HoldOutcome;

mod auth;
mod cluster;
mod cluster_resume;
mod record;
pub use auth::{full_exp, AuthState, Identity};
mod resume;
pub use cluster::RemoteState;
pub use resume::{Caps, Connect};
use resume::{Detached, CAP_IDS};

/// An interned room: an index into `Hub::rooms`.
type RoomId = u32;

/// One room a user is in, and where the user sits in that room's member list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Membership {
    room: RoomId,
    /// Index of the user in `Room::members`; kept exact across swap_removes.
    pos: u32,
}

/// Per-connection state; small because there may be tens of thousands.
#[derive(Debug)]
struct User {
    /// The nick as displayed; its folded form is the key in `Hub::nicks`.
    nick: Box<str>,
    /// Rooms in join order; the last one is the current room.
    rooms: InlineList<Membership>,
    rate: RateLimiter,
    /// Generation stamp for deduplicating `NICK` recipients without a set.
    seen: u32,
    /// Capabilities (`resume::CAP_*` bits); 0 for a v1 client.
    caps: u8,
    /// Role, whether a token vouches for the nick, and whether a close was
    /// requested (quit, rate abuse, token expiry: further lines are ignored).
    access: Access,
    /// The low 16 bits of the token's `exp` (see `hub/auth.rs`).
    exp_tag: u16,
}

#[derive(Debug)]
struct Room {
    /// The name as first created; the folded form is the key in `Hub::room_index`.
    name: Box<str>,
    /// Empty only while `held > 0`: a room is deleted when its last member
    /// leaves and no dropped session holds it.
    members: Vec<ConnId>,
    /// Dropped sessions that are still in the room (no `LEFT` sent yet).
    held: u32,
    /// Members with the `ids` capability: 0 keeps broadcasts on the v1 path.
    ids_members: u32,
    /// The room's message ids and history.
    log: RoomHistory,
    /// Clustered: the last id delivered here (Redis hands out the room's
    /// ids; a copy at or below it is a duplicate). Unused single-process.
    last_id: MsgId,
    /// Clustered, before any line was delivered here: the room's counter as
    /// last read from Redis (`0-0`: it had none), so a session dropped in a
    /// quiet room knows where it stood.
    base: Option<MsgId>,
}

/// The `/help` answer, one `SYS` line per command.
const HELP: &[&str] = &[
    "TEXT - say TEXT in the current room (//TEXT says /TEXT)",
    "/nick NICK - change nick",
    "/join ROOM - join ROOM and make it current",
    "/leave [ROOM] - leave ROOM (default: current)",
    "/say ROOM TEXT - say TEXT in ROOM",
    "/msg NICK TEXT - private message",
    "/rooms - list rooms",
    "/who [ROOM] - list members",
    "/ping [TOKEN] - answered with PONG [TOKEN]",
    "/quit [TEXT] - leave and close",
    "/auth TOKEN - sign in, or refresh a token before it expires",
    "/kick ROOM NICK [TEXT] - moderators: remove NICK from ROOM",
    "/caps [LIST] - capabilities: ids (message ids and times), resume (sessions)",
    "/history ROOM [N] - recent messages; /history ROOM after ID [N]",
    "/resume TOKEN [ROOM=ID ...] - take back a dropped session",
    "/help - this list",
];

/// Why a `/join` changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// The connection is in `max_rooms` rooms already.
    Yours,
    /// The room would be new and `max_rooms_total` rooms exist.
    Total,
}

/// Longest close reason: a close frame's payload is at most 125 bytes, two of
/// which are the code.
const MAX_CLOSE_REASON: usize = 123;

/// The chat state machine. Drive it with [`Hub::connect`], [`Hub::handle`] and
/// [`Hub::disconnect`]; it writes its output through a [`Sink`].
#[derive(Debug)]
pub struct Hub {
    config: ChatConfig,
    users: Vec<Option<User>>,
    live: usize,
    /// Folded nick → owner.
    nicks: NickIndex,
    rooms: Vec<Option<Room>>,
    free_rooms: Vec<RoomId>,
    /// Folded room name → id, in `/rooms` order.
    room_index: BTreeMap<Box<str>, RoomId>,
    /// The line being built; reused so steady-state output allocates nothing.
    out: String,
    /// The fields of a line before it is written into `out` (the list of a
    /// `ROOMS` or `WHO` answer, a `SYS` text); reused like `out`.
    fields: String,
    /// Reusable recipient list (NICK propagation, SYS broadcast).
    scratch: Vec<ConnId>,
    generation: u32,
    next_guest: u64,
    messages: u64,
    deliveries: u64,
    /// Message ids: the process epoch and the sequence.
    ids: IdGen,
    /// Resumable sessions (see `hub/resume.rs`).
    sessions: Sessions<Detached>,
    /// Sessions resumed so far (a metric).
    resumes: u64,
    /// Sum of every room's `log.bytes()`, held under `history.max_bytes`.
    history_bytes: usize,
    /// The `now_ms` of the latest call, for calls that take none (`disconnect`).
    now_ms: u64,
    /// The tagged copy of the line in `out`, for `ids` members.
    tagged: String,
    /// Reusable recipient list: the `ids` members of a broadcast.
    tagged_to: Vec<ConnId>,
    /// Set when the hub is one node of a cluster: the requests it makes of the
    /// other nodes (see [`super::remote`]). `None` keeps single-process
    /// behaviour exactly.
    remote: Option<Box<RemoteState>>,
    /// Signed sessions: room grants, kick bans, held identities.
    auth: AuthState,
}

/// Deliver `line` to `to` (nothing when `to` is empty) and count the deliveries.
fn send<S: Sink>(sink: &mut S, deliveries: &mut u64, to: &[ConnId], line: &str) {
    if !to.is_empty() {
        *deliveries += to.len() as u64;
        sink.deliver(to, line);
    }
}

/// `VERB ROOM NICK` (built in `out`) to every member of `room`, or only to the
/// subject `id` when the room is over the presence limit (notices would cost
/// O(members) each). True when the whole room was told.
#[allow(clippy::too_many_arguments)]
fn presence<S: Sink>(
    out: &mut String,
    deliveries: &mut u64,
    limit: usize,
    joined: bool,
    room: &Room,
    nick: &str,
    id: ConnId,
    sink: &mut S,
) -> bool {
    out.clear();
    let room_name = &room.name;
    let line = if joined {
        Line::Joined {
            room: room_name,
            nick,
        }
    } else {
        Line::Left {
            room: room_name,
            nick,
        }
    };
    line.write_str(out, None);
    let whole_room = room.members.len() <= limit;
    let to = if whole_room {
        &room.members[..]
    } else {
        std::slice::from_ref(&id)
    };
    send(sink, deliveries, to, out);
    whole_room
}

/// Append user TEXT under the one rule of [`super::line`]: one line, no
/// control characters.
fn push_text(out: &mut String, text: &str) {
    super::line::put_text(out, text);
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Hub {
    /// An empty hub.
    pub fn new(config: ChatConfig) -> Self {
        Hub {
            users: Vec::new(),
            live: 0,
            nicks: NickIndex::default(),
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            room_index: BTreeMap::new(),
            out: String::new(),
            fields: String::new(),
            scratch: Vec::new(),
            generation: 0,
            next_guest: 0,
            messages: 0,
            deliveries: 0,
            ids: IdGen::new(0),
            sessions: Sessions::new(config.session_ttl_ms, config.max_sessions),
            resumes: 0,
            history_bytes: 0,
            now_ms: 0,
            tagged: String::new(),
            tagged_to: Vec::new(),
            remote: None,
            auth: AuthState::default(),
            config,
        }
    }

    /// The configuration the hub runs with.
    pub fn config(&self) -> &ChatConfig {
        &self.config
    }

    /// A new connection: nick from `?nick=` or `guest-N`, joins `?room=` or the
    /// default room; sends `WELCOME NICK` then `JOINED`. A bad or taken
    /// requested nick, or a bad room, falls back to `guest-N` / the default room
    /// and is followed by an `ERR` line. An id still known to the hub is first
    /// disconnected (the server should have done that).
    pub fn connect(
        &mut self,
        id: ConnId,
        nick: Option<&str>,
        room: Option<&str>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let args = Connect {
            nick,
            room,
            ..Connect::default()
        };
        self.connect_with(id, &args, now_ms, sink);
    }

    /// The v1 connect without the v2 arguments; `caps` are set before `WELCOME`
    /// goes out and announced (`CAPS`, `SESSION`) right after it.
    fn connect_as_new(
        &mut self,
        id: ConnId,
        args: &Connect<'_>,
        extra_err: Option<(ErrorCode, &str)>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let Connect { nick, room, .. } = *args;
        if self.user(id).is_some() {
            self.disconnect(id, sink);
        }
        if self.users.len() <= id {
            self.users.resize_with(id + 1, || None);
        }
        // Clustered, a requested nick is confirmed by the cluster first.
        let held = self.take_hold_outcome(id);
        if held.is_none() && self.hold_for_cluster(id, nick, room, args.caps, now_ms) {
            return;
        }
        let mut nick_err = held.as_ref().and_then(HoldOutcome::error);
        let nick = if nick_err.is_some() { None } else { nick };
        let chosen: Box<str> = match nick.filter(|n| !n.is_empty()) {
            Some(n) if !valid_nick(n) => {
                nick_err = Some((ErrorCode::BadNick, "bad nick, using a guest nick"));
                self.guest_nick()
            }
            Some(n) if reserved_nick(n) => {
                nick_err = Some((
                    ErrorCode::BadNick,
                    "guest-* nicks are reserved, using a guest nick",
                ));
                self.guest_nick()
            }
            Some(n) if Folded::new(n).is_some_and(|k| self.nick_holder(k.as_str()).is_some()) => {
                nick_err = Some((ErrorCode::NickTaken, "nick taken, using a guest nick"));
                self.guest_nick()
            }
            Some(n) => n.into(),
            None => self.guest_nick(),
        };
        if let Some(key) = Folded::new(&chosen) {
            self.nicks.insert(key.as_str(), id);
        }
        if held != Some(HoldOutcome::Granted) {
            self.request(|| Request::Reserve {
                id,
                nick: chosen.clone(),
            });
        }
        self.out.clear();
        Line::Welcome { nick: &chosen }.write_str(&mut self.out, None);
        self.now_ms = now_ms;
        self.users[id] = Some(User {
            nick: chosen,
            rooms: InlineList::default(),
            rate: RateLimiter::new(self.config.rate_limit, now_ms),
            seen: 0,
            access: Access::guest(Role::Member),
            exp_tag: 0,
            caps: 0,
        });
        self.live += 1;
        send(sink, &mut self.deliveries, &[id], &self.out);
        if let Some(caps) = args.caps {
            self.set_caps(id, caps, sink);
        }
        if let Some((code, text)) = extra_err {
            self.err(id, code, text, sink);
        }
        if let Some((code, text)) = nick_err {
            self.err(id, code, text, sink);
        }
        let requested = room.filter(|r| !r.is_empty());
        let mut forbidden = false;
        if let Some(r) = requested.filter(|r| valid_room(r)) {
            match self.join_refusal(id, r, now_ms) {
                None if self.join(id, r, false, sink).is_ok() => return,
                None => {}
                Some(why) => {
                    self.err(id, ErrorCode::Forbidden, why, sink);
                    forbidden = true;
                }
            }
        }
        // Taken out and put back so `join` can borrow the hub mutably; no copy.
        let default = std::mem::take(&mut self.config.default_room);
        let joined = valid_room(&default)
            && self.join_refusal(id, &default, now_ms).is_none()
            && self.join(id, &default, true, sink).is_ok();
        self.config.default_room = default;
        if !joined
            && !self.join_first_allowed(id, now_ms, sink)
            && self.join_refusal(id, "lobby", now_ms).is_none()
        {
            let _ = self.join(id, "lobby", true, sink);
        }
        if requested.is_some() && !forbidden {
            self.err(
                id,
                ErrorCode::BadRoom,
                "bad room, joined the default room",
                sink,
            );
        }
    }

    /// One inbound command line (a WS text frame, a UTF-8 binary frame, or a TCP
    /// line without its terminator). One trailing line ending is dropped: line-mode
    /// tools such as websocat send it with each message. Unknown ids are ignored.
    pub fn handle(&mut self, id: ConnId, line: &str, now_ms: u64, sink: &mut impl Sink) {
        self.handle_arrived(id, line, now_ms, now_ms, sink);
    }

    /// [`handle`](Self::handle) for a line that arrived no earlier than
    /// `earliest_ms` (see [`RateLimiter::check_arrived`]): the server passes
    /// the start of a stall of its loop, so a backlog is not charged as a burst.
    pub fn handle_arrived(
        &mut self,
        id: ConnId,
        line: &str,
        earliest_ms: u64,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let line = line
            .strip_suffix('\n')
            .map_or(line, |l| l.strip_suffix('\r').unwrap_or(l));
        if self.hold_line(id, line, now_ms) {
            return;
        }
        let rate = self.config.rate_limit;
        self.now_ms = now_ms;
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if user.access.closing() {
            return;
        }
        // Parsing is bounded by `max_line` and has no effect: it comes first so
        // the rate limiter can charge what the command will cost.
        let parsed = parse(line, self.config.max_line);
        let cost = match parsed {
            Ok(Command::Rooms | Command::Who(_)) => self.config.query_cost,
            _ => 1,
        };
        match user.rate.check_arrived(rate, cost, earliest_ms, now_ms) {
            RateDecision::Allow => {}
            RateDecision::Limited => {
                self.err(
                    id,
                    ErrorCode::RateLimited,
                    "too many commands, slow down",
                    sink,
                );
                return;
            }
            RateDecision::Abuse => {
                user.access.set_closing();
                self.err(
                    id,
                    ErrorCode::RateLimited,
                    "too many commands, closing",
                    sink,
                );
                sink.close(id, 1008, "rate limit");
                return;
            }
        }
        let cmd = match parsed {
            Ok(cmd) => cmd,
            Err(e) => {
                self.err(id, e.code(), e.text(), sink);
                return;
            }
        };
        if let Some(why) = self.refusal(id, &cmd, now_ms) {
            self.err(id, ErrorCode::Forbidden, why, sink);
            return;
        }
        match cmd {
            Command::Empty => {}
            Command::Say(text) => match self.current_room_id(id) {
                Some(rid) => self.say(id, rid, text, now_ms, sink),
                None => self.err(id, ErrorCode::NotInRoom, "join a room first", sink),
            },
            Command::Nick(nick) => self.change_nick(id, nick, sink),
            Command::Join(room) => match self.join(id, room, false, sink) {
                Ok(()) => {}
                Err(Refused::Yours) => self.err(
                    id,
                    ErrorCode::BadRoom,
                    "too many rooms, leave one first",
                    sink,
                ),
                Err(Refused::Total) => self.err(
                    id,
                    ErrorCode::BadRoom,
                    "the server has too many rooms, join an existing one",
                    sink,
                ),
            },
            Command::Leave(room) => {
                let idx = match room {
                    None => self.user(id).and_then(|u| u.rooms.len().checked_sub(1)),
                    Some(name) => self
                        .room_id(name)
                        .and_then(|rid| self.membership_index(id, rid)),
                };
                match idx {
                    Some(idx) => self.leave(id, idx, sink),
                    None => self.err(id, ErrorCode::NotInRoom, "not in that room", sink),
                }
            }
            Command::SayTo { room, text } => {
                match self
                    .room_id(room)
                    .filter(|&rid| self.membership_index(id, rid).is_some())
                {
                    Some(rid) => self.say(id, rid, text, now_ms, sink),
                    None => self.err(id, ErrorCode::NotInRoom, "not in that room", sink),
                }
            }
            Command::Msg { nick, text } => self.private(id, nick, text, now_ms, sink),
            Command::Rooms => self.list_rooms(id, sink),
            Command::Who(room) => self.who(id, room, sink),
            Command::Ping(token) => {
                self.out.clear();
                Line::Pong(token).write_str(&mut self.out, None);
                send(sink, &mut self.deliveries, &[id], &self.out);
            }
            Command::Quit(text) => self.quit(id, text, sink),
            Command::Caps(None) => self.send_caps(id, sink),
            Command::Caps(Some(list)) => {
                let caps = Caps::parse(list);
                self.set_caps(id, caps, sink);
            }
            Command::History { room, after, limit } => {
                self.history(id, room, after, limit, now_ms, sink)
            }
            Command::Resume { token, since } => self.resume_command(id, token, since, now_ms, sink),
            Command::Help => {
                for text in HELP {
                    self.out.clear();
                    Line::Sys(text).write_str(&mut self.out, None);
                    send(sink, &mut self.deliveries, &[id], &self.out);
                }
            }
            Command::Kick { room, nick, text } => self.kick(id, room, nick, text, now_ms, sink),
        }
    }

    /// The connection is gone: `LEFT` to its rooms' members (per presence
    /// rules), and the hub forgets it so the id can be reused.
    pub fn disconnect(&mut self, id: ConnId, sink: &mut impl Sink) {
        self.forget_saying(id);
        if self.drop_held(id) {
            return;
        }
        if self.detach(id, sink) {
            // The session lives on, but this connection id is reused at once:
            // nothing still pending for it may answer the next connection.
            self.request(|| Request::Gone(id));
            self.forget_pending(id);
            self.forget_grant(id);
            return;
        }
        self.drop_catchups(id);
        // Not kept (no session, or `--max-sessions` reached): the token must
        // die with the connection, or it would take over the next user of
        // this connection id.
        self.sessions.end(id);
        while let Some(n) = self.user(id).map(|u| u.rooms.len()).filter(|&n| n > 0) {
            self.leave(id, n - 1, sink);
        }
        let Some(user) = self.users.get_mut(id).and_then(Option::take) else {
            return;
        };
        if let Some(key) = Folded::new(&user.nick) {
            self.nicks.remove(key.as_str(), id);
            self.request(|| Request::Release {
                nick: key.as_str().into(),
            });
        }
        self.request(|| Request::Gone(id));
        self.forget_pending(id);
        self.forget_grant(id);
        self.live -= 1;
        // Trailing free slots are given back so a burst of connections does not
        // pin the table at its peak forever.
        while matches!(self.users.last(), Some(None)) {
            self.users.pop();
        }
    }

    /// `SYS TEXT` to every connection (shutdown notices).
    pub fn broadcast_sys(&mut self, text: &str, sink: &mut impl Sink) {
        let mut to = std::mem::take(&mut self.scratch);
        to.clear();
        to.extend(
            self.users
                .iter()
                .enumerate()
                .filter_map(|(i, u)| u.as_ref().map(|_| i)),
        );
        self.out.clear();
        Line::Sys(text).write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &to, &self.out);
        self.scratch = to;
    }

    /// Connections the hub knows.
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Rooms that exist (a room exists while it has members).
    pub fn rooms(&self) -> usize {
        self.room_index.len()
    }

    /// `MSG` and `PRIV` lines sent so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Lines delivered so far, counted per recipient.
    pub fn deliveries(&self) -> u64 {
        self.deliveries
    }

    /// The displayed nick of `id`.
    pub fn nick(&self, id: ConnId) -> Option<&str> {
        self.user(id).map(|u| &*u.nick)
    }

    /// The displayed name of `id`'s current room.
    pub fn current_room(&self, id: ConnId) -> Option<&str> {
        self.current_room_id(id)
            .and_then(|rid| self.room(rid))
            .map(|r| &*r.name)
    }

    /// Members of the room `name` (case-insensitive); 0 when it does not exist.
    pub fn room_len(&self, name: &str) -> usize {
        self.room_id(name)
            .and_then(|rid| self.room(rid))
            .map_or(0, |r| r.members.len())
    }

    /// Panic when the internal indexes disagree. For tests and fuzzing.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let live = self.users.iter().flatten().count();
        assert_eq!(live, self.live, "live count");
        assert_eq!(
            self.nicks.len(),
            live + self.sessions.detached(),
            "one nick per user and per dropped session"
        );
        for owner in self.nicks.holders().filter(|&o| o != resume::DETACHED) {
            let user = self.user(owner).expect("nick owner exists");
            let folded = Folded::new(&user.nick).expect("nick foldable");
            assert!(self.nicks.maps(folded.as_str(), owner), "nick key matches");
            assert!(valid_nick(&user.nick), "valid nick");
        }
        let mut memberships = 0;
        for (id, user) in self.users.iter().enumerate() {
            let Some(user) = user else { continue };
            for (i, m) in user.rooms.iter().enumerate() {
                let room = self.room(m.room).expect("membership room exists");
                assert_eq!(room.members.get(m.pos as usize), Some(&id), "position");
                assert!(
                    user.rooms[..i].iter().all(|o| o.room != m.room),
                    "no duplicate membership"
                );
            }
            memberships += user.rooms.len();
        }
        let mut members = 0;
        let mut live_rooms = 0;
        for (rid, room) in self.rooms.iter().enumerate() {
            let Some(room) = room else {
                assert!(
                    self.free_rooms.contains(&(rid as RoomId)),
                    "free slot listed"
                );
                continue;
            };
            live_rooms += 1;
            assert!(
                !room.members.is_empty() || room.held > 0,
                "unused room deleted"
            );
            let ids = room
                .members
                .iter()
                .filter(|&&m| self.user(m).is_some_and(|u| u.caps & CAP_IDS != 0))
                .count();
            assert_eq!(ids, room.ids_members as usize, "ids member count");
            room.log.check(&self.config.history);
            assert!(valid_room(&room.name), "valid room name");
            let key = Folded::new(&room.name).expect("room foldable");
            assert_eq!(self.room_index.get(key.as_str()), Some(&(rid as RoomId)));
            for &member in &room.members {
                let user = self.user(member).expect("member exists");
                assert!(user.rooms.iter().any(|m| m.room == rid as RoomId));
            }
            members += room.members.len();
        }
        assert_eq!(members, memberships, "member lists match user room lists");
        let bytes: usize = self.rooms.iter().flatten().map(|r| r.log.bytes()).sum();
        assert_eq!(bytes, self.history_bytes, "history byte count");
        assert!(
            bytes <= self.config.history.max_bytes,
            "history byte budget"
        );
        assert_eq!(live_rooms, self.room_index.len(), "room index size");
        assert_eq!(
            live_rooms + self.free_rooms.len(),
            self.rooms.len(),
            "slots are live or free"
        );
    }

    // ---- internals ----

    fn user(&self, id: ConnId) -> Option<&User> {
        self.users.get(id).and_then(Option::as_ref)
    }

    fn room(&self, rid: RoomId) -> Option<&Room> {
        self.rooms.get(rid as usize).and_then(Option::as_ref)
    }

    fn room_id(&self, name: &str) -> Option<RoomId> {
        let key = Folded::new(name)?;
        self.room_index.get(key.as_str()).copied()
    }

    /// The connection whose nick is `nick` (case-insensitively).
    fn nick_owner(&self, nick: &str) -> Option<ConnId> {
        let key = Folded::new(nick)?;
        self.nicks.owner(key.as_str(), |id| {
            self.user(id)
                .and_then(|u| Folded::new(&u.nick))
                .is_some_and(|f| f.as_str() == key.as_str())
        })
    }

    /// Whoever holds `nick`'s slot in the index: a nick is free only when
    /// nobody does (see `NickIndex` for the one-in-2^64 case of a shared hash).
    fn nick_holder(&self, folded: &str) -> Option<ConnId> {
        self.nicks.holder(folded)
    }

    /// A fresh stamp for deduplicating recipients (`User::seen`); on wrap-around
    /// every stamp is reset so an old one can never match.
    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            for u in self.users.iter_mut().flatten() {
                u.seen = 0;
            }
            self.generation = 1;
        }
        self.generation
    }

    fn current_room_id(&self, id: ConnId) -> Option<RoomId> {
        self.user(id)?.rooms.last().map(|m| m.room)
    }

    /// Where `rid` is in `id`'s room list: O(rooms of the user), a handful.
    fn membership_index(&self, id: ConnId, rid: RoomId) -> Option<usize> {
        self.user(id)?.rooms.iter().position(|m| m.room == rid)
    }

    /// The next free `guest-N`. Bounded: each skipped candidate is a nick some
    /// user holds.
    fn guest_nick(&mut self) -> Box<str> {
        loop {
            self.next_guest = self.next_guest.wrapping_add(1);
            let nick = match self.remote.as_deref() {
                Some(r) => format!("guest-{}-{}", r.guest_tag(), self.next_guest),
                None => format!("guest-{}", self.next_guest),
            };
            if Folded::new(&nick).is_some_and(|k| self.nick_holder(k.as_str()).is_none()) {
                return nick.into_boxed_str();
            }
        }
    }

    fn err<S: Sink>(&mut self, id: ConnId, code: ErrorCode, text: &str, sink: &mut S) {
        self.out.clear();
        Line::Err { code, text }.write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    /// `MSG ROOM NICK TEXT` to every member, the sender included: one deliver
    /// call with the room's member slice, so the server encodes it once.
    fn say<S: Sink>(&mut self, id: ConnId, rid: RoomId, text: &str, now_ms: u64, sink: &mut S) {
        let (Some(user), Some(room)) = (
            self.users.get(id).and_then(Option::as_ref),
            self.rooms.get_mut(rid as usize).and_then(Option::as_mut),
        ) else {
            return;
        };
        self.out.clear();
        Line::Msg {
            room: &room.name,
            nick: &user.nick,
            text,
        }
        .write_str(&mut self.out, None);
        self.messages += 1;
        if self.remote.as_deref().is_some_and(|r| r.is_ordered()) {
            // Clustered, Redis gives the message its id and its place in the
            // room's order; every node, this one included, delivers it when
            // it comes back (`deliver_ordered`).
            if let (Some(r), Some(key)) = (self.remote.as_deref_mut(), Folded::new(&room.name)) {
                r.push(Request::Say {
                    room: key.as_str().into(),
                    line: self.out.as_str().into(),
                });
                r.saying(id);
            }
            return;
        }
        let id = self.ids.next_id();
        let time_ms = self.ids.epoch().saturating_add(now_ms);
        if self.remote.is_none() {
            let before = room.log.bytes();
            let others = self.history_bytes - before;
            let share = self.config.history.max_bytes.saturating_sub(others);
            room.log.push(
                &self.config.history,
                id.seq,
                time_ms,
                &user.nick,
                text,
                share,
            );
            self.history_bytes = others + room.log.bytes();
        }
        resume::send_tagged(
            sink,
            &mut self.deliveries,
            &mut self.tagged,
            &mut self.tagged_to,
            &room.members,
            room.ids_members as usize,
            &self.users,
            &self.out,
            id,
            time_ms,
        );
        self.publish_room(rid);
    }

    /// Join (creating the room if needed) and make it current. Refused, with
    /// nothing changed, when the connection is in `max_rooms` rooms already,
    /// or the room would be new and `max_rooms_total` exist (unless
    /// `default` says this is the default room) or no room id is left.
    fn join<S: Sink>(
        &mut self,
        id: ConnId,
        name: &str,
        default: bool,
        sink: &mut S,
    ) -> Result<(), Refused> {
        let Some(key) = Folded::new(name) else {
            return Err(Refused::Yours);
        };
        let existing = self.room_index.get(key.as_str()).copied();
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return Ok(());
        };
        if let Some(i) = existing.and_then(|rid| user.rooms.iter().position(|m| m.room == rid)) {
            let m = user.rooms.remove(i);
            user.rooms.push(m);
            return Ok(());
        }
        // Every check comes before the room is created, so a refused join
        // never leaves an empty room behind.
        if user.rooms.len() >= self.config.max_rooms {
            return Err(Refused::Yours);
        }
        if existing.is_none() && !default && self.room_index.len() >= self.config.max_rooms_total {
            return Err(Refused::Total);
        }
        let rid = match existing {
            Some(rid) => rid,
            None => self.create_room(name).ok_or(Refused::Total)?,
        };
        let (Some(user), Some(room)) = (
            self.users.get_mut(id).and_then(Option::as_mut),
            self.rooms.get_mut(rid as usize).and_then(Option::as_mut),
        ) else {
            return Ok(());
        };
        // Positions are u32 to keep memberships at 8 bytes; a room cannot hold
        // 4 billion connections, the process runs out of descriptors long before.
        let pos = room.members.len() as u32;
        room.members.push(id);
        user.rooms.push(Membership { room: rid, pos });
        room.ids_members += u32::from(user.caps & CAP_IDS != 0);
        let told_room = presence(
            &mut self.out,
            &mut self.deliveries,
            self.config.presence_limit,
            true,
            room,
            &user.nick,
            id,
            sink,
        );
        if told_room {
            self.publish_room(rid);
        }
        Ok(())
    }

    /// A new empty room `name` (subscribed, clustered); `None` when no room
    /// id is left.
    fn create_room(&mut self, name: &str) -> Option<RoomId> {
        let key = Folded::new(name)?;
        let rid = match self.free_rooms.pop() {
            Some(rid) => rid,
            None => {
                let rid = RoomId::try_from(self.rooms.len()).ok()?;
                self.rooms.push(None);
                rid
            }
        };
        self.rooms[rid as usize] = Some(Room {
            name: name.into(),
            members: Vec::new(),
            held: 0,
            ids_members: 0,
            log: RoomHistory::new(self.ids.last_seq()),
            last_id: MsgId { epoch: 0, seq: 0 },
            base: None,
        });
        self.room_index.insert(key.as_str().into(), rid);
        self.request(|| Request::Subscribe(key.as_str().into()));
        Some(rid)
    }

    /// Leave the room at `idx` of `id`'s room list: `LEFT` (per presence rules)
    /// while the subject is still a member, then O(1) removal.
    fn leave<S: Sink>(&mut self, id: ConnId, idx: usize, sink: &mut S) {
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if idx >= user.rooms.len() {
            return;
        }
        // Ordered removal keeps join order, so the new last is the most
        // recently joined remaining room.
        let m = user.rooms.remove(idx);
        let Some(room) = self.rooms.get_mut(m.room as usize).and_then(Option::as_mut) else {
            return;
        };
        let told_room = presence(
            &mut self.out,
            &mut self.deliveries,
            self.config.presence_limit,
            false,
            room,
            &user.nick,
            id,
            sink,
        );
        if told_room {
            if let Some(remote) = self.remote.as_deref_mut() {
                remote.publish_room(&room.name, &self.out);
            }
        }
        self.unlink(id, m);
    }

    /// Take `id` out of the member list of `m.room` (O(1), no notice), and
    /// delete the room when nobody is left in it or holds it.
    fn unlink(&mut self, id: ConnId, m: Membership) {
        let ids = self.user(id).is_some_and(|u| u.caps & CAP_IDS != 0);
        let Some(room) = self.rooms.get_mut(m.room as usize).and_then(Option::as_mut) else {
            return;
        };
        room.ids_members = room.ids_members.saturating_sub(u32::from(ids));
        let pos = m.pos as usize;
        if pos < room.members.len() {
            room.members.swap_remove(pos);
        }
        if let Some(&moved) = room.members.get(pos) {
            if let Some(mu) = self.users.get_mut(moved).and_then(Option::as_mut) {
                if let Some(entry) = mu.rooms.iter_mut().find(|e| e.room == m.room) {
                    entry.pos = m.pos;
                }
            }
        }
        self.delete_if_unused(m.room);
    }

    /// Delete room `rid` when it has no members and no dropped session holds it.
    fn delete_if_unused(&mut self, rid: RoomId) {
        let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) else {
            return;
        };
        if room.members.is_empty() && room.held == 0 {
            if let Some(key) = Folded::new(&room.name) {
                self.room_index.remove(key.as_str());
                if let Some(remote) = self.remote.as_deref_mut() {
                    remote.push(Request::Unsubscribe(key.as_str().into()));
                }
            }
            self.history_bytes -= room.log.bytes();
            self.rooms[rid as usize] = None;
            self.free_rooms.push(rid);
            if self.room_index.is_empty() {
                // The last room is gone: give the table back in O(1) amortised
                // (a partial shrink would have to search the free list).
                self.rooms.clear();
                self.free_rooms.clear();
            }
        }
    }

    fn change_nick<S: Sink>(&mut self, id: ConnId, new: &str, sink: &mut S) {
        let Some(new_key) = Folded::new(new) else {
            self.err(id, ErrorCode::BadNick, "bad nick", sink);
            return;
        };
        if reserved_nick(new)
            && !self
                .user(id)
                .and_then(|u| Folded::new(&u.nick))
                .is_some_and(|k| k.as_str() == new_key.as_str())
        {
            self.err(id, ErrorCode::BadNick, "guest-* nicks are reserved", sink);
            return;
        }
        if matches!(self.nick_holder(new_key.as_str()), Some(owner) if owner != id) {
            self.err(id, ErrorCode::NickTaken, "nick taken", sink);
            return;
        }
        if self.reserve_first(id, new, new_key.as_str(), sink) {
            // Completed (or refused) by `nick_reserved` when the cluster answers.
            return;
        }
        self.apply_nick(id, new, sink);
    }

    /// Rename `id` to `new` (valid, and free or already its own) and send
    /// `NICK OLD NEW` to it and everyone sharing a room with it, once each.
    fn apply_nick<S: Sink>(&mut self, id: ConnId, new: &str, sink: &mut S) {
        let Some(new_key) = Folded::new(new) else {
            return;
        };
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        self.out.clear();
        Line::Nick {
            old: &user.nick,
            new,
        }
        .write_str(&mut self.out, None);
        if &*user.nick == new {
            send(sink, &mut self.deliveries, &[id], &self.out);
            return;
        }
        let old = std::mem::replace(&mut user.nick, new.into());
        if let Some(old_key) = Folded::new(&old) {
            if old_key.as_str() != new_key.as_str() {
                self.nicks.remove(old_key.as_str(), id);
                self.nicks.insert(new_key.as_str(), id);
                self.request(|| Request::Release {
                    nick: old_key.as_str().into(),
                });
            }
        }
        self.publish_nick(id);
        // Everyone sharing a room, each once: stamp users with a generation
        // instead of building a set, so steady state allocates nothing.
        let gen = self.next_generation();
        let mut to = std::mem::take(&mut self.scratch);
        to.clear();
        to.push(id);
        if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
            u.seen = gen;
        }
        let mut k = 0;
        // Indexing by position: the user's room list cannot stay borrowed while
        // room mates' stamps are written.
        while let Some(rid) = self.user(id).and_then(|u| u.rooms.get(k)).map(|m| m.room) {
            k += 1;
            let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) else {
                continue;
            };
            for &member in &room.members {
                if let Some(u) = self.users.get_mut(member).and_then(Option::as_mut) {
                    if u.seen != gen {
                        u.seen = gen;
                        to.push(member);
                    }
                }
            }
        }
        send(sink, &mut self.deliveries, &to, &self.out);
        self.scratch = to;
    }

    /// `PRIV FROM TO TEXT` to the recipient and the sender (once when they are
    /// the same connection).
    fn private<S: Sink>(&mut self, id: ConnId, nick: &str, text: &str, now_ms: u64, sink: &mut S) {
        let Some(target) = self.nick_owner(nick) else {
            if self.remote_private(id, nick, text) {
                return;
            }
            self.err(id, ErrorCode::NoSuchNick, "no such nick", sink);
            return;
        };
        let users = &self.users;
        let (Some(from), Some(to)) = (
            users.get(id).and_then(Option::as_ref),
            users.get(target).and_then(Option::as_ref),
        ) else {
            return;
        };
        self.out.clear();
        Line::Priv {
            from: &from.nick,
            to: &to.nick,
            text,
        }
        .write_str(&mut self.out, None);
        self.messages += 1;
        let pair = [target, id];
        let recipients = if target == id { &pair[..1] } else { &pair[..] };
        let tagged =
            u32::from(to.caps & CAP_IDS != 0) + u32::from(target != id && from.caps & CAP_IDS != 0);
        let msg_id = self.ids.next_id();
        resume::send_tagged(
            sink,
            &mut self.deliveries,
            &mut self.tagged,
            &mut self.tagged_to,
            recipients,
            tagged as usize,
            &self.users,
            &self.out,
            msg_id,
            self.ids.epoch().saturating_add(now_ms),
        );
    }

    /// `ROOMS ROOM=COUNT ...`, case-insensitively sorted, at most `rooms_limit`
    /// then `+N`: the first entries of the sorted index, so the cost is
    /// O(rooms_limit) however many rooms exist.
    fn list_rooms<S: Sink>(&mut self, id: ConnId, sink: &mut S) {
        if self.remote.is_some() {
            self.request(|| Request::Rooms { id });
            return;
        }
        let limit = self.config.rooms_limit;
        let list = &mut self.fields;
        list.clear();
        for &rid in self.room_index.values().take(limit) {
            if let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) {
                let _ = write!(list, " {}={}", room.name, room.members.len());
            }
        }
        let total = self.room_index.len();
        if total > limit {
            let _ = write!(list, " +{}", total - limit);
        }
        self.out.clear();
        Line::Rooms(list.trim_start_matches(' ')).write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    /// `WHO ROOM NICK ...`, at most `who_limit` nicks then `+N`.
    fn who<S: Sink>(&mut self, id: ConnId, requested: Option<&str>, sink: &mut S) {
        let rid = match requested {
            Some(name) => self.room_id(name),
            None => match self.current_room_id(id) {
                Some(rid) => Some(rid),
                None => {
                    self.err(id, ErrorCode::NotInRoom, "join a room first", sink);
                    return;
                }
            },
        };
        if self.remote.is_some() {
            let name = match (requested, rid.and_then(|rid| self.room(rid))) {
                (_, Some(room)) => room.name.clone(),
                (Some(name), None) => name.into(),
                (None, None) => return,
            };
            self.request(|| Request::Who { id, room: name });
            return;
        }
        let room = rid.and_then(|rid| self.rooms.get(rid as usize)?.as_ref());
        let nicks = &mut self.fields;
        nicks.clear();
        let name = match room {
            Some(room) => {
                let shown = room.members.len().min(self.config.who_limit);
                for &member in &room.members[..shown] {
                    if let Some(u) = self.users.get(member).and_then(Option::as_ref) {
                        nicks.push(' ');
                        nicks.push_str(&u.nick);
                    }
                }
                if room.members.len() > shown {
                    let _ = write!(nicks, " +{}", room.members.len() - shown);
                }
                &*room.name
            }
            // A room that does not exist has no members; the parser validated
            // the name, so echoing it is safe.
            None => requested.unwrap_or(""),
        };
        self.out.clear();
        Line::Who {
            room: name,
            nicks: nicks.trim_start_matches(' '),
        }
        .write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    fn quit<S: Sink>(&mut self, id: ConnId, text: Option<&str>, sink: &mut S) {
        self.sessions.end(id);
        if self.defer_quit(id, text) {
            // Clustered, its own lines are still on their way back from
            // Redis: it leaves once they are here (`Hub::said`).
            return;
        }
        self.finish_quit(id, text, sink);
    }

    /// `/quit`: `LEFT` to its rooms, then the close.
    fn finish_quit<S: Sink>(&mut self, id: ConnId, text: Option<&str>, sink: &mut S) {
        while let Some(n) = self.user(id).map(|u| u.rooms.len()).filter(|&n| n > 0) {
            self.leave(id, n - 1, sink);
        }
        if let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) {
            user.access.set_closing();
        }
        // Clients show the reason too: cleaned like any text.
        let mut reason = String::new();
        push_text(&mut reason, text.unwrap_or("bye"));
        sink.close(id, 1000, truncate_str(&reason, MAX_CLOSE_REASON));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tens of thousands of users per process: keep the entry small.
    #[test]
    fn user_entry_stays_small() {
        let size = std::mem::size_of::<User>();
        assert!(size <= 64, "size_of::<User>() = {size}");
        assert_eq!(
            std::mem::size_of::<Option<User>>(),
            size,
            "niche keeps Option free"
        );
        assert_eq!(std::mem::size_of::<Membership>(), 8);
    }

    use crate::chat::Lines;

    fn config() -> ChatConfig {
        ChatConfig {
            rate_limit: 0,
            ..ChatConfig::default()
        }
    }

    #[test]
    fn room_slots_are_reused_and_released() {
        let mut hub = Hub::new(config());
        let mut sink = Lines(Vec::new());
        hub.connect(0, Some("a"), Some("r0"), 0, &mut sink);
        for line in ["/join r1", "/join r2", "/leave r1", "/join r3"] {
            hub.handle(0, line, 0, &mut sink);
            hub.check_invariants();
        }
        assert_eq!(hub.rooms.len(), 3, "r3 took the slot r1 left");
        assert!(hub.free_rooms.is_empty());
        hub.disconnect(0, &mut sink);
        hub.check_invariants();
        assert!(hub.rooms.is_empty() && hub.free_rooms.is_empty());
        assert!(hub.users.is_empty());
    }

    #[test]
    fn rooms_in_total_are_capped_but_the_default_room_is_not() {
        let mut hub = Hub::new(ChatConfig {
            max_rooms_total: 2,
            ..config()
        });
        let mut sink = Lines(Vec::new());
        hub.connect(0, Some("a"), Some("x"), 0, &mut sink);
        hub.handle(0, "/join y", 0, &mut sink);
        sink.0.clear();
        hub.handle(0, "/join z", 0, &mut sink);
        assert_eq!(
            sink.0,
            [(
                0,
                "ERR bad-room the server has too many rooms, join an existing one".to_string()
            )]
        );
        assert_eq!(hub.rooms(), 2, "the refused room was not created");
        // An existing room is joined as usual, and a newcomer still lands in
        // the default room, which is created past the cap.
        hub.connect(1, Some("b"), Some("new"), 0, &mut sink);
        assert_eq!(hub.current_room(1), Some("lobby"));
        hub.handle(1, "/join x", 0, &mut sink);
        assert_eq!(hub.current_room(1), Some("x"));
        hub.check_invariants();
    }

    #[test]
    fn queries_take_query_cost_tokens() {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 20,
            query_cost: 10,
            ..ChatConfig::default()
        });
        let mut sink = Lines(Vec::new());
        hub.connect(0, Some("a"), None, 0, &mut sink);
        hub.handle(0, "/rooms", 0, &mut sink);
        hub.handle(0, "/who", 0, &mut sink);
        sink.0.clear();
        hub.handle(0, "/rooms", 0, &mut sink);
        assert_eq!(
            sink.0,
            [(
                0,
                "ERR rate-limited too many commands, slow down".to_string()
            )]
        );
        // The refusal took one token; 550 ms refill eleven: one more query.
        sink.0.clear();
        hub.handle(0, "/rooms", 550, &mut sink);
        assert_eq!(sink.0, [(0, "ROOMS lobby=1".to_string())]);
    }

    #[test]
    fn rooms_lists_the_first_rooms_of_the_index() {
        let mut hub = Hub::new(ChatConfig {
            rooms_limit: 2,
            max_rooms: 10,
            ..config()
        });
        let mut sink = Lines(Vec::new());
        hub.connect(0, Some("a"), Some("b"), 0, &mut sink);
        for r in ["/join C", "/join a", "/join D"] {
            hub.handle(0, r, 0, &mut sink);
        }
        hub.handle(0, "/leave a", 0, &mut sink);
        sink.0.clear();
        hub.handle(0, "/rooms", 0, &mut sink);
        assert_eq!(sink.0, [(0, "ROOMS b=1 C=1 +1".to_string())]);
    }

    #[test]
    fn control_characters_never_reach_other_clients() {
        let mut out = String::new();
        push_text(
            &mut out,
            "a\x1b[1G\x1b[2Kb\0c\x0bd\x0ce\u{85}f\u{9b}g\u{2028}h\u{2029}i\x7fj\tk\r\nl",
        );
        assert_eq!(
            out,
            "a\u{FFFD}[1G\u{FFFD}[2Kb\u{FFFD}c\u{FFFD}d\u{FFFD}e\u{FFFD}f\u{FFFD}g\u{FFFD}h\u{FFFD}i\u{FFFD}j\tk  l"
        );
        // Letters that share a lead byte with the replaced ones pass through.
        let mut out = String::new();
        push_text(&mut out, "\u{a9}\u{e9}\u{2026}\u{2030}");
        assert_eq!(out, "\u{a9}\u{e9}\u{2026}\u{2030}");
        let mut hub = Hub::new(config());
        let mut sink = Lines(Vec::new());
        hub.connect(0, Some("a"), None, 0, &mut sink);
        sink.0.clear();
        for line in [
            "hi\x1b[2J",
            "/say lobby \x07",
            "/msg a \u{2028}",
            "/ping \x00",
        ] {
            hub.handle(0, line, 0, &mut sink);
        }
        let lines: Vec<&str> = sink.0.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "MSG lobby a hi\u{FFFD}[2J",
                "MSG lobby a \u{FFFD}",
                "PRIV a a \u{FFFD}",
                "PONG \u{FFFD}"
            ]
        );
    }

    #[test]
    fn nick_dedup_survives_generation_wrap() {
        let mut hub = Hub::new(config());
        let mut sink = Lines(Vec::new());
        hub.connect(0, Some("a"), None, 0, &mut sink);
        hub.connect(1, Some("b"), None, 0, &mut sink);
        hub.handle(0, "/join x", 0, &mut sink);
        hub.handle(1, "/join x", 0, &mut sink);
        hub.generation = u32::MAX - 1;
        for nick in ["a1", "a2", "a3"] {
            sink.0.clear();
            hub.handle(0, &format!("/nick {nick}"), 0, &mut sink);
            assert_eq!(sink.0.len(), 2, "each once: {:?}", sink.0);
        }
        assert_eq!(hub.generation, 2);
    }
}
