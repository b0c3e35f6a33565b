//! The hub as one node of a cluster: the requests it records and the methods
//! that bring the other nodes' answers and lines back in (see
//! [`crate::chat::remote`]).

use std::collections::HashMap;
use std::fmt::Write as _;

use super::super::names::{cmp_folded, Folded};
use super::super::remote::Request;
use super::super::{ConnId, ErrorCode, Sink};
use super::{push_text, send, Hub, RoomId};

/// Nick changes one connection may have waiting for the cluster at once.
const MAX_PENDING_NICKS: usize = 4;

/// Cluster-only hub state; boxed so a single-process hub pays one pointer.
#[derive(Debug, Default)]
pub struct RemoteState {
    requests: Vec<Request>,
    /// `/nick` changes waiting for the cluster's answer: id → requested nicks,
    /// oldest first (at most [`MAX_PENDING_NICKS`]).
    pending: HashMap<ConnId, Vec<Box<str>>>,
    /// Part of guest nicks, so that nodes do not hand out the same ones.
    tag: Box<str>,
}

impl RemoteState {
    pub(super) fn push(&mut self, r: Request) {
        self.requests.push(r);
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
    /// - a pending `/nick`: granted → the change happens (`NICK OLD NEW`);
    ///   refused → `ERR nick-taken`, the old nick stays;
    /// - the nick `id` already uses: granted → nothing to do; refused →
    ///   `ERR nick-taken` and a rename to a guest nick.
    pub fn nick_reserved(
        &mut self,
        id: ConnId,
        nick: &str,
        granted: bool,
        sink: &mut impl Sink,
    ) -> bool {
        let Some(key) = Folded::new(nick) else {
            return false;
        };
        let is_key = |p: &str| Folded::new(p).is_some_and(|k| k.as_str() == key.as_str());
        let wanted = self.remote.as_deref_mut().and_then(|r| {
            let waiting = r.pending.get_mut(&id)?;
            let i = waiting.iter().position(|p| is_key(p))?;
            let w = waiting.remove(i);
            if waiting.is_empty() {
                r.pending.remove(&id);
            }
            Some(w)
        });
        if wanted.is_some() {
            if !granted {
                self.err(id, ErrorCode::NickTaken, "nick taken", sink);
                return false;
            }
            if matches!(self.nick_holder(key.as_str()), Some(owner) if owner != id) {
                self.err(id, ErrorCode::NickTaken, "nick taken", sink);
                return false;
            }
            if let Some(wanted) = wanted {
                self.apply_nick(id, &wanted, sink);
            }
            return self.nick_owner(nick) == Some(id);
        }
        let current = self
            .user(id)
            .and_then(|u| Folded::new(&u.nick))
            .is_some_and(|k| k.as_str() == key.as_str());
        if !current {
            return false;
        }
        if granted {
            return true;
        }
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

    /// A room line from another node: to this node's members of `room`.
    pub fn deliver_room(&mut self, room: &str, line: &str, sink: &mut impl Sink) {
        let Some(rid) = self.room_id(room) else {
            return;
        };
        if let Some(room) = self.rooms.get(rid as usize).and_then(Option::as_ref) {
            send(sink, &mut self.deliveries, &room.members, line);
        }
    }

    /// A `NICK` line from another node: once to each local member of any of `rooms`.
    pub fn deliver_nick(&mut self, rooms: &[&str], line: &str, sink: &mut impl Sink) {
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
        match self.nick_owner(to) {
            Some(id) => {
                send(sink, &mut self.deliveries, &[id], line);
                true
            }
            None => false,
        }
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
        out.push_str("WHO ");
        let (local, local_total) = self.local_who(room);
        let name = self
            .room_id(room)
            .and_then(|rid| self.room(rid))
            .map_or(room, |r| &*r.name);
        out.push_str(name);
        let mut shown = 0;
        for nick in local
            .iter()
            .copied()
            .chain(others.iter().map(String::as_str))
        {
            if shown == limit {
                break;
            }
            out.push(' ');
            out.push_str(nick);
            shown += 1;
        }
        let total = local_total.saturating_add(others_total.max(others.len()));
        if total > shown {
            let _ = write!(out, " +{}", total - shown);
        }
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
        out.push_str("ROOMS");
        for (name, n) in &list[..limit] {
            let _ = write!(out, " {name}={n}");
        }
        if list.len() > limit {
            let _ = write!(out, " +{}", list.len() - limit);
        }
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

    #[test]
    fn local_lines_are_published_once_and_rooms_subscribed() {
        let mut hub = hub();
        let mut sink = Lines::default();
        hub.connect(0, Some("alice"), Some("dev"), 0, &mut sink);
        let r = requests(&mut hub);
        assert_eq!(
            r,
            vec![
                Request::Reserve {
                    id: 0,
                    nick: "alice".into()
                },
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
        hub.connect(0, Some("alice"), Some("dev"), 0, &mut sink);
        requests(&mut hub);
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
        assert!(!hub.nick_reserved(0, "bob", false, &mut sink));
        assert_eq!(sink.0, vec![(0, "ERR nick-taken nick taken".to_string())]);
        assert_eq!(hub.nick(0), Some("alice"));
        sink.0.clear();
        hub.handle(0, "/nick bob", 0, &mut sink);
        requests(&mut hub);
        assert!(hub.nick_reserved(0, "bob", true, &mut sink));
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
        hub.connect(0, Some("alice"), None, 0, &mut sink);
        requests(&mut hub);
        sink.0.clear();
        assert!(!hub.nick_reserved(0, "alice", false, &mut sink));
        let guest = hub.nick(0).unwrap().to_string();
        assert!(guest.starts_with("guest-ab12-"), "{guest}");
        assert_eq!(sink.0[1].1, format!("NICK alice {guest}"));
        hub.check_invariants();
    }

    #[test]
    fn remote_lines_and_answers() {
        let mut hub = hub();
        let mut sink = Lines::default();
        hub.connect(0, Some("a"), Some("x"), 0, &mut sink);
        hub.connect(1, Some("b"), Some("x"), 0, &mut sink);
        hub.handle(1, "/join y", 0, &mut sink);
        sink.0.clear();
        hub.deliver_room("X", "MSG x z hi", &mut sink);
        assert_eq!(sink.0.len(), 2);
        sink.0.clear();
        hub.deliver_nick(&["x", "y"], "NICK z w", &mut sink);
        assert_eq!(sink.0.len(), 2, "once each: {:?}", sink.0);
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
