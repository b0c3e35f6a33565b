//! Signed sessions in the hub: token holders' nicks, roles, room grants,
//! `/kick` bans and token expiry (PROTOCOL.md "Signed tokens"). The token
//! itself is verified by `crate::auth`; the hub receives a [`Grant`].
//!
//! Memory, since tens of thousands of signed users may be idle at once: the
//! role and the signed flag share one byte of the user entry's padding, and
//! the token's expiry lives in a min-heap of `(exp, id)` pairs (8 bytes per
//! signed user) instead of the entry. A refresh pushes a new pair and leaves
//! the old one in the heap; the user entry keeps the low 16 bits of its live
//! `exp`, and a popped pair whose bits differ is stale. That is exact because
//! every live `exp` lies within 65,535 s of now: the token checks refuse a
//! lifetime over 18 h and a leeway over 10 min (`crate::auth::token::MAX_TTL_LIMIT`,
//! `MAX_LEEWAY`), so a stale pair, which pops at or after its own `exp` plus
//! leeway, cannot share its low bits with the live `exp` of the same user (or
//! of a later user of the same id). Stale pairs are compacted away when they
//! outnumber the live ones.
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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use log::info;

use super::super::access::{room_allowed, Access, Grant, Role};
use super::super::names::Folded;
use super::super::remote::Request;
use super::super::{ConnId, ErrorCode, Sink};
use super::{push_text, send, Hub};

/// Who a new connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No token: a guest with this role (`member` for `--guests allow`,
    /// `viewer` for `--guests read-only`).
    Guest(Role),
    /// A verified token.
    Signed(Grant),
}

/// The hub's side tables for signed sessions.
#[derive(Debug, Default)]
pub struct AuthState {
    /// `(exp, id)` of signed users, earliest first; may hold stale pairs.
    expiries: BinaryHeap<Reverse<(u32, u32)>>,
    /// Signed users connected.
    signed: usize,
    /// Room patterns of signed users whose token limits rooms.
    rooms: HashMap<ConnId, Box<[Box<str>]>>,
    /// (folded room, folded nick) → `now_ms` until which rejoining is refused.
    bans: HashMap<(Box<str>, Box<str>), u64>,
    /// Ban count after the last prune; the next prune waits for it to double.
    bans_pruned: usize,
}

/// `exp` as stored in the heap: Unix seconds fit 32 bits until 2106.
fn exp32(exp: u64) -> u32 {
    exp.min(u64::from(u32::MAX)) as u32
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
        nick: Option<&str>,
        room: Option<&str>,
        now_ms: u64,
        sink: &mut impl Sink,
    ) {
        let grant = match who {
            Identity::Guest(role) => {
                self.connect_with(id, Access::guest(role), nick, room, now_ms, sink);
                return;
            }
            Identity::Signed(grant) => grant,
        };
        if self.user(id).is_some() {
            self.disconnect(id, sink);
        }
        self.claim_nick(id, &grant.nick, sink);
        if let Some(rooms) = grant.rooms.clone() {
            self.auth.rooms.insert(id, rooms);
        }
        self.auth.signed += 1;
        let access = Access::signed(grant.role);
        self.connect_with(id, access, Some(&grant.nick), room, now_ms, sink);
        self.track_expiry(id, grant.exp, false);
        info!("auth: {} signed in as {}", grant.nick, grant.role.as_str());
        self.signed_in_line(id, sink);
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
        if user.closing {
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
            self.auth.signed += 1;
        }
        match grant.rooms {
            Some(rooms) => {
                self.auth.rooms.insert(id, rooms);
            }
            None => {
                self.auth.rooms.remove(&id);
            }
        }
        if let Some(u) = self.users.get_mut(id).and_then(Option::as_mut) {
            u.access = Access::signed(grant.role);
        }
        // Rooms the new grant does not cover are left, newest first.
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
        self.track_expiry(id, grant.exp, was_signed);
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
        user.closing = true;
        self.err(id, ErrorCode::BadToken, text, sink);
        sink.close(id, 1008, "bad token");
    }

    /// The role of `id`, and whether a token vouches for its nick.
    pub fn access(&self, id: ConnId) -> Option<(Role, bool)> {
        self.user(id)
            .map(|u| (u.access.role(), u.access.is_signed()))
    }

    /// When [`Hub::expire`] next has work: the earliest `exp` plus leeway
    /// (Unix seconds), possibly of a stale entry (a harmless early wake-up).
    pub fn poll_expiry(&self) -> Option<u64> {
        self.auth
            .expiries
            .peek()
            .map(|Reverse((exp, _))| u64::from(*exp) + self.config.token_leeway)
    }

    /// End every signed session whose token expired by `now_s` (Unix seconds)
    /// without a refresh: `SYS token expired`, close 4001.
    pub fn expire(&mut self, now_s: u64, sink: &mut impl Sink) {
        let leeway = self.config.token_leeway;
        while let Some(&Reverse((exp, id))) = self.auth.expiries.peek() {
            if u64::from(exp) + leeway > now_s {
                break;
            }
            self.auth.expiries.pop();
            let id = id as ConnId;
            let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            if !user.access.is_signed() || user.exp_tag != exp as u16 || user.closing {
                continue;
            }
            user.closing = true;
            info!("auth: {} token expired", user.nick);
            self.out.clear();
            self.out.push_str("SYS token expired");
            send(sink, &mut self.deliveries, &[id], &self.out);
            sink.close(id, 4001, "token expired");
        }
    }

    /// Entries in the expiry queue, stale ones included (for tests).
    #[cfg(test)]
    pub(crate) fn auth_queue_len(&self) -> usize {
        self.auth.expiries.len()
    }

    fn signed_in_line(&mut self, id: ConnId, sink: &mut impl Sink) {
        let Some(user) = self.users.get(id).and_then(Option::as_ref) else {
            return;
        };
        self.out.clear();
        self.out.push_str("SYS signed in as ");
        self.out.push_str(&user.nick);
        self.out.push_str(", role ");
        self.out.push_str(user.access.role().as_str());
        send(sink, &mut self.deliveries, &[id], &self.out);
    }

    /// Queue `id`'s expiry; `refresh` when `id` was signed already, in which
    /// case the same `exp` again (the same token sent twice) queues nothing.
    fn track_expiry(&mut self, id: ConnId, exp: u64, refresh: bool) {
        let exp = exp32(exp);
        let Some(user) = self.users.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if refresh && user.exp_tag == exp as u16 {
            return;
        }
        user.exp_tag = exp as u16;
        let Ok(id32) = u32::try_from(id) else {
            return;
        };
        self.auth.expiries.push(Reverse((exp, id32)));
        if self.auth.expiries.len() > 2 * self.auth.signed + 64 {
            let users = &self.users;
            self.auth.expiries.retain(|Reverse((exp, id))| {
                users
                    .get(*id as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|u| u.access.is_signed() && u.exp_tag == *exp as u16)
            });
        }
    }

    /// Free `nick` for the token holder `id`: a signed holder is replaced,
    /// a guest holder renamed.
    fn claim_nick(&mut self, id: ConnId, nick: &str, sink: &mut impl Sink) {
        let Some(holder) = self.nick_owner(nick).filter(|&h| h != id) else {
            return;
        };
        let Some(user) = self.users.get_mut(holder).and_then(Option::as_mut) else {
            return;
        };
        if user.access.is_signed() {
            info!("auth: {nick} signed in elsewhere, replacing the older session");
            self.out.clear();
            self.out.push_str("SYS signed in elsewhere");
            send(sink, &mut self.deliveries, &[holder], &self.out);
            sink.close(holder, 4001, "signed in elsewhere");
            // Gone from the chat now, so the nick is free at once; the server's
            // later disconnect of `holder` finds nothing to do.
            self.disconnect(holder, sink);
        } else {
            info!("auth: guest using {nick} renamed for its token holder");
            let guest = self.guest_nick();
            self.apply_nick(holder, &guest, sink);
            self.out.clear();
            self.out.push_str("SYS nick ");
            push_text(&mut self.out, nick);
            self.out.push_str(" belongs to a signed user");
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
        self.out.push_str("KICKED ");
        self.out.push_str(&r.name);
        self.out.push(' ');
        self.out.push_str(&victim.nick);
        self.out.push(' ');
        self.out.push_str(&by.nick);
        if let Some(text) = text {
            self.out.push(' ');
            push_text(&mut self.out, text);
        }
        info!("auth: {} kicked {} from {}", by.nick, victim.nick, r.name);
        let key = (Folded::new(&r.name), Folded::new(&victim.nick));
        send(sink, &mut self.deliveries, &r.members, &self.out);
        self.publish_room(rid);
        if let (Some(room_key), Some(nick_key)) = key {
            if self.config.kick_ban_ms > 0 {
                let bans = &mut self.auth.bans;
                if bans.len() >= 2 * self.auth.bans_pruned + 64 {
                    bans.retain(|_, until| *until > now_ms);
                    self.auth.bans_pruned = bans.len();
                }
                bans.insert(
                    (room_key.as_str().into(), nick_key.as_str().into()),
                    now_ms + self.config.kick_ban_ms,
                );
            }
        }
        self.leave(target, idx, sink);
    }

    /// The hub forgets `id`: its room grant, and its count as a signed user.
    pub(super) fn forget_grant(&mut self, id: ConnId, access: Access) {
        self.auth.rooms.remove(&id);
        if access.is_signed() {
            self.auth.signed = self.auth.signed.saturating_sub(1);
        }
    }
}
