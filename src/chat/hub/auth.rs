//! Signed sessions in the hub: token holders' nicks, roles, room grants,
//! `/kick` bans and token expiry (PROTOCOL.md "Signed tokens"). The token
//! itself is verified by `crate::auth`; the hub receives a [`Grant`].
//!
//! Memory, since tens of thousands of signed users may be idle at once: a
//! signed session costs no byte more than a guest. The role and the signed
//! flag share one byte of the user entry's padding, and the token's `exp` is
//! kept as its low 16 bits in the rest of it. The full `exp` is rebuilt from
//! those bits and the clock ([`full_exp`]): every live `exp` lies in a window
//! of 65,536 s around now, because the token checks refuse a lifetime over
//! 18 h and a leeway over 10 min (`crate::auth::token::MAX_TTL_LIMIT`,
//! `MAX_LEEWAY`). The hub keeps no expiry queue: the server files each signed
//! connection in its timer wheel under [`Hub::token_deadline`] and calls
//! [`Hub::expire_if_due`] when it fires.
//!
//! Choices where PROTOCOL.md is silent:
//! - a token holder arriving while a guest uses its nick wins: the guest is
//!   renamed to a guest nick (`NICK`) and told why (`SYS`);
//! - a signed nick cannot be changed with `/nick` (`ERR forbidden`);
//! - viewers may not `/msg` either: a private message is speaking;
//! - `/kick` sends `KICKED ROOM NICK BY [TEXT]` to the room, then the usual
//!   `LEFT`, so clients that track members by `JOINED`/`LEFT` stay right; the
//!   ban is by nick, which for a token holder is its identity (a guest can
//!   dodge it by changing nick, which is why `--guests read-only` exists);
//! - with a `rooms` claim, a connection that asked for no room (or a refused
//!   one) joins the default room if allowed, else the claim's first pattern
//!   without `*`, else no room;
//! - `/auth` with a token for another nick is refused like a bad token.
//! - a signed session with `resume` is kept when its connection drops, like
//!   a guest's, but no longer than its token is valid (`exp` plus the
//!   leeway); resuming it gives back the nick, role, `rooms` claim and
//!   expiry (the session token alone proves it, also under `--guests deny`).
//!   A new connection with a valid token for the held nick replaces the held
//!   session (its rooms see `LEFT`), so a held nick never locks its holder
//!   out. A session resumed together with `?token=`, or by a guest who then
//!   signs in, takes the token's nick, role and expiry.

use std::collections::HashMap;

use log::info;

use super::super::access::{room_allowed, Access, Grant, Role};
use super::super::line::Line;
use super::super::names::Folded;
use super::super::remote::{Claim, Request};
use super::super::session::Taken;
use super::super::{ConnId, ErrorCode, Sink};
use super::resume::DETACHED;
use super::{send, Connect, Hub};

/// Who a new connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No token: a guest with this role (`member` for `--guests allow`,
    /// `viewer` for `--guests read-only`).
    Guest(Role),
    /// A verified token.
    Signed(Grant),
}

/// The hub's side tables for signed sessions (only for what some sessions
/// have: a `rooms` claim, a kick ban).
#[derive(Debug, Default)]
pub struct AuthState {
    /// Room patterns of signed users whose token limits rooms.
    rooms: HashMap<ConnId, Box<[Box<str>]>>,
    /// Clustered connections held for their nick: who they are, applied when
    /// the cluster answers (`Hub::apply_held_identity`).
    held: HashMap<ConnId, Identity>,
    /// (folded room, folded nick) → `now_ms` until which rejoining is refused.
    bans: HashMap<(Box<str>, Box<str>), u64>,
    /// Ban count after the last prune; the next prune waits for it to double.
    bans_pruned: usize,
}

/// How far back from now a live `exp` may lie: the longest leeway plus 135 s
/// for a late timer. With the longest lifetime ahead (64,800 s) the window is
/// exactly 65,536 s wide, so 16 bits name one `exp` in it.
const EXP_WINDOW_BACK: u64 = 735;

/// The one `exp` in `[now - EXP_WINDOW_BACK, now - EXP_WINDOW_BACK + 65535]`
/// whose low 16 bits are `tag`.
pub fn full_exp(tag: u16, now: u64) -> u64 {
    let lo = now.saturating_sub(EXP_WINDOW_BACK);
    let candidate = (lo & !0xFFFF) | u64::from(tag);
    if candidate < lo {
        candidate + 0x1_0000
    } else {
        candidate
    }
}

impl Hub {
    /// A new connection with an identity; see [`Hub::connect`] for the lines.
    /// A signed connection gets the token's nick (a signed holder of it is
    /// replaced: `SYS signed in elsewhere` and close 4001; a guest holder is
    /// renamed), its role, its rooms, and after `JOINED` a
    /// `SYS signed in as NICK, role ROLE` line.
    pub fn connect_as(
        &mut self,
        id: ConnId,
        who: Identity,
        args: &Connect<'_>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        self.auth.held.remove(&id);
        let grant = match who {
            Identity::Guest(role) => {
                self.connect_with(id, args, now_ms, sink);
                if self.is_held(id) {
                    self.auth.held.insert(id, Identity::Guest(role));
                }
                // A resumed signed session keeps its identity: its session
                // token proves it.
                if self.user(id).is_some_and(|u| u.access.is_signed()) {
                    if let Some(u) = self.user(id) {
                        info!("auth: {} resumed as {}", u.nick, u.access.role().as_str());
                    }
                    self.signed_in_line(id, sink);
                } else {
                    self.set_access(id, Access::guest(role));
                }
                return;
            }
            Identity::Signed(grant) => grant,
        };
        if self.user(id).is_some() {
            self.disconnect(id, sink);
        }
        // Resuming its own session (held, or still on a half-open
        // connection): the nick comes back with it.
        let own = Folded::new(&grant.nick).is_some_and(|f| {
            args.resume
                .is_some_and(|t| self.session_nick_is(t, f.as_str(), now_ms))
        });
        if !own {
            self.claim_nick(id, &grant.nick, sink);
        }
        if let Some(rooms) = grant.rooms.clone() {
            self.auth.rooms.insert(id, rooms);
        }
        let args = Connect {
            nick: Some(&grant.nick),
            ..*args
        };
        self.connect_with(id, &args, now_ms, sink);
        if self.is_held(id) {
            // Clustered: the nick waits for the registry; the rest follows
            // the answer (`apply_held_identity`).
            self.auth.held.insert(id, Identity::Signed(grant));
            return;
        }
        // A resumed session brings its own claim back: the token's wins.
        match grant.rooms {
            Some(rooms) => self.auth_rooms_insert(id, rooms),
            None => {
                self.auth.rooms.remove(&id);
            }
        }
        // A resumed session comes back under its own nick: the token's wins.
        if self.user(id).is_some_and(|u| *u.nick != *grant.nick) {
            self.claim_nick(id, &grant.nick, sink);
            self.apply_nick(id, &grant.nick, sink);
        }
        self.set_access(id, Access::signed(grant.role));
        self.leave_disallowed(id, sink);
        self.set_exp(id, grant.exp);
        info!("auth: {} signed in as {}", grant.nick, grant.role.as_str());
        self.signed_in_line(id, sink);
    }

    /// The cluster answered `claim` for held connection `id`, now connected:
    /// apply its role and token. A token whose nick another node holds ends
    /// the connection (`ERR nick-taken`, close 4001: its nick is its
    /// identity). When the registry could not answer (Redis down, timeout),
    /// the signature is proof enough: the holder is renamed to its nick here,
    /// and the reservation is asked again for when the registry is back.
    pub(super) fn apply_held_identity(&mut self, id: ConnId, claim: Claim, sink: &mut impl Sink) {
        let Some(who) = self.auth.held.remove(&id) else {
            return;
        };
        match who {
            Identity::Guest(role) => self.set_access(id, Access::guest(role)),
            Identity::Signed(grant) => {
                let renamed = self.user(id).is_some_and(|u| *u.nick != *grant.nick);
                if renamed && claim != Claim::Taken {
                    info!(
                        "auth: {} keeps its nick without the registry (signed)",
                        grant.nick
                    );
                    self.claim_nick(id, &grant.nick, sink);
                    self.apply_nick(id, &grant.nick, sink);
                    self.request(|| Request::Reserve {
                        id,
                        nick: grant.nick.as_str().into(),
                    });
                } else if renamed {
                    info!("auth: {} refused: signed in on another node", grant.nick);
                    if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
                        u.access.set_closing();
                    }
                    self.err(id, ErrorCode::NickTaken, "signed in on another node", sink);
                    sink.close(id, 4001, "signed in on another node");
                    return;
                }
                self.set_access(id, Access::signed(grant.role));
                self.leave_disallowed(id, sink);
                self.set_exp(id, grant.exp);
                info!("auth: {} signed in as {}", grant.nick, grant.role.as_str());
                self.signed_in_line(id, sink);
            }
        }
    }

    fn set_access(&mut self, id: ConnId, to: Access) {
        if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
            u.access.become_(to);
        }
    }

    /// Leave the rooms `id`'s grant does not cover, newest first.
    fn leave_disallowed(&mut self, id: ConnId, sink: &mut impl Sink) {
        if !self.auth.rooms.contains_key(&id) {
            return;
        }
        let mut k = self.user(id).map_or(0, |u| u.rooms.len());
        while k > 0 {
            k -= 1;
            let name = self
                .user(id)
                .and_then(|u| u.rooms.get(k))
                .and_then(|m| self.room(m.room))
                .map(|r| r.name.clone());
            if let Some(name) = name {
                if !self.grant_allows(id, &name) {
                    self.leave(id, k, sink);
                }
            }
        }
    }

    /// `/auth TOKEN` from a connected user, after the server verified it: a
    /// guest becomes the token's holder (renamed to its nick), a holder of the
    /// same nick gets the new expiry, role and rooms; rooms the new grant does
    /// not allow are left. A token for another nick is refused (`ERR
    /// bad-token`, close 1008).
    pub fn sign_in(&mut self, id: ConnId, grant: Grant, sink: &mut impl Sink) {
        let Some(user) = self.user(id) else {
            return;
        };
        if user.access.closing() {
            return;
        }
        let was_signed = user.access.is_signed();
        if was_signed && *user.nick != *grant.nick {
            info!(
                "auth: {} refused a token for {}: another nick",
                user.nick, grant.nick
            );
            self.refuse_token(id, "token is for another nick", sink);
            return;
        }
        if !was_signed {
            self.claim_nick(id, &grant.nick, sink);
            self.apply_nick(id, &grant.nick, sink);
            self.request(|| Request::Reserve {
                id,
                nick: grant.nick.as_str().into(),
            });
        }
        match grant.rooms {
            Some(rooms) => {
                self.auth.rooms.insert(id, rooms);
            }
            None => {
                self.auth.rooms.remove(&id);
            }
        }
        self.set_access(id, Access::signed(grant.role));
        self.leave_disallowed(id, sink);
        self.set_exp(id, grant.exp);
        info!(
            "auth: {} {} as {}",
            grant.nick,
            if was_signed { "refreshed" } else { "signed in" },
            grant.role.as_str()
        );
        self.signed_in_line(id, sink);
    }

    /// `ERR bad-token TEXT` and close 1008; later lines are ignored.
    pub fn refuse_token(&mut self, id: ConnId, text: &str, sink: &mut impl Sink) {
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        user.access.set_closing();
        self.err(id, ErrorCode::BadToken, text, sink);
        sink.close(id, 1008, "bad token");
    }

    /// The role of `id`, and whether a token vouches for its nick.
    pub fn access(&self, id: ConnId) -> Option<(Role, bool)> {
        self.user(id)
            .map(|u| (u.access.role(), u.access.is_signed()))
    }

    /// When `id`'s session ends unless refreshed: its token's `exp` plus the
    /// leeway, in Unix seconds (`now_s` is needed to rebuild `exp`). `None`
    /// for a guest, an unknown id, or a session already closing.
    pub fn token_deadline(&self, id: ConnId, now_s: u64) -> Option<u64> {
        let user = self.user(id)?;
        if !user.access.is_signed() || user.access.closing() {
            return None;
        }
        Some(full_exp(user.exp_tag, now_s) + self.config.token_leeway)
    }

    /// End `id`'s signed session if its token expired by `now_s` without a
    /// refresh: `SYS token expired`, close 4001. True when it did.
    pub fn expire_if_due(&mut self, id: ConnId, now_s: u64, sink: &mut impl Sink) -> bool {
        if !self.token_deadline(id, now_s).is_some_and(|at| at <= now_s) {
            return false;
        }
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return false;
        };
        user.access.set_closing();
        info!("auth: {} token expired", user.nick);
        self.out.clear();
        Line::Sys("token expired").write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
        sink.close(id, 4001, "token expired");
        true
    }

    fn signed_in_line(&mut self, id: ConnId, sink: &mut impl Sink) {
        let Some(user) = self.users.get(id).and_then(Option::as_ref) else {
            return;
        };
        self.fields.clear();
        self.fields.push_str("signed in as ");
        self.fields.push_str(&user.nick);
        self.fields.push_str(", role ");
        self.fields.push_str(user.access.role().as_str());
        self.out.clear();
        Line::Sys(&self.fields).write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    fn set_exp(&mut self, id: ConnId, exp: u64) {
        if let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) {
            user.exp_tag = exp as u16;
        }
    }

    /// Free `nick` for the token holder `id`: a signed holder is replaced,
    /// a guest holder renamed.
    fn claim_nick(&mut self, id: ConnId, nick: &str, sink: &mut impl Sink) {
        if let Some(f) = Folded::new(nick) {
            if self.nick_holder(f.as_str()) == Some(DETACHED) {
                let held = self.sessions.remove_detached(|d| d.nick_is(f.as_str()));
                if let Some(data) = held {
                    info!(
                        "auth: {nick} signed in while a dropped session held the nick: {} session ended",
                        if data.is_signed() { "its" } else { "a guest's" }
                    );
                    self.end_detached(data, sink);
                }
            }
        }
        let Some(holder) = self.nick_owner(nick).filter(|&h| h != id) else {
            return;
        };
        let Some(user) = self.users.get_mut(holder).and_then(Option::as_mut) else {
            return;
        };
        if user.access.is_signed() {
            self.signed_in_elsewhere(holder, sink);
        } else {
            info!("auth: guest using {nick} renamed for its token holder");
            let guest = self.guest_nick();
            self.apply_nick(holder, &guest, sink);
            self.fields.clear();
            self.fields.push_str("nick ");
            self.fields.push_str(nick);
            self.fields.push_str(" belongs to a signed user");
            self.out.clear();
            Line::Sys(&self.fields).write_str(&mut self.out, None);
            send(sink, &mut self.deliveries, &[holder], &self.out);
        }
    }

    fn grant_allows(&self, id: ConnId, room: &str) -> bool {
        self.auth
            .rooms
            .get(&id)
            .map_or(true, |patterns| room_allowed(patterns, room))
    }

    /// Why `id` may not join `room` now, if it may not: its token's rooms, or
    /// a kick ban.
    pub(super) fn join_refusal(&self, id: ConnId, room: &str, now_ms: u64) -> Option<&'static str> {
        if !self.grant_allows(id, room) {
            return Some("your token does not allow that room");
        }
        if !self.auth.bans.is_empty() {
            let (Some(r), Some(n)) = (
                Folded::new(room),
                self.user(id).and_then(|u| Folded::new(&u.nick)),
            ) else {
                return None;
            };
            let key = (Box::<str>::from(r.as_str()), Box::<str>::from(n.as_str()));
            if self
                .auth
                .bans
                .get(&key)
                .is_some_and(|&until| until > now_ms)
            {
                return Some("you were kicked from that room, try later");
            }
        }
        None
    }

    /// For a user whose token limits rooms: join the first allowed pattern
    /// without `*`. False when none could be joined (or there is no limit).
    pub(super) fn join_first_allowed(
        &mut self,
        id: ConnId,
        now_ms: u64,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(patterns) = self.auth.rooms.get(&id) else {
            return false;
        };
        let literal: Vec<Box<str>> = patterns
            .iter()
            .filter(|p| !p.contains('*'))
            .cloned()
            .collect();
        for room in literal {
            if self.join_refusal(id, &room, now_ms).is_none()
                && self.join(id, &room, true, sink).is_ok()
            {
                return true;
            }
        }
        false
    }

    /// Why `cmd` is forbidden to `id`, if it is.
    pub(super) fn refusal(
        &self,
        id: ConnId,
        cmd: &super::super::Command<'_>,
        now_ms: u64,
    ) -> Option<&'static str> {
        use super::super::Command;
        let access = self.user(id)?.access;
        match *cmd {
            Command::Say(_) | Command::SayTo { .. } | Command::Msg { .. }
                if access.role() == Role::Viewer =>
            {
                Some("viewers may read but not speak")
            }
            Command::Nick(_) if access.is_signed() => Some("a signed nick cannot change"),
            Command::Kick { .. } if access.role() != Role::Mod => Some("only moderators may kick"),
            Command::Join(room) => {
                let member = self
                    .room_id(room)
                    .is_some_and(|rid| self.membership_index(id, rid).is_some());
                if member {
                    None
                } else {
                    self.join_refusal(id, room, now_ms)
                }
            }
            _ => None,
        }
    }

    /// `/kick ROOM NICK [TEXT]` by a moderator (checked by `refusal`).
    pub(super) fn kick(
        &mut self,
        id: ConnId,
        room: &str,
        nick: &str,
        text: Option<&str>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let Some(rid) = self.room_id(room) else {
            self.err(id, ErrorCode::NotInRoom, "no such room", sink);
            return;
        };
        let Some(target) = self.nick_owner(nick) else {
            // Clustered: the node that has NICK in ROOM removes it.
            let by = self.user(id).map(|u| u.nick.clone());
            let room_name = self.room(rid).map(|r| r.name.clone());
            if let (true, Some(by), Some(room_name), Some(key)) =
                (self.is_clustered(), by, room_name, Folded::new(room))
            {
                self.out.clear();
                Line::Kicked {
                    room: &room_name,
                    nick,
                    by: &by,
                    text: text.unwrap_or(""),
                }
                .write_str(&mut self.out, None);
                let line: Box<str> = self.out.as_str().into();
                self.request(|| Request::Kick {
                    id,
                    room: key.as_str().into(),
                    nick: nick.into(),
                    line,
                });
                return;
            }
            self.err(id, ErrorCode::NoSuchNick, "no such nick here", sink);
            return;
        };
        let Some(idx) = self.membership_index(target, rid) else {
            self.err(
                id,
                ErrorCode::NotInRoom,
                "that nick is not in that room",
                sink,
            );
            return;
        };
        let users = &self.users;
        let (Some(by), Some(victim), Some(r)) = (
            users.get(id).and_then(Option::as_ref),
            users.get(target).and_then(Option::as_ref),
            self.rooms.get(rid as usize).and_then(Option::as_ref),
        ) else {
            return;
        };
        self.out.clear();
        Line::Kicked {
            room: &r.name,
            nick: &victim.nick,
            by: &by.nick,
            text: text.unwrap_or(""),
        }
        .write_str(&mut self.out, None);
        info!("auth: {} kicked {} from {}", by.nick, victim.nick, r.name);
        let key = (Folded::new(&r.name), Folded::new(&victim.nick));
        send(sink, &mut self.deliveries, &r.members, &self.out);
        self.publish_room(rid);
        if let (Some(room_key), Some(nick_key)) = key {
            self.ban(room_key.as_str(), nick_key.as_str(), now_ms);
        }
        self.leave(target, idx, sink);
    }

    /// `nick` (folded) may not rejoin `room` (folded) for `--kick-ban`.
    fn ban(&mut self, room: &str, nick: &str, now_ms: u64) {
        if self.config.kick_ban_ms == 0 {
            return;
        }
        let bans = &mut self.auth.bans;
        if bans.len() >= 2 * self.auth.bans_pruned + 64 {
            bans.retain(|_, until| *until > now_ms);
            self.auth.bans_pruned = bans.len();
        }
        bans.insert((room.into(), nick.into()), now_ms + self.config.kick_ban_ms);
    }

    /// Another node is known to have the nick a local moderator kicked from
    /// `room` (folded): `line` (`KICKED ...`) to the local members, and the
    /// ban here too. The node publishes `line` to the room.
    pub fn kick_confirmed(&mut self, room: &str, line: &str, sink: &mut impl Sink) {
        self.deliver_room(room, line, sink);
        self.kicked_here(room, line, sink);
    }

    /// No node is known to have that nick in that room (this node learns
    /// other nodes' members from their room lines and `/who` answers).
    pub fn kick_not_found(&mut self, id: ConnId, sink: &mut impl Sink) {
        self.err(
            id,
            ErrorCode::NoSuchNick,
            "that nick is in that room on no node this one knows of (/who ROOM, then again)",
            sink,
        );
    }

    /// A `KICKED ROOM NICK BY [TEXT]` line for `room` (folded), already
    /// delivered here: NICK is banned from the room on this node too, and
    /// removed from it when it is a member here (its `LEFT` goes to the
    /// room on every node).
    pub(super) fn kicked_here(&mut self, room: &str, line: &str, sink: &mut impl Sink) {
        let Some(nick) = line.split(' ').nth(2) else {
            return;
        };
        let Some(nick_key) = Folded::new(nick) else {
            return;
        };
        let now_ms = self.now_ms;
        self.ban(room, nick_key.as_str(), now_ms);
        let Some(rid) = self.room_id(room) else {
            return;
        };
        let Some(target) = self.nick_owner(nick) else {
            return;
        };
        if let Some(idx) = self.membership_index(target, rid) {
            info!("auth: {nick} kicked from {room} by a moderator on another node");
            self.leave(target, idx, sink);
        }
    }

    /// The hub forgets `id`'s room grant.
    pub(super) fn forget_grant(&mut self, id: ConnId) {
        self.auth.rooms.remove(&id);
    }

    /// `id`'s room grant, taken out (a session being held).
    pub(super) fn auth_rooms_take(&mut self, id: ConnId) -> Option<Box<[Box<str>]>> {
        self.auth.rooms.remove(&id)
    }

    /// Forget the identity held for `id` (a resumed token holder keeps its
    /// session's).
    pub(super) fn forget_held_identity(&mut self, id: ConnId) {
        self.auth.held.remove(&id);
    }

    /// Give `id` a room grant (a resumed session's).
    pub(super) fn auth_rooms_insert(&mut self, id: ConnId, rooms: Box<[Box<str>]>) {
        self.auth.rooms.insert(id, rooms);
    }

    /// True when a token vouches for `id`'s nick, or will once the cluster
    /// grants it (a signed connection held for its nick): its registration
    /// beats an unsigned one.
    pub fn claims_signed(&self, id: ConnId) -> bool {
        self.user(id).is_some_and(|u| u.access.is_signed())
            || matches!(self.auth.held.get(&id), Some(Identity::Signed(_)))
    }

    /// A newer sign-in for `id`'s nick elsewhere (this node or another):
    /// `SYS signed in elsewhere`, close 4001, and `id` leaves the chat now,
    /// not held for resume.
    pub(super) fn signed_in_elsewhere(&mut self, id: ConnId, sink: &mut impl Sink) {
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        info!(
            "auth: {} signed in elsewhere, replacing the older session",
            user.nick
        );
        user.access.set_closing();
        self.out.clear();
        Line::Sys("signed in elsewhere").write_str(&mut self.out, None);
        send(sink, &mut self.deliveries, &[id], &self.out);
        sink.close(id, 4001, "signed in elsewhere");
        // Gone from the chat now, so the nick is free at once; the server's
        // later disconnect of `id` finds nothing to do.
        self.sessions.end(id);
        self.disconnect(id, sink);
    }

    /// True when `token` names a held session of a token holder: enough to
    /// admit a resume where guests are denied (the session token proves
    /// the identity).
    pub fn resumes_signed(&self, token: &str, now_ms: u64) -> bool {
        match self.sessions.peek(token, now_ms) {
            Some(Taken::Detached(d)) => d.is_signed(),
            // Its connection is still open (a half-open one after a network
            // change): the resume takes it over.
            Some(Taken::Live(conn)) => self.user(conn).is_some_and(|u| u.access.is_signed()),
            None => false,
        }
    }

    /// True when `token` names a session (held or live) whose nick is `folded`.
    fn session_nick_is(&self, token: &str, folded: &str, now_ms: u64) -> bool {
        match self.sessions.peek(token, now_ms) {
            Some(Taken::Detached(d)) => d.nick_is(folded),
            Some(Taken::Live(conn)) => self
                .user(conn)
                .and_then(|u| Folded::new(&u.nick))
                .is_some_and(|f| f.as_str() == folded),
            None => false,
        }
    }
}
