//! The chat of PROTOCOL.md without sockets or frames.
//!
//! The [`Hub`] turns one inbound command line into deliveries ("this line to
//! these connection ids") through a [`Sink`]; the server encodes each line once
//! and appends it to every recipient's outbox. Nothing here reads a clock: the
//! caller passes `now_ms`, so tests drive time explicitly.
//!
//! Submodules:
//! - [`command`]: the line parser (a line → a borrowed [`Command`]);
//! - [`names`]: nick and room validation and case folding;
//! - [`rate`]: the per-connection token bucket;
//! - [`line`](mod@line): the server→client lines, typed (write and parse);
//! - [`history`]: message ids, times and the per-room history ring;
//! - [`session`]: resumable sessions and their secret tokens;
//! - [`hub`]: users, rooms, membership and the output lines;
//! - [`remote`]: what a hub that is one node of a cluster asks of the others.

pub mod access;
pub mod command;
pub mod compact;
pub mod history;
pub mod hub;
pub mod line;
pub mod names;
pub mod rate;
pub mod remote;
pub mod session;

pub use access::{Grant, Role};
pub use command::{Command, ParseError};
pub use hub::Hub;
pub use rate::{RateDecision, RateLimiter};

/// The server's slab key of a connection. Dense and reused after a disconnect,
/// so the hub indexes users by it directly and must forget an id on
/// [`Hub::disconnect`] before the server hands it out again.
pub type ConnId = usize;

/// Tunables of the chat layer. Use [`ChatConfig::default`] and override fields.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// In a room with more than this many members, `JOINED`/`LEFT` go only to
    /// the subject: presence notices would otherwise cost O(members) each.
    pub presence_limit: usize,
    /// `/who` lists at most this many nicks, then `+N`.
    pub who_limit: usize,
    /// Commands per second per connection, with a burst of the same size;
    /// 0 turns rate limiting off.
    pub rate_limit: u32,
    /// Bytes of one command line; a longer line gets `ERR too-long`.
    pub max_line: usize,
    /// `/rooms` lists at most this many rooms, then `+N`, so the answer stays
    /// bounded however many rooms exist.
    pub rooms_limit: usize,
    /// Rooms one connection may be in at once; more gets `ERR bad-room`. Keeps
    /// per-connection memory and membership lookups bounded.
    pub max_rooms: usize,
    /// Rooms that may exist at once; a `/join` that would create one more gets
    /// `ERR bad-room` (the default room is exempt).
    pub max_rooms_total: usize,
    /// Rate-limit tokens a `/rooms` or `/who` takes (at most one burst): they
    /// answer with up to `rooms_limit` / `who_limit` entries, so a client
    /// asking in a loop must not cost as much as one sending short lines.
    pub query_cost: u32,
    /// The room a connection joins when it asks for none (or a bad one).
    pub default_room: String,
    /// How long a user removed by `/kick` may not rejoin that room, in ms.
    pub kick_ban_ms: u64,
    /// Seconds a token is still honoured after its `exp` (clock skew); at most
    /// 600, which the 16-bit `exp` kept per user relies on (see `hub/auth.rs`).
    pub token_leeway: u64,
    /// Messages kept per room and for how long (`--history`, `--history-ttl`).
    pub history: history::HistoryConfig,
    /// How long a dropped `resume` session keeps its nick and rooms
    /// (`--session-ttl`); 0 turns the `resume` capability off.
    pub session_ttl_ms: u64,
    /// Dropped sessions kept at once (`--max-sessions`); a drop beyond it ends
    /// the session as a v1 disconnect would.
    pub max_sessions: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            presence_limit: 100,
            who_limit: 500,
            rate_limit: 50,
            max_line: 4096,
            rooms_limit: 500,
            max_rooms: 32,
            max_rooms_total: 100_000,
            query_cost: 10,
            default_room: "lobby".to_string(),
            kick_ban_ms: 5 * 60 * 1000,
            token_leeway: 30,
            history: history::HistoryConfig::default(),
            session_ttl_ms: 120_000,
            max_sessions: 100_000,
        }
    }
}

/// Where the hub's output goes. The server encodes each line once per
/// transport and appends it to every recipient's outbox.
pub trait Sink {
    /// Deliver one server→client line (no trailing newline) to each connection in `to`.
    fn deliver(&mut self, to: &[ConnId], line: &str);
    /// Close `id` once its queued output is flushed: 1000 for /quit, 1008 for
    /// sustained rate abuse, 4001 for a signed session that ended (replaced by
    /// a newer sign-in, or its token expired).
    fn close(&mut self, id: ConnId, code: u16, reason: &str);
}

/// The `CODE` of an `ERR CODE TEXT` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Unknown command or wrong arguments.
    BadCommand,
    /// A nick outside 1–32 of `[A-Za-z0-9_.-]`.
    BadNick,
    /// The nick belongs to another connection (compared case-insensitively).
    NickTaken,
    /// Clustered: the cluster's nick registry could not confirm the nick
    /// (Redis down, or no answer within `--redis-query-timeout`).
    NickUnavailable,
    /// A room name outside 1–64 of `[A-Za-z0-9_.-]`.
    BadRoom,
    /// The command needs a room the connection is not in.
    NotInRoom,
    /// `/msg` to a nick nobody has.
    NoSuchNick,
    /// The line is longer than [`ChatConfig::max_line`].
    TooLong,
    /// Over the per-connection rate; the command was not executed.
    RateLimited,
    /// The server is at `--max-connections`; sent before the close.
    ServerFull,
    /// `/resume` or `?resume=` with an unknown, expired or used token.
    BadSession,
    /// A signed token that does not verify.
    BadToken,
    /// The connection's role does not allow the action.
    Forbidden,
    /// `/history` while the server keeps none (`--history 0`, or a cluster).
    HistoryOff,
}

impl ErrorCode {
    /// The wire spelling of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadCommand => "bad-command",
            ErrorCode::BadNick => "bad-nick",
            ErrorCode::NickTaken => "nick-taken",
            ErrorCode::NickUnavailable => "nick-unavailable",
            ErrorCode::BadRoom => "bad-room",
            ErrorCode::NotInRoom => "not-in-room",
            ErrorCode::NoSuchNick => "no-such-nick",
            ErrorCode::TooLong => "too-long",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::ServerFull => "server-full",
            ErrorCode::BadSession => "bad-session",
            ErrorCode::BadToken => "bad-token",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::HistoryOff => "history-off",
        }
    }

    /// Every code, in the order of PROTOCOL.md.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadCommand,
        ErrorCode::BadNick,
        ErrorCode::NickTaken,
        ErrorCode::BadRoom,
        ErrorCode::NotInRoom,
        ErrorCode::NoSuchNick,
        ErrorCode::TooLong,
        ErrorCode::RateLimited,
        ErrorCode::ServerFull,
        ErrorCode::NickUnavailable,
        ErrorCode::BadSession,
        ErrorCode::BadToken,
        ErrorCode::Forbidden,
        ErrorCode::HistoryOff,
    ];

    /// The code with wire spelling `s` (case-sensitive, as sent).
    pub fn from_wire(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sink that records every delivery as (recipient, line), for unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Lines(pub(crate) Vec<(ConnId, String)>);

#[cfg(test)]
impl Lines {
    /// The lines `id` received since the last call, in order.
    pub(crate) fn take(&mut self, id: ConnId) -> Vec<String> {
        let mut out = Vec::new();
        self.0.retain(|(to, l)| {
            if *to == id {
                out.push(l.clone());
                false
            } else {
                true
            }
        });
        out
    }
}

#[cfg(test)]
impl Sink for Lines {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        self.0.extend(to.iter().map(|&id| (id, line.to_string())));
    }
    fn close(&mut self, _: ConnId, _: u16, _: &str) {}
}

#[cfg(test)]
mod tests;
