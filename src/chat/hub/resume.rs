//! The v2 parts of the hub: capabilities, `ids` tags, `/history`, and
//! sessions that survive a dropped connection (PROTOCOL.md, "v2").
//!
//! Choices where the shared contract is silent:
//! - `/caps LIST` replaces the set (so `/caps ids` after `ids,resume` turns
//!   `resume` off and ends the session); `/caps` alone reports it. Unknown
//!   names are ignored; `CAPS` lists what is on, in a fixed order.
//! - A cluster node offers `ids` (Redis numbers each room's messages, see
//!   `cluster::node`), asks Redis for `/history`, and shares its dropped
//!   sessions through Redis so they resume on any node (`cluster_resume.rs`).
//! - A dropped session is invisible to `/who`, `/rooms` counts and `/msg`
//!   (`no such nick`) while it is away; only its nick and rooms are held.
//! - `/resume` of a session whose connection the server still thinks open
//!   (a half-open TCP connection after a network change) takes it over: the
//!   old connection is detached and closed with 1000 "session resumed
//!   elsewhere". Resuming the connection's own session is refused.
//! - Without `ROOM=ID`, a room resumes after the last message the hub handed
//!   to the old connection's outbox; lines still queued (unwritten) at the
//!   drop are then lost for that client, so clients with `ids` should send
//!   `ROOM=ID` (the page and `loopchat client` do).

use super::super::command::since_pairs;
use super::super::history::{Lost, MsgId};
use super::super::line::{write_tag_block, Count, Line, Tags};
use super::super::names::Folded;
use super::super::remote::Request;
use super::super::session::{os_random, Refused, Taken, TOKEN_BYTES};
use super::super::{ConnId, ErrorCode, Sink};
use super::{send, Hub, Membership, RoomId, User};
use crate::chat::access::Access;
use crate::chat::compact::InlineList;
use crate::chat::rate::RateLimiter;

/// `ids`: `@id=…;time=…` tags on `MSG` and `PRIV`.
pub(super) const CAP_IDS: u8 = 1;
/// `resume`: a `SESSION` token and a grace period after a drop.
pub(super) const CAP_RESUME: u8 = 2;
/// The nick index's holder for a dropped session's nick (no connection has it).
pub(super) const DETACHED: ConnId = usize::MAX;

/// A set of capabilities, as asked for (`?caps=` / `/caps`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps(u8);

impl Caps {
    /// The capability bits.
    pub(super) fn bits(self) -> u8 {
        self.0
    }

    /// Parse a comma-separated list; unknown names are ignored.
    pub fn parse(list: &str) -> Caps {
        Caps(
            list.split(',')
                .map(|c| match c.trim() {
                    c if c.eq_ignore_ascii_case("ids") => CAP_IDS,
                    c if c.eq_ignore_ascii_case("resume") => CAP_RESUME,
                    _ => 0,
                })
                .fold(0, |a, b| a | b),
        )
    }
}

/// What a new chat connection asks for (the query of `/ws`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Connect<'a> {
    /// `?nick=`.
    pub nick: Option<&'a str>,
    /// `?room=`.
    pub room: Option<&'a str>,
    /// `?caps=`; `None` sends no `CAPS` line (a v1 connection).
    pub caps: Option<Caps>,
    /// `?resume=TOKEN`.
    pub resume: Option<&'a str>,
    /// `?since=ROOM:ID,...`.
    pub since: Option<&'a str>,
}

/// What a dropped session leaves in the hub until it is resumed or expires.
#[derive(Debug)]
pub(super) struct Detached {
    nick: Box<str>,
    /// Rooms in join order, with the room's last message id when the
    /// connection dropped (everything up to it was handed to its outbox).
    rooms: Vec<(RoomId, u64)>,
    caps: u8,
    /// The role and signed flag the connection had.
    access: Access,
    /// What a token holder's session keeps of its token (boxed: most
    /// sessions are guests').
    signed: Option<Box<SignedHold>>,
    /// Clustered: the session's Redis key and the record stored there.
    shared: Option<Box<Shared>>,
}

/// A clustered session's copy in Redis (see `hub/cluster_resume.rs`).
#[derive(Debug)]
pub(super) struct Shared {
    key: Box<str>,
    record: Box<str>,
}

/// A dropped signed session's token: restored on resume, and the session
/// is kept no longer than the token is valid.
#[derive(Debug)]
pub(super) struct SignedHold {
    /// `exp`, Unix seconds.
    exp: u64,
    /// The `rooms` claim, if the token had one.
    rooms: Option<Box<[Box<str>]>>,
}

impl Detached {
    /// True when this session's nick is `folded`.
    pub(super) fn nick_is(&self, folded: &str) -> bool {
        Folded::new(&self.nick).is_some_and(|f| f.as_str() == folded)
    }

    /// True for a token holder's session.
    pub(super) fn is_signed(&self) -> bool {
        self.access.is_signed()
    }

    /// The nick it holds.
    pub(super) fn nick(&self) -> &str {
        &self.nick
    }

    /// The rooms it holds.
    pub(super) fn room_ids(&self) -> impl Iterator<Item = RoomId> + '_ {
        self.rooms.iter().map(|&(rid, _)| rid)
    }

    /// Clustered: the record written to Redis.
    pub(super) fn record(&self) -> Option<&str> {
        self.shared.as_deref().map(|s| &*s.record)
    }

    /// Clustered: the key of the record in Redis.
    pub(super) fn redis_key(&self) -> Option<&str> {
        self.shared.as_deref().map(|s| &*s.key)
    }
}

/// Write `@id=…;time=… ` + `line` into `out`.
pub(super) fn tag_line(out: &mut String, line: &str, id: MsgId, time_ms: u64) {
    out.clear();
    let mut buf = [0u8; 41];
    let tags = Tags {
        id: Some(id.write(&mut buf)),
        time_ms: Some(time_ms),
    };
    write_tag_block(out, &tags);
    out.push_str(line);
}

/// `line` to everyone in `to`, `n_tagged` of whom asked for `ids`: plain
/// alone when none did, else plain to the others and tagged with `id` and
/// `time_ms` to them (at most two encodings, one deliver call each).
#[allow(clippy::too_many_arguments)]
pub(super) fn send_tagged<S: Sink>(
    sink: &mut S,
    deliveries: &mut u64,
    tagged: &mut String,
    scratch: &mut Vec<ConnId>,
    to: &[ConnId],
    n_tagged: usize,
    users: &[Option<User>],
    line: &str,
    id: MsgId,
    time_ms: u64,
) {
    if n_tagged == 0 {
        send(sink, deliveries, to, line);
        return;
    }
    tag_line(tagged, line, id, time_ms);
    send_split(sink, deliveries, scratch, to, n_tagged, users, line, tagged);
}

/// Deliver `plain` to the v1 members of `to` and `tagged` to its `ids`
/// members (`n_tagged` of them): at most two deliver calls, so the server
/// encodes each form once.
#[allow(clippy::too_many_arguments)]
pub(super) fn send_split<S: Sink>(
    sink: &mut S,
    deliveries: &mut u64,
    scratch: &mut Vec<ConnId>,
    to: &[ConnId],
    n_tagged: usize,
    users: &[Option<User>],
    plain: &str,
    tagged: &str,
) {
    if n_tagged >= to.len() {
        send(sink, deliveries, to, tagged);
        return;
    }
    let has_ids = |id: &ConnId| {
        users
            .get(*id)
            .and_then(Option::as_ref)
            .is_some_and(|u| u.caps & CAP_IDS != 0)
    };
    // One pass over the members: plain recipients fill the scratch vector
    // from the front, tagged ones from the back (their order within a
    // deliver call does not matter); no allocation in steady state.
    scratch.clear();
    scratch.resize(to.len(), 0);
    let (mut split, mut back) = (0, to.len());
    for &id in to {
        if has_ids(&id) {
            back -= 1;
            scratch[back] = id;
        } else {
            scratch[split] = id;
            split += 1;
        }
    }
    send(sink, deliveries, &scratch[..split], plain);
    send(sink, deliveries, &scratch[split..], tagged);
}

impl Hub {
    /// Set the process epoch (Unix ms at start): ids are `EPOCH-SEQ` and
    /// `time` tags are `EPOCH + now_ms`. Call before the first message.
    pub fn set_epoch(&mut self, unix_ms: u64) {
        if self.ids.last_seq() == 0 {
            self.ids = super::IdGen::new(unix_ms);
        }
    }

    /// A new chat connection with the v2 arguments: resumes `args.resume` when
    /// it is a good token, otherwise connects as [`Hub::connect`] does
    /// (`ERR bad-session` after `WELCOME` when a token was refused).
    pub fn connect_with(
        &mut self,
        id: ConnId,
        args: &Connect<'_>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        self.now_ms = now_ms;
        let mut bad = None;
        if let Some(token) = args.resume {
            if self.remote.is_some() && self.offered() & CAP_RESUME != 0 {
                if self.start_cluster_resume(id, token, args, false, now_ms) {
                    return;
                }
                bad = Some((ErrorCode::BadSession, "unknown, used or expired session"));
                self.connect_as_new(id, args, bad, now_ms, sink);
                return;
            }
            match self.take_session(id, token, now_ms, sink) {
                Ok(data) => {
                    if self.user(id).is_some() {
                        self.disconnect(id, sink);
                    }
                    let caps = args.caps.map_or(data.caps, |c| c.0) | CAP_RESUME;
                    self.attach(
                        id,
                        data,
                        caps,
                        args.caps.is_some(),
                        args.since,
                        ',',
                        ':',
                        now_ms,
                        sink,
                    );
                    return;
                }
                Err(text) => bad = Some((ErrorCode::BadSession, text)),
            }
        }
        self.connect_as_new(id, args, bad, now_ms, sink);
    }

    /// The capabilities this hub offers: `ids` always (a cluster's rooms
    /// are ordered by Redis), `resume` when sessions are kept.
    pub(super) fn offered(&self) -> u8 {
        let resume = if self.config.session_ttl_ms > 0 {
            CAP_RESUME
        } else {
            0
        };
        CAP_IDS | resume
    }

    /// Switch `id`'s capabilities to `caps` (what the hub offers of them),
    /// answer `CAPS`, and `SESSION` when `resume` is (still) on.
    pub(super) fn set_caps(&mut self, id: ConnId, caps: Caps, sink: &mut impl Sink) {
        let caps = caps.0 & self.offered();
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let old = user.caps;
        user.caps = caps;
        if (old ^ caps) & CAP_IDS != 0 {
            let on = caps & CAP_IDS != 0;
            for m in user.rooms.iter() {
                if let Some(room) = self.rooms.get_mut(m.room as usize).and_then(Option::as_mut) {
                    room.ids_members = if on {
                        room.ids_members + 1
                    } else {
                        room.ids_members.saturating_sub(1)
                    };
                }
            }
        }
        self.send_caps(id, sink);
        if caps & CAP_RESUME == 0 {
            self.sessions.end(id);
        } else if !self.sessions.has(id) {
            self.issue_session(id, sink);
        }
    }

    /// `CAPS LIST` with what `id` has on.
    pub(super) fn send_caps(&mut self, id: ConnId, sink: &mut impl Sink) {
        let caps = self.user(id).map_or(0, |u| u.caps);
        let list = match (caps & CAP_IDS != 0, caps & CAP_RESUME != 0) {
            (true, true) => "ids,resume",
            (true, false) => "ids",
            (false, true) => "resume",
            (false, false) => "",
        };
        self.out.clear();
        Line::Caps(list).write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    /// A fresh token for `id`, sent as `SESSION TOKEN`. Without OS randomness
    /// (never seen in practice) `resume` is switched off rather than weakened.
    pub(super) fn issue_session(&mut self, id: ConnId, sink: &mut impl Sink) {
        let mut bytes = [0u8; TOKEN_BYTES];
        if os_random(&mut bytes).is_err() {
            if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
                u.caps &= !CAP_RESUME;
            }
            self.err(id, ErrorCode::BadSession, "no session: no randomness", sink);
            return;
        }
        let token = self.sessions.issue(id, bytes).encode();
        self.out.clear();
        Line::Session(&token).write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    /// `/history ROOM [N]` and `/history ROOM after ID [N]`.
    pub(super) fn history(
        &mut self,
        id: ConnId,
        name: &str,
        after: Option<&str>,
        limit: Option<u32>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let keep = self.config.history.keep;
        if keep == 0 {
            self.err(
                id,
                ErrorCode::HistoryOff,
                "this server keeps no history",
                sink,
            );
            return;
        }
        let Some(rid) = self
            .room_id(name)
            .filter(|&rid| self.membership_index(id, rid).is_some())
        else {
            self.err(id, ErrorCode::NotInRoom, "not in that room", sink);
            return;
        };
        let n = limit.map_or(keep, |l| (l as usize).min(keep));
        if self.remote.is_some() {
            // The room's history lives in Redis: asked there, answered by
            // `answer_history`.
            if let Some(key) = Folded::new(name) {
                let (room, after) = (key.as_str().into(), after.map(Into::into));
                self.request(|| Request::History {
                    id,
                    room,
                    after,
                    limit: n as u32,
                });
            }
            return;
        }
        let time_now = self.ids.epoch().saturating_add(now_ms);
        let cfg = self.config.history;
        if let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) {
            let before = room.log.bytes();
            room.log.expire(&cfg, time_now);
            self.history_bytes -= before - room.log.bytes();
        }
        let from = match after {
            None => None,
            Some(text) => match MsgId::parse(text).and_then(|m| self.ids.seq_of(m)) {
                Some(seq) => Some(seq),
                None => {
                    self.replay(id, rid, Err(Lost), n, true, sink);
                    return;
                }
            },
        };
        match from {
            Some(seq) => self.replay(id, rid, Ok(Some(seq)), n, true, sink),
            None => self.replay(id, rid, Ok(None), n, true, sink),
        }
    }

    /// `HISTORY`/`RESUMED ROOM COUNT` and the `MSG` lines: the `n` most recent
    /// (`from` = `Ok(None)`), those after a sequence number, or `lost`.
    fn replay(
        &mut self,
        id: ConnId,
        rid: RoomId,
        from: Result<Option<u64>, Lost>,
        n: usize,
        history: bool,
        sink: &mut impl Sink,
    ) {
        let tagged = self.user(id).is_some_and(|u| u.caps & CAP_IDS != 0);
        let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) else {
            return;
        };
        let count = match from {
            Err(Lost) => Count::Lost,
            Ok(None) => Count::Lines(room.log.len().min(n) as u32),
            Ok(Some(seq)) => match room.log.count_after(seq) {
                Ok(c) => Count::Lines(c.min(n) as u32),
                Err(Lost) => Count::Lost,
            },
        };
        self.out.clear();
        let head = if history {
            Line::History {
                room: &room.name,
                count,
            }
        } else {
            Line::Resumed {
                room: &room.name,
                count,
            }
        };
        head.write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
        let Count::Lines(c) = count else {
            return;
        };
        let entries: Box<dyn Iterator<Item = _>> = match from {
            Ok(Some(seq)) => match room.log.after(seq, c as usize) {
                Ok(it) => Box::new(it),
                Err(Lost) => return,
            },
            _ => Box::new(room.log.recent(c as usize)),
        };
        let epoch = self.ids.epoch();
        for e in entries {
            self.out.clear();
            let mut buf = [0u8; 41];
            let id_text = MsgId { epoch, seq: e.seq }.write(&mut buf);
            let tags = Tags {
                id: Some(id_text),
                time_ms: Some(e.time_ms),
            };
            Line::Msg {
                room: &room.name,
                nick: e.nick(),
                text: e.text(),
            }
            .write_str(&mut self.out, tagged.then_some(&tags));
            send(sink, &mut self.deliveries, &[id], &self.out);
        }
    }

    /// Find and use a session token for connection `id`. A session still
    /// held by another open connection is detached from it first, and that
    /// connection closed.
    pub(super) fn take_session(
        &mut self,
        id: ConnId,
        token: &str,
        now_ms: u64,
        sink: &mut impl Sink,
    ) -> Result<Detached, &'static str> {
        if self.offered() & CAP_RESUME == 0 {
            return Err("this server does not resume sessions");
        }
        match self.sessions.take(token, now_ms) {
            Ok(Taken::Detached(data)) => Ok(data),
            Ok(Taken::Live(old)) if old == id => Err("that session is this connection"),
            Ok(Taken::Live(old)) => {
                if !self.detach(old, sink) {
                    return Err("unknown or expired session");
                }
                if let Some(u) = self.users.get_mut(old).and_then(Option::as_mut) {
                    u.access.set_closing();
                }
                sink.close(old, 1000, "session resumed elsewhere");
                match self.sessions.take(token, now_ms) {
                    Ok(Taken::Detached(data)) => Ok(data),
                    _ => Err("unknown or expired session"),
                }
            }
            Err(Refused::BadSession) => Err("unknown, used or expired session"),
        }
    }

    /// `/resume TOKEN [ROOM=ID ...]` on a connection: the guest it was leaves
    /// as any guest would, then the session takes its place.
    pub(super) fn resume_command(
        &mut self,
        id: ConnId,
        token: &str,
        since: Option<&str>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let caps = self.user(id).map_or(0, |u| u.caps);
        if self.remote.is_some() && self.offered() & CAP_RESUME != 0 {
            let args = Connect {
                since,
                ..Connect::default()
            };
            if !self.start_cluster_resume(id, token, &args, true, now_ms) {
                let text = "unknown, used or expired session";
                self.err(id, ErrorCode::BadSession, text, sink);
            }
            return;
        }
        match self.take_session(id, token, now_ms, sink) {
            Ok(data) => {
                self.sessions.end(id);
                self.disconnect_now(id, sink);
                self.attach(
                    id,
                    data,
                    caps | CAP_RESUME,
                    false,
                    since,
                    ' ',
                    '=',
                    now_ms,
                    sink,
                );
            }
            Err(text) => self.err(id, ErrorCode::BadSession, text, sink),
        }
    }

    /// `disconnect` without keeping a session.
    pub(super) fn disconnect_now(&mut self, id: ConnId, sink: &mut impl Sink) {
        self.sessions.end(id);
        self.disconnect(id, sink);
    }

    /// Give the dropped session `data` to connection `id` (not in the hub):
    /// `WELCOME`, `CAPS` (when asked), a fresh `SESSION`, then per room in
    /// join order `RESUMED` and the missed messages.
    #[allow(clippy::too_many_arguments)]
    fn attach(
        &mut self,
        id: ConnId,
        data: Detached,
        caps: u8,
        announce_caps: bool,
        since: Option<&str>,
        sep: char,
        kv: char,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        if self.users.len() <= id {
            self.users.resize_with(id + 1, || None);
        }
        let Detached {
            nick,
            rooms,
            access,
            signed,
            ..
        } = data;
        let exp_tag = signed.as_ref().map_or(0, |h| h.exp as u16);
        if let Some(key) = Folded::new(&nick) {
            self.nicks.remove(key.as_str(), DETACHED);
            self.nicks.insert(key.as_str(), id);
        }
        self.out.clear();
        Line::Welcome { nick: &nick }.write_str(&mut self.out, None);
        self.users[id] = Some(User {
            nick,
            rooms: InlineList::default(),
            rate: RateLimiter::new(self.config.rate_limit, now_ms),
            seen: 0,
            access,
            exp_tag,
            caps: caps & self.offered(),
        });
        if let Some(claim) = signed.and_then(|h| h.rooms) {
            self.auth_rooms_insert(id, claim);
        }
        self.live += 1;
        self.resumes += 1;
        send(sink, &mut self.deliveries, &[id], &self.out);
        if announce_caps {
            self.send_caps(id, sink);
        }
        self.issue_session(id, sink);
        let ids = caps & CAP_IDS != 0;
        let time_now = self.ids.epoch().saturating_add(now_ms);
        let cfg = self.config.history;
        for (rid, last_seq) in rooms {
            let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) else {
                continue;
            };
            room.held = room.held.saturating_sub(1);
            let before = room.log.bytes();
            room.log.expire(&cfg, time_now);
            self.history_bytes -= before - room.log.bytes();
            let pos = room.members.len() as u32;
            room.members.push(id);
            room.ids_members += u32::from(ids);
            if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
                u.rooms.push(Membership { room: rid, pos });
            }
            // The client's own position wins over the server's guess.
            let name = &room.name;
            let asked = since.and_then(|s| {
                since_pairs(s, sep, kv)
                    .flatten()
                    .find(|(r, _)| r.eq_ignore_ascii_case(name))
                    .map(|(_, m)| m)
            });
            let from = match asked {
                None => Ok(Some(last_seq)),
                Some(m) => match MsgId::parse(m).and_then(|m| self.ids.seq_of(m)) {
                    Some(seq) => Ok(Some(seq)),
                    None => Err(Lost),
                },
            };
            self.replay(id, rid, from, usize::MAX, false, sink);
        }
    }

    /// Connection `id` dropped: when it has a session, keep its nick and rooms
    /// for the TTL without telling anyone, and forget the connection. False
    /// (nothing changed) when it has none, or the table is full.
    pub(super) fn detach(&mut self, id: ConnId, sink: &mut impl Sink) -> bool {
        if !self.sessions.can_detach(id) {
            return false;
        }
        let Some(user) = self.user(id) else {
            return false;
        };
        // A token holder's session is kept no longer than its token is valid
        // (`exp` plus the leeway); an expired or closing one is not kept.
        let (access, exp_tag) = (user.access, user.exp_tag);
        let mut until_ms = u64::MAX;
        let mut signed = None;
        if access.is_signed() {
            let epoch = self.ids.epoch();
            let now_s = epoch.saturating_add(self.now_ms) / 1000;
            let exp = super::auth::full_exp(exp_tag, now_s);
            let end_s = exp + self.config.token_leeway;
            if access.closing() || end_s <= now_s {
                self.sessions.end(id);
                return false;
            }
            until_ms = end_s.saturating_mul(1000).saturating_sub(epoch);
            signed = Some(Box::new(SignedHold {
                exp,
                rooms: self.auth_rooms_take(id),
            }));
        }
        // Rooms still catching up (a drop during a resume) stay in the
        // session, at the position the client has there.
        let catching = self.take_catchups(id);
        let Some(user) = self.user(id) else {
            return false;
        };
        let shared = match (&self.remote, self.sessions.token_of(id)) {
            (Some(_), Some(token)) => {
                let caught = catching.iter().filter_map(|&(rid, after)| {
                    Some((self.room(rid)?.name.clone(), after.ok().flatten()))
                });
                let rec = super::record::Record {
                    nick: user.nick.clone(),
                    caps: user.caps,
                    access,
                    exp: signed.as_ref().map(|h| h.exp),
                    claim: signed.as_ref().and_then(|h| h.rooms.clone()),
                    rooms: user
                        .rooms
                        .iter()
                        .filter_map(|m| {
                            let room = self.room(m.room)?;
                            let last = room.last_id;
                            // Nothing delivered here yet: where the room stood
                            // when last read, if it was.
                            let at = if last.epoch > 0 {
                                Some(last)
                            } else {
                                room.base
                            };
                            Some((room.name.clone(), at))
                        })
                        .chain(caught)
                        .collect(),
                };
                let mut record = String::new();
                rec.write(&mut record);
                Some(Box::new(Shared {
                    key: token.redis_key().into(),
                    record: record.into(),
                }))
            }
            _ => None,
        };
        let Some(user) = self.user(id) else {
            return false;
        };
        // (A catch-up's room is held already: the session takes that over.)
        let rooms: Vec<(RoomId, u64)> = user
            .rooms
            .iter()
            .filter_map(|m| Some((m.room, self.room(m.room)?.log.last_seq())))
            .chain(catching.iter().map(|&(rid, _)| (rid, 0)))
            .collect();
        while let Some(m) = self
            .users
            .get_mut(id)
            .and_then(Option::as_mut)
            .and_then(|u| (!u.rooms.is_empty()).then(|| u.rooms.remove(u.rooms.len() - 1)))
        {
            if let Some(room) = self.rooms.get_mut(m.room as usize).and_then(Option::as_mut) {
                room.held += 1;
            }
            self.unlink(id, m);
        }
        let Some(user) = self.users.get_mut(id).and_then(Option::take) else {
            return false;
        };
        if let Some(key) = Folded::new(&user.nick) {
            self.nicks.remove(key.as_str(), id);
            self.nicks.insert(key.as_str(), DETACHED);
        }
        self.live -= 1;
        while matches!(self.users.last(), Some(None)) {
            self.users.pop();
        }
        if let (Some(sh), Some(nick)) = (&shared, Folded::new(&user.nick)) {
            let ttl_ms = until_ms
                .min(self.now_ms.saturating_add(self.config.session_ttl_ms))
                .saturating_sub(self.now_ms)
                .max(1);
            let (key, record) = (sh.key.clone(), sh.record.clone());
            self.request(|| Request::StoreSession {
                key,
                nick: nick.as_str().into(),
                record,
                ttl_ms,
            });
            let nick = user.nick.clone();
            let signed = access.is_signed();
            self.request(|| Request::Renew {
                nick,
                id: None,
                signed,
            });
        }
        let data = Detached {
            nick: user.nick,
            rooms,
            caps: user.caps,
            access,
            signed,
            shared,
        };
        let kept = self.sessions.detach_until(id, self.now_ms, until_ms, data);
        debug_assert!(kept.is_ok(), "can_detach said yes, the deadline is ahead");
        if let Err(data) = kept {
            self.end_detached(data, sink);
        }
        true
    }

    /// When [`Hub::handle_timeout`] next has work (a dropped session expires),
    /// on the `now_ms` clock.
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.sessions.poll_timeout(),
            self.catchup_deadline(),
            self.quit_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Expire dropped sessions whose time ran out: `LEFT` to their rooms (per
    /// presence rules), the nick is free again, unused rooms are deleted.
    pub fn handle_timeout(&mut self, now_ms: u64, sink: &mut impl Sink) {
        self.now_ms = now_ms;
        while let Some(data) = self.sessions.pop_expired(now_ms) {
            // Clustered, Redis says first whether another node resumed it.
            if let Some(data) = self.end_clustered(data) {
                self.end_detached(data, sink);
            }
        }
        self.catchup_timeouts(now_ms, sink);
        self.quit_timeouts(now_ms, sink);
        self.retake_due(now_ms);
    }

    /// A dropped session ends without being resumed: `LEFT` to its rooms
    /// (per presence rules), the nick is free again, unused rooms deleted.
    pub(super) fn end_detached(&mut self, data: Detached, sink: &mut impl Sink) {
        {
            for &(rid, _) in &data.rooms {
                let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) else {
                    continue;
                };
                room.held = room.held.saturating_sub(1);
                // The subject counts: the room "had" members + 1.
                if room.members.len() < self.config.presence_limit {
                    self.out.clear();
                    Line::Left {
                        room: &room.name,
                        nick: &data.nick,
                    }
                    .write_str(&mut self.out, None);
                    send(sink, &mut self.deliveries, &room.members, &self.out);
                    if let Some(remote) = self.remote.as_deref_mut() {
                        remote.publish_room(&room.name, &self.out);
                    }
                }
                self.delete_if_unused(rid);
            }
            if let Some(key) = Folded::new(&data.nick) {
                self.nicks.remove(key.as_str(), DETACHED);
                self.request(|| Request::Release {
                    nick: key.as_str().into(),
                });
            }
        }
    }

    /// Dropped sessions waiting to be resumed.
    pub fn detached_sessions(&self) -> usize {
        self.sessions.detached()
    }

    /// Sessions resumed so far.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::{ChatConfig, Lines};
    use super::*;
    use crate::chat::line::{parse, Line};

    const EPOCH: u64 = 1_796_032_800_000;

    fn hub() -> (Hub, Lines) {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            ..ChatConfig::default()
        });
        hub.set_epoch(EPOCH);
        (hub, Lines::default())
    }

    fn take(sink: &mut Lines, id: ConnId) -> Vec<String> {
        sink.take(id)
    }

    fn connect(hub: &mut Hub, sink: &mut Lines, id: ConnId, nick: &str, caps: Option<&str>) {
        let args = Connect {
            nick: Some(nick),
            caps: caps.map(Caps::parse),
            ..Connect::default()
        };
        hub.connect_with(id, &args, 0, sink);
        hub.check_invariants();
    }

    fn token_of(lines: &[String]) -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("SESSION "))
            .expect("a SESSION line")
            .to_string()
    }

    fn h(hub: &mut Hub, sink: &mut Lines, id: ConnId, line: &str, now: u64) {
        hub.handle(id, line, now, sink);
        hub.check_invariants();
    }

    #[test]
    fn a_drop_beyond_max_sessions_leaves_no_usable_token() {
        // Found by `loopchat load --mode resume` against `--max-sessions`: a
        // drop the full table refused must end the session, or its token
        // takes over whatever connection gets the id next.
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            max_sessions: 1,
            ..ChatConfig::default()
        });
        hub.set_epoch(EPOCH);
        let mut sink = Lines::default();
        connect(&mut hub, &mut sink, 0, "a", Some("resume"));
        connect(&mut hub, &mut sink, 1, "b", Some("resume"));
        let held = token_of(&take(&mut sink, 0));
        let stale = token_of(&take(&mut sink, 1));
        hub.disconnect(0, &mut sink);
        hub.disconnect(1, &mut sink);
        hub.check_invariants();
        // A v1 connection gets id 1 again; the held session is resumed, so
        // the table has room again.
        connect(&mut hub, &mut sink, 1, "victim", None);
        connect(&mut hub, &mut sink, 2, "x", None);
        connect(&mut hub, &mut sink, 3, "y", None);
        h(&mut hub, &mut sink, 3, &format!("/resume {held}"), 1);
        sink.0.clear();
        h(&mut hub, &mut sink, 2, &format!("/resume {stale}"), 1);
        let l = take(&mut sink, 2);
        assert!(l.len() == 1 && l[0].starts_with("ERR bad-session"), "{l:?}");
        h(&mut hub, &mut sink, 1, "/who lobby", 2);
        let l = take(&mut sink, 1);
        assert!(
            l.iter()
                .any(|l| l.starts_with("WHO lobby") && l.contains("victim")),
            "the v1 connection keeps its user: {l:?}"
        );
    }

    #[test]
    fn v1_lines_stay_v1_and_ids_clients_get_tags() {
        let (mut hub, mut sink) = hub();
        connect(&mut hub, &mut sink, 0, "old", None);
        connect(&mut hub, &mut sink, 1, "new", Some("ids,bogus"));
        assert_eq!(
            take(&mut sink, 0),
            ["WELCOME old", "JOINED lobby old", "JOINED lobby new"]
        );
        assert_eq!(
            take(&mut sink, 1),
            ["WELCOME new", "CAPS ids", "JOINED lobby new"]
        );
        h(&mut hub, &mut sink, 0, "hi", 5);
        assert_eq!(take(&mut sink, 0), ["MSG lobby old hi"]);
        assert_eq!(
            take(&mut sink, 1),
            ["@id=1796032800000-1;time=2026-11-30T10:00:00.005Z MSG lobby old hi"]
        );
        h(&mut hub, &mut sink, 1, "/msg old psst", 6);
        assert_eq!(take(&mut sink, 0), ["PRIV new old psst"]);
        let l = take(&mut sink, 1);
        assert!(l[0].starts_with("@id=1796032800000-2;"), "{l:?}");
        h(&mut hub, &mut sink, 1, "/caps", 7);
        assert_eq!(take(&mut sink, 1), ["CAPS ids"]);
        h(&mut hub, &mut sink, 1, "/caps", 7);
        h(&mut hub, &mut sink, 1, "/caps none", 7);
        assert_eq!(take(&mut sink, 1), ["CAPS ids", "CAPS"]);
        h(&mut hub, &mut sink, 0, "again", 8);
        assert_eq!(take(&mut sink, 1), ["MSG lobby old again"]);
    }

    #[test]
    fn history_both_forms() {
        let (mut hub, mut sink) = hub();
        connect(&mut hub, &mut sink, 0, "a", Some("ids"));
        connect(&mut hub, &mut sink, 1, "b", None);
        for i in 1..=5 {
            h(&mut hub, &mut sink, 0, &format!("m{i}"), i);
        }
        sink.0.clear();
        h(&mut hub, &mut sink, 1, "/history lobby 2", 10);
        assert_eq!(
            take(&mut sink, 1),
            ["HISTORY lobby 2", "MSG lobby a m4", "MSG lobby a m5"]
        );
        h(
            &mut hub,
            &mut sink,
            0,
            "/history LOBBY after 1796032800000-3",
            10,
        );
        let l = take(&mut sink, 0);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0], "HISTORY lobby 2");
        let (tags, line) = parse(&l[1]).unwrap();
        assert_eq!(tags.id, Some("1796032800000-4"));
        assert_eq!(tags.time_ms, Some(EPOCH + 4));
        assert_eq!(
            line,
            Line::Msg {
                room: "lobby",
                nick: "a",
                text: "m4"
            }
        );
        h(
            &mut hub,
            &mut sink,
            1,
            "/history lobby after 1796032800000-5",
            10,
        );
        h(&mut hub, &mut sink, 1, "/history lobby after 17-3", 10);
        h(
            &mut hub,
            &mut sink,
            1,
            "/history lobby after 1796032800000-99",
            10,
        );
        h(&mut hub, &mut sink, 1, "/history dev", 10);
        assert_eq!(
            take(&mut sink, 1),
            [
                "HISTORY lobby 0",
                "HISTORY lobby lost",
                "HISTORY lobby lost",
                "ERR not-in-room not in that room"
            ]
        );
        let mut off = Hub::new(ChatConfig {
            history: crate::chat::history::HistoryConfig {
                keep: 0,
                ..Default::default()
            },
            ..ChatConfig::default()
        });
        off.connect(0, Some("a"), None, 0, &mut sink);
        sink.0.clear();
        off.handle(0, "/history lobby", 0, &mut sink);
        assert_eq!(
            take(&mut sink, 0),
            ["ERR history-off this server keeps no history"]
        );
    }

    #[test]
    fn rooms_share_the_history_byte_budget() {
        let cost = crate::chat::history::Stored::cost("a", "0123456789");
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            history: crate::chat::history::HistoryConfig {
                max_bytes: 3 * cost,
                ..Default::default()
            },
            ..ChatConfig::default()
        });
        let mut sink = Lines::default();
        hub.connect(0, Some("a"), None, 0, &mut sink);
        h(&mut hub, &mut sink, 0, "/join dev", 0);
        for _ in 0..4 {
            h(&mut hub, &mut sink, 0, "/say lobby 0123456789", 1);
        }
        h(&mut hub, &mut sink, 0, "/say dev 0123456789", 2);
        sink.0.clear();
        h(&mut hub, &mut sink, 0, "/history dev", 3);
        h(&mut hub, &mut sink, 0, "/history lobby 1", 3);
        assert_eq!(
            take(&mut sink, 0),
            ["HISTORY dev 0", "HISTORY lobby 1", "MSG lobby a 0123456789"],
            "lobby holds the budget: dev keeps nothing"
        );
        h(&mut hub, &mut sink, 0, "/leave lobby", 4);
        h(&mut hub, &mut sink, 0, "/say dev 0123456789", 5);
        sink.0.clear();
        h(&mut hub, &mut sink, 0, "/history dev", 6);
        assert_eq!(
            take(&mut sink, 0).len(),
            2,
            "the budget came back with the room"
        );
    }

    #[test]
    fn a_dropped_session_is_held_then_resumed_exactly() {
        let (mut hub, mut sink) = hub();
        connect(&mut hub, &mut sink, 0, "ann", Some("ids,resume"));
        connect(&mut hub, &mut sink, 1, "bob", None);
        h(&mut hub, &mut sink, 0, "/join dev", 1);
        let token = token_of(&take(&mut sink, 0));
        h(&mut hub, &mut sink, 1, "before", 2);
        hub.disconnect(0, &mut sink);
        hub.check_invariants();
        assert_eq!(hub.detached_sessions(), 1);
        assert_eq!(hub.rooms(), 2, "dev is held by the session");
        for i in 0..3 {
            h(&mut hub, &mut sink, 1, &format!("gone {i}"), 3 + i);
        }
        let bob = take(&mut sink, 1);
        assert!(bob.iter().all(|l| !l.starts_with("LEFT")), "{bob:?}");
        // The nick is held.
        connect(&mut hub, &mut sink, 2, "ann", None);
        assert_eq!(
            take(&mut sink, 2)[1],
            "ERR nick-taken nick taken, using a guest nick"
        );
        hub.disconnect(2, &mut sink);
        // Resume at connect on another connection id.
        let args = Connect {
            resume: Some(&token),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        sink.0.clear();
        hub.connect_with(3, &args, 10, &mut sink);
        hub.check_invariants();
        let got = take(&mut sink, 3);
        assert_eq!(got[0], "WELCOME ann");
        assert_eq!(got[1], "CAPS ids,resume");
        assert!(got[2].starts_with("SESSION ") && got[2] != format!("SESSION {token}"));
        assert_eq!(got[3], "RESUMED lobby 3");
        let texts: Vec<_> = got[4..7]
            .iter()
            .map(|l| match parse(l).unwrap().1 {
                Line::Msg { text, .. } => text.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["gone 0", "gone 1", "gone 2"]);
        assert_eq!(got[7..], ["RESUMED dev 0"]);
        assert!(take(&mut sink, 1).is_empty(), "no JOINED for bob");
        assert_eq!(hub.nick(3), Some("ann"));
        assert_eq!(hub.current_room(3), Some("dev"));
        // Live traffic once.
        h(&mut hub, &mut sink, 1, "live", 11);
        assert_eq!(take(&mut sink, 3).len(), 1);
        // The old token is spent.
        let args = Connect {
            resume: Some(&token),
            ..Connect::default()
        };
        hub.connect_with(4, &args, 12, &mut sink);
        let got = take(&mut sink, 4);
        assert!(got[0].starts_with("WELCOME guest-"));
        assert_eq!(got[1], "ERR bad-session unknown, used or expired session");
        hub.check_invariants();
    }

    #[test]
    fn resume_command_with_positions_and_expiry() {
        let (mut hub, mut sink) = hub();
        connect(&mut hub, &mut sink, 0, "ann", Some("resume"));
        connect(&mut hub, &mut sink, 1, "bob", Some("ids"));
        let token = token_of(&take(&mut sink, 0));
        h(&mut hub, &mut sink, 1, "one", 1);
        h(&mut hub, &mut sink, 1, "two", 2);
        hub.disconnect(0, &mut sink);
        h(&mut hub, &mut sink, 1, "three", 3);
        connect(&mut hub, &mut sink, 2, "guest", None);
        sink.0.clear();
        h(
            &mut hub,
            &mut sink,
            2,
            &format!("/resume {token} lobby=1796032800000-1"),
            4,
        );
        let got = take(&mut sink, 2);
        assert_eq!(
            got[0], "LEFT lobby guest",
            "the guest leaves as any guest would"
        );
        assert_eq!(got[1], "WELCOME ann");
        assert!(got[2].starts_with("SESSION "));
        assert_eq!(
            got[3..],
            [
                "RESUMED lobby 2",
                "MSG lobby bob two",
                "MSG lobby bob three"
            ]
        );
        assert_eq!(take(&mut sink, 1), ["LEFT lobby guest"]);
        // Drop again and let it expire.
        let token2 = token_of(&got);
        hub.disconnect(2, &mut sink);
        hub.check_invariants();
        let deadline = hub.poll_timeout().unwrap();
        assert_eq!(deadline, 4 + 120_000);
        hub.handle_timeout(deadline - 1, &mut sink);
        assert!(take(&mut sink, 1).is_empty());
        hub.handle_timeout(deadline, &mut sink);
        hub.check_invariants();
        assert_eq!(take(&mut sink, 1), ["LEFT lobby ann"]);
        assert_eq!(hub.poll_timeout(), None);
        h(&mut hub, &mut sink, 1, "/nick ann", deadline);
        assert_eq!(take(&mut sink, 1), ["NICK bob ann"], "the nick is free");
        connect(&mut hub, &mut sink, 3, "x", None);
        sink.0.clear();
        h(
            &mut hub,
            &mut sink,
            3,
            &format!("/resume {token2}"),
            deadline,
        );
        assert_eq!(
            take(&mut sink, 3),
            ["ERR bad-session unknown, used or expired session"]
        );
    }

    #[test]
    fn quit_ends_the_session_and_history_gap_is_lost() {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            history: crate::chat::history::HistoryConfig {
                keep: 2,
                ..Default::default()
            },
            ..ChatConfig::default()
        });
        let mut sink = Lines::default();
        connect(&mut hub, &mut sink, 0, "ann", Some("resume"));
        connect(&mut hub, &mut sink, 1, "bob", None);
        let token = token_of(&take(&mut sink, 0));
        hub.disconnect(0, &mut sink);
        for i in 0..3 {
            h(&mut hub, &mut sink, 1, &format!("m{i}"), i);
        }
        hub.connect_with(
            2,
            &Connect {
                resume: Some(&token),
                ..Connect::default()
            },
            5,
            &mut sink,
        );
        let got = take(&mut sink, 2);
        assert_eq!(got[2..], ["RESUMED lobby lost"]);
        let token = token_of(&got);
        h(&mut hub, &mut sink, 2, "/quit", 6);
        hub.disconnect(2, &mut sink);
        hub.check_invariants();
        assert_eq!(hub.detached_sessions(), 0);
        assert!(take(&mut sink, 1).contains(&"LEFT lobby ann".to_string()));
        connect(&mut hub, &mut sink, 3, "x", None);
        sink.0.clear();
        h(&mut hub, &mut sink, 3, &format!("/resume {token}"), 7);
        assert_eq!(take(&mut sink, 3).len(), 1, "refused");
    }

    #[test]
    fn resume_takes_over_a_half_open_connection() {
        let (mut hub, mut sink) = hub();
        connect(&mut hub, &mut sink, 0, "ann", Some("resume"));
        connect(&mut hub, &mut sink, 1, "bob", None);
        let token = token_of(&take(&mut sink, 0));
        h(&mut hub, &mut sink, 0, &format!("/resume {token}"), 1);
        assert_eq!(
            take(&mut sink, 0),
            ["ERR bad-session that session is this connection"]
        );
        connect(&mut hub, &mut sink, 2, "new", None);
        sink.0.clear();
        h(&mut hub, &mut sink, 2, &format!("/resume {token}"), 2);
        assert_eq!(take(&mut sink, 2)[..2], ["LEFT lobby new", "WELCOME ann"]);
        assert_eq!(take(&mut sink, 1), ["LEFT lobby new"]);
        hub.disconnect(0, &mut sink);
        hub.check_invariants();
        assert_eq!(hub.nick(2), Some("ann"));
        assert_eq!(hub.room_len("lobby"), 2);
    }

    proptest::proptest! {
        /// Any interleaving of messages in two rooms, drops, and resumes (with
        /// or without the client's positions, at connect or by command): the
        /// resuming client sees every message of its rooms exactly once, in
        /// order, and nobody sees it leave.
        #[test]
        fn every_message_exactly_once_across_resumes(
            ops in proptest::collection::vec((0u8..6, proptest::bool::ANY), 1..60),
        ) {
            let (mut hub, mut sink) = hub();
            connect(&mut hub, &mut sink, 0, "bob", None);
            connect(&mut hub, &mut sink, 1, "ann", Some("ids,resume"));
            h(&mut hub, &mut sink, 0, "/join dev", 0);
            h(&mut hub, &mut sink, 1, "/join dev", 0);
            let mut token = token_of(&take(&mut sink, 1));
            take(&mut sink, 0);
            let mut ann: Option<ConnId> = Some(1);
            let mut next_conn = 2;
            let mut sent: Vec<(String, String)> = Vec::new();
            let mut seen: Vec<(String, String)> = Vec::new();
            let mut last_id: std::collections::HashMap<String, String> = Default::default();
            let mut now = 1;
            for (op, flag) in ops {
                now += 1;
                match (op, ann) {
                    (0..=2, _) => {
                        let room = if flag { "dev" } else { "lobby" };
                        let text = format!("m{}", sent.len());
                        h(&mut hub, &mut sink, 0, &format!("/say {room} {text}"), now);
                        sent.push((room.to_string(), text));
                    }
                    (3, Some(id)) => {
                        hub.disconnect(id, &mut sink);
                        hub.check_invariants();
                        ann = None;
                    }
                    (4 | 5, None) => {
                        let id = next_conn;
                        next_conn += 1;
                        let pairs: Vec<String> =
                            last_id.iter().map(|(r, i)| format!("{r}=${i}")).collect();
                        if op == 4 {
                            let since = pairs.join(",").replace('=', ":").replace('$', "");
                            let args = Connect {
                                resume: Some(&token),
                                since: flag.then_some(since.as_str()),
                                ..Connect::default()
                            };
                            hub.connect_with(id, &args, now, &mut sink);
                        } else {
                            connect(&mut hub, &mut sink, id, "guest", Some("ids"));
                            let since = if flag { pairs.join(" ").replace('$', "") } else { String::new() };
                            h(&mut hub, &mut sink, id, format!("/resume {token} {since}").trim_end(), now);
                        }
                        hub.check_invariants();
                        ann = Some(id);
                    }
                    _ => {}
                }
                if let Some(id) = ann {
                    for l in take(&mut sink, id) {
                        if let Some(t) = l.strip_prefix("SESSION ") {
                            token = t.to_string();
                        }
                        proptest::prop_assert!(!l.starts_with("RESUMED") || !l.ends_with("lost"), "{l}");
                        if let Ok((tags, Line::Msg { room, text, .. })) = parse(&l) {
                            last_id.insert(room.to_string(), tags.id.unwrap().to_string());
                            seen.push((room.to_string(), text.to_string()));
                        }
                    }
                }
                let bob = take(&mut sink, 0);
                proptest::prop_assert!(
                    !bob.iter().any(|l| l.starts_with("LEFT") && l.ends_with(" ann")),
                    "{:?}",
                    bob
                );
            }
            if ann.is_none() {
                // Whatever is still missed comes with the next resume.
                let args = Connect { resume: Some(&token), ..Connect::default() };
                hub.connect_with(next_conn, &args, now, &mut sink);
                for l in take(&mut sink, next_conn) {
                    if let Ok((_, Line::Msg { room, text, .. })) = parse(&l) {
                        seen.push((room.to_string(), text.to_string()));
                    }
                }
            }
            // The promise is per room: a resume replays room by room.
            for room in ["lobby", "dev"] {
                let of = |v: &[(String, String)]| {
                    v.iter().filter(|(r, _)| r == room).map(|(_, t)| t.clone()).collect::<Vec<_>>()
                };
                proptest::prop_assert_eq!(of(&seen), of(&sent));
            }
        }
    }

    /// The figures quoted in README and BENCHMARKS.md.
    #[test]
    fn session_and_message_sizes() {
        use crate::chat::history::Stored;
        use crate::chat::session::Sessions;
        let live = Sessions::<Detached>::slot_bytes(true);
        let dropped = Sessions::<Detached>::slot_bytes(false);
        println!(
            "session slot: live {live} B, dropped {dropped} B (+ nick and 16 B per room on the heap); stored message {} B + nick + text",
            std::mem::size_of::<Stored>()
        );
        assert!(live <= 128 && dropped <= 128, "{live} {dropped}");
        assert!(std::mem::size_of::<Stored>() <= 40);
    }

    #[test]
    fn a_cluster_node_offers_ids_and_resume() {
        let (mut hub, mut sink) = hub();
        hub.enable_cluster("n1");
        // No nick asked for: a guest is not held for the cluster registry.
        let args = Connect {
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(0, &args, 0, &mut sink);
        let lines = take(&mut sink, 0);
        assert_eq!(lines[1], "CAPS ids,resume");
        assert!(lines[2].starts_with("SESSION "), "{lines:?}");
        // A nick is held for the registry; the answer comes after WELCOME.
        let args = Connect {
            nick: Some("ann"),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 0, &mut sink);
        assert!(take(&mut sink, 1).is_empty(), "held");
        assert!(hub.nick_reserved(1, "ann", crate::chat::remote::Claim::Granted, &mut sink));
        assert_eq!(take(&mut sink, 1)[..2], ["WELCOME ann", "CAPS ids,resume"]);
    }
}
