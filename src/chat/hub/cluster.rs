//! The hub as one node of a cluster: the requests it records and the methods
//! that bring the other nodes' answers and lines back in (see
//! [`crate::chat::remote`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::super::history::MsgId;
use super::super::line::{Count, Line};
use super::super::names::{cmp_folded, reserved_nick, valid_nick, Folded};
use super::super::remote::{Claim, Request};
use super::super::{ConnId, ErrorCode, Sink};
use super::resume::CAP_IDS;
use super::{push_text, send, Hub, RoomId};

/// Nick changes one connection may have waiting for the cluster at once.
const MAX_PENDING_NICKS: usize = 4;
/// Lines held for a connection whose nick awaits the cluster, when rate
/// limiting is off (otherwise one burst: more would be refused anyway).
const MAX_HELD_LINES: usize = 64;
/// Bytes held for such a connection, in `max_line`s.
const HELD_LINES_OF_BYTES: usize = 4;
/// Longest a `/quit` waits for the connection's own messages to come back
/// from Redis.
const QUIT_WAIT_MS: u64 = 2_000;

/// How a held connect ends (see [`Hub::nick_reserved`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HoldOutcome {
    Granted,
    Refused(Claim),
}

impl HoldOutcome {
    /// The `ERR` that follows `WELCOME` with a guest nick, if refused.
    pub(super) fn error(&self) -> Option<(ErrorCode, &'static str)> {
        match self {
            HoldOutcome::Granted | HoldOutcome::Refused(Claim::Granted) => None,
            HoldOutcome::Refused(Claim::Taken) => Some((
                ErrorCode::NickTaken,
                "nick taken on another node, using a guest nick",
            )),
            HoldOutcome::Refused(Claim::Unreachable) => Some((
                ErrorCode::NickUnavailable,
                "nick registry unreachable, using a guest nick",
            )),
            HoldOutcome::Refused(Claim::TimedOut) => Some((
                ErrorCode::NickUnavailable,
                "nick registry did not answer in time, using a guest nick",
            )),
        }
    }
}

/// A connection that asked for a nick and waits for the cluster's answer
/// before `WELCOME`: nothing it sends is processed until then.
/// Also a connection resuming a session (`hub/cluster_resume.rs`): waiting
/// for the session's record, then for its rooms to catch up.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) nick: Box<str>,
    pub(super) room: Option<Box<str>>,
    /// `?caps=`, answered (with what a cluster node offers) after `WELCOME`.
    pub(super) caps: Option<super::Caps>,
    pub(super) now_ms: u64,
    /// Its lines so far, with their arrival times, replayed after `WELCOME`.
    pub(super) lines: Vec<(Box<str>, u64)>,
    pub(super) bytes: usize,
    /// Lines over the bound, dropped (and reported after `WELCOME`).
    pub(super) dropped: u32,
    /// An `ERR` to send after `WELCOME` (a refused resume).
    pub(super) err: Option<(ErrorCode, &'static str)>,
    /// Set while the session's record is asked for.
    pub(super) resume: Option<Box<super::cluster_resume::ResumeArgs>>,
}

impl Held {
    pub(super) fn new(
        nick: &str,
        room: Option<&str>,
        caps: Option<super::Caps>,
        now_ms: u64,
    ) -> Held {
        Held {
            nick: nick.into(),
            room: room.map(Into::into),
            caps,
            now_ms,
            lines: Vec::new(),
            bytes: 0,
            dropped: 0,
            err: None,
            resume: None,
        }
    }
}

/// Cluster-only hub state; boxed so a single-process hub pays one pointer.
#[derive(Debug, Default)]
pub struct RemoteState {
    requests: Vec<Request>,
    /// `/nick` changes waiting for the cluster's answer: id → requested nicks,
    /// oldest first (at most [`MAX_PENDING_NICKS`]).
    pending: HashMap<ConnId, Vec<Box<str>>>,
    /// Part of guest nicks, so that nodes do not hand out the same ones.
    tag: Box<str>,
    /// Connections waiting for their requested nick (no `WELCOME` yet).
    pub(super) held: HashMap<ConnId, Held>,
    /// The answer for the held connect being completed now.
    outcome: Option<(ConnId, HoldOutcome)>,
    /// Redis can number room messages now (see [`Hub::set_ordered`]).
    ordered: bool,
    /// Rooms of resumed sessions catching up (`hub/cluster_resume.rs`).
    pub(super) catchups: Vec<super::cluster_resume::Catchup>,
    /// Bytes the catch-ups hold, all together.
    pub(super) catchup_bytes: usize,
    /// Resumes that ask Redis once more, and when.
    pub(super) retries: Vec<(ConnId, u64)>,
    /// Dropped sessions whose time ran out, until Redis says whether another
    /// node resumed them (by Redis key).
    pub(super) ending: HashMap<Box<str>, super::resume::Detached>,
    /// Room messages of each connection sent to Redis and not yet answered.
    saying: HashMap<ConnId, u32>,
    /// Connections that sent `/quit` while their own messages were still on
    /// their way back.
    quitting: HashMap<ConnId, Quitting>,
}

/// A `/quit` waiting for the connection's own messages to be delivered here.
#[derive(Debug)]
struct Quitting {
    reason: Box<str>,
    /// Leave anyway at this hub-clock time.
    until: u64,
    /// Numbered by Redis, not yet delivered here (by pub/sub, in order).
    awaiting: Vec<(RoomId, MsgId)>,
}

impl RemoteState {
    pub(super) fn push(&mut self, r: Request) {
        self.requests.push(r);
    }

    /// `id` sent a room message to Redis ([`Request::Say`]).
    pub(super) fn saying(&mut self, id: ConnId) {
        *self.saying.entry(id).or_default() += 1;
    }

    /// True while room messages are ordered by Redis (see [`Hub::set_ordered`]).
    pub(super) fn is_ordered(&self) -> bool {
        self.ordered
    }

    pub(super) fn guest_tag(&self) -> &str {
        &self.tag
    }

    /// A room line for the other nodes.
    pub(super) fn publish_room(&mut self, room_name: &str, line: &str) {
        if let Some(key) = Folded::new(room_name) {
            self.requests.push(Request::Room {
                room: key.as_str().into(),
                line: line.into(),
            });
        }
    }
}

impl Hub {
    /// Make this hub one node of a cluster: from now on it records
    /// [`Request`]s for [`Hub::take_requests`]. `guest_tag` (1–8 of
    /// `[a-z0-9]`, unique per node) goes into guest nicks: `guest-TAG-N`.
    pub fn enable_cluster(&mut self, guest_tag: &str) {
        let tag: String = guest_tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
        self.remote = Some(Box::new(RemoteState {
            tag: if tag.is_empty() {
                "n".into()
            } else {
                tag.into()
            },
            ..RemoteState::default()
        }));
    }

    /// Whether the cluster can number room messages now: its command link
    /// to Redis is up and nothing older waits to be sent. While it is,
    /// a `MSG` goes to Redis first and is delivered, here too, in the order
    /// Redis gives it ([`Request::Say`]); while it is not, it is delivered
    /// here at once with a node-local id and relayed as a plain line, so
    /// local chat goes on while Redis is away.
    pub fn set_ordered(&mut self, ordered: bool) {
        if let Some(r) = self.remote.as_deref_mut() {
            r.ordered = ordered;
        }
    }

    /// True after [`Hub::enable_cluster`].
    pub fn is_clustered(&self) -> bool {
        self.remote.is_some()
    }

    /// Move the recorded requests (oldest first) to the end of `into`.
    pub fn take_requests(&mut self, into: &mut Vec<Request>) {
        if let Some(r) = self.remote.as_deref_mut() {
            into.append(&mut r.requests);
        }
    }

    /// Record a request when clustered; `f` is not called otherwise.
    pub(super) fn request(&mut self, f: impl FnOnce() -> Request) {
        if let Some(r) = self.remote.as_deref_mut() {
            r.push(f());
        }
    }

    /// The line in `self.out` was delivered to room `rid`'s local members.
    pub(super) fn publish_room(&mut self, rid: RoomId) {
        if let (Some(r), Some(room)) = (
            self.remote.as_deref_mut(),
            self.rooms.get(rid as usize).and_then(Option::as_ref),
        ) {
            r.publish_room(&room.name, &self.out);
        }
    }

    /// The `NICK` line in `self.out` was delivered locally for `id`.
    pub(super) fn publish_nick(&mut self, id: ConnId) {
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        let Some(user) = self.users.get(id).and_then(Option::as_ref) else {
            return;
        };
        let rooms: Vec<Box<str>> = user
            .rooms
            .iter()
            .filter_map(|m| self.rooms.get(m.room as usize)?.as_ref())
            .filter_map(|room| Folded::new(&room.name))
            .map(|k| k.as_str().into())
            .collect();
        r.push(Request::Nick {
            rooms,
            line: self.out.as_str().into(),
        });
    }

    /// Clustered, with a usable requested nick: hold the connection (no
    /// `WELCOME`, no room) and ask the cluster for the nick; true when held.
    pub(super) fn hold_for_cluster(
        &mut self,
        id: ConnId,
        nick: Option<&str>,
        room: Option<&str>,
        caps: Option<super::Caps>,
        now_ms: u64,
    ) -> bool {
        let Some(nick) = nick.filter(|n| valid_nick(n) && !reserved_nick(n)) else {
            return false;
        };
        let Some(key) = Folded::new(nick) else {
            return false;
        };
        if self.nick_holder(key.as_str()).is_some() {
            return false;
        }
        let Some(r) = self.remote.as_deref_mut() else {
            return false;
        };
        r.held.insert(id, Held::new(nick, room, caps, now_ms));
        r.push(Request::Reserve {
            id,
            nick: nick.into(),
        });
        true
    }

    /// The outcome set by [`Hub::nick_reserved`] for the connect of `id`.
    pub(super) fn take_hold_outcome(&mut self, id: ConnId) -> Option<HoldOutcome> {
        let r = self.remote.as_deref_mut()?;
        match r.outcome {
            Some((i, o)) if i == id => {
                r.outcome = None;
                Some(o)
            }
            _ => None,
        }
    }

    /// A line from a held connection: kept for after `WELCOME` (bounded);
    /// true when `id` is held.
    pub(super) fn hold_line(&mut self, id: ConnId, line: &str, now_ms: u64) -> bool {
        let max_bytes = self.config.max_line.saturating_mul(HELD_LINES_OF_BYTES);
        let max_lines = match self.config.rate_limit {
            0 => MAX_HELD_LINES,
            n => n as usize,
        };
        let Some(h) = self.remote.as_deref_mut().and_then(|r| r.held.get_mut(&id)) else {
            return false;
        };
        if h.lines.len() >= max_lines || h.bytes + line.len() > max_bytes {
            h.dropped = h.dropped.saturating_add(1);
        } else {
            h.bytes += line.len();
            h.lines.push((line.into(), now_ms));
        }
        true
    }

    /// True while `id` waits for the cluster's answer about its nick.
    pub(super) fn is_held(&self, id: ConnId) -> bool {
        self.remote
            .as_deref()
            .is_some_and(|r| r.held.contains_key(&id))
    }

    /// `id` left while held: forget it; true when it was held before
    /// `WELCOME` (so there is nothing more to disconnect). Its catch-ups, if
    /// any, go with its session (`detach`) or with it.
    pub(super) fn drop_held(&mut self, id: ConnId) -> bool {
        let Some(r) = self.remote.as_deref_mut() else {
            return false;
        };
        if r.held.remove(&id).is_none() {
            return false;
        }
        r.retries.retain(|&(i, _)| i != id);
        r.push(Request::Gone(id));
        self.user(id).is_none()
    }

    /// Connections waiting for the cluster to confirm their nick.
    pub fn held(&self) -> usize {
        self.remote.as_deref().map_or(0, |r| r.held.len())
    }

    /// When clustered and `new` is not `id`'s own nick in other letter case,
    /// record a reservation and return true: the change waits for
    /// [`Hub::nick_reserved`].
    pub(super) fn reserve_first<S: Sink>(
        &mut self,
        id: ConnId,
        new: &str,
        new_key: &str,
        sink: &mut S,
    ) -> bool {
        let same = self
            .user(id)
            .and_then(|u| Folded::new(&u.nick))
            .is_some_and(|k| k.as_str() == new_key);
        let Some(r) = self.remote.as_deref_mut() else {
            return false;
        };
        if same {
            return false;
        }
        let waiting = r.pending.entry(id).or_default();
        if waiting.len() >= MAX_PENDING_NICKS {
            self.err(
                id,
                ErrorCode::NickTaken,
                "nick changes pending, try later",
                sink,
            );
            return true;
        }
        waiting.push(new.into());
        r.push(Request::Reserve {
            id,
            nick: new.into(),
        });
        true
    }

    /// `id` left: its pending nick changes go with it.
    pub(super) fn forget_pending(&mut self, id: ConnId) {
        if let Some(r) = self.remote.as_deref_mut() {
            r.pending.remove(&id);
        }
    }

    /// `/msg` to a nick not on this node: true when the cluster will look for it.
    pub(super) fn remote_private(&mut self, id: ConnId, nick: &str, text: &str) -> bool {
        let Some(from) = self.user(id).map(|u| u.nick.clone()) else {
            return false;
        };
        let Some(r) = self.remote.as_deref_mut() else {
            return false;
        };
        let mut clean = String::with_capacity(text.len());
        push_text(&mut clean, text);
        r.push(Request::Private {
            id,
            from,
            to: nick.into(),
            text: clean.into(),
        });
        true
    }

    /// The cluster's answer to [`Request::Reserve`] for `id` and `nick`.
    /// Returns true when `id` now holds `nick` thanks to this reservation;
    /// false tells the caller to release a granted reservation nobody uses.
    ///
    /// - a held connect (a nick asked for with `?nick=`): granted → `WELCOME
    ///   NICK`; otherwise → `WELCOME guest-…` then `ERR nick-taken` or `ERR
    ///   nick-unavailable` saying why. Then the lines it sent meanwhile run;
    /// - a pending `/nick`: granted → the change happens (`NICK OLD NEW`);
    ///   taken → `ERR nick-taken`; unconfirmed → `ERR nick-unavailable`; the
    ///   old nick stays;
    /// - the nick `id` already uses: granted or unconfirmed → nothing to do;
    ///   taken → `ERR nick-taken` and a rename to a guest nick.
    pub fn nick_reserved(
        &mut self,
        id: ConnId,
        nick: &str,
        claim: Claim,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(key) = Folded::new(nick) else {
            return false;
        };
        let granted = claim == Claim::Granted;
        let is_key = |p: &str| Folded::new(p).is_some_and(|k| k.as_str() == key.as_str());
        // Only a connect held before `WELCOME` (a resumed connection whose
        // input waits for its catch-up is already a user).
        let connecting = self.user(id).is_none();
        let held = self.remote.as_deref_mut().and_then(|r| {
            if !connecting
                || !r
                    .held
                    .get(&id)
                    .is_some_and(|h| is_key(&h.nick) && h.resume.is_none())
            {
                return None;
            }
            let h = r.held.remove(&id)?;
            let outcome = if granted {
                HoldOutcome::Granted
            } else {
                HoldOutcome::Refused(claim)
            };
            r.outcome = Some((id, outcome));
            Some(h)
        });
        if let Some(h) = held {
            let args = super::Connect {
                nick: Some(&h.nick),
                room: h.room.as_deref(),
                caps: h.caps,
                ..super::Connect::default()
            };
            self.connect_as_new(id, &args, h.err, h.now_ms, sink);
            // Role and token of a connection held for its nick (`hub/auth.rs`),
            // before its held lines run.
            self.apply_held_identity(id, claim, sink);
            if h.dropped > 0 {
                let text = format!(
                    "{} lines sent before the nick was confirmed were dropped",
                    h.dropped
                );
                self.err(id, ErrorCode::RateLimited, &text, sink);
            }
            for (line, t) in h.lines {
                self.handle(id, &line, t, sink);
            }
            return self.nick_owner(nick) == Some(id);
        }
        let wanted = self.remote.as_deref_mut().and_then(|r| {
            let waiting = r.pending.get_mut(&id)?;
            let i = waiting.iter().position(|p| is_key(p))?;
            let w = waiting.remove(i);
            if waiting.is_empty() {
                r.pending.remove(&id);
            }
            Some(w)
        });
        if let Some(wanted) = wanted {
            match claim {
                Claim::Granted => {}
                Claim::Taken => {
                    self.err(id, ErrorCode::NickTaken, "nick taken", sink);
                    return false;
                }
                Claim::Unreachable | Claim::TimedOut => {
                    self.err(
                        id,
                        ErrorCode::NickUnavailable,
                        "nick registry unreachable, nick unchanged",
                        sink,
                    );
                    return false;
                }
            }
            if matches!(self.nick_holder(key.as_str()), Some(owner) if owner != id) {
                self.err(id, ErrorCode::NickTaken, "nick taken", sink);
                return false;
            }
            self.apply_nick(id, &wanted, sink);
            return self.nick_owner(nick) == Some(id);
        }
        let current = self
            .user(id)
            .and_then(|u| Folded::new(&u.nick))
            .is_some_and(|k| k.as_str() == key.as_str());
        if !current {
            return false;
        }
        if claim != Claim::Taken {
            return granted;
        }
        // A token holder loses its registration only to a newer sign-in of
        // the same nick on another node: replaced, as on one node.
        if self.user(id).is_some_and(|u| u.access.is_signed()) {
            self.signed_in_elsewhere(id, sink);
            return false;
        }
        // Sent to the renamed connection alone, before its `NICK`: a client
        // tells a forced rename from its own `/nick` by it.
        self.err(
            id,
            ErrorCode::NickTaken,
            "nick taken on another node, using a guest nick",
            sink,
        );
        let guest = self.guest_nick();
        self.apply_nick(id, &guest, sink);
        self.request(|| Request::Reserve { id, nick: guest });
        false
    }

    /// The cluster found `to` (display spelling) on another node for `id`'s
    /// [`Request::Private`]: the sender gets its copy of the `PRIV` line, which
    /// is returned for the recipient's node.
    pub fn private_found(
        &mut self,
        id: ConnId,
        from: &str,
        to: &str,
        text: &str,
        sink: &mut impl Sink,
    ) -> String {
        let mut plain = String::new();
        Line::Priv { from, to, text }.write_str(&mut plain, None);
        // An id and time from this node, as for a private message on one
        // node: the line travels tagged, and each end strips the tags for a
        // v1 client.
        let msg_id = self.ids.next_id();
        let time_ms = self.ids.epoch().saturating_add(self.now_ms);
        let mut line = String::with_capacity(plain.len() + 64);
        super::resume::tag_line(&mut line, &plain, msg_id, time_ms);
        self.messages += 1;
        if let Some(u) = self.user(id) {
            let out = if u.caps & CAP_IDS != 0 { &line } else { &plain };
            send(sink, &mut self.deliveries, &[id], out);
        }
        line
    }

    /// The cluster found nobody with the nick of `id`'s [`Request::Private`].
    pub fn private_not_found(&mut self, id: ConnId, sink: &mut impl Sink) {
        if self.user(id).is_some() {
            self.err(id, ErrorCode::NoSuchNick, "no such nick", sink);
        }
    }

    /// A line `id` sent could not be carried to the other nodes (the link to
    /// them is down and the backlog full): tell it.
    pub fn not_relayed(&mut self, id: ConnId, sink: &mut impl Sink) {
        if self.user(id).is_some() {
            send(
                sink,
                &mut self.deliveries,
                &[id],
                "SYS not delivered to other nodes: the cluster link is down and its buffer is full",
            );
        }
    }

    /// A room line from another node, as [`Hub::deliver_room`], except that
    /// presence notices (`JOINED`, `LEFT`) obey the presence limit, counted
    /// with this node's members.
    pub fn deliver_remote_room(&mut self, room: &str, line: &str, sink: &mut impl Sink) {
        let presence = line.starts_with("JOINED ") || line.starts_with("LEFT ");
        if !presence || self.room_len(room) <= self.config.presence_limit {
            self.deliver_room(room, line, sink);
        }
        // A moderator on another node kicked someone: if it is here, it goes.
        if line.starts_with("KICKED ") {
            self.kicked_here(room, line, sink);
        }
    }

    /// `nick` of another node left `room` (`display`: the room as that node
    /// spells it) without saying so: that node is dead.
    pub fn remote_left(&mut self, room: &str, display: &str, nick: &str, sink: &mut impl Sink) {
        let mut line = std::mem::take(&mut self.out);
        line.clear();
        Line::Left {
            room: display,
            nick,
        }
        .write_str(&mut line, None);
        self.deliver_remote_room(room, &line, sink);
        self.out = line;
    }

    /// A room line from another node: to this node's members of `room`.
    pub fn deliver_room(&mut self, room: &str, line: &str, sink: &mut impl Sink) {
        let Some(rid) = self.room_id(room) else {
            return;
        };
        if let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) {
            send(sink, &mut self.deliveries, &room.members, line);
        }
    }

    /// A room's `MSG` line with the id and time Redis gave it, from any node
    /// (this one included): to this node's members of `room`, tagged for
    /// the `ids` ones. Returns false, delivering nothing, for a copy already
    /// delivered (an id at or below the last one of the same epoch) or an
    /// unknown room. Ids of one epoch grow within a room, so delivering only
    /// growing ids is both exactly once and in Redis' order; a new epoch (the
    /// room's counter was lost in Redis) starts over.
    pub fn deliver_ordered(
        &mut self,
        room: &str,
        id: MsgId,
        time_ms: u64,
        line: &str,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(rid) = self.room_id(room) else {
            return false;
        };
        let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) else {
            return false;
        };
        if id.epoch == room.last_id.epoch && id.seq <= room.last_id.seq {
            return false;
        }
        room.last_id = id;
        super::resume::send_tagged(
            sink,
            &mut self.deliveries,
            &mut self.tagged,
            &mut self.tagged_to,
            &room.members,
            room.ids_members as usize,
            &self.users,
            line,
            id,
            time_ms,
        );
        if self
            .remote
            .as_deref()
            .is_some_and(|r| !r.catchups.is_empty())
        {
            self.catchup_live(rid, id, time_ms, line, sink);
        }
        if self
            .remote
            .as_deref()
            .is_some_and(|r| !r.quitting.is_empty())
        {
            self.quits_delivered(rid, id, sink);
        }
        true
    }

    /// The answer to [`Request::History`] from Redis: the room's counter
    /// (`epoch`, `None` when Redis has none; `last`, its last number) and its
    /// stored entries (`ID TIME LINE`, oldest first), read at Unix ms `now`.
    /// Sends `HISTORY ROOM COUNT` and the lines (tagged for `ids`), or
    /// `HISTORY ROOM lost` when some message after `after` is no longer kept
    /// (trimmed, expired, from another epoch, or not an id of this room).
    #[allow(clippy::too_many_arguments)]
    pub fn answer_history(
        &mut self,
        id: ConnId,
        room: &str,
        after: Option<&str>,
        limit: u32,
        counter: Option<(u64, u64)>,
        entries: &[&[u8]],
        now: u64,
        sink: &mut impl Sink,
    ) {
        let tagged = match self.users.get(id).and_then(Option::as_ref) {
            Some(u) => u.caps & CAP_IDS != 0,
            None => return,
        };
        let Some(name) = self
            .room_id(room)
            .and_then(|rid| self.rooms.get(rid as usize))
            .and_then(Option::as_ref)
            .map(|r| r.name.clone())
        else {
            return;
        };
        if let Some(rid) = self.room_id(room) {
            self.note_counter(rid, counter);
        }
        let ttl = self.config.history.ttl_ms;
        let kept = entries.iter().filter_map(|e| {
            let e = std::str::from_utf8(e).ok()?;
            let (id, rest) = e.split_once(' ')?;
            let (time, line) = rest.split_once(' ')?;
            let (id, time) = (MsgId::parse(id)?, time.parse::<u64>().ok()?);
            let fresh = ttl == 0 || time.saturating_add(ttl) > now;
            let msg = matches!(super::super::line::parse(line), Ok((_, Line::Msg { .. })));
            (fresh && msg).then_some((id, time, line))
        });
        let mut lines: Vec<(MsgId, u64, &str)> = match counter {
            Some((epoch, _)) => kept.filter(|e| e.0.epoch == epoch).collect(),
            None => Vec::new(),
        };
        let count = match after {
            None => {
                let skip = lines.len().saturating_sub(limit as usize);
                lines.drain(..skip);
                Count::Lines(lines.len() as u32)
            }
            Some(text) => match (MsgId::parse(text), counter) {
                (Some(a), Some((epoch, last))) if a.epoch == epoch && a.seq <= last => {
                    lines.retain(|e| e.0.seq > a.seq);
                    // Every number after `a` up to `last` is a message of
                    // this room: all of them must still be here.
                    if lines.len() as u64 == last - a.seq {
                        lines.truncate(limit as usize);
                        Count::Lines(lines.len() as u32)
                    } else {
                        Count::Lost
                    }
                }
                _ => Count::Lost,
            },
        };
        if count == Count::Lost {
            lines.clear();
        }
        self.out.clear();
        Line::History { room: &name, count }.write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
        for (msg_id, time, line) in lines {
            let out = if tagged {
                super::resume::tag_line(&mut self.tagged, line, msg_id, time);
                &self.tagged
            } else {
                line
            };
            send(sink, &mut self.deliveries, &[id], out);
        }
    }

    /// The room's counter as just read from Redis: where a session that
    /// drops before any line is delivered here stood (`Room::base`).
    pub(super) fn note_counter(&mut self, rid: RoomId, counter: Option<(u64, u64)>) {
        if let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) {
            if room.last_id.epoch == 0 {
                room.base =
                    Some(
                        counter.map_or(MsgId { epoch: 0, seq: 0 }, |(epoch, seq)| MsgId {
                            epoch,
                            seq,
                        }),
                    );
            }
        }
    }

    /// `/history` could not be read from Redis (unreachable, or an error).
    pub fn history_unavailable(&mut self, id: ConnId, sink: &mut impl Sink) {
        self.err(
            id,
            ErrorCode::HistoryOff,
            "history unavailable: Redis unreachable",
            sink,
        );
    }

    /// Redis answered one of `sender`'s room messages (`numbered`: its id and
    /// time, `None` when it was not numbered). A connection that quit
    /// meanwhile leaves once every line of its own was delivered here, in the
    /// room's order, so it and the others see it before its `LEFT`.
    pub fn said(
        &mut self,
        sender: ConnId,
        room: &str,
        numbered: Option<(MsgId, u64)>,
        sink: &mut impl Sink,
    ) {
        // Once per message: only the count unless the sender has quit.
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        let left = match r.saying.get_mut(&sender) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left == 0 {
            r.saying.remove(&sender);
        }
        if !r.quitting.contains_key(&sender) {
            return;
        }
        let rid = self.room_id(room);
        let pending = match (rid.and_then(|rid| self.room(rid)), numbered) {
            (Some(r), Some((m, _))) if r.last_id.epoch != m.epoch || r.last_id.seq < m.seq => {
                rid.map(|rid| (rid, m))
            }
            _ => None,
        };
        let Some(q) = self
            .remote
            .as_deref_mut()
            .and_then(|r| r.quitting.get_mut(&sender))
        else {
            return;
        };
        q.awaiting.extend(pending);
        if left == 0 && q.awaiting.is_empty() {
            self.quit_now(sender, sink);
        }
    }

    /// Room `rid` delivered up to `last` here: quits that waited for it go.
    fn quits_delivered(&mut self, rid: RoomId, last: MsgId, sink: &mut impl Sink) {
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        let mut done = Vec::new();
        for (id, q) in r.quitting.iter_mut() {
            let before = q.awaiting.len();
            q.awaiting
                .retain(|&(r, m)| !(r == rid && (m.epoch != last.epoch || m.seq <= last.seq)));
            if before > 0 && q.awaiting.is_empty() && !r.saying.contains_key(id) {
                done.push(*id);
            }
        }
        for id in done {
            self.quit_now(id, sink);
        }
    }

    /// Defer `id`'s `/quit` while its own messages are on their way back
    /// (true when deferred, bounded by [`QUIT_WAIT_MS`]).
    pub(super) fn defer_quit(&mut self, id: ConnId, text: Option<&str>) -> bool {
        let until = self.now_ms.saturating_add(QUIT_WAIT_MS);
        let Some(r) = self.remote.as_deref_mut() else {
            return false;
        };
        if !r.saying.contains_key(&id) {
            return false;
        }
        r.quitting.insert(
            id,
            Quitting {
                reason: text.unwrap_or("bye").into(),
                until,
                awaiting: Vec::new(),
            },
        );
        if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
            // Nothing it sends after `/quit` runs.
            u.access.set_closing();
        }
        true
    }

    /// A deferred `/quit` completes.
    fn quit_now(&mut self, id: ConnId, sink: &mut impl Sink) {
        let Some(q) = self
            .remote
            .as_deref_mut()
            .and_then(|r| r.quitting.remove(&id))
        else {
            return;
        };
        self.finish_quit(id, Some(&q.reason), sink);
    }

    /// Deferred quits whose wait ran out complete (from `handle_timeout`).
    pub(super) fn quit_timeouts(&mut self, now_ms: u64, sink: &mut impl Sink) {
        loop {
            let due = self.remote.as_deref().and_then(|r| {
                r.quitting
                    .iter()
                    .find(|(_, q)| q.until <= now_ms)
                    .map(|(id, _)| *id)
            });
            let Some(id) = due else {
                return;
            };
            self.quit_now(id, sink);
        }
    }

    /// When the next deferred quit gives up waiting.
    pub(super) fn quit_deadline(&self) -> Option<u64> {
        self.remote
            .as_deref()?
            .quitting
            .values()
            .map(|q| q.until)
            .min()
    }

    /// `id` is gone: nothing of its own is waited for.
    pub(super) fn forget_saying(&mut self, id: ConnId) {
        if let Some(r) = self.remote.as_deref_mut() {
            r.saying.remove(&id);
            r.quitting.remove(&id);
        }
    }

    /// A `NICK OLD NEW` line from another node: once to each local member of
    /// any of `rooms`, except a member whose own nick is OLD. That happens
    /// only when another node's claimant of the nick is renamed (the earlier
    /// registration won): the line is not about this member, and a client
    /// would take it for its own rename.
    pub fn deliver_nick(&mut self, rooms: &[&str], line: &str, sink: &mut impl Sink) {
        let old = match super::super::line::parse(line) {
            Ok((_, Line::Nick { old, .. })) => Folded::new(old),
            _ => None,
        };
        let skip = old.and_then(|k| self.nick_holder(k.as_str()));
        let gen = self.next_generation();
        let mut to = std::mem::take(&mut self.scratch);
        to.clear();
        for name in rooms {
            let Some(rid) = self.room_id(name) else {
                continue;
            };
            let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) else {
                continue;
            };
            for &member in &room.members {
                if Some(member) == skip {
                    continue;
                }
                if let Some(u) = self.users.get_mut(member).and_then(Option::as_mut) {
                    if u.seen != gen {
                        u.seen = gen;
                        to.push(member);
                    }
                }
            }
        }
        send(sink, &mut self.deliveries, &to, line);
        self.scratch = to;
    }

    /// A `PRIV` line from another node for the local nick `to`: false when
    /// nobody here has it.
    pub fn deliver_private(&mut self, to: &str, line: &str, sink: &mut impl Sink) -> bool {
        let Some(id) = self.nick_owner(to) else {
            return false;
        };
        // The sender's node tagged it (`@id=…;time=… PRIV …`): the tags go
        // only to a client that asked for `ids`.
        let ids = self.user(id).is_some_and(|u| u.caps & CAP_IDS != 0);
        let out = match line.strip_prefix('@').and_then(|l| l.split_once(' ')) {
            Some((_, plain)) if !ids => plain,
            _ => line,
        };
        send(sink, &mut self.deliveries, &[id], out);
        true
    }

    /// The local connection holding `nick` (any letter case), if any.
    pub fn local_owner(&self, nick: &str) -> Option<ConnId> {
        self.nick_owner(nick)
    }

    /// The displayed nick on this node for `nick` (any letter case), if any.
    pub fn local_nick(&self, nick: &str) -> Option<&str> {
        self.nick_owner(nick).and_then(|id| self.nick(id))
    }

    /// Every local nick and its connection (for refreshing registrations).
    pub fn nicks(&self) -> impl Iterator<Item = (ConnId, &str)> {
        self.users
            .iter()
            .enumerate()
            .filter_map(|(id, u)| u.as_ref().map(|u| (id, &*u.nick)))
    }

    /// This node's members of `room`: at most `who_limit` nicks, and the total.
    pub fn local_who(&self, room: &str) -> (Vec<&str>, usize) {
        let Some(room) = self.room_id(room).and_then(|rid| self.room(rid)) else {
            return (Vec::new(), 0);
        };
        let nicks = room
            .members
            .iter()
            .take(self.config.who_limit)
            .filter_map(|&m| self.nick(m))
            .collect();
        (nicks, room.members.len())
    }

    /// This node's rooms with their member counts.
    pub fn local_rooms(&self) -> Vec<(&str, usize)> {
        self.rooms
            .iter()
            .flatten()
            .map(|r| (&*r.name, r.members.len()))
            .collect()
    }

    /// Answer a clustered `/who ROOM`: this node's members first, then
    /// `others` (nicks from other nodes, `others_total` in all), at most
    /// `who_limit`, then `+N`.
    pub fn answer_who(
        &mut self,
        id: ConnId,
        room: &str,
        others: &[String],
        others_total: usize,
        sink: &mut impl Sink,
    ) {
        if self.user(id).is_none() {
            return;
        }
        let limit = self.config.who_limit;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let (local, local_total) = self.local_who(room);
        let name = self
            .room_id(room)
            .and_then(|rid| self.room(rid))
            .map_or(room, |r| &*r.name);
        let mut nicks = String::new();
        let mut shown = 0;
        for nick in local
            .iter()
            .copied()
            .chain(others.iter().map(String::as_str))
        {
            if shown == limit {
                break;
            }
            if shown > 0 {
                nicks.push(' ');
            }
            nicks.push_str(nick);
            shown += 1;
        }
        let total = local_total.saturating_add(others_total.max(others.len()));
        if total > shown {
            let sep = if shown > 0 { " " } else { "" };
            let _ = write!(nicks, "{sep}+{}", total - shown);
        }
        Line::Who {
            room: name,
            nicks: &nicks,
        }
        .write_str(&mut out, None);
        send(sink, &mut self.deliveries, &[id], &out);
        self.out = out;
    }

    /// Answer a clustered `/rooms`: this node's rooms merged (case-insensitively)
    /// with `others` (room, members on other nodes), sorted, at most
    /// `rooms_limit`, then `+N`.
    pub fn answer_rooms(&mut self, id: ConnId, others: &[(String, usize)], sink: &mut impl Sink) {
        if self.user(id).is_none() {
            return;
        }
        let mut all: HashMap<String, (String, usize)> = HashMap::new();
        let local = self.local_rooms();
        for (name, n) in local
            .iter()
            .map(|(n, c)| (*n, *c))
            .chain(others.iter().map(|(n, c)| (n.as_str(), *c)))
        {
            let Some(key) = Folded::new(name) else {
                continue;
            };
            let e = all
                .entry(key.as_str().to_string())
                .or_insert_with(|| (name.to_string(), 0));
            e.1 = e.1.saturating_add(n);
        }
        let mut list: Vec<(String, usize)> = all.into_values().collect();
        list.sort_unstable_by(|a, b| cmp_folded(&a.0, &b.0));
        let limit = self.config.rooms_limit.min(list.len());
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut fields = String::new();
        for (name, n) in &list[..limit] {
            let sep = if fields.is_empty() { "" } else { " " };
            let _ = write!(fields, "{sep}{name}={n}");
        }
        if list.len() > limit {
            let sep = if fields.is_empty() { "" } else { " " };
            let _ = write!(fields, "{sep}+{}", list.len() - limit);
        }
        Line::Rooms(&fields).write_str(&mut out, None);
        send(sink, &mut self.deliveries, &[id], &out);
        self.out = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatConfig;

    use crate::chat::Lines;

    fn hub() -> Hub {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            ..ChatConfig::default()
        });
        hub.enable_cluster("ab12");
        hub
    }

    fn requests(hub: &mut Hub) -> Vec<Request> {
        let mut v = Vec::new();
        hub.take_requests(&mut v);
        v
    }

    /// A connect whose nick the registry grants; its requests are taken.
    fn connect(hub: &mut Hub, id: ConnId, nick: &str, room: Option<&str>, sink: &mut Lines) {
        hub.connect(id, Some(nick), room, 0, sink);
        assert!(hub.nick_reserved(id, nick, Claim::Granted, sink));
        requests(hub);
    }

    #[test]
    fn history_from_redis_is_exact_about_what_is_kept() {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            history: crate::chat::history::HistoryConfig {
                ttl_ms: 1000,
                ..ChatConfig::default().history
            },
            ..ChatConfig::default()
        });
        hub.enable_cluster("ab12");
        let mut sink = Lines::default();
        connect(&mut hub, 0, "ann", Some("Dev"), &mut sink);
        hub.handle(0, "/caps ids", 0, &mut sink);
        sink.0.clear();
        hub.handle(0, "/history dev after 5-3 2", 0, &mut sink);
        assert_eq!(
            requests(&mut hub),
            [Request::History {
                id: 0,
                room: "dev".into(),
                after: Some("5-3".into()),
                limit: 2,
            }]
        );
        assert!(sink.0.is_empty(), "answered by Redis, not here");
        // Kept: numbers 3..=6 of epoch 5 (1 and 2 trimmed); one malformed
        // entry and one of an older epoch are skipped.
        let entries: Vec<String> = [(3, 1000), (4, 1500), (5, 1600), (6, 1700)]
            .iter()
            .map(|(n, t)| format!("5-{n} {t} MSG dev bob m{n}"))
            .chain(["junk".to_string(), "4-9 1700 MSG dev bob old".into()])
            .collect();
        let entries: Vec<&[u8]> = entries.iter().map(|e| e.as_bytes()).collect();
        let mut ask = |after: Option<&str>, limit: u32, now: u64| {
            let mut sink = Lines::default();
            hub.answer_history(
                0,
                "dev",
                after,
                limit,
                Some((5, 6)),
                &entries,
                now,
                &mut sink,
            );
            sink.0.into_iter().map(|(_, l)| l).collect::<Vec<_>>()
        };
        assert_eq!(
            ask(Some("5-3"), 2, 1800),
            [
                "HISTORY Dev 2",
                "@id=5-4;time=1970-01-01T00:00:01.500Z MSG dev bob m4",
                "@id=5-5;time=1970-01-01T00:00:01.600Z MSG dev bob m5"
            ]
        );
        assert_eq!(ask(Some("5-6"), 10, 1800), ["HISTORY Dev 0"]);
        // Trimmed, expired (5-3 is older than the TTL at 2100), another
        // epoch, a future id, not an id: lost.
        for (after, now) in [
            ("5-1", 1800),
            ("5-2", 2100),
            ("4-9", 1800),
            ("5-7", 1800),
            ("x", 1800),
        ] {
            assert_eq!(ask(Some(after), 10, now), ["HISTORY Dev lost"], "{after}");
        }
        assert_eq!(ask(None, 2, 1800).len(), 3);
        assert_eq!(ask(None, 10, 2550)[0], "HISTORY Dev 2");
        let mut sink = Lines::default();
        hub.answer_history(0, "dev", Some("1-1"), 5, None, &[], 0, &mut sink);
        assert_eq!(sink.0, [(0, "HISTORY Dev lost".to_string())]);
    }

    #[test]
    fn a_requested_nick_is_confirmed_before_anything_is_announced() {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 3,
            ..ChatConfig::default()
        });
        hub.enable_cluster("ab12");
        let mut sink = Lines::default();
        connect(&mut hub, 0, "bob", Some("dev"), &mut sink);
        sink.0.clear();
        hub.connect(1, Some("alice"), Some("dev"), 0, &mut sink);
        assert_eq!(hub.held(), 1);
        // Pipelined input is held, up to a burst; nothing reaches the room.
        for i in 0..5 {
            hub.handle(1, &format!("forged {i}"), 0, &mut sink);
        }
        assert!(sink.0.is_empty(), "{:?}", sink.0);
        assert_eq!(
            requests(&mut hub),
            vec![Request::Reserve {
                id: 1,
                nick: "alice".into()
            }]
        );
        // Another node has alice: a guest nick and the reason, then the held
        // lines run under the guest nick.
        assert!(!hub.nick_reserved(1, "alice", Claim::Taken, &mut sink));
        let guest = hub.nick(1).unwrap().to_string();
        assert!(guest.starts_with("guest-ab12-"), "{guest}");
        let to1: Vec<&str> = sink
            .0
            .iter()
            .filter(|(i, _)| *i == 1)
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(to1[0], format!("WELCOME {guest}"));
        assert_eq!(
            to1[1],
            "ERR nick-taken nick taken on another node, using a guest nick"
        );
        assert_eq!(to1[2], format!("JOINED dev {guest}"));
        assert_eq!(
            to1[3],
            "ERR rate-limited 2 lines sent before the nick was confirmed were dropped"
        );
        assert_eq!(to1[4], format!("MSG dev {guest} forged 0"));
        assert!(
            sink.0.iter().all(|(_, l)| !l.contains("alice")),
            "{:?}",
            sink.0
        );
        // The guest nick is registered too (for private messages), at once.
        assert!(requests(&mut hub).contains(&Request::Reserve {
            id: 1,
            nick: guest.as_str().into()
        }));

        // Unreachable registry: a guest nick, and the reason.
        sink.0.clear();
        hub.connect(2, Some("carol"), None, 0, &mut sink);
        assert!(!hub.nick_reserved(2, "carol", Claim::Unreachable, &mut sink));
        assert_eq!(
            sink.0[1].1,
            "ERR nick-unavailable nick registry unreachable, using a guest nick"
        );
        // A held connection that leaves is forgotten; a late answer is ignored.
        hub.connect(3, Some("dave"), None, 0, &mut sink);
        requests(&mut hub);
        hub.disconnect(3, &mut sink);
        assert_eq!(requests(&mut hub), vec![Request::Gone(3)]);
        assert!(!hub.nick_reserved(3, "dave", Claim::Granted, &mut sink));
        assert_eq!(hub.held(), 0);
        hub.check_invariants();
    }

    #[test]
    fn guest_nicks_cannot_be_chosen() {
        let mut hub = hub();
        let mut sink = Lines::default();
        hub.connect(0, Some("Guest-ab12-1"), None, 0, &mut sink);
        assert_eq!(hub.held(), 0, "not even asked for");
        assert_eq!(
            sink.0[1].1,
            "ERR bad-nick guest-* nicks are reserved, using a guest nick"
        );
        sink.0.clear();
        hub.handle(0, "/nick guest-zz-9", 0, &mut sink);
        assert_eq!(
            sink.0,
            vec![(0, "ERR bad-nick guest-* nicks are reserved".to_string())]
        );
        assert!(crate::chat::names::reserved_nick("GUEST-x"));
        assert!(!crate::chat::names::reserved_nick("guest"));
        assert!(!crate::chat::names::reserved_nick("guests"));
    }

    #[test]
    fn local_lines_are_published_once_and_rooms_subscribed() {
        let mut hub = hub();
        let mut sink = Lines::default();
        hub.connect(0, Some("alice"), Some("dev"), 0, &mut sink);
        assert_eq!(
            requests(&mut hub),
            vec![Request::Reserve {
                id: 0,
                nick: "alice".into()
            }]
        );
        assert!(sink.0.is_empty(), "no WELCOME before the registry answers");
        assert!(hub.nick_reserved(0, "alice", Claim::Granted, &mut sink));
        assert_eq!(sink.0[0], (0, "WELCOME alice".to_string()));
        let r = requests(&mut hub);
        assert_eq!(
            r,
            vec![
                Request::Subscribe("dev".into()),
                Request::Room {
                    room: "dev".into(),
                    line: "JOINED dev alice".into()
                },
            ]
        );
        hub.handle(0, "hello", 0, &mut sink);
        assert_eq!(
            requests(&mut hub),
            vec![Request::Room {
                room: "dev".into(),
                line: "MSG dev alice hello".into()
            }]
        );
        hub.disconnect(0, &mut sink);
        assert_eq!(
            requests(&mut hub),
            vec![
                Request::Room {
                    room: "dev".into(),
                    line: "LEFT dev alice".into()
                },
                Request::Unsubscribe("dev".into()),
                Request::Release {
                    nick: "alice".into()
                },
                Request::Gone(0),
            ]
        );
        hub.check_invariants();
    }

    #[test]
    fn nick_change_waits_for_the_reservation() {
        let mut hub = hub();
        let mut sink = Lines::default();
        connect(&mut hub, 0, "alice", Some("dev"), &mut sink);
        sink.0.clear();
        hub.handle(0, "/nick bob", 0, &mut sink);
        assert!(sink.0.is_empty(), "nothing until the answer");
        assert_eq!(hub.nick(0), Some("alice"));
        assert_eq!(
            requests(&mut hub),
            vec![Request::Reserve {
                id: 0,
                nick: "bob".into()
            }]
        );
        assert!(!hub.nick_reserved(0, "bob", Claim::Taken, &mut sink));
        assert_eq!(sink.0, vec![(0, "ERR nick-taken nick taken".to_string())]);
        assert_eq!(hub.nick(0), Some("alice"));
        sink.0.clear();
        hub.handle(0, "/nick bob", 0, &mut sink);
        requests(&mut hub);
        assert!(!hub.nick_reserved(0, "bob", Claim::TimedOut, &mut sink));
        assert_eq!(
            sink.0,
            vec![(
                0,
                "ERR nick-unavailable nick registry unreachable, nick unchanged".to_string()
            )]
        );
        sink.0.clear();
        hub.handle(0, "/nick bob", 0, &mut sink);
        requests(&mut hub);
        assert!(hub.nick_reserved(0, "bob", Claim::Granted, &mut sink));
        assert_eq!(sink.0, vec![(0, "NICK alice bob".to_string())]);
        assert_eq!(
            requests(&mut hub),
            vec![
                Request::Release {
                    nick: "alice".into()
                },
                Request::Nick {
                    rooms: vec!["dev".into()],
                    line: "NICK alice bob".into()
                },
            ]
        );
        hub.check_invariants();
    }

    #[test]
    fn a_refused_claim_renames_to_a_node_guest() {
        let mut hub = hub();
        let mut sink = Lines::default();
        connect(&mut hub, 0, "alice", None, &mut sink);
        sink.0.clear();
        // Unconfirmed (Redis down at a refresh): the nick stays.
        assert!(!hub.nick_reserved(0, "alice", Claim::Unreachable, &mut sink));
        assert!(sink.0.is_empty());
        assert!(!hub.nick_reserved(0, "alice", Claim::Taken, &mut sink));
        let guest = hub.nick(0).unwrap().to_string();
        assert!(guest.starts_with("guest-ab12-"), "{guest}");
        assert_eq!(
            sink.0[0].1,
            "ERR nick-taken nick taken on another node, using a guest nick"
        );
        assert_eq!(sink.0[1].1, format!("NICK alice {guest}"));
        hub.check_invariants();
    }

    #[test]
    fn remote_lines_and_answers() {
        let mut hub = hub();
        let mut sink = Lines::default();
        connect(&mut hub, 0, "a", Some("x"), &mut sink);
        connect(&mut hub, 1, "b", Some("x"), &mut sink);
        hub.handle(1, "/join y", 0, &mut sink);
        sink.0.clear();
        hub.deliver_room("X", "MSG x z hi", &mut sink);
        assert_eq!(sink.0.len(), 2);
        sink.0.clear();
        hub.deliver_nick(&["x", "y"], "NICK z w", &mut sink);
        assert_eq!(sink.0.len(), 2, "once each: {:?}", sink.0);
        // Another node's claimant of `a` renamed: not news for the local `a`.
        sink.0.clear();
        hub.deliver_nick(&["x"], "NICK A guest-cd34-1", &mut sink);
        assert_eq!(sink.0, vec![(1, "NICK A guest-cd34-1".to_string())]);
        sink.0.clear();
        assert!(hub.deliver_private("B", "PRIV z b hi", &mut sink));
        assert!(!hub.deliver_private("nobody", "PRIV z n hi", &mut sink));
        sink.0.clear();
        hub.answer_who(0, "x", &["z".to_string()], 1, &mut sink);
        assert_eq!(sink.0, vec![(0, "WHO x a b z".to_string())]);
        sink.0.clear();
        hub.answer_rooms(0, &[("X".to_string(), 3), ("q".to_string(), 1)], &mut sink);
        assert_eq!(sink.0, vec![(0, "ROOMS q=1 x=5 y=1".to_string())]);
    }
}
