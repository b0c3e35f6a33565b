//! `loopchat client URL`: a terminal chat client that reads lines from stdin,
//! sends each as a text message, and prints every line that arrives. It works in
//! a pipe as well as a terminal, reconnects with exponential backoff and jitter,
//! and rejoins its rooms. It speaks the `ws` client role (masked frames).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver as Chan, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::ws::frame::{encode_close, encode_frame, OpCode, Role};
use crate::ws::handshake::{generate_key, parse_response, write_client_request, Status};
use crate::ws::message::{Limits, Message, Receiver};

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

    /// Sign in with this token (`?token=` on the URL) on a server with `--auth-key`.
    #[arg(
        long,
        value_name = "JWT",
        env = "LOOPCHAT_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
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
    fn target_with(&self, nick: Option<&str>, room: Option<&str>) -> String {
        let mut params: Vec<String> = self
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .filter(|p| {
                let key = p.split('=').next().unwrap_or("");
                !(nick.is_some() && key == "nick" || room.is_some() && key == "room")
            })
            .map(str::to_owned)
            .collect();
        if let Some(n) = nick {
            params.push(format!("nick={n}"));
        }
        if let Some(r) = room {
            params.push(format!("room={r}"));
        }
        if params.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, params.join("&"))
        }
    }
}

/// What the client remembers about its chat session, to restore it after a reconnect.
#[derive(Default, Debug)]
struct Session {
    nick: Option<String>,
    /// Rooms in join order; the last is the current room.
    rooms: Vec<String>,
}

impl Session {
    /// Follow the server's lines that change who we are and where we are.
    fn observe(&mut self, line: &str) {
        let mut it = line.splitn(3, ' ');
        let (kind, a, b) = (it.next(), it.next(), it.next());
        match (kind, a, b) {
            (Some("WELCOME"), Some(n), None) => self.nick = Some(n.to_string()),
            (Some("NICK"), Some(old), Some(new)) if self.is_me(old) => {
                self.nick = Some(new.to_string())
            }
            (Some("JOINED"), Some(room), Some(n)) if self.is_me(n) => {
                self.rooms.retain(|r| !r.eq_ignore_ascii_case(room));
                self.rooms.push(room.to_string());
            }
            (Some("LEFT"), Some(room), Some(n)) if self.is_me(n) => {
                self.rooms.retain(|r| !r.eq_ignore_ascii_case(room));
            }
            _ => {}
        }
    }

    fn is_me(&self, nick: &str) -> bool {
        self.nick
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(nick))
    }
}

/// Exponential backoff with jitter: attempt `n` (from 1) waits a random time in
/// `[d/2, d]` where `d = min(max, base * 2^(n-1))`, so many clients dropped at
/// once do not come back in lockstep.
pub fn backoff(base: Duration, max: Duration, attempt: u32, rand: u64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let d = base.saturating_mul(1u32 << exp).min(max);
    let half = d / 2;
    let jitter_ns = if half.is_zero() {
        0
    } else {
        rand % (half.as_nanos() as u64 + 1)
    };
    half + Duration::from_nanos(jitter_ns)
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
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

struct Client {
    args: ClientArgs,
    url: WsUrl,
    poll: Poll,
    lines: Chan<Option<String>>,
    stdin_done: bool,
    /// Lines typed while not connected, sent once the connection is open.
    queued: Vec<String>,
    session: Session,
    out: std::io::Stdout,
}

impl Client {
    fn new(args: ClientArgs, url: WsUrl) -> io::Result<Client> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), STDIN)?);
        let (tx, rx) = mpsc::channel();
        // Stdin may be a terminal, a pipe or a file; a blocking reader thread
        // handles all three, and wakes the loop for each line.
        std::thread::spawn(move || {
            let stdin = io::stdin();
            for line in stdin.lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
                let _ = waker.wake();
            }
            let _ = tx.send(None);
            let _ = waker.wake();
        });
        Ok(Client {
            args,
            url,
            poll,
            lines: rx,
            stdin_done: false,
            queued: Vec::new(),
            session: Session::default(),
            out: io::stdout(),
        })
    }

    fn run(mut self) -> io::Result<ExitCode> {
        let mut failures = 0u32;
        let mut first = true;
        loop {
            if !first {
                if self.args.no_reconnect {
                    return Ok(ExitCode::FAILURE);
                }
                failures += 1;
                if self.args.max_attempts > 0 && failures > self.args.max_attempts {
                    eprintln!(
                        "loopchat client: giving up after {} attempts",
                        self.args.max_attempts
                    );
                    return Ok(ExitCode::FAILURE);
                }
                let wait = backoff(
                    self.args.reconnect_base,
                    self.args.reconnect_max,
                    failures,
                    random_u64(),
                );
                eprintln!(
                    "loopchat client: reconnecting in {:.1}s (attempt {failures}{}, base {:?}, cap {:?})",
                    wait.as_secs_f64(),
                    if self.args.max_attempts > 0 {
                        format!(" of {}", self.args.max_attempts)
                    } else {
                        String::new()
                    },
                    self.args.reconnect_base,
                    self.args.reconnect_max,
                );
                if let Some(code) = self.wait(Instant::now() + wait)? {
                    return Ok(code);
                }
            }
            first = false;
            let (end, opened) = self.session_once()?;
            if opened {
                failures = 0;
            }
            match end {
                End::Done => return Ok(ExitCode::SUCCESS),
                End::Fatal(why) => {
                    eprintln!("loopchat client: {why}");
                    return Ok(ExitCode::FAILURE);
                }
                End::Lost(why) => {
                    eprintln!("loopchat client: connection lost: {why}");
                    if self.stdin_done && self.queued.is_empty() {
                        // Nothing left to say: a script's pipe has ended.
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        }
    }

    /// Sleep until `until`, still collecting stdin; Some(exit) if stdin ended
    /// with nothing left to send.
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
                return Ok(Some(ExitCode::SUCCESS));
            }
        }
    }

    /// Move typed lines into the socket's buffer (when open) or the queue.
    fn drain_stdin(&mut self, mut wbuf: Option<&mut Vec<u8>>) {
        loop {
            match self.lines.try_recv() {
                Ok(Some(line)) => match wbuf.as_deref_mut() {
                    Some(w) => send_text(w, &line),
                    None => self.queued.push(line),
                },
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
            Err(e) => return Ok((End::Lost(format!("connect {addr}: {e}")), false)),
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
        let target = self.url.target_with(
            self.session.nick.as_deref(),
            self.session.rooms.first().map(String::as_str),
        );
        let rejoin: Vec<String> = self.session.rooms.iter().skip(1).cloned().collect();
        write_client_request(&mut wbuf, &self.url.authority, &target, &key, None);
        let mut phase = Phase::Handshake {
            key,
            head: Vec::new(),
        };
        let mut rx = Receiver::new(Role::Client);
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
                _ => None,
            };
            self.poll.poll(&mut events, timeout)?;
            let now = Instant::now();
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
                    encode_close(&mut wbuf, Some(1000), "", Some(mask()));
                    phase = Phase::Closing(Instant::now() + Duration::from_secs(5));
                }
            } else if !matches!(phase, Phase::Closing(_)) {
                self.drain_stdin(None);
            }
            // Read everything available.
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => {
                        return Ok(if matches!(phase, Phase::Closing(_)) {
                            (End::Done, opened)
                        } else {
                            (End::Lost("server closed the connection".into()), opened)
                        })
                    }
                    Ok(n) => {
                        let data = &mut buf[..n];
                        if let Phase::Handshake { key, head } = &mut phase {
                            head.extend_from_slice(data);
                            match parse_response(head, key, MAX_HEAD) {
                                Ok(Status::Partial) => continue,
                                Ok(Status::Complete((101, len))) => {
                                    let rest = head.split_off(len);
                                    phase = Phase::Open;
                                    opened = true;
                                    // The server's JOINED lines rebuild the room list.
                                    self.session.rooms.clear();
                                    for room in &rejoin {
                                        send_text(&mut wbuf, &format!("/join {room}"));
                                    }
                                    for line in self.queued.drain(..) {
                                        send_text(&mut wbuf, &line);
                                    }
                                    let mut rest = rest;
                                    if let Some(end) = self.on_frames(
                                        &mut rx, &limits, &mut rest, &mut wbuf, &mut phase,
                                    ) {
                                        return Ok((end, opened));
                                    }
                                    continue;
                                }
                                Ok(Status::Complete((status, len))) => {
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
                        if let Some(end) =
                            self.on_frames(&mut rx, &limits, data, &mut wbuf, &mut phase)
                        {
                            return Ok((end, opened));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Ok((End::Lost(format!("read: {e}")), opened)),
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
                    Err(e) => return Ok((End::Lost(format!("write: {e}")), opened)),
                }
            }
            wbuf.drain(..written);
            let _ = self.out.flush();
        }
    }

    fn on_frames(
        &mut self,
        rx: &mut Receiver,
        limits: &Limits,
        data: &mut [u8],
        wbuf: &mut Vec<u8>,
        phase: &mut Phase,
    ) -> Option<End> {
        let mut off = 0;
        while off < data.len() {
            match rx.feed(&mut data[off..], limits) {
                Ok((used, msg)) => {
                    off += used;
                    match msg {
                        Some(Message::Text(t)) => {
                            self.session.observe(t);
                            let _ = writeln!(self.out, "{t}");
                        }
                        Some(Message::Binary(b)) => {
                            let _ = writeln!(self.out, "{}", String::from_utf8_lossy(b));
                        }
                        Some(Message::Ping(p)) => {
                            encode_frame(wbuf, OpCode::Pong, true, p, Some(mask()))
                        }
                        Some(Message::Pong(_)) => {}
                        Some(Message::Close { code, reason }) => {
                            if matches!(phase, Phase::Closing(_)) {
                                return Some(End::Done);
                            }
                            encode_close(wbuf, code, "", Some(mask()));
                            let code = code.unwrap_or(1005);
                            let why = if reason.is_empty() {
                                format!("closed by server ({code})")
                            } else {
                                format!("closed by server ({code} {reason})")
                            };
                            // 1000 after our /quit or an idle timeout: a clean end.
                            if code == 1000 && self.stdin_done {
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
                    encode_close(wbuf, Some(e.close_code()), "", Some(mask()));
                    return Some(End::Lost(format!("protocol error from server: {e}")));
                }
            }
        }
        None
    }
}

fn mask() -> [u8; 4] {
    (random_u64() as u32).to_ne_bytes()
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
        let mut s = Session::default();
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
            s.observe(l);
        }
        assert_eq!(s.nick.as_deref(), Some("me"));
        assert_eq!(s.rooms, vec!["dev".to_string(), "ops".to_string()]);
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
