//! `loopchat client URL`: a terminal chat client that reads lines from stdin,
//! sends each as a text message, and prints every line that arrives. It works in
//! a pipe as well as a terminal, reconnects with exponential backoff and jitter,
//! and comes back where it was. It speaks the `ws` client role (masked frames).
//!
//! Unless the URL names its own `caps=`, it asks for `ids,resume`: it prints
//! each room's recent history when it joins, prints server times, and after
//! a dropped connection resumes its session with the id of the last message
//! it saw per room, so the missed lines come once and in order. When the
//! server cannot resume (`ERR bad-session`, or no `resume` in its `CAPS`)
//! it rejoins as a v1 client does; the rooms' history then
//! fills the gap where it still can. A message id it has printed is never
//! printed again. Server lines are read with [`crate::chat::line`].
//!
//! In a terminal it reads with `rustyline`, so arriving lines are printed above
//! the prompt instead of splicing into what is being typed; in a pipe it reads
//! plain lines. Whatever it prints is made safe for a terminal first (control
//! characters, escape sequences and line separators are shown as escapes).

use std::borrow::Cow;
use std::io::{self, BufRead, ErrorKind, IsTerminal, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver as Chan, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::chat::line::{split_tags, Count, Line};
use crate::chat::ErrorCode;
use crate::ws::deflate::{Inflater, CLIENT_OFFER};
use crate::ws::endpoint::Endpoint;
use crate::ws::frame::{encode_frame, OpCode, Role};
use crate::ws::handshake::{generate_key, parse_response_ext, write_client_request_ext, Status};
use crate::ws::message::{Limits, Message};

const SOCK: Token = Token(0);
const STDIN: Token = Token(1);
const MAX_HEAD: usize = 16 * 1024;

/// Flags of `loopchat client`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Server URL, e.g. ws://127.0.0.1:9000/ws?nick=alice&room=dev
    pub url: String,

    /// First reconnect delay; doubles each failed attempt.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = crate::cli::parse_duration)]
    pub reconnect_base: Duration,

    /// Longest reconnect delay.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::cli::parse_duration)]
    pub reconnect_max: Duration,

    /// Give up after this many failed attempts in a row (0 = never give up).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_attempts: u32,

    /// Do not reconnect at all: exit when the connection ends.
    #[arg(long)]
    pub no_reconnect: bool,

    /// Largest message accepted from the server, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_message: usize,

    /// Offer permessage-deflate: the server's lines may then arrive compressed
    /// (what the client sends stays plain, which RFC 7692 allows).
    #[arg(long)]
    pub compression: bool,

    /// Sign in with this token (`?token=` on the URL) on a server with `--auth-key`.
    #[arg(
        long,
        value_name = "JWT",
        env = "LOOPCHAT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Prefix printed lines with the time (`HH:MM:SS`, local): the server's
    /// `time=` tag when the line has one (the tag block is then not printed),
    /// else the time it arrived. `auto`: when stdout is a terminal.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = Times::Auto)]
    pub time: Times,

    /// Longest wait between retries of the wanted nick while the server has
    /// given a guest nick instead (the first retry comes after about 1 s).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::cli::parse_duration)]
    pub nick_retry_max: Duration,
}

/// When `loopchat client` prefixes lines with the time.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// When stdout is a terminal.
    Auto,
    /// Always (tag blocks are stripped).
    Always,
    /// Never: lines are printed as they came (still escaped).
    Never,
}

/// A parsed `ws://host:port/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `host:port` as written (for the Host header).
    pub authority: String,
    /// Host without port.
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path (starting with `/`) without the query.
    pub path: String,
    /// Query without `?` (may be empty).
    pub query: String,
}

impl WsUrl {
    /// Parse a `ws://` URL; `wss://` is refused (no TLS here: put a proxy in front).
    pub fn parse(url: &str) -> Result<WsUrl, String> {
        let rest = if let Some(r) = url.strip_prefix("ws://") {
            r
        } else if url.starts_with("wss://") {
            return Err(
                "wss:// needs TLS, which loopchat does not speak: use ws:// (or a TLS proxy)"
                    .into(),
            );
        } else {
            return Err(format!("`{url}` is not a ws:// URL"));
        };
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            },
        };
        if authority.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| format!("bad IPv6 host in `{url}`"))?;
            let port = match &v6[end + 1..] {
                "" => 80,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad port in `{url}`"))?,
            };
            (v6[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("bad port in `{url}`"))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        let target = if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_string()
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target, String::new()),
        };
        Ok(WsUrl {
            authority: authority.to_string(),
            host,
            port,
            path,
            query,
        })
    }

    /// Path and query with `nick` and `room` replaced (used to rejoin after a reconnect).
    #[cfg(test)]
    fn target_with(&self, nick: Option<&str>, room: Option<&str>) -> String {
        self.target_v2(nick, room, &[])
    }

    /// Path and query with `nick` and `room` replaced and `extra` parameters
    /// (`key=value`, already URL-safe) added, replacing those of the same key.
    fn target_v2(&self, nick: Option<&str>, room: Option<&str>, extra: &[(&str, &str)]) -> String {
        let mut params: Vec<String> = self
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("");
                !(nick.is_some() && key == "nick"
                    || room.is_some() && key == "room"
                    || extra.iter().any(|(k, _)| *k == key))
            })
            .map(str::to_owned)
            .collect();
        if let Some(n) = nick {
            params.push(format!("nick={n}"));
        }
        if let Some(r) = room {
            params.push(format!("room={r}"));
        }
        for (k, v) in extra {
            params.push(format!("{k}={v}"));
        }
        if params.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, params.join("&"))
        }
    }
}

/// What the client remembers about its chat session, to restore it after a
/// reconnect, and the nick its user asked for.
///
/// A guest nick the server forces on us (the wanted nick was taken, e.g. by our
/// own previous connection that the server has not noticed is gone yet) is
/// temporary: `wanted` keeps the user's choice, and `/nick WANTED` is retried
/// with backoff until the server grants it. Only a rename the user got to a
/// non-guest nick changes `wanted`.
#[derive(Debug)]
struct Session {
    /// The nick the server says we have now.
    nick: Option<String>,
    /// The nick the user asked for (URL or a granted `/nick`); never a guest nick.
    wanted: Option<String>,
    /// Rooms in join order; the last is the current room.
    rooms: Vec<String>,
    /// Automatic retries of `wanted` in a row, and when the next one is due.
    retries: u32,
    retry_at: Option<Instant>,
    /// An automatic `/nick` is out: its `ERR nick-taken` answer is not printed.
    retry_out: bool,
    retry_base: Duration,
    retry_max: Duration,
    /// The v2 state: capabilities, the resume token and where we are in each room.
    v2: Resume,
}

/// How many message ids the client remembers to print nothing twice.
const SEEN_IDS: usize = 4096;

/// What the client keeps to resume its session after a reconnect (the `ids`
/// and `resume` capabilities of PROTOCOL.md) and to print each message once.
#[derive(Debug, Default)]
struct Resume {
    /// The client put `caps=` into the URL itself: `CAPS` and `SESSION` are
    /// its business (not printed) and tag blocks are not printed either.
    own_caps: bool,
    /// The server's last `CAPS` included `ids` / `resume`.
    ids: bool,
    resume: bool,
    /// The secret of the session (single-use; a new one comes with each resume).
    /// Kept in memory only: it is never printed nor written anywhere.
    token: Option<String>,
    /// The id of the last message seen per room (room names as the server
    /// wrote them, compared case-insensitively).
    last: Vec<(String, String)>,
    /// A resume was asked for at connect and not yet answered.
    resuming: bool,
    /// Automatic `/history` requests whose answer is not in yet.
    history_out: u32,
    /// Ids already printed, oldest first, at most [`SEEN_IDS`].
    seen: std::collections::VecDeque<String>,
    seen_set: std::collections::HashSet<String>,
    /// Lines to send on behalf of the session (rejoins, `/history`).
    outgoing: Vec<String>,
    /// Things to tell the user about the session (stderr, or above the prompt).
    notes: Vec<String>,
}

impl Resume {
    /// Record `id` as printed; false when it was printed before.
    fn first_sight(&mut self, id: &str) -> bool {
        if self.seen_set.contains(id) {
            return false;
        }
        if self.seen.len() >= SEEN_IDS {
            if let Some(old) = self.seen.pop_front() {
                self.seen_set.remove(&old);
            }
        }
        self.seen.push_back(id.to_string());
        self.seen_set.insert(id.to_string());
        true
    }

    fn set_last(&mut self, room: &str, id: &str) {
        match self
            .last
            .iter_mut()
            .find(|(r, _)| r.eq_ignore_ascii_case(room))
        {
            Some(slot) => id.clone_into(&mut slot.1),
            None => self.last.push((room.to_string(), id.to_string())),
        }
    }

    /// `ROOM:ID,ROOM:ID` for `?since=`, for `rooms` in order.
    fn since(&self, rooms: &[String]) -> String {
        let mut out = String::new();
        for room in rooms {
            if let Some((_, id)) = self.last.iter().find(|(r, _)| r.eq_ignore_ascii_case(room)) {
                if !out.is_empty() {
                    out.push(',');
                }
                out.push_str(room);
                out.push(':');
                out.push_str(id);
            }
        }
        out
    }
}

/// Guest nicks are the server's (`guest-N`, `guest-TAG-N` in a cluster); users
/// cannot choose them, so holding one means the server picked it.
fn is_guest(nick: &str) -> bool {
    nick.len() > 6
        && nick
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("guest-"))
}

impl Session {
    fn new(wanted: Option<String>, retry_max: Duration) -> Session {
        Session {
            nick: None,
            wanted: wanted.filter(|n| !n.is_empty() && !is_guest(n)),
            rooms: Vec::new(),
            retries: 0,
            retry_at: None,
            retry_out: false,
            retry_base: Duration::from_secs(1),
            retry_max: retry_max.max(Duration::from_millis(1)),
            v2: Resume::default(),
        }
    }

    /// Follow the server's lines that change who we are and where we are;
    /// false for a line not worth printing (the refusal of an automatic retry,
    /// a message already printed, the client's own `CAPS`/`SESSION`, the
    /// answer to a resume that failed).
    fn observe(&mut self, raw: &str, now: Instant) -> bool {
        // A line that is not of the protocol is printed, and changes nothing.
        let Ok((tags, line)) = Line::parse(raw) else {
            return true;
        };
        if !matches!(
            line,
            Line::Welcome { .. } | Line::Caps(_) | Line::Session(_)
        ) && !matches!(
            line,
            Line::Err {
                code: ErrorCode::BadSession,
                ..
            }
        ) {
            // Anything else after WELCOME means the resume was taken.
            self.v2.resuming = false;
        }
        match line {
            Line::Welcome { nick } => {
                self.nick = Some(nick.to_string());
                self.retry_out = false;
                self.check_nick(now);
            }
            Line::Nick { old, new } if self.is_me(old) => {
                self.nick = Some(new.to_string());
                if !is_guest(new) {
                    self.wanted = Some(new.to_string());
                }
                self.retry_out = false;
                self.check_nick(now);
            }
            // nick-unavailable: a cluster whose registry could not confirm it.
            Line::Err {
                code: ErrorCode::NickTaken | ErrorCode::NickUnavailable,
                ..
            } if self.retry_out => {
                self.retry_out = false;
                self.check_nick(now);
                return false;
            }
            Line::Err {
                code: ErrorCode::BadNick,
                ..
            } if self.retry_out || self.retries > 0 => {
                // The wanted nick can never be granted: stop asking.
                self.wanted = None;
                self.retry_out = false;
                self.check_nick(now);
            }
            Line::Err {
                code: ErrorCode::BadSession,
                text,
            } if self.v2.resuming => {
                // The session is gone (expired, or the server restarted): the
                // server made this a new connection in the URL's room; join the
                // others as a v1 client would, the current room last, and ask
                // each room's history for what was said meanwhile.
                self.v2.resuming = false;
                self.v2.token = None;
                self.v2.notes.push(format!(
                    "the session could not be resumed ({text}): rejoining"
                ));
                let rooms = std::mem::take(&mut self.rooms);
                for room in rooms.iter().skip(1) {
                    self.v2.outgoing.push(format!("/join {room}"));
                }
                return false;
            }
            Line::Err {
                code: ErrorCode::HistoryOff,
                ..
            } if self.v2.history_out > 0 => {
                self.v2.history_out -= 1;
                return false;
            }
            Line::Joined { room, nick } if self.is_me(nick) => {
                self.rooms.retain(|r| !r.eq_ignore_ascii_case(room));
                self.rooms.push(room.to_string());
                if self.v2.ids {
                    self.v2.history_out += 1;
                    self.v2.outgoing.push(format!("/history {room}"));
                }
            }
            Line::Left { room, nick } if self.is_me(nick) => {
                self.rooms.retain(|r| !r.eq_ignore_ascii_case(room));
                self.v2.last.retain(|(r, _)| !r.eq_ignore_ascii_case(room));
            }
            Line::Caps(list) => {
                self.v2.ids = list.split(',').any(|c| c == "ids");
                self.v2.resume = list.split(',').any(|c| c == "resume");
                if !self.v2.resume {
                    self.v2.token = None;
                }
                return !self.v2.own_caps;
            }
            Line::Session(token) => {
                self.v2.token = Some(token.to_string());
                return !self.v2.own_caps;
            }
            Line::History { .. } => {
                self.v2.history_out = self.v2.history_out.saturating_sub(1);
            }
            // The gap is longer than the history: print what is left of it
            // (what was printed before is not printed again).
            Line::Resumed {
                room,
                count: Count::Lost,
            } => {
                self.v2.history_out += 1;
                self.v2.outgoing.push(format!("/history {room}"));
            }
            Line::Msg { room, .. } => {
                if let Some(id) = tags.id {
                    let fresh = self.v2.first_sight(id);
                    // Blocks and live lines come in the room's order: the
                    // last one read is the newest seen.
                    self.v2.set_last(room, id);
                    return fresh;
                }
            }
            _ => {}
        }
        true
    }

    /// Schedule the next retry while we wear a guest nick instead of the wanted one.
    fn check_nick(&mut self, now: Instant) {
        let forced = match (&self.nick, &self.wanted) {
            (Some(n), Some(w)) => is_guest(n) && !n.eq_ignore_ascii_case(w),
            _ => false,
        };
        if forced {
            self.retries = self.retries.saturating_add(1);
            let wait = backoff(self.retry_base, self.retry_max, self.retries, random_u64());
            self.retry_at = Some(now + wait);
        } else {
            self.retries = 0;
            self.retry_at = None;
        }
    }

    /// The `/nick` line to send now, if a retry is due.
    fn due_retry(&mut self, now: Instant) -> Option<String> {
        match (self.retry_at, &self.wanted) {
            (Some(at), Some(w)) if now >= at && !self.retry_out => {
                self.retry_at = None;
                self.retry_out = true;
                Some(format!("/nick {w}"))
            }
            _ => None,
        }
    }

    /// The nick to ask for when connecting again.
    fn connect_nick(&self) -> Option<&str> {
        self.wanted.as_deref().or(self.nick.as_deref())
    }

    fn is_me(&self, nick: &str) -> bool {
        self.nick
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(nick))
    }
}

/// `HH:MM:SS` of Unix time `secs` in the local time zone (UTC if unknown).
fn clock(secs: i64) -> String {
    if let Some((h, m, s)) = crate::sys::local_time_of_day(secs) {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        let s = secs.rem_euclid(86_400);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a terminal would act on instead of showing: C0 and C1 controls and DEL
/// (so every escape sequence starts with one), the Unicode line and paragraph
/// separators, and the bidirectional overrides and isolates that reorder text.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `line` with every character a terminal would interpret shown as an escape
/// (`\x1b`, `\u{2028}`), so a message cannot move the cursor, retitle the
/// window or hide text. Borrowed when there is nothing to escape.
pub fn escape_for_terminal(line: &str) -> Cow<'_, str> {
    if !line.chars().any(needs_escape) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if !needs_escape(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// The text to print for an arriving line: escaped, and with the time in front
/// (from its `time=` tag, whose block is then dropped, else `now`) when `times`.
pub fn render_line(line: &str, times: bool, now_unix: i64) -> String {
    if !times {
        return escape_for_terminal(line).into_owned();
    }
    let (secs, body) = match split_tags(line) {
        Ok((tags, body)) => (tags.time_ms.map_or(now_unix, |ms| (ms / 1000) as i64), body),
        // Not a tag block of the protocol: shown as it came.
        Err(_) => (now_unix, line),
    };
    format!("{} {}", clock(secs), escape_for_terminal(body))
}

pub use crate::rng::backoff;

fn random_u64() -> u64 {
    crate::rng::with_thread_rng(|r| r.next_u64())
}

enum Phase {
    /// Connected, upgrade request sent, waiting for the response head.
    Handshake { key: String, head: Vec<u8> },
    /// Exchanging messages.
    Open,
    /// We sent a close (stdin ended); waiting for the server's.
    Closing(Instant),
}

/// Why a connection ended.
enum End {
    /// Stdin is done and the close handshake finished (or timed out): exit 0.
    Done,
    /// Lost; try again unless told not to.
    Lost(String),
    /// The connection never got an answer (refused, unreachable); retried like `Lost`.
    Unreachable(String),
    /// Refused in a way retrying cannot fix (e.g. 403): exit 1.
    Fatal(String),
}

/// Run the client; returns the process exit code.
pub fn run(args: ClientArgs) -> ExitCode {
    let parsed = WsUrl::parse(&args.url).map(|mut u| {
        if let Some(t) = args.token.as_deref().filter(|t| !t.is_empty()) {
            // A reconnect sends it again: the server ties the nick to the token.
            if !u.query.is_empty() {
                u.query.push('&');
            }
            u.query.push_str("token=");
            u.query.push_str(t);
        }
        u
    });
    let url = match parsed {
        Ok(u) => u,
        Err(e) => {
            eprintln!("loopchat client: {e}");
            return ExitCode::from(2);
        }
    };
    match Client::new(args, url).and_then(|c| c.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loopchat client: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where printed lines go: straight to stdout, or through the line editor so
/// they appear above the prompt and what is being typed stays intact.
enum Out {
    Plain(io::Stdout),
    Prompt(Box<dyn rustyline::ExternalPrinter>),
}

struct Client {
    args: ClientArgs,
    url: WsUrl,
    poll: Poll,
    /// Kept so the waker's fd outlives the stdin thread: that thread wakes the
    /// loop once more as it ends, and if it held the only reference the fd
    /// would be closed (and the wake-up lost) before the loop saw it.
    _waker: Arc<Waker>,
    lines: Chan<Option<String>>,
    stdin_done: bool,
    /// The user typed `/quit`: the server's close 1000 ends the client.
    quit_sent: bool,
    /// Lines typed while not connected, sent once the connection is open.
    queued: Vec<String>,
    session: Session,
    out: Out,
    times: bool,
    /// The terminal's settings before line editing, put back when the client
    /// ends: it may end (server gone, refused) while the editor has the
    /// terminal in raw mode on its own thread.
    saved_tty: Option<libc::termios>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.end_prompt();
    }
}

use crate::sys::tty_settings;

/// `/quit` or `/quit REASON`, in any letter case.
fn is_quit(line: &str) -> bool {
    let l = line.trim_start();
    l.get(..5).is_some_and(|c| c.eq_ignore_ascii_case("/quit"))
        && matches!(l[5..].chars().next(), None | Some(' '))
}

/// Rows a typed line took on the terminal after the prompt `> `.
fn typed_rows(line: &str) -> usize {
    let cols = crate::sys::terminal_columns().unwrap_or(80);
    (2 + line.chars().count()).div_ceil(cols).max(1)
}

/// Read typed lines in a terminal: the editor keeps the prompt and the line
/// being typed intact while other lines are printed above it. A chat message
/// (not a `/command`) is erased once entered, since the server echoes it back:
/// it is shown once, as the room saw it.
fn read_terminal(
    mut editor: rustyline::DefaultEditor,
    tx: mpsc::Sender<Option<String>>,
    waker: Arc<Waker>,
) {
    // Ctrl-C and Ctrl-D end the input like the end of a pipe.
    while let Ok(line) = editor.readline("> ") {
        if !line.is_empty() && !line.starts_with('/') {
            let mut out = io::stdout();
            let _ = write!(out, "\x1b[{}A\x1b[J", typed_rows(&line));
            let _ = out.flush();
        }
        let _ = editor.add_history_entry(line.as_str());
        if tx.send(Some(line)).is_err() {
            return;
        }
        let _ = waker.wake();
    }
    let _ = tx.send(None);
    let _ = waker.wake();
}

/// Read lines from a pipe or file.
fn read_plain(tx: mpsc::Sender<Option<String>>, waker: Arc<Waker>) {
    let stdin = io::stdin();
    for line in stdin.lock().lines() {
        let Ok(l) = line else { break };
        if tx.send(Some(l)).is_err() {
            return;
        }
        let _ = waker.wake();
    }
    let _ = tx.send(None);
    let _ = waker.wake();
}

impl Client {
    fn new(args: ClientArgs, url: WsUrl) -> io::Result<Client> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), STDIN)?);
        let (tx, rx) = mpsc::channel();
        let thread_waker = Arc::clone(&waker);
        let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
        let mut out = Out::Plain(io::stdout());
        let saved_tty = if interactive { tty_settings() } else { None };
        let editor = if interactive {
            rustyline::DefaultEditor::new().ok()
        } else {
            None
        };
        // Stdin may be a terminal, a pipe or a file; a blocking reader thread
        // handles each, and wakes the loop for each line.
        match editor {
            Some(mut ed) => {
                if let Ok(p) = ed.create_external_printer() {
                    out = Out::Prompt(Box::new(p));
                }
                std::thread::spawn(move || read_terminal(ed, tx, thread_waker));
            }
            None => {
                std::thread::spawn(move || read_plain(tx, thread_waker));
            }
        }
        let times = match args.time {
            Times::Always => true,
            Times::Never => false,
            Times::Auto => io::stdout().is_terminal(),
        };
        let wanted = url
            .query
            .split('&')
            .find_map(|p| p.strip_prefix("nick="))
            .map(str::to_owned);
        let mut session = Session::new(wanted, args.nick_retry_max);
        // Unless the URL asks for capabilities itself, ask for ids (times,
        // printing nothing twice) and resume (nothing lost across a reconnect).
        session.v2.own_caps = !url
            .query
            .split('&')
            .any(|p| p.split('=').next() == Some("caps"));
        Ok(Client {
            args,
            url,
            poll,
            _waker: waker,
            lines: rx,
            stdin_done: false,
            quit_sent: false,
            queued: Vec::new(),
            session,
            out,
            times,
            saved_tty,
        })
    }

    /// Print a line from the server.
    fn show(&mut self, line: &str) {
        // Tags the client asked for itself are its business: printed without.
        let line = if self.session.v2.own_caps && !self.times {
            split_tags(line).map_or(line, |(_, body)| body)
        } else {
            line
        };
        let text = render_line(line, self.times, now_unix());
        match &mut self.out {
            Out::Plain(o) => {
                let _ = writeln!(o, "{text}");
            }
            Out::Prompt(p) => {
                // Outside a prompt (between lines) the printer writes as is.
                let _ = p.print(text + "\n");
            }
        }
    }

    /// Say something about the client itself (stderr, or above the prompt).
    fn note(&mut self, msg: &str) {
        match &mut self.out {
            Out::Plain(o) => {
                let _ = o.flush();
                eprintln!("loopchat client: {msg}");
            }
            Out::Prompt(p) => {
                let _ = p.print(format!("-- {msg}\n"));
            }
        }
    }

    fn flush(&mut self) {
        if let Out::Plain(o) = &mut self.out {
            let _ = o.flush();
        }
    }

    fn run(mut self) -> io::Result<ExitCode> {
        let mut failures = 0u32;
        loop {
            let (end, opened) = self.session_once()?;
            if opened {
                failures = 0;
            }
            let why = match end {
                End::Done => return Ok(ExitCode::SUCCESS),
                End::Fatal(why) => return Ok(self.exit_with(&[why])),
                End::Lost(why) => format!("connection lost: {why}"),
                End::Unreachable(why) => {
                    format!("cannot connect to {}: {why}", self.url.authority)
                }
            };
            failures += 1;
            let stop = if self.args.no_reconnect {
                Some("not reconnecting (--no-reconnect)".to_string())
            } else if self.stdin_done && self.queued.is_empty() {
                // The input has ended and the close handshake did not finish:
                // what was sent last may not have arrived.
                Some("input has ended: not reconnecting".to_string())
            } else if self.args.max_attempts > 0 && failures > self.args.max_attempts {
                Some(format!(
                    "giving up after {} attempts",
                    self.args.max_attempts
                ))
            } else {
                None
            };
            if let Some(stop) = stop {
                return Ok(self.exit_with(&[why, stop]));
            }
            self.note(&why);
            let wait = backoff(
                self.args.reconnect_base,
                self.args.reconnect_max,
                failures,
                random_u64(),
            );
            let msg = format!(
                "reconnecting in {:.1}s (attempt {failures}{}, base {:?}, cap {:?})",
                wait.as_secs_f64(),
                if self.args.max_attempts > 0 {
                    format!(" of {}", self.args.max_attempts)
                } else {
                    String::new()
                },
                self.args.reconnect_base,
                self.args.reconnect_max,
            );
            self.note(&msg);
            if let Some(code) = self.wait(Instant::now() + wait)? {
                return Ok(code);
            }
        }
    }

    /// Give the terminal back (if line editing had it) and say why the client
    /// ends: printed directly, since the editor's thread may not get to print
    /// anything more before the process exits. Exit code 1.
    fn exit_with(&mut self, why: &[String]) -> ExitCode {
        self.end_prompt();
        for w in why {
            self.note(w);
        }
        ExitCode::FAILURE
    }

    /// Restore the terminal's settings and print plainly from now on.
    fn end_prompt(&mut self) {
        if let Some(t) = self.saved_tty.take() {
            crate::sys::restore_tty(&t);
            // Leave the rest on lines of their own, below the prompt.
            let _ = writeln!(io::stdout());
        }
        if matches!(self.out, Out::Prompt(_)) {
            self.out = Out::Plain(io::stdout());
        }
    }

    /// Sleep until `until`, still collecting stdin; Some(exit) if stdin ended
    /// while disconnected (a failure: the last connection did not end cleanly).
    fn wait(&mut self, until: Instant) -> io::Result<Option<ExitCode>> {
        let mut events = Events::with_capacity(8);
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(None);
            }
            self.poll.poll(&mut events, Some(until - now))?;
            self.drain_stdin(None);
            if self.stdin_done && self.queued.is_empty() {
                let why = "input has ended while disconnected: not reconnecting".to_string();
                return Ok(Some(self.exit_with(&[why])));
            }
        }
    }

    /// Move typed lines into the socket's buffer (when open) or the queue.
    fn drain_stdin(&mut self, mut wbuf: Option<&mut Vec<u8>>) {
        loop {
            match self.lines.try_recv() {
                Ok(Some(line)) => {
                    self.quit_sent |= is_quit(&line);
                    match wbuf.as_deref_mut() {
                        Some(w) => send_text(w, &line),
                        None => self.queued.push(line),
                    }
                }
                Ok(None) | Err(TryRecvError::Disconnected) => {
                    self.stdin_done = true;
                    return;
                }
                Err(TryRecvError::Empty) => return,
            }
        }
    }

    fn resolve(&self) -> io::Result<SocketAddr> {
        (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(ErrorKind::NotFound, "host has no address"))
    }

    /// One connection from connect to its end; also says whether it got to Open.
    fn session_once(&mut self) -> io::Result<(End, bool)> {
        let addr = match self.resolve() {
            Ok(a) => a,
            Err(e) => return Ok((End::Lost(format!("resolve {}: {e}", self.url.host)), false)),
        };
        let mut sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return Ok((End::Unreachable(e.to_string()), false)),
        };
        self.poll
            .registry()
            .register(&mut sock, SOCK, Interest::READABLE | Interest::WRITABLE)?;
        let result = self.drive(&mut sock);
        let _ = self.poll.registry().deregister(&mut sock);
        result
    }

    fn drive(&mut self, sock: &mut TcpStream) -> io::Result<(End, bool)> {
        let key = generate_key();
        let mut wbuf = Vec::new();
        // After a reconnect, come back under the same nick and in the same rooms:
        // the first through the URL, the others by /join in their old order, so the
        // room that was current (joined last) is current again.
        //
        // With a session to resume, the URL asks for it instead, passing the
        // last message id seen per room so that nothing is missed or printed
        // twice; nick and room stay in the URL for when the server no longer
        // has the session (`ERR bad-session`: then the rejoin happens as above).
        let v2 = &mut self.session.v2;
        let resume = v2.token.clone().filter(|_| v2.resume);
        v2.resuming = resume.is_some();
        let since = v2.since(&self.session.rooms);
        let mut extra: Vec<(&str, &str)> = Vec::new();
        if v2.own_caps {
            extra.push(("caps", "ids,resume"));
        }
        if let Some(token) = &resume {
            extra.push(("resume", token));
            if !since.is_empty() {
                extra.push(("since", &since));
            }
        }
        let target = self.url.target_v2(
            self.session.connect_nick(),
            self.session.rooms.first().map(String::as_str),
            &extra,
        );
        let rejoin: Vec<String> = if resume.is_some() {
            Vec::new()
        } else {
            self.session.rooms.iter().skip(1).cloned().collect()
        };
        let offer = self.args.compression.then_some(CLIENT_OFFER);
        write_client_request_ext(&mut wbuf, &self.url.authority, &target, &key, None, offer);
        let mut phase = Phase::Handshake {
            key,
            head: Vec::new(),
        };
        // Receiver, close state and the replies the protocol obliges.
        let mut ws = Endpoint::new(Role::Client);
        let mut inflater = Inflater::new();
        let limits = Limits {
            max_frame: self.args.max_message as u64,
            max_message: self.args.max_message,
        };
        let mut events = Events::with_capacity(16);
        let mut buf = vec![0u8; 64 * 1024];
        let mut opened = false;
        let handshake_deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let timeout = match &phase {
                Phase::Closing(t) => Some(t.saturating_duration_since(Instant::now())),
                Phase::Handshake { .. } => {
                    Some(handshake_deadline.saturating_duration_since(Instant::now()))
                }
                Phase::Open => self
                    .session
                    .retry_at
                    .map(|t| t.saturating_duration_since(Instant::now())),
            };
            self.poll.poll(&mut events, timeout)?;
            let now = Instant::now();
            if let Phase::Open = phase {
                if let Some(line) = self.session.due_retry(now) {
                    send_text(&mut wbuf, &line);
                }
            }
            match &phase {
                Phase::Closing(t) if now >= *t => return Ok((End::Done, opened)),
                Phase::Handshake { .. } if now >= handshake_deadline => {
                    return Ok((End::Lost("handshake timed out".into()), opened))
                }
                _ => {}
            }
            if let Phase::Open = phase {
                self.drain_stdin(Some(&mut wbuf));
                if self.stdin_done {
                    // The user is done: a session left behind would keep the
                    // nick and hide our LEFT for --session-ttl. /quit ends it.
                    if self.session.v2.token.take().is_some() && !self.quit_sent {
                        send_text(&mut wbuf, "/quit");
                        self.quit_sent = true;
                    }
                    // The replies to the last lines still count: keep reading
                    // data until the server answers the close.
                    ws.close_keep_reading(&mut wbuf, Some(1000), "", Some(mask()));
                    phase = Phase::Closing(Instant::now() + Duration::from_secs(5));
                }
            } else if !matches!(phase, Phase::Closing(_)) {
                self.drain_stdin(None);
            }
            // Read everything available.
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => {
                        return Ok(match &phase {
                            Phase::Closing(_) => (End::Done, opened),
                            Phase::Handshake { head, .. } if head.is_empty() => (
                                End::Lost("server closed the connection before answering".into()),
                                opened,
                            ),
                            _ => (End::Lost("server closed the connection".into()), opened),
                        })
                    }
                    Ok(n) => {
                        let data = &mut buf[..n];
                        if let Phase::Handshake { key, head } = &mut phase {
                            head.extend_from_slice(data);
                            let offered = self.args.compression;
                            match parse_response_ext(head, key, MAX_HEAD, offered) {
                                Ok(Status::Partial) => continue,
                                Ok(Status::Complete((101, len, deflate))) => {
                                    ws = Endpoint::with_deflate(Role::Client, deflate);
                                    let rest = head.split_off(len);
                                    phase = Phase::Open;
                                    opened = true;
                                    // The server's JOINED lines rebuild the room
                                    // list (a resume keeps it: none come).
                                    if !self.session.v2.resuming {
                                        self.session.rooms.clear();
                                    }
                                    for room in &rejoin {
                                        send_text(&mut wbuf, &format!("/join {room}"));
                                    }
                                    for line in self.queued.drain(..) {
                                        send_text(&mut wbuf, &line);
                                    }
                                    let mut rest = rest;
                                    if let Some(end) = self.on_frames(
                                        &mut ws,
                                        &mut inflater,
                                        &limits,
                                        &mut rest,
                                        &mut wbuf,
                                        &mut phase,
                                    ) {
                                        return Ok((end, opened));
                                    }
                                    continue;
                                }
                                Ok(Status::Complete((status, len, _))) => {
                                    let body =
                                        String::from_utf8_lossy(&head[len..]).trim().to_string();
                                    let why = format!("server answered {status}: {body}");
                                    // 4xx means the request itself is refused (origin, limits on
                                    // this address, bad URL); only 429 and 5xx may pass later.
                                    return Ok(if (400..500).contains(&status) && status != 429 {
                                        (End::Fatal(why), opened)
                                    } else {
                                        (End::Lost(why), opened)
                                    });
                                }
                                Err(e) => {
                                    return Ok((
                                        End::Fatal(format!("bad handshake response: {e}")),
                                        opened,
                                    ))
                                }
                            }
                        }
                        if let Some(end) = self.on_frames(
                            &mut ws,
                            &mut inflater,
                            &limits,
                            data,
                            &mut wbuf,
                            &mut phase,
                        ) {
                            return Ok((end, opened));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Before any answer, an error is the connect's own
                        // (refused, unreachable): say so, not "lost".
                        return Ok(match &phase {
                            Phase::Handshake { head, .. } if head.is_empty() => {
                                (End::Unreachable(e.to_string()), opened)
                            }
                            _ => (End::Lost(format!("read: {e}")), opened),
                        });
                    }
                }
            }
            // Write what we can.
            let mut written = 0;
            while written < wbuf.len() {
                match sock.write(&wbuf[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == ErrorKind::NotConnected => break,
                    Err(e) if matches!(phase, Phase::Handshake { .. }) => {
                        return Ok((End::Unreachable(e.to_string()), opened))
                    }
                    Err(e) => return Ok((End::Lost(format!("write: {e}")), opened)),
                }
            }
            wbuf.drain(..written);
            self.flush();
        }
    }

    fn on_frames(
        &mut self,
        ws: &mut Endpoint,
        inflater: &mut Inflater,
        limits: &Limits,
        data: &mut [u8],
        wbuf: &mut Vec<u8>,
        phase: &mut Phase,
    ) -> Option<End> {
        let mut off = 0;
        while off < data.len() {
            // The endpoint writes the pong, the answer to the server's close
            // and the close for a protocol error into `wbuf`.
            match ws.read(
                &mut data[off..],
                limits,
                Some(&mut *inflater),
                wbuf,
                Some(mask()),
            ) {
                Ok((used, msg)) => {
                    off += used;
                    match msg {
                        Some(Message::Text(t)) => {
                            if self.session.observe(t, Instant::now()) {
                                self.show(t);
                            }
                            for line in self.session.v2.outgoing.drain(..) {
                                send_text(wbuf, &line);
                            }
                            for note in std::mem::take(&mut self.session.v2.notes) {
                                self.note(&note);
                            }
                        }
                        Some(Message::Binary(b)) => {
                            let text = String::from_utf8_lossy(b).into_owned();
                            self.show(&text);
                        }
                        Some(Message::Ping(_) | Message::Pong(_)) => {}
                        Some(Message::Close { code, reason }) => {
                            if matches!(phase, Phase::Closing(_)) {
                                return Some(End::Done);
                            }
                            let code = code.unwrap_or(1005);
                            let why = if reason.is_empty() {
                                format!("closed by server ({code})")
                            } else {
                                format!("closed by server ({code} {reason})")
                            };
                            // 1000 after our /quit, or after the input ended: a clean end.
                            if code == 1000 && (self.stdin_done || self.quit_sent) {
                                return Some(End::Done);
                            }
                            if code == 1008 || code == 1003 {
                                return Some(End::Fatal(why));
                            }
                            return Some(End::Lost(why));
                        }
                        None if used == 0 => break,
                        None => {}
                    }
                }
                Err(e) => {
                    return Some(End::Lost(format!("protocol error from server: {e}")));
                }
            }
        }
        None
    }
}

fn mask() -> [u8; 4] {
    crate::rng::with_thread_rng(|r| r.mask())
}

fn send_text(wbuf: &mut Vec<u8>, line: &str) {
    encode_frame(wbuf, OpCode::Text, true, line.as_bytes(), Some(mask()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = WsUrl::parse("ws://127.0.0.1:9000/ws?nick=a&room=b").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9000");
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 9000));
        assert_eq!(
            (u.path.as_str(), u.query.as_str()),
            ("/ws", "nick=a&room=b")
        );
        let u = WsUrl::parse("ws://localhost").unwrap();
        assert_eq!((u.port, u.path.as_str(), u.query.as_str()), (80, "/", ""));
        let u = WsUrl::parse("ws://[::1]:9000?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/")
        );
        assert!(WsUrl::parse("wss://x/").unwrap_err().contains("TLS"));
        assert!(WsUrl::parse("http://x/").is_err());
        assert!(WsUrl::parse("ws://x:notaport/").is_err());
    }

    #[test]
    fn reconnect_target_keeps_nick_and_current_room() {
        let u = WsUrl::parse("ws://h:1/ws?nick=a&room=b&x=y").unwrap();
        assert_eq!(u.target_with(None, None), "/ws?nick=a&room=b&x=y");
        assert_eq!(
            u.target_with(Some("z"), Some("dev")),
            "/ws?x=y&nick=z&room=dev"
        );
    }

    #[test]
    fn session_follows_nick_and_rooms() {
        let mut s = Session::new(None, Duration::from_secs(60));
        let now = Instant::now();
        for l in [
            "WELCOME guest-1",
            "JOINED lobby guest-1",
            "NICK guest-1 me",
            "JOINED dev me",
            "JOINED dev other",
            "JOINED ops me",
            "LEFT lobby me",
            "MSG dev me JOINED x me",
        ] {
            assert!(s.observe(l, now));
        }
        assert_eq!(s.nick.as_deref(), Some("me"));
        assert_eq!(s.wanted.as_deref(), Some("me"));
        assert_eq!(s.rooms, vec!["dev".to_string(), "ops".to_string()]);
        assert_eq!(s.retry_at, None);
    }

    #[test]
    fn a_forced_guest_nick_is_temporary_and_retried_with_backoff() {
        let max = Duration::from_secs(8);
        let mut s = Session::new(Some("alice".into()), max);
        let t0 = Instant::now();
        assert!(s.observe("WELCOME guest-7", t0));
        // The server's own ERR after WELCOME is shown; the retry is scheduled.
        assert!(s.observe("ERR nick-taken nick taken, using a guest nick", t0));
        let at = s.retry_at.expect("retry scheduled");
        assert!(at > t0 && at <= t0 + Duration::from_secs(1));
        assert_eq!(s.due_retry(t0), None, "not before its time");
        assert_eq!(s.due_retry(at).as_deref(), Some("/nick alice"));
        assert_eq!(s.due_retry(at + max), None, "one retry out at a time");
        // Its refusal is not printed, and the next wait is longer (up to the cap).
        assert!(!s.observe("ERR nick-taken nick taken", at));
        let next = s.retry_at.unwrap() - at;
        assert!(next >= Duration::from_secs(1) && next <= Duration::from_secs(2));
        for _ in 0..10 {
            let t = s.retry_at.unwrap();
            assert!(s.due_retry(t).is_some());
            assert!(!s.observe("ERR nick-taken nick taken", t));
            assert!(s.retry_at.unwrap() - t <= max);
        }
        // A reconnect asks for the wanted nick, not the guest one.
        assert_eq!(s.connect_nick(), Some("alice"));
        // Granted at last: retries stop.
        let t = s.retry_at.unwrap();
        s.due_retry(t);
        assert!(s.observe("NICK guest-7 alice", t));
        assert_eq!((s.nick.as_deref(), s.retry_at), (Some("alice"), None));
        // Someone else's rename to a guest is not ours.
        assert!(s.observe("NICK bob guest-9", t));
        assert_eq!((s.nick.as_deref(), s.retry_at), (Some("alice"), None));
        // A server-forced rename of us is temporary too; the wanted nick stays.
        assert!(s.observe("NICK alice guest-3", t));
        assert_eq!(s.wanted.as_deref(), Some("alice"));
        assert!(s.retry_at.is_some());
        // A nick the user picked and got replaces the wanted one.
        assert!(s.observe("NICK guest-3 carol", t));
        assert_eq!((s.wanted.as_deref(), s.retry_at), (Some("carol"), None));
    }

    #[test]
    fn a_session_is_resumed_with_per_room_positions_or_rejoined() {
        let now = Instant::now();
        let mut s = Session::new(Some("me".into()), Duration::from_secs(60));
        s.v2.own_caps = true;
        for (l, shown) in [
            ("WELCOME me", true),
            ("CAPS ids,resume", false),
            ("SESSION abcdefghijklmnopqrstuvwxyz012345", false),
            ("JOINED lobby me", true),
            ("JOINED dev me", true),
            ("@id=1-1;time=2026-11-30T10:00:00.000Z MSG dev x one", true),
            ("@id=1-2;time=2026-11-30T10:00:00.000Z MSG Dev x two", true),
            ("HISTORY dev 1", true),
            ("@id=1-2;time=2026-11-30T10:00:00.000Z MSG dev x two", false),
        ] {
            assert_eq!(s.observe(l, now), shown, "{l}");
        }
        // Each own JOINED asked for the room's history.
        assert_eq!(s.v2.outgoing, ["/history lobby", "/history dev"]);
        s.v2.outgoing.clear();
        assert_eq!(s.v2.since(&s.rooms), "dev:1-2");
        assert!(s.v2.resume && s.v2.token.is_some());
        // A resume the server no longer knows: rejoin the rooms after the first.
        s.v2.resuming = true;
        assert!(s.observe("WELCOME me", now));
        assert!(!s.observe("ERR bad-session unknown or expired session", now));
        assert_eq!(s.v2.outgoing, ["/join dev"]);
        assert!(s.v2.token.is_none() && s.rooms.is_empty());
        // A server without resume: no token is kept.
        s.observe("SESSION x", now);
        s.observe("CAPS ids", now);
        assert!(s.v2.token.is_none());
        // Lost gap: what is left is asked for.
        s.v2.outgoing.clear();
        assert!(s.observe("RESUMED dev lost", now));
        assert_eq!(s.v2.outgoing, ["/history dev"]);
        // Lines that are not of the protocol are printed as they are.
        assert!(s.observe("something else", now));
    }

    #[test]
    fn quit_is_recognised() {
        for yes in ["/quit", "/QUIT bye all", "  /quit"] {
            assert!(is_quit(yes), "{yes}");
        }
        for no in ["/quitter", "quit", "/qui", "say /quit", "/quité"] {
            assert!(!is_quit(no), "{no}");
        }
    }

    #[test]
    fn a_bad_wanted_nick_is_not_retried() {
        let mut s = Session::new(Some("no spaces".into()), Duration::from_secs(60));
        let now = Instant::now();
        s.observe("WELCOME guest-1", now);
        assert!(s.observe("ERR bad-nick bad nick, using a guest nick", now));
        assert_eq!((s.wanted.as_deref(), s.retry_at), (None, None));
        // Whatever a server sends, the check does not panic.
        assert!(!is_guest("gueß-1") && !is_guest("ü") && is_guest("Guest-7"));
        // Nor is a guest nick asked for in the URL.
        let s = Session::new(Some("guest-4".into()), Duration::from_secs(60));
        assert_eq!(s.wanted, None);
    }

    #[test]
    fn tag_blocks_and_times() {
        let t = |s| split_tags(s).map(|(t, body)| (t.time_ms, body));
        assert_eq!(
            t("@id=5;time=2026-11-30T10:00:00.123Z MSG dev alice hi"),
            Ok((Some(1_796_032_800_123), "MSG dev alice hi"))
        );
        assert_eq!(t("@id=5 MSG dev a b"), Ok((None, "MSG dev a b")));
        assert_eq!(t("MSG dev a @x"), Ok((None, "MSG dev a @x")));
        assert!(t("@lonely").is_err());
        assert!(t("@time=2026-11-30T10:00:00Z MSG d a hi").is_err());
        // A block that is not the protocol's is shown whole, at `now`.
        let odd = render_line("@time=yesterday MSG d a hi", true, 59);
        assert_eq!(&odd[6..], "59 @time=yesterday MSG d a hi");
        // Times shown: the tag's time replaces the block; without, the given now.
        let tagged = render_line("@id=1;time=1970-01-01T00:00:07.250Z MSG d a hi", true, 0);
        assert!(
            tagged.ends_with(" MSG d a hi") && !tagged.contains('@'),
            "{tagged}"
        );
        assert_eq!(tagged.len(), "HH:MM:SS MSG d a hi".len());
        assert_eq!(tagged[6..8].to_string(), "07");
        let plain = render_line("MSG d a hi", true, 59);
        assert_eq!(&plain[6..], "59 MSG d a hi");
        // Not shown: the line as it came.
        assert_eq!(
            render_line("@id=1 MSG d a hi", false, 0),
            "@id=1 MSG d a hi"
        );
    }

    #[test]
    fn nothing_a_terminal_would_interpret_gets_through() {
        assert!(matches!(escape_for_terminal("plain é ✓"), Cow::Borrowed(_)));
        let evil = "a\x1b]0;owned\x07b\x1b[2Jc\rd\u{2028}e\u{202e}f\u{9b}g\x7f";
        let safe = escape_for_terminal(evil);
        assert!(!safe.chars().any(needs_escape), "{safe}");
        assert_eq!(
            safe,
            "a\\x1b]0;owned\\x07b\\x1b[2Jc\\x0dd\\u{2028}e\\u{202e}f\\u{9b}g\\x7f"
        );
        let shown = render_line(evil, true, 0);
        assert!(!shown.chars().any(needs_escape));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let full = Duration::from_millis(full);
            for r in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = backoff(base, max, attempt, r);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
    }
}
