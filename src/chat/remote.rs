//! What a hub that is one node of a cluster asks of the other nodes.
//!
//! The chat layer stays without I/O: with [`Hub::enable_cluster`] the hub
//! records [`Request`]s while it works (a line to publish, a nick to reserve,
//! a query to ask the other nodes) and the caller drains them with
//! [`Hub::take_requests`] and carries them out (the `cluster` layer turns them
//! into Redis commands). Answers come back through plain hub methods:
//! [`Hub::nick_reserved`], [`Hub::deliver_room`], [`Hub::deliver_nick`],
//! [`Hub::deliver_private`], [`Hub::answer_who`] and [`Hub::answer_rooms`].
//!
//! Every line in a request has already been delivered to this node's own
//! recipients: the cluster only carries it to the others.
//!
//! [`Hub::enable_cluster`]: super::Hub::enable_cluster
//! [`Hub::take_requests`]: super::Hub::take_requests
//! [`Hub::nick_reserved`]: super::Hub::nick_reserved
//! [`Hub::deliver_room`]: super::Hub::deliver_room
//! [`Hub::deliver_nick`]: super::Hub::deliver_nick
//! [`Hub::deliver_private`]: super::Hub::deliver_private
//! [`Hub::answer_who`]: super::Hub::answer_who
//! [`Hub::answer_rooms`]: super::Hub::answer_rooms

use super::ConnId;

/// One thing the hub needs from the rest of the cluster. Room names and
/// nicks marked "folded" are lowercase keys; others are display spellings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The first local member joined this room (folded): start receiving its lines.
    Subscribe(Box<str>),
    /// The last local member left this room (folded): stop receiving its lines.
    Unsubscribe(Box<str>),
    /// A `MSG`, `JOINED` or `LEFT` line of a room (folded), already delivered
    /// here: deliver it to the room's members on the other nodes.
    Room {
        /// Folded room name.
        room: Box<str>,
        /// The line, exactly as local members got it.
        line: Box<str>,
    },
    /// A `MSG` line of a room (folded), not delivered anywhere yet: Redis
    /// numbers it in the room's order and every node, this one included,
    /// delivers it with [`super::Hub::deliver_ordered`]. Made only while the
    /// cluster says it can order ([`super::Hub::set_ordered`]); otherwise a
    /// `MSG` goes as [`Request::Room`], delivered here at once.
    Say {
        /// Folded room name.
        room: Box<str>,
        /// The `MSG` line.
        line: Box<str>,
    },
    /// A `NICK OLD NEW` line, already delivered here: the other nodes deliver
    /// it once to each of their members of any of `rooms` (folded).
    Nick {
        /// The subject's rooms, folded.
        rooms: Vec<Box<str>>,
        /// The line.
        line: Box<str>,
    },
    /// Reserve `nick` for `id` across the cluster; answer with
    /// [`super::Hub::nick_reserved`]. Sent both for a pending `/nick` (the old
    /// nick stays until the answer) and for a nick the connection already
    /// uses (at connect, or after a refused guest nick): then a refusal
    /// renames it to a guest nick.
    Reserve {
        /// The connection.
        id: ConnId,
        /// The nick as requested (display spelling).
        nick: Box<str>,
    },
    /// This node no longer uses `nick` (folded): free it if it is ours.
    Release {
        /// Folded nick.
        nick: Box<str>,
    },
    /// `nick` (display) changed between a connection and a dropped session
    /// here: register it again now, marked away or not.
    Renew {
        /// The nick.
        nick: Box<str>,
        /// The connection now holding it, or `None` for a dropped session.
        id: Option<ConnId>,
        /// A token vouches for it.
        signed: bool,
    },
    /// `/msg` to a nick that is not on this node. When the nick is found,
    /// deliver `PRIV FROM TO TEXT` there and to `id`; when it is not,
    /// `ERR no-such-nick` to `id`.
    Private {
        /// The sender's connection.
        id: ConnId,
        /// The sender's nick.
        from: Box<str>,
        /// The recipient as typed.
        to: Box<str>,
        /// The text, CR and LF already replaced.
        text: Box<str>,
    },
    /// `/who ROOM` for the whole cluster; answer with [`super::Hub::answer_who`].
    Who {
        /// The asker.
        id: ConnId,
        /// The room (display spelling).
        room: Box<str>,
    },
    /// `/history` of a room (folded) whose history lives in Redis; answer
    /// with [`super::Hub::answer_history`].
    History {
        /// The asker.
        id: ConnId,
        /// Folded room name.
        room: Box<str>,
        /// `after ID` as the asker wrote it.
        after: Option<Box<str>>,
        /// At most this many lines (already cut to `--history`).
        limit: u32,
    },
    /// `/rooms` for the whole cluster; answer with [`super::Hub::answer_rooms`].
    Rooms {
        /// The asker.
        id: ConnId,
    },
    /// `/kick` of a nick that is not on this node: when another node is known
    /// to have `nick` in `room`, deliver `line` here with
    /// [`super::Hub::kick_confirmed`] and publish it to the room (the node
    /// that has the nick removes it); otherwise answer
    /// [`super::Hub::kick_not_found`].
    Kick {
        /// The moderator.
        id: ConnId,
        /// Folded room name.
        room: Box<str>,
        /// The kicked nick as typed.
        nick: Box<str>,
        /// `KICKED ROOM NICK BY [TEXT]`.
        line: Box<str>,
    },
    /// A session dropped here: keep its record (see `chat::hub::record`)
    /// under `key` for `ttl_ms`, so any node can resume it.
    StoreSession {
        /// `lc:sess:HASH` of the token.
        key: Box<str>,
        /// Folded nick (its registry key).
        nick: Box<str>,
        /// The written record.
        record: Box<str>,
        /// How long the session is kept, ms.
        ttl_ms: u64,
    },
    /// Take the session stored under `key` for `id` (single use: the record
    /// becomes a tombstone) and move its nick's registration to this node;
    /// answer with [`super::Hub::session_taken`].
    TakeSession {
        /// The connection resuming.
        id: ConnId,
        /// `lc:sess:HASH` of the token.
        key: Box<str>,
    },
    /// The session of token selector `selector` under `key`, dropped on node
    /// `from`, was resumed here: tell every node (`from` forgets its copy,
    /// the others file `nick`'s memberships in `rooms` under this node).
    Moved {
        /// The node it dropped from.
        from: Box<str>,
        /// The token's selector.
        selector: u64,
        /// `lc:sess:HASH` of the token.
        key: Box<str>,
        /// The nick (display).
        nick: Box<str>,
        /// Its rooms (display names).
        rooms: Vec<Box<str>>,
    },
    /// The session under `key` was resumed from this node's own memory
    /// (Redis had lost it): mark it used so no node takes it again.
    UseSession {
        /// `lc:sess:HASH` of the token.
        key: Box<str>,
    },
    /// A session dropped here ran out of time: end it in Redis unless another
    /// node took it meanwhile; answer with [`super::Hub::session_ended`].
    EndSession {
        /// `lc:sess:HASH` of the token.
        key: Box<str>,
    },
    /// A resumed connection `id` catches up in `room` (folded): once this
    /// node's subscription to the room is confirmed, read the room's history
    /// and answer with [`super::Hub::answer_catchup`].
    Catchup {
        /// The connection resuming.
        id: ConnId,
        /// Folded room name.
        room: Box<str>,
    },
    /// The connection left the hub: forget anything pending for it (its id
    /// will be reused).
    Gone(ConnId),
}

/// What Redis had for a [`Request::TakeSession`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched<'a> {
    /// The record, now used up. `nick_ours`: the nick's registration is now
    /// this node's (it was the dropping node's, or free).
    Found {
        /// The record, without the node's prefix.
        record: &'a str,
        /// The registry gave the nick to this node.
        nick_ours: bool,
        /// The node that stored it, when another one.
        from: Option<&'a str>,
    },
    /// No record: never stored, expired, or lost with a Redis restart.
    Missing,
    /// Already taken (resumed on some node).
    Used,
    /// Redis could not be asked.
    Unreachable,
}

/// The cluster's answer to a [`Request::Reserve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The registry gave the nick to this node.
    Granted,
    /// Another node holds the nick (or registered it earlier).
    Taken,
    /// Redis is down or the buffer toward it is full: nobody can confirm.
    Unreachable,
    /// No answer within `--redis-query-timeout`.
    TimedOut,
}
