//! Sessions that resume on any node of a cluster.
//!
//! A node that keeps a dropped session also writes its [`Record`] to Redis
//! ([`Request::StoreSession`], keyed by the token's hash) and keeps holding
//! the nick, registered `away` ([`Request::Renew`]; refreshed with the live
//! ones, so nobody can take it and `/msg` finds nobody). A `/resume` on any
//! node asks Redis for the record ([`Request::TakeSession`]): one atomic
//! script turns it into a tombstone (single use) and moves the nick's
//! registration, with its time, to the resuming node, so the nick never
//! looks free and no `LEFT`/`JOINED` is sent. The resuming node tells every
//! node ([`Request::Moved`], the wire's `S` notice): the dropping one
//! forgets its copy ([`Hub::session_moved`]), the others file the nick's
//! memberships under the resuming node. Should that notice be lost, the copy ends at its
//! expiry or at the first refused refresh of its nick the same way: Redis is
//! asked ([`Request::EndSession`]), finds the tombstone, and the copy is
//! forgotten silently; a session nobody took ends with `LEFT` as on one node.
//!
//! Catching up, per room ([`Request::Catchup`]): the resuming node subscribes
//! (if it was not), waits for Redis to confirm, then reads the room's history
//! snapshot (its counter `E-X` and entries). Meanwhile the connection is not
//! a member: the room's live lines are buffered for it. With the snapshot:
//! the missed lines are those after the session's last id up to `X` (all of
//! them must still be there, else `RESUMED ROOM lost`), then the buffered
//! live lines above `X`. The connection becomes a member once this node has
//! delivered `X` itself, so that no line reaches it twice; while live lines
//! up to `X` are still in flight toward this node it waits for them (at most
//! [`CATCHUP_WAIT_MS`]: then it joins, and a late line may reach it twice,
//! with the same id). The room's own order (`last_id`) is moved past lines
//! still in flight only when nobody else here is owed them. Its input is held
//! until every room has caught up. Bounded: [`CATCHUP_ASK_MS`] for the
//! snapshot, and buffers per room and for all catch-ups together.
//!
//! Redis restarted between the drop and the resume: the record is gone, so
//! only the dropping node can resume the session (from its own memory); the
//! missed lines are those Redis still has, which after a restart is none
//! (`RESUMED ROOM lost` where something may have been missed).

use super::super::history::{Lost, MsgId};
use super::super::line::{parse, Count, Line, Tags};
use super::super::names::Folded;
use super::super::remote::{Claim, Fetched, Request};
use super::super::session::Token;
use super::super::{ConnId, ErrorCode, Sink};
use super::cluster::Held;
use super::record::Record;
use super::resume::{Connect, Detached, CAP_IDS, CAP_RESUME, DETACHED};
use super::{send, Hub, Membership, RoomId, User};
use crate::chat::command::since_pairs;
use crate::chat::compact::InlineList;
use crate::chat::rate::RateLimiter;

/// Longest a caught-up connection waits for live lines this node has not yet
/// delivered (in flight from Redis) before joining without them.
pub(super) const CATCHUP_WAIT_MS: u64 = 2_000;
/// How long after "no such session" Redis is asked once more.
const RETAKE_MS: u64 = 300;
/// Live lines buffered for one catching-up room, at most.
const MAX_CATCHUP_LINES: usize = 4_096;
/// Bytes of live lines buffered for one catching-up room, at most.
const MAX_CATCHUP_BYTES: usize = 1 << 20;
/// Bytes buffered for all catch-ups together, at most: past it a catch-up
/// that would buffer more resumes as `lost` instead.
const MAX_ALL_CATCHUP_BYTES: usize = 16 << 20;
/// Longest a catch-up waits for its history snapshot (Redis slow, or the
/// subscription not confirmed) before the room resumes as `lost`.
const CATCHUP_ASK_MS: u64 = 10_000;

/// What a resume waits for: the session's record, then its rooms' history.
#[derive(Debug)]
pub(super) struct ResumeArgs {
    token: Box<str>,
    key: Box<str>,
    /// `ROOM=ID` pairs (command) or `ROOM:ID` (connect), as written.
    since: Option<Box<str>>,
    /// `/resume` on a live connection (not `?resume=` at connect).
    command: bool,
    /// Redis was asked a second time (the first answer was "no such session").
    retried: bool,
}

#[derive(Debug)]
enum Phase {
    /// The history read is out (given up at `until_ms`).
    Asking { until_ms: u64 },
    /// The snapshot is in; live lines up to `x` are still on their way here.
    Waiting { x: MsgId, until_ms: u64 },
}

/// One room of a resumed session, catching up.
#[derive(Debug)]
pub(super) struct Catchup {
    id: ConnId,
    rid: RoomId,
    /// The last id the client has; `Err` when unknown (lost).
    after: Result<Option<MsgId>, Lost>,
    phase: Phase,
    /// Lines for the client, in order: live ones while asking, then (with
    /// the snapshot) the missed ones followed by live ones above it.
    lines: Vec<(MsgId, u64, Box<str>)>,
    bytes: usize,
    overflow: bool,
}

impl Catchup {
    /// Keep a live line the client has not seen; `total` counts the bytes
    /// of every catch-up.
    fn keep(&mut self, id: MsgId, time_ms: u64, line: &str, total: &mut usize) {
        let floor = match (&self.phase, &self.after) {
            (Phase::Waiting { x, .. }, _) => Some(*x),
            (Phase::Asking { .. }, Ok(a)) => *a,
            (Phase::Asking { .. }, Err(Lost)) => return,
        };
        if self.overflow || floor.is_some_and(|f| f.epoch == id.epoch && id.seq <= f.seq) {
            return;
        }
        if self.lines.len() >= MAX_CATCHUP_LINES
            || self.bytes + line.len() > MAX_CATCHUP_BYTES
            || *total + line.len() > MAX_ALL_CATCHUP_BYTES
        {
            // Resumes as `lost`; what it held is given back now.
            self.overflow = true;
            *total = total.saturating_sub(self.bytes);
            self.bytes = 0;
            self.lines = Vec::new();
            return;
        }
        self.bytes += line.len();
        *total += line.len();
        self.lines.push((id, time_ms, line.into()));
    }
}

impl Hub {
    /// Clustered: start resuming `token` for `id` (the hub answers once
    /// Redis has, see [`Hub::session_taken`]); false when `token` is not a
    /// token at all (refused at once).
    pub(super) fn start_cluster_resume(
        &mut self,
        id: ConnId,
        token: &str,
        args: &Connect<'_>,
        command: bool,
        now_ms: u64,
    ) -> bool {
        let Some(key) = Token::parse(token).map(|t| t.redis_key()) else {
            return false;
        };
        let Some(r) = self.remote.as_deref_mut() else {
            return false;
        };
        let mut held = Held::new(args.nick.unwrap_or(""), args.room, args.caps, now_ms);
        held.resume = Some(Box::new(ResumeArgs {
            token: token.into(),
            key: key.as_str().into(),
            since: args.since.map(Into::into),
            command,
            retried: false,
        }));
        r.held.insert(id, held);
        r.push(Request::TakeSession {
            id,
            key: key.into(),
        });
        true
    }

    /// Redis' answer to [`Request::TakeSession`] for `id`: the session is
    /// resumed here (`WELCOME`, `SESSION`, then per room `RESUMED` and the
    /// missed lines as each room catches up), or refused with
    /// `ERR bad-session` (a connect goes on as a new connection).
    pub fn session_taken(&mut self, id: ConnId, fetched: Fetched<'_>, sink: &mut impl Sink) {
        let now_ms = self.now_ms;
        let Some(mut held) = self.remote.as_deref_mut().and_then(|r| {
            r.held
                .get(&id)
                .is_some_and(|h| h.resume.is_some())
                .then(|| r.held.remove(&id))
                .flatten()
        }) else {
            return;
        };
        let Some(mut args) = held.resume.take() else {
            return;
        };
        if fetched == Fetched::Missing
            && !args.retried
            && self.sessions.peek(&args.token, now_ms).is_none()
        {
            // Not in Redis and not here: the node it dropped from may not have
            // stored it yet (the drop and this resume crossed). Asked once
            // more, a moment later, before the answer is no.
            args.retried = true;
            held.resume = Some(args);
            if let Some(r) = self.remote.as_deref_mut() {
                r.held.insert(id, held);
                r.retries.push((id, now_ms.saturating_add(RETAKE_MS)));
            }
            return;
        }
        // This node's own copy of the session, if it dropped here.
        // (A connection still open here with it, half-open, is taken over.)
        let local = self
            .take_session(id, &args.token, now_ms, sink)
            .ok()
            // (Or its time ran out while Redis was asked: still here.)
            .or_else(|| self.remote.as_deref_mut()?.ending.remove(&*args.key));
        let mut moved_from = None;
        let outcome = match fetched {
            Fetched::Found {
                record,
                nick_ours,
                from,
            } => match Record::parse(record) {
                Some(rec) => {
                    moved_from = from.map(Box::<str>::from);
                    Ok((rec, nick_ours))
                }
                None => Err("unknown, used or expired session"),
            },
            Fetched::Missing | Fetched::Unreachable => {
                match local
                    .as_ref()
                    .and_then(|d| d.record())
                    .and_then(Record::parse)
                {
                    Some(rec) => {
                        // Redis lost it (or cannot be asked): this node's copy is
                        // the session; mark it used so no node takes it again.
                        self.request(|| Request::UseSession {
                            key: args.key.clone(),
                        });
                        Ok((rec, true))
                    }
                    None if fetched == Fetched::Unreachable => {
                        Err("session store unreachable, try again")
                    }
                    None => Err("unknown, used or expired session"),
                }
            }
            Fetched::Used => Err("unknown, used or expired session"),
        };
        // The local copy's nick is the resumed nick: freed for `id` first.
        if let Some(d) = &local {
            if let Some(key) = Folded::new(d.nick()) {
                self.nicks.remove(key.as_str(), DETACHED);
            }
        }
        match outcome {
            Ok((rec, nick_ours)) => {
                if let (Some(from), Some(selector)) =
                    (moved_from, Token::parse(&args.token).map(|t| t.selector()))
                {
                    // Every node learns where the session went (its old node
                    // forgets its copy, the others move its memberships).
                    let (key, nick) = (args.key.clone(), rec.nick.clone());
                    let rooms = rec.rooms.iter().map(|(r, _)| r.clone()).collect();
                    self.request(|| Request::Moved {
                        from,
                        selector,
                        key,
                        nick,
                        rooms,
                    });
                }
                self.attach_record(id, held, &args, rec, nick_ours, now_ms, sink)
            }
            Err(text) => self.refuse_resume(id, held, &args, text, sink),
        }
        if let Some(d) = local {
            self.forget_detached(d);
        }
        self.settle_held_identity(id, sink);
    }

    /// A resume that cannot happen: the live connection gets `ERR
    /// bad-session` and keeps going; a connect goes on as a new connection.
    fn refuse_resume(
        &mut self,
        id: ConnId,
        held: Held,
        args: &ResumeArgs,
        text: &'static str,
        sink: &mut impl Sink,
    ) {
        let err = (ErrorCode::BadSession, text);
        if args.command {
            self.err(id, err.0, err.1, sink);
            self.replay_held(id, held, sink);
            return;
        }
        let connect = Connect {
            nick: Some(&*held.nick).filter(|n| !n.is_empty()),
            room: held.room.as_deref(),
            caps: held.caps,
            ..Connect::default()
        };
        self.connect_as_new(id, &connect, Some(err), held.now_ms, sink);
        if let Some(h) = self.remote.as_deref_mut().and_then(|r| r.held.get_mut(&id)) {
            // Held again, for the requested nick: the error and the lines
            // wait with it.
            h.err = Some(err);
            h.lines = held.lines;
            h.bytes = held.bytes;
            h.dropped = held.dropped;
            return;
        }
        self.replay_held(id, held, sink);
    }

    /// Give the session in `rec` to `id`.
    #[allow(clippy::too_many_arguments)]
    fn attach_record(
        &mut self,
        id: ConnId,
        held: Held,
        args: &ResumeArgs,
        rec: Record,
        nick_ours: bool,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let old_caps = self.user(id).map_or(0, |u| u.caps);
        if args.command {
            // The guest this connection was leaves as any guest would.
            self.disconnect_now(id, sink);
        }
        let caps = if args.command {
            old_caps
        } else {
            held.caps.map_or(rec.caps, |c| c.bits())
        } | CAP_RESUME;
        let caps = caps & self.offered();
        if self.users.len() <= id {
            self.users.resize_with(id + 1, || None);
        }
        // A copy of an older session with this nick, dropped here and resumed
        // elsewhere since (the registry moved the nick away and back): stale.
        let stale = match Folded::new(&rec.nick) {
            Some(k) if nick_ours && self.nick_holder(k.as_str()) == Some(DETACHED) => {
                let d = self
                    .sessions
                    .remove_detached(|d| d.nick_is(k.as_str()))
                    .or_else(|| {
                        let r = self.remote.as_deref_mut()?;
                        let key = r
                            .ending
                            .iter()
                            .find(|(_, d)| d.nick_is(k.as_str()))
                            .map(|(key, _)| key.clone())?;
                        r.ending.remove(&key)
                    });
                if d.is_some() {
                    self.nicks.remove(k.as_str(), DETACHED);
                }
                d
            }
            _ => None,
        };
        let taken_here = Folded::new(&rec.nick)
            .and_then(|k| self.nick_holder(k.as_str()))
            .is_some();
        let nick: Box<str> = if taken_here {
            self.guest_nick()
        } else {
            rec.nick.clone()
        };
        if let Some(key) = Folded::new(&nick) {
            self.nicks.insert(key.as_str(), id);
        }
        self.out.clear();
        Line::Welcome { nick: &nick }.write_str(&mut self.out, None);
        self.users[id] = Some(User {
            nick: nick.clone(),
            rooms: InlineList::default(),
            rate: RateLimiter::new(self.config.rate_limit, now_ms),
            seen: 0,
            access: rec.access,
            exp_tag: rec.exp.map_or(0, |e| e as u16),
            caps,
        });
        if let Some(claim) = rec.claim.clone() {
            self.auth_rooms_insert(id, claim);
        }
        self.live += 1;
        self.resumes += 1;
        send(sink, &mut self.deliveries, &[id], &self.out);
        if !args.command && held.caps.is_some() {
            self.send_caps(id, sink);
        }
        self.issue_session(id, sink);
        if taken_here {
            self.err(
                id,
                ErrorCode::NickTaken,
                "nick taken, using a guest nick",
                sink,
            );
        }
        if taken_here || !nick_ours {
            // The registry did not move the nick here: ask for it as for any
            // nick in use (refused → `ERR nick-taken` and a guest nick).
            let nick = nick.clone();
            self.request(|| Request::Reserve { id, nick });
        } else {
            // Registered here now, no longer away.
            let nick = nick.clone();
            let signed = rec.access.is_signed();
            self.request(|| Request::Renew {
                nick,
                id: Some(id),
                signed,
            });
        }
        let (sep, kv) = if args.command { (' ', '=') } else { (',', ':') };
        let mut waiting = 0;
        for (name, last) in &rec.rooms {
            let asked = args.since.as_deref().and_then(|s| {
                since_pairs(s, sep, kv)
                    .flatten()
                    .find(|(r, _)| r.eq_ignore_ascii_case(name))
                    .map(|(_, m)| m)
            });
            let after = match asked {
                Some(m) => MsgId::parse(m).map(Some).ok_or(Lost),
                None => Ok(*last),
            };
            let Some(rid) = self.room_for_catchup(name) else {
                // Not a room here, and no room left to make it one: the
                // session goes on without it.
                self.fields.clear();
                self.fields.push_str("the server has too many rooms, left ");
                self.fields.push_str(name);
                let text = std::mem::take(&mut self.fields);
                self.err(id, ErrorCode::BadRoom, &text, sink);
                self.fields = text;
                continue;
            };
            let Some(key) = Folded::new(name) else {
                continue;
            };
            if let Some(r) = self.remote.as_deref_mut() {
                r.catchups.push(Catchup {
                    id,
                    rid,
                    after,
                    phase: Phase::Asking {
                        until_ms: now_ms.saturating_add(CATCHUP_ASK_MS),
                    },
                    lines: Vec::new(),
                    bytes: 0,
                    overflow: false,
                });
                r.push(Request::Catchup {
                    id,
                    room: key.as_str().into(),
                });
                waiting += 1;
            }
        }
        if let Some(d) = stale {
            self.forget_detached(d);
        }
        if waiting == 0 {
            self.replay_held(id, held, sink);
            return;
        }
        // Input waits until every room has caught up.
        let mut wait = Held::new(&nick, None, None, held.now_ms);
        wait.lines = held.lines;
        wait.bytes = held.bytes;
        wait.dropped = held.dropped;
        if let Some(r) = self.remote.as_deref_mut() {
            r.held.insert(id, wait);
        }
    }

    /// The room `name`, created (and subscribed) if this node has no member
    /// in it, held while a connection catches up in it.
    fn room_for_catchup(&mut self, name: &str) -> Option<RoomId> {
        let key = Folded::new(name)?;
        let rid = match self.room_index.get(key.as_str()).copied() {
            Some(rid) => rid,
            None if self.room_index.len() >= self.config.max_rooms_total => return None,
            None => self.create_room(name)?,
        };
        let room = self.rooms.get_mut(rid as usize).and_then(Option::as_mut)?;
        room.held += 1;
        Some(rid)
    }

    /// The held lines of `id` run now (the resume is complete or refused).
    fn replay_held(&mut self, id: ConnId, held: Held, sink: &mut impl Sink) {
        if held.dropped > 0 {
            let text = format!(
                "{} lines sent while the session resumed were dropped",
                held.dropped
            );
            self.err(id, ErrorCode::RateLimited, &text, sink);
        }
        for (line, t) in held.lines {
            self.handle(id, &line, t, sink);
        }
    }

    /// A role held for `id` by `/auth` (`hub/auth.rs`) while it resumed: a
    /// resumed token holder keeps the identity its session brought.
    fn settle_held_identity(&mut self, id: ConnId, sink: &mut impl Sink) {
        if self.is_held(id) && self.user(id).is_none() {
            return;
        }
        if self.user(id).is_some_and(|u| u.access.is_signed()) {
            self.forget_held_identity(id);
        } else {
            self.apply_held_identity(id, Claim::Granted, sink);
        }
    }

    /// A dropped session this node kept is over without `LEFT` (it was
    /// resumed, here or on another node): its rooms are no longer held.
    pub(super) fn forget_detached(&mut self, d: Detached) {
        if let Some(key) = Folded::new(d.nick()) {
            self.nicks.remove(key.as_str(), DETACHED);
        }
        for rid in d.room_ids() {
            if let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) {
                room.held = room.held.saturating_sub(1);
            }
            self.delete_if_unused(rid);
        }
    }

    /// The history snapshot for `id`'s catch-up in `room` (folded), read
    /// after this node's subscription was confirmed: `counter` is the room's
    /// (epoch, last number), `entries` its stored `ID TIME LINE`s, `now` Unix
    /// ms. See the module docs for the rule.
    pub fn answer_catchup(
        &mut self,
        id: ConnId,
        room: &str,
        counter: Option<(u64, u64)>,
        entries: &[&[u8]],
        now: u64,
        sink: &mut impl Sink,
    ) {
        let Some(rid) = self.room_id(room) else {
            return;
        };
        let Some(i) = self.catchup_index(id, rid) else {
            return;
        };
        self.note_counter(rid, counter);
        let ttl = self.config.history.ttl_ms;
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        let c = &mut r.catchups[i];
        // `after`: `None` where the client stood is not known; `0-0` the room
        // had no message then.
        let snapshot: Option<Vec<(MsgId, u64, Box<str>)>> = match (counter, c.after) {
            (_, Err(Lost)) => None,
            (None, Ok(None)) => Some(Vec::new()),
            (None, Ok(Some(a))) => (a.epoch == 0).then(Vec::new),
            (Some((epoch, last)), Ok(a)) => {
                let from = match a {
                    Some(a) if a.epoch == 0 => Some(0),
                    Some(a) if a.epoch == epoch && a.seq <= last => Some(a.seq),
                    _ => None,
                };
                from.and_then(|from| {
                    let kept: Vec<(MsgId, u64, Box<str>)> = entries
                        .iter()
                        .filter_map(|e| {
                            let e = std::str::from_utf8(e).ok()?;
                            let (id, rest) = e.split_once(' ')?;
                            let (time, line) = rest.split_once(' ')?;
                            let (id, time) = (MsgId::parse(id)?, time.parse::<u64>().ok()?);
                            let fresh = ttl == 0 || time.saturating_add(ttl) > now;
                            (fresh
                                && id.epoch == epoch
                                && id.seq > from
                                && id.seq <= last
                                && matches!(parse(line), Ok((_, Line::Msg { .. }))))
                            .then(|| (id, time, line.into()))
                        })
                        .collect();
                    // Every number after `from` up to `last` is a message of
                    // this room: all of them must still be here.
                    (kept.len() as u64 == last - from).then_some(kept)
                })
            }
        };
        let top = counter.map(|(epoch, seq)| MsgId { epoch, seq });
        r.catchup_bytes = r.catchup_bytes.saturating_sub(c.bytes);
        match snapshot {
            Some(mut lines) if !c.overflow => {
                // Live lines that came while asking, above the snapshot.
                let live = std::mem::take(&mut c.lines);
                let before = lines.len();
                lines.extend(live.into_iter().filter(|(m, _, _)| {
                    !top.is_some_and(|t| m.epoch == t.epoch && m.seq <= t.seq)
                }));
                // Only live lines count toward the budgets: the snapshot is
                // bounded by `--history` already.
                c.bytes = lines[before..].iter().map(|l| l.2.len()).sum();
                c.lines = lines;
            }
            _ => {
                c.after = Err(Lost);
                c.lines = Vec::new();
                c.bytes = 0;
            }
        }
        r.catchup_bytes += c.bytes;
        let lost = c.after.is_err();
        log::debug!(
            "resume: conn {id} catches up in {room}: {} lines (lost: {lost}), snapshot {:?}",
            c.lines.len(),
            top
        );
        let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) else {
            return;
        };
        let delivered = room.last_id;
        let reached = |x: MsgId| delivered.epoch == x.epoch && delivered.seq >= x.seq;
        // Alone in the room (no member here, no other catch-up): nobody else
        // is owed the lines up to `x` that may still come by pub/sub, so the
        // room may skip them. Otherwise they are waited for: skipping them
        // would take them from the others.
        let alone = room.members.is_empty()
            && self
                .remote
                .as_deref()
                .is_some_and(|r| r.catchups.iter().filter(|c| c.rid == rid).count() == 1);
        match top {
            Some(x) if !lost && !reached(x) && !alone => {
                // Join when they are here, so none reaches the client twice.
                let until_ms = self.now_ms.saturating_add(CATCHUP_WAIT_MS);
                if let Some(r) = self.remote.as_deref_mut() {
                    r.catchups[i].phase = Phase::Waiting { x, until_ms };
                }
            }
            Some(x) if !lost && !reached(x) => {
                if let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) {
                    room.last_id = x;
                }
                self.finish_catchup(i, sink);
            }
            // Caught up, or lost (the client knows it may have missed lines;
            // the room's order is left alone).
            _ => self.finish_catchup(i, sink),
        }
    }

    /// The history for `id`'s catch-up in `room` could not be read: the
    /// room resumes as `lost`.
    pub fn catchup_unavailable(&mut self, id: ConnId, room: &str, sink: &mut impl Sink) {
        let Some(rid) = self.room_id(room) else {
            return;
        };
        if let Some(i) = self.catchup_index(id, rid) {
            if let Some(r) = self.remote.as_deref_mut() {
                let c = &mut r.catchups[i];
                c.after = Err(Lost);
                c.lines = Vec::new();
                r.catchup_bytes = r.catchup_bytes.saturating_sub(std::mem::take(&mut c.bytes));
            }
            self.finish_catchup(i, sink);
        }
    }

    fn catchup_index(&self, id: ConnId, rid: RoomId) -> Option<usize> {
        self.remote
            .as_deref()?
            .catchups
            .iter()
            .position(|c| c.id == id && c.rid == rid && matches!(c.phase, Phase::Asking { .. }))
    }

    /// A room line delivered here (`deliver_ordered`): kept for the
    /// connections catching up in that room; those waiting for it join.
    pub(super) fn catchup_live(
        &mut self,
        rid: RoomId,
        id: MsgId,
        time_ms: u64,
        line: &str,
        sink: &mut impl Sink,
    ) {
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        let mut done = false;
        let total = &mut r.catchup_bytes;
        for c in r.catchups.iter_mut().filter(|c| c.rid == rid) {
            c.keep(id, time_ms, line, total);
            if let Phase::Waiting { x, .. } = c.phase {
                done |= id.epoch != x.epoch || id.seq >= x.seq;
            }
        }
        if done {
            // Only those whose own snapshot this line reaches.
            self.finish_waiting(
                |c, _| {
                    c.rid == rid
                        && matches!(c.phase, Phase::Waiting { x, .. }
                            if id.epoch != x.epoch || id.seq >= x.seq)
                },
                sink,
            );
        }
    }

    /// Waiting catch-ups matching `pred` (given the hub's `now_ms`) join.
    fn finish_waiting(&mut self, pred: impl Fn(&Catchup, u64) -> bool, sink: &mut impl Sink) {
        let now = self.now_ms;
        loop {
            let Some(r) = self.remote.as_deref() else {
                return;
            };
            let Some(i) = r
                .catchups
                .iter()
                .position(|c| matches!(c.phase, Phase::Waiting { .. }) && pred(c, now))
            else {
                return;
            };
            // Timed out: the room's order is left alone, so a line up to
            // the snapshot that comes later still reaches the others (and,
            // now a member, this client too: the one case where it may see
            // a line twice, which its ids tell apart).
            self.finish_catchup(i, sink);
        }
    }

    /// Catch-ups whose time ran out (from `handle_timeout`): a waiting one
    /// joins; one whose snapshot never came resumes as `lost`.
    pub(super) fn catchup_timeouts(&mut self, now_ms: u64, sink: &mut impl Sink) {
        self.now_ms = now_ms;
        self.finish_waiting(
            |c, now| matches!(c.phase, Phase::Waiting { until_ms, .. } if until_ms <= now),
            sink,
        );
        loop {
            let Some(r) = self.remote.as_deref_mut() else {
                return;
            };
            let Some(i) = r
                .catchups
                .iter()
                .position(|c| matches!(c.phase, Phase::Asking { until_ms } if until_ms <= now_ms))
            else {
                return;
            };
            let c = &mut r.catchups[i];
            c.after = Err(Lost);
            c.lines = Vec::new();
            r.catchup_bytes = r.catchup_bytes.saturating_sub(std::mem::take(&mut c.bytes));
            self.finish_catchup(i, sink);
        }
    }

    /// Resumes due to ask Redis once more (from `handle_timeout`).
    pub(super) fn retake_due(&mut self, now_ms: u64) {
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        if r.retries.is_empty() {
            return;
        }
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut r.retries)
            .into_iter()
            .partition(|&(_, at)| at <= now_ms);
        r.retries = wait;
        for (id, _) in due {
            let key = r
                .held
                .get(&id)
                .and_then(|h| h.resume.as_ref())
                .map(|a| a.key.clone());
            if let Some(key) = key {
                r.push(Request::TakeSession { id, key });
            }
        }
    }

    /// When the next waiting catch-up times out, or a resume asks again.
    pub(super) fn catchup_deadline(&self) -> Option<u64> {
        let r = self.remote.as_deref()?;
        let retry = r.retries.iter().map(|&(_, at)| at).min();
        r.catchups
            .iter()
            .map(|c| match c.phase {
                Phase::Waiting { until_ms, .. } | Phase::Asking { until_ms } => until_ms,
            })
            .chain(retry)
            .min()
    }

    /// Catch-up `i` is complete: `RESUMED ROOM COUNT` (or `lost`) and its
    /// lines, then the connection is a member; its held input runs once
    /// every room is done.
    fn finish_catchup(&mut self, i: usize, sink: &mut impl Sink) {
        let Some(c) = self.remote.as_deref_mut().map(|r| {
            let c = r.catchups.swap_remove(i);
            r.catchup_bytes = r.catchup_bytes.saturating_sub(c.bytes);
            c
        }) else {
            return;
        };
        let Some(user) = self.users.get_mut(c.id).and_then(Option::as_mut) else {
            return;
        };
        let tagged = user.caps & CAP_IDS != 0;
        let Some(room) = self.rooms.get_mut(c.rid as usize).and_then(Option::as_mut) else {
            return;
        };
        room.held = room.held.saturating_sub(1);
        let count = match c.after {
            _ if c.overflow => Count::Lost,
            Err(Lost) => Count::Lost,
            Ok(_) => Count::Lines(c.lines.len() as u32),
        };
        self.out.clear();
        Line::Resumed {
            room: &room.name,
            count,
        }
        .write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[c.id], &self.out);
        if count != Count::Lost {
            let mut buf = [0u8; 41];
            for (msg_id, time, line) in &c.lines {
                self.out.clear();
                if tagged {
                    let tags = Tags {
                        id: Some(msg_id.write(&mut buf)),
                        time_ms: Some(*time),
                    };
                    super::super::line::write_tag_block(&mut self.out, &tags);
                }
                self.out.push_str(line);
                send(sink, &mut self.deliveries, &[c.id], &self.out);
            }
        }
        let pos = room.members.len() as u32;
        room.members.push(c.id);
        room.ids_members += u32::from(tagged);
        user.rooms.push(Membership { room: c.rid, pos });
        let rest = self
            .remote
            .as_deref()
            .is_some_and(|r| r.catchups.iter().any(|o| o.id == c.id));
        if !rest {
            if let Some(h) = self
                .remote
                .as_deref_mut()
                .and_then(|r| r.held.remove(&c.id))
            {
                self.replay_held(c.id, h, sink);
            }
        }
    }

    /// Remove `id`'s catch-ups, their rooms still held (for its session):
    /// each room with the position the client has there.
    pub(super) fn take_catchups(
        &mut self,
        id: ConnId,
    ) -> Vec<(RoomId, Result<Option<MsgId>, Lost>)> {
        let Some(r) = self.remote.as_deref_mut() else {
            return Vec::new();
        };
        if !r.catchups.iter().any(|c| c.id == id) {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let total = &mut r.catchup_bytes;
        r.catchups.retain(|c| {
            if c.id == id {
                // Waiting: the client has nothing of the snapshot yet.
                taken.push((c.rid, c.after));
                *total = total.saturating_sub(c.bytes);
            }
            c.id != id
        });
        taken
    }

    /// `id` is gone: its catch-ups end (their rooms are no longer held).
    pub(super) fn drop_catchups(&mut self, id: ConnId) {
        let Some(r) = self.remote.as_deref_mut() else {
            return;
        };
        if r.catchups.is_empty() {
            return;
        }
        let mut rids = Vec::new();
        let total = &mut r.catchup_bytes;
        r.catchups.retain(|c| {
            if c.id == id {
                rids.push(c.rid);
                *total = total.saturating_sub(c.bytes);
            }
            c.id != id
        });
        for rid in rids {
            if let Some(room) = self.rooms.get_mut(rid as usize).and_then(Option::as_mut) {
                room.held = room.held.saturating_sub(1);
            }
            self.delete_if_unused(rid);
        }
    }

    /// A session that dropped here ran out of time, clustered: Redis says
    /// whether another node took it meanwhile ([`Hub::session_ended`]).
    pub(super) fn end_clustered(&mut self, d: Detached) -> Option<Detached> {
        let Some(key) = d.redis_key().map(Box::<str>::from) else {
            return Some(d);
        };
        let Some(r) = self.remote.as_deref_mut() else {
            return Some(d);
        };
        r.push(Request::EndSession { key: key.clone() });
        r.ending.insert(key, d);
        None
    }

    /// Redis' answer to [`Request::EndSession`]: `ended` when the session
    /// was still there (or Redis lost it), so it ends here with `LEFT`; false
    /// when another node resumed it (this node forgets it silently).
    pub fn session_ended(&mut self, key: &str, ended: bool, sink: &mut impl Sink) {
        let Some(d) = self
            .remote
            .as_deref_mut()
            .and_then(|r| r.ending.remove(key))
        else {
            return;
        };
        if ended {
            self.end_detached(d, sink);
        } else {
            self.forget_moved(d);
        }
    }

    /// Another node resumed the session this node kept under `key` (its
    /// Redis key): forget it now, without `LEFT` (the nick's registration
    /// went with it).
    pub fn session_moved(&mut self, selector: u64, key: &str) {
        let d = self
            .sessions
            .remove_detached_at(selector, |d| d.redis_key() == Some(key))
            .or_else(|| self.remote.as_deref_mut()?.ending.remove(key));
        if let Some(d) = d {
            log::debug!("resume: {} was resumed on another node", d.nick());
            self.forget_moved(d);
        }
    }

    /// A copy of a session another node took: forgotten, and its nick's
    /// registration here too (it is the other node's now).
    fn forget_moved(&mut self, d: Detached) {
        if let Some(k) = Folded::new(d.nick()) {
            let nick = k.as_str().into();
            self.request(|| Request::Release { nick });
        }
        self.forget_detached(d);
    }

    /// The registry refused this node's refresh of `nick`, held for a dropped
    /// session: the session ends as Redis says (silently if another node
    /// resumed it, else with `LEFT`: its nick went to someone else).
    pub fn held_nick_refused(&mut self, nick: &str, sink: &mut impl Sink) {
        let Some(k) = Folded::new(nick) else {
            return;
        };
        if self.nick_holder(k.as_str()) != Some(DETACHED) {
            return;
        }
        if let Some(d) = self.sessions.remove_detached(|d| d.nick_is(k.as_str())) {
            if let Some(d) = self.end_clustered(d) {
                self.end_detached(d, sink);
            }
        }
    }

    /// `room`'s (folded) counter as Redis had it when this node subscribed:
    /// where a session that drops before any line is delivered here stood.
    pub fn room_counter(&mut self, room: &str, counter: Option<(u64, u64)>) {
        if let Some(rid) = self.room_id(room) {
            self.note_counter(rid, counter);
        }
    }

    /// Nicks this node holds for dropped sessions (kept registered while they
    /// wait), with whether a token vouches for them.
    pub fn held_nicks(&self) -> impl Iterator<Item = (&str, bool)> {
        let ending = self
            .remote
            .as_deref()
            .into_iter()
            .flat_map(|r| r.ending.values());
        self.sessions
            .detached_values()
            .chain(ending)
            .map(|d| (d.nick(), d.is_signed()))
    }

    /// True while a dropped session here holds `nick` (any letter case).
    pub fn holds_detached_nick(&self, nick: &str) -> bool {
        Folded::new(nick).is_some_and(|k| self.nick_holder(k.as_str()) == Some(DETACHED))
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::{ChatConfig, Lines};
    use super::super::resume::Caps;
    use super::*;

    const E: u64 = 1_796_032_800_000;
    /// A well-formed token (32 URL-safe base64 characters).
    const TOKEN: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    /// A cluster node with carol (connection 0) in room `r`, which has
    /// delivered `r`'s lines up to `E-5`.
    fn node() -> (Hub, Lines) {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            session_ttl_ms: 60_000,
            ..ChatConfig::default()
        });
        hub.enable_cluster("n2");
        let mut sink = Lines::default();
        let args = Connect {
            room: Some("r"),
            ..Connect::default()
        };
        hub.connect_with(0, &args, 0, &mut sink);
        live(&mut hub, 5, &mut sink);
        requests(&mut hub);
        sink.0.clear();
        (hub, sink)
    }

    fn live(hub: &mut Hub, seq: u64, sink: &mut Lines) -> bool {
        let id = MsgId { epoch: E, seq };
        hub.deliver_ordered("r", id, 7, &format!("MSG r dave m{seq}"), sink)
    }

    fn requests(hub: &mut Hub) -> Vec<Request> {
        let mut v = Vec::new();
        hub.take_requests(&mut v);
        v
    }

    fn take(sink: &mut Lines, id: ConnId) -> Vec<String> {
        sink.take(id)
    }

    fn entries(seqs: &[u64]) -> Vec<String> {
        seqs.iter()
            .map(|s| format!("{E}-{s} 7 MSG r dave m{s}"))
            .collect()
    }

    fn answer(hub: &mut Hub, last: u64, seqs: &[u64], sink: &mut Lines) {
        let e = entries(seqs);
        let refs: Vec<&[u8]> = e.iter().map(|s| s.as_bytes()).collect();
        hub.answer_catchup(1, "r", Some((E, last)), &refs, 8, sink);
    }

    /// Alice (connection 1) resumes a session that last saw `E-3` in `r`.
    fn resume(hub: &mut Hub, sink: &mut Lines) {
        let args = Connect {
            resume: Some(TOKEN),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, sink);
        assert!(take(sink, 1).is_empty(), "nothing before the record is in");
        let key = Token::parse(TOKEN).unwrap().redis_key();
        assert_eq!(
            requests(hub),
            [Request::TakeSession {
                id: 1,
                key: key.into()
            }]
        );
        let record = format!("alice 3 member - - r:{E}-3");
        let found = Fetched::Found {
            record: &record,
            nick_ours: true,
            from: None,
        };
        hub.session_taken(1, found, sink);
        let head = take(sink, 1);
        assert_eq!(head[..2], ["WELCOME alice", "CAPS ids,resume"]);
        assert!(head[2].starts_with("SESSION "), "{head:?}");
        assert_eq!(head.len(), 3, "{head:?}");
        assert_eq!(
            requests(hub),
            [
                Request::Renew {
                    nick: "alice".into(),
                    id: Some(1),
                    signed: false,
                },
                Request::Catchup {
                    id: 1,
                    room: "r".into()
                }
            ]
        );
    }

    fn msgs(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| match l.strip_prefix('@') {
                Some(t) => t.split_once(' ').unwrap().1.to_string(),
                None => l.clone(),
            })
            .collect()
    }

    #[test]
    fn lines_still_on_their_way_are_waited_for_not_doubled() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        // m6 arrives live while the history is read; Redis already has m7.
        assert!(live(&mut hub, 6, &mut sink));
        answer(&mut hub, 7, &[2, 3, 4, 5, 6, 7], &mut sink);
        assert!(take(&mut sink, 1).is_empty(), "m7 is still on its way here");
        assert!(live(&mut hub, 7, &mut sink));
        assert_eq!(take(&mut sink, 0).len(), 2, "carol: m6, m7");
        let got = take(&mut sink, 1);
        assert_eq!(got[0], "RESUMED r 4");
        assert_eq!(
            msgs(&got[1..]),
            [
                "MSG r dave m4",
                "MSG r dave m5",
                "MSG r dave m6",
                "MSG r dave m7"
            ]
        );
        assert!(got[1].starts_with(&format!("@id={E}-4;")), "{got:?}");
        // A member now: the next line once, a late copy never.
        assert!(live(&mut hub, 8, &mut sink));
        assert!(!live(&mut hub, 7, &mut sink));
        assert_eq!(msgs(&take(&mut sink, 1)), ["MSG r dave m8"]);
    }

    #[test]
    fn live_lines_past_the_snapshot_follow_it() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        for s in 6..=8 {
            assert!(live(&mut hub, s, &mut sink));
        }
        answer(&mut hub, 6, &[4, 5, 6], &mut sink);
        let got = take(&mut sink, 1);
        assert_eq!(got[0], "RESUMED r 5");
        let want: Vec<String> = (4..=8).map(|s| format!("MSG r dave m{s}")).collect();
        assert_eq!(msgs(&got[1..]), want);
    }

    #[test]
    fn a_gap_in_what_redis_kept_is_lost_not_papered_over() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        answer(&mut hub, 5, &[4], &mut sink);
        assert_eq!(take(&mut sink, 1), ["RESUMED r lost"]);
        assert!(live(&mut hub, 6, &mut sink));
        assert_eq!(msgs(&take(&mut sink, 1)), ["MSG r dave m6"]);
    }

    #[test]
    fn a_line_that_never_arrives_is_waited_for_a_bounded_time() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        answer(&mut hub, 6, &[4, 5, 6], &mut sink);
        assert!(take(&mut sink, 1).is_empty());
        let at = hub.poll_timeout().expect("a deadline");
        assert!(at <= 10 + CATCHUP_WAIT_MS, "{at}");
        hub.handle_timeout(at, &mut sink);
        let got = take(&mut sink, 1);
        assert_eq!(got[0], "RESUMED r 3", "{got:?}");
        // Its late copy still reaches the member who never had it (and the
        // resumed client a second time, with the same id).
        take(&mut sink, 0);
        assert!(live(&mut hub, 6, &mut sink));
        assert_eq!(msgs(&take(&mut sink, 0)), ["MSG r dave m6"]);
    }

    #[test]
    fn input_waits_for_the_catch_up_and_runs_after_it() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        hub.handle(1, "/ping x", 20, &mut sink);
        hub.handle(1, "said at once", 20, &mut sink);
        assert!(take(&mut sink, 1).is_empty());
        answer(&mut hub, 5, &[4, 5], &mut sink);
        let got = take(&mut sink, 1);
        assert_eq!(
            got[..3].join("|"),
            format!("RESUMED r 2|{}|{}", got[1], got[2])
        );
        assert_eq!(got[3], "PONG x");
        assert!(
            requests(&mut hub)
                .iter()
                .any(|r| matches!(r, Request::Say { line, .. } | Request::Room { line, .. } if &**line == "MSG r alice said at once")),
            "the held line was said"
        );
    }

    #[test]
    fn a_used_or_missing_session_is_refused_and_the_connect_goes_on() {
        for fetched in [Fetched::Used, Fetched::Missing, Fetched::Unreachable] {
            let (mut hub, mut sink) = node();
            let args = Connect {
                resume: Some(TOKEN),
                ..Connect::default()
            };
            hub.connect_with(1, &args, 10, &mut sink);
            requests(&mut hub);
            hub.session_taken(1, fetched, &mut sink);
            if fetched == Fetched::Missing {
                // Not stored yet, perhaps (the drop and the resume crossed):
                // Redis is asked once more before the answer is no.
                assert!(take(&mut sink, 1).is_empty());
                let at = hub.poll_timeout().expect("a retry");
                assert_eq!(at, 10 + RETAKE_MS);
                hub.handle_timeout(at, &mut sink);
                assert!(matches!(
                    requests(&mut hub)[..],
                    [Request::TakeSession { id: 1, .. }]
                ));
                hub.session_taken(1, fetched, &mut sink);
            }
            let got = take(&mut sink, 1);
            assert!(got[0].starts_with("WELCOME guest-"), "{got:?}");
            assert!(
                got.iter().any(|l| l.starts_with("ERR bad-session")),
                "{fetched:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_dropped_session_is_stored_and_ends_by_redis_word() {
        let (mut hub, mut sink) = node();
        let args = Connect {
            room: Some("r"),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, &mut sink);
        let nick = take(&mut sink, 1)[0]["WELCOME ".len()..].to_string();
        take(&mut sink, 0);
        requests(&mut hub);
        hub.disconnect(1, &mut sink);
        assert!(take(&mut sink, 0).is_empty(), "no LEFT while it may resume");
        let stored = requests(&mut hub);
        let Some(Request::StoreSession {
            key,
            record,
            ttl_ms,
            ..
        }) = stored.first()
        else {
            panic!("{stored:?}");
        };
        assert!(key.starts_with("lc:sess:") && key.len() == 8 + 64, "{key}");
        assert_eq!(**record, format!("{nick} 3 member - - r:{E}-5"));
        assert_eq!(*ttl_ms, 60_000);
        assert!(hub.held_nicks().any(|(n, _)| n == nick));
        // Time is up: Redis is asked first; a session another node took
        // ends without a word.
        hub.handle_timeout(60_010, &mut sink);
        assert_eq!(
            requests(&mut hub),
            [Request::EndSession { key: key.clone() }]
        );
        hub.session_ended(key, false, &mut sink);
        assert!(take(&mut sink, 0).is_empty());
        // No LEFT; the nick's registration here is forgotten (the release
        // only deletes a registration that is still this node's).
        let folded = nick.to_ascii_lowercase();
        assert_eq!(
            requests(&mut hub),
            [Request::Release {
                nick: folded.into()
            }]
        );
        assert!(!hub.holds_detached_nick(&nick));
    }

    #[test]
    fn an_expired_session_leaves_everywhere_and_frees_its_nick() {
        let (mut hub, mut sink) = node();
        let args = Connect {
            room: Some("r"),
            caps: Some(Caps::parse("resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, &mut sink);
        let nick = take(&mut sink, 1)[0]["WELCOME ".len()..].to_string();
        take(&mut sink, 0);
        hub.disconnect(1, &mut sink);
        let key = requests(&mut hub)
            .into_iter()
            .find_map(|r| match r {
                Request::StoreSession { key, .. } => Some(key),
                _ => None,
            })
            .expect("stored");
        hub.handle_timeout(60_010, &mut sink);
        requests(&mut hub);
        hub.session_ended(&key, true, &mut sink);
        assert_eq!(take(&mut sink, 0), [format!("LEFT r {nick}")]);
        let after = requests(&mut hub);
        assert!(after.contains(&Request::Room {
            room: "r".into(),
            line: format!("LEFT r {nick}").into()
        }));
        assert!(after.iter().any(|r| matches!(r, Request::Release { .. })));
    }

    // ---- review tests ----

    /// Alice resumes with a record whose nick the registry did not move here.
    fn resume_nick_not_ours(hub: &mut Hub, sink: &mut Lines) {
        let args = Connect {
            resume: Some(TOKEN),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, sink);
        requests(hub);
        let record = format!("alice 3 member - - r:{E}-3");
        let found = Fetched::Found {
            record: &record,
            nick_ours: false,
            from: None,
        };
        hub.session_taken(1, found, sink);
    }

    #[test]
    fn a_reserve_answer_during_the_catch_up_does_not_reconnect_the_user() {
        let (mut hub, mut sink) = node();
        resume_nick_not_ours(&mut hub, &mut sink);
        let reqs = requests(&mut hub);
        assert!(
            reqs.contains(&Request::Reserve {
                id: 1,
                nick: "alice".into()
            }),
            "{reqs:?}"
        );
        assert_eq!(take(&mut sink, 1)[0], "WELCOME alice");
        // Redis answers the Reserve (same command link, queued before the
        // history read) while the room still catches up.
        hub.nick_reserved(1, "alice", Claim::Granted, &mut sink);
        let got = take(&mut sink, 1);
        let after = requests(&mut hub);
        assert!(
            got.iter().all(|l| !l.starts_with("WELCOME")),
            "a second WELCOME: {got:?}"
        );
        assert!(
            !after
                .iter()
                .any(|r| matches!(r, Request::StoreSession { .. })),
            "the resumed session was dropped and stored again: {after:?}"
        );
        answer(&mut hub, 5, &[4, 5], &mut sink);
        assert_eq!(
            take(&mut sink, 1).first().map(String::as_str),
            Some("RESUMED r 2")
        );
    }

    #[test]
    fn a_drop_during_the_catch_up_keeps_the_rooms_of_the_session() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        // The network goes again before r's history is in.
        hub.disconnect(1, &mut sink);
        let reqs = requests(&mut hub);
        let record = reqs.iter().find_map(|r| match r {
            Request::StoreSession { record, .. } => Some(record.to_string()),
            _ => None,
        });
        let record = record.expect("the session is kept");
        assert!(
            record.contains(" r:"),
            "room r vanished from the session: {record:?}"
        );
    }

    #[test]
    fn a_timed_out_catch_up_costs_other_members_no_line() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        // Redis has m6, m7; they are late on their way here (> 2 s).
        answer(&mut hub, 7, &[4, 5, 6, 7], &mut sink);
        let at = hub.poll_timeout().expect("a deadline");
        hub.handle_timeout(at, &mut sink);
        take(&mut sink, 1);
        live(&mut hub, 6, &mut sink);
        live(&mut hub, 7, &mut sink);
        // Carol, a member all along, never had them.
        assert_eq!(
            msgs(&take(&mut sink, 0)),
            ["MSG r dave m6", "MSG r dave m7"]
        );
    }

    #[test]
    fn a_catch_up_costs_a_member_who_has_had_no_line_yet_nothing() {
        // Carol joined r here recently: nothing delivered in r yet.
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            session_ttl_ms: 60_000,
            ..ChatConfig::default()
        });
        hub.enable_cluster("n2");
        let mut sink = Lines::default();
        let args = Connect {
            room: Some("r"),
            ..Connect::default()
        };
        hub.connect_with(0, &args, 0, &mut sink);
        requests(&mut hub);
        sink.0.clear();
        resume(&mut hub, &mut sink);
        // The snapshot's reply overtakes m4..m6 on the pub/sub link.
        answer(&mut hub, 6, &[4, 5, 6], &mut sink);
        for s in 4..=6 {
            live(&mut hub, s, &mut sink);
        }
        assert_eq!(
            msgs(&take(&mut sink, 0)),
            ["MSG r dave m4", "MSG r dave m5", "MSG r dave m6"]
        );
    }

    #[test]
    fn a_record_naming_a_room_twice_is_refused() {
        let (mut hub, mut sink) = node();
        let args = Connect {
            resume: Some(TOKEN),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, &mut sink);
        requests(&mut hub);
        let record = format!("alice 3 member - - r:{E}-5 R:{E}-5");
        let found = Fetched::Found {
            record: &record,
            nick_ours: true,
            from: None,
        };
        hub.session_taken(1, found, &mut sink);
        // Nodes never write such a record: it is refused whole.
        let got = take(&mut sink, 1);
        assert!(
            got.iter().any(|l| l.starts_with("ERR bad-session")),
            "{got:?}"
        );
        assert_eq!(hub.room_len("r"), 1, "carol alone");
    }

    #[test]
    fn a_lost_catch_up_costs_other_members_no_line() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        // m4 was trimmed: r resumes lost. m6, m7 are on their way here.
        answer(&mut hub, 7, &[5, 6, 7], &mut sink);
        assert_eq!(take(&mut sink, 1), ["RESUMED r lost"]);
        live(&mut hub, 6, &mut sink);
        live(&mut hub, 7, &mut sink);
        assert_eq!(
            msgs(&take(&mut sink, 0)),
            ["MSG r dave m6", "MSG r dave m7"],
            "carol"
        );
    }

    #[test]
    fn one_waiting_catch_up_done_does_not_end_anothers_wait() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        // Bob (connection 2) resumes in r too.
        let args = Connect {
            resume: Some("BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"),
            ..Connect::default()
        };
        hub.connect_with(2, &args, 10, &mut sink);
        requests(&mut hub);
        let record = format!("bob 3 member - - r:{E}-5");
        hub.session_taken(
            2,
            Fetched::Found {
                record: &record,
                nick_ours: true,
                from: None,
            },
            &mut sink,
        );
        requests(&mut hub);
        take(&mut sink, 2);
        // Alice's snapshot reads up to m7, bob's (read a moment later) m9.
        answer(&mut hub, 7, &[4, 5, 6, 7], &mut sink);
        let e = entries(&[6, 7, 8, 9]);
        let refs: Vec<&[u8]> = e.iter().map(|s| s.as_bytes()).collect();
        hub.answer_catchup(2, "r", Some((E, 9)), &refs, 8, &mut sink);
        for s in 6..=9 {
            live(&mut hub, s, &mut sink);
        }
        assert_eq!(
            msgs(&take(&mut sink, 0)),
            [
                "MSG r dave m6",
                "MSG r dave m7",
                "MSG r dave m8",
                "MSG r dave m9"
            ],
            "carol"
        );
        let alice = msgs(&take(&mut sink, 1));
        assert_eq!(
            alice.iter().filter(|l| l.ends_with("m8")).count(),
            1,
            "{alice:?}"
        );
        assert_eq!(
            alice.iter().filter(|l| l.ends_with("m9")).count(),
            1,
            "{alice:?}"
        );
    }

    #[test]
    fn a_snapshot_that_never_comes_resumes_the_room_as_lost() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        let at = hub.poll_timeout().expect("a deadline");
        assert!(at <= 10 + CATCHUP_ASK_MS, "{at}");
        hub.handle_timeout(at, &mut sink);
        assert_eq!(take(&mut sink, 1), ["RESUMED r lost"]);
        // A late answer changes nothing; the client is a member.
        answer(&mut hub, 5, &[4, 5], &mut sink);
        assert!(take(&mut sink, 1).is_empty());
        assert!(live(&mut hub, 6, &mut sink));
        assert_eq!(msgs(&take(&mut sink, 1)), ["MSG r dave m6"]);
    }

    #[test]
    fn a_catch_up_that_would_hold_too_much_resumes_as_lost() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        for s in 6..(7 + MAX_CATCHUP_LINES as u64) {
            live(&mut hub, s, &mut sink);
        }
        take(&mut sink, 0);
        let last = 6 + MAX_CATCHUP_LINES as u64;
        let seqs: Vec<u64> = (4..=last).collect();
        answer(&mut hub, last, &seqs, &mut sink);
        assert_eq!(take(&mut sink, 1), ["RESUMED r lost"]);
        assert_eq!(hub.remote.as_deref().map(|r| r.catchup_bytes), Some(0));
    }

    // ---- second review ----

    /// Alice (connection 1, nick alice, caps resume) in `r`, dropped: her
    /// token, Redis key and stored record.
    fn drop_alice(hub: &mut Hub, sink: &mut Lines) -> (String, Box<str>, Box<str>) {
        let args = Connect {
            nick: Some("alice"),
            room: Some("r"),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, sink);
        requests(hub);
        hub.nick_reserved(1, "alice", Claim::Granted, sink);
        let got = take(sink, 1);
        let token = got
            .iter()
            .find_map(|l| l.strip_prefix("SESSION "))
            .and_then(|t| t.split(' ').next())
            .unwrap_or_else(|| panic!("a session: {got:?}"))
            .to_string();
        take(sink, 0);
        requests(hub);
        hub.disconnect(1, sink);
        let (key, record) = requests(hub)
            .into_iter()
            .find_map(|r| match r {
                Request::StoreSession { key, record, .. } => Some((key, record)),
                _ => None,
            })
            .expect("stored");
        (token, key, record)
    }

    #[test]
    fn a_resume_here_answered_while_the_copy_is_ending_keeps_the_nick() {
        let (mut hub, mut sink) = node();
        let (token, key, record) = drop_alice(&mut hub, &mut sink);
        // Alice resumes on this same node just before her time runs out:
        // the take goes to Redis first (its record is still there)...
        let args = Connect {
            resume: Some(&token),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(2, &args, 60_000, &mut sink);
        requests(&mut hub);
        // ...then the copy expires here (the end script queued behind the
        // take, which wins: Redis says the session was taken).
        hub.handle_timeout(60_010, &mut sink);
        assert_eq!(
            requests(&mut hub),
            [Request::EndSession { key: key.clone() }]
        );
        let found = Fetched::Found {
            record: &record,
            nick_ours: true,
            from: None,
        };
        hub.session_taken(2, found, &mut sink);
        hub.session_ended(&key, false, &mut sink);
        let got = take(&mut sink, 2);
        assert_eq!(
            got.first().map(String::as_str),
            Some("WELCOME alice"),
            "her own resumed session lost its nick: {got:?}"
        );
    }

    #[test]
    fn a_waiting_catch_up_that_overflows_says_lost_not_zero() {
        let (mut hub, mut sink) = node();
        resume(&mut hub, &mut sink);
        // Snapshot up to m7; m6, m7 still on their way: waiting.
        answer(&mut hub, 7, &[4, 5, 6, 7], &mut sink);
        assert!(take(&mut sink, 1).is_empty());
        // Other catch-ups (a resume storm) hold the whole budget.
        if let Some(r) = hub.remote.as_deref_mut() {
            r.catchup_bytes = MAX_ALL_CATCHUP_BYTES - 4;
        }
        // m6 and m7 never come here (this node's subscriber link blinked);
        // m9 does.
        assert!(live(&mut hub, 9, &mut sink));
        let got = take(&mut sink, 1);
        assert_eq!(
            got.first().map(String::as_str),
            Some("RESUMED r lost"),
            "m4..m7 (and m9) silently missing: {got:?}"
        );
    }

    #[test]
    fn a_quiet_room_does_not_replay_its_old_history_as_missed() {
        // Room q has 3 old lines in Redis (said yesterday); alice is the
        // first member of q on this node and nothing is said while she is in.
        let (mut hub, mut sink) = node();
        let args = Connect {
            nick: Some("alice"),
            room: Some("q"),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, &mut sink);
        requests(&mut hub);
        hub.nick_reserved(1, "alice", Claim::Granted, &mut sink);
        take(&mut sink, 1);
        requests(&mut hub);
        hub.disconnect(1, &mut sink);
        let record = requests(&mut hub)
            .into_iter()
            .find_map(|r| match r {
                Request::StoreSession { record, .. } => Some(record),
                _ => None,
            })
            .expect("stored");
        // She resumes on another node, which reads q's history.
        let mut other = Hub::new(ChatConfig {
            rate_limit: 0,
            session_ttl_ms: 60_000,
            ..ChatConfig::default()
        });
        other.enable_cluster("n3");
        let args = Connect {
            resume: Some(TOKEN),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        other.connect_with(1, &args, 10, &mut sink);
        requests(&mut other);
        let found = Fetched::Found {
            record: &record,
            nick_ours: true,
            from: None,
        };
        other.session_taken(1, found, &mut sink);
        take(&mut sink, 1);
        let old: Vec<String> = (1..=3u64)
            .map(|s| format!("{E}-{s} 7 MSG q dave old{s}"))
            .collect();
        let refs: Vec<&[u8]> = old.iter().map(|s| s.as_bytes()).collect();
        other.answer_catchup(1, "q", Some((E, 3)), &refs, 8, &mut sink);
        let got = take(&mut sink, 1);
        assert_ne!(
            got.first().map(String::as_str),
            Some("RESUMED q 3"),
            "record {record:?}: lines from before she joined replayed as missed: {got:?}"
        );
    }

    #[test]
    fn a_line_the_node_could_not_keep_does_not_hold_the_next_quit() {
        let (mut hub, mut sink) = node();
        hub.set_ordered(true);
        hub.handle(0, "hello", 20, &mut sink);
        assert!(
            requests(&mut hub)
                .iter()
                .any(|r| matches!(r, Request::Say { .. })),
            "said through Redis"
        );
        // The link went down with a full buffer: the node delivers the line
        // here unnumbered and tells carol (what `Cluster::turn` does for a
        // lost `Say`); no answer from Redis will ever come for it.
        hub.deliver_room("r", "MSG r carol hello", &mut sink);
        hub.said(0, "r", None, &mut sink);
        hub.not_relayed(0, &mut sink);
        take(&mut sink, 0);
        // Later (the link is back), carol quits: nothing of hers is in flight.
        hub.handle(0, "/quit bye", 5_000, &mut sink);
        assert_eq!(
            hub.room_len("r"),
            0,
            "carol's quit waits for a reply that never comes"
        );
    }

    #[test]
    fn a_resume_does_not_create_rooms_past_max_rooms_total() {
        let mut hub = Hub::new(ChatConfig {
            rate_limit: 0,
            session_ttl_ms: 60_000,
            max_rooms_total: 1,
            ..ChatConfig::default()
        });
        hub.enable_cluster("n2");
        let mut sink = Lines::default();
        let carol = Connect {
            room: Some("r"),
            ..Connect::default()
        };
        hub.connect_with(0, &carol, 0, &mut sink);
        requests(&mut hub);
        // A plain /join of a new room is refused at the cap...
        hub.handle(0, "/join t", 1, &mut sink);
        assert!(
            take(&mut sink, 0).iter().any(|l| l.starts_with("ERR ")),
            "the cap holds for /join"
        );
        assert_eq!(hub.room_index.len(), 1);
        // ...but a session dropped on another node, in rooms s1..s3, resumes
        // here and brings them all.
        let args = Connect {
            resume: Some(TOKEN),
            caps: Some(Caps::parse("ids,resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &args, 10, &mut sink);
        let record = format!("alice 3 member - - s1:{E}-3 s2:{E}-3 s3:{E}-3");
        hub.session_taken(
            1,
            Fetched::Found {
                record: &record,
                nick_ours: true,
                from: None,
            },
            &mut sink,
        );
        assert!(
            hub.room_index.len() <= 1,
            "--max-rooms-total 1, {} rooms after a resume",
            hub.room_index.len()
        );
    }

    #[test]
    fn a_dropped_sessions_pending_answers_do_not_reach_the_next_user_of_its_id() {
        let (mut hub, mut sink) = node();
        let alice = Connect {
            nick: Some("alice"),
            room: Some("r"),
            caps: Some(Caps::parse("resume")),
            ..Connect::default()
        };
        hub.connect_with(1, &alice, 10, &mut sink);
        hub.nick_reserved(1, "alice", Claim::Granted, &mut sink);
        hub.handle(1, "/nick alice2", 11, &mut sink);
        hub.handle(1, "/msg bob my secret", 11, &mut sink);
        let asked = requests(&mut hub);
        assert!(
            asked.contains(&Request::Reserve {
                id: 1,
                nick: "alice2".into()
            }),
            "{asked:?}"
        );
        // alice's network drops before Redis answers: her session is kept.
        hub.disconnect(1, &mut sink);
        assert_eq!(hub.detached_sessions(), 1);
        let after_drop = requests(&mut hub);
        // The server's slab hands id 1 to the next connection: mallory.
        let mallory = Connect {
            nick: Some("mallory"),
            room: Some("r"),
            ..Connect::default()
        };
        hub.connect_with(1, &mallory, 20, &mut sink);
        hub.nick_reserved(1, "mallory", Claim::Granted, &mut sink);
        take(&mut sink, 1);
        // Now Redis answers alice's questions, for connection 1, unless the
        // node was told connection 1 was gone (`Request::Gone`).
        let cancelled = after_drop.contains(&Request::Gone(1));
        if !cancelled {
            hub.nick_reserved(1, "alice2", Claim::Granted, &mut sink);
            hub.private_found(1, "alice", "bob", "my secret", &mut sink);
        }
        let got = take(&mut sink, 1);
        assert_eq!(hub.nick(1), Some("mallory"), "mallory renamed: {got:?}");
        assert!(
            got.iter().all(|l| !l.contains("my secret")),
            "alice's private message echoed to mallory: {got:?}"
        );
        assert!(cancelled, "no Gone(1) after the drop: {after_drop:?}");
    }
}
