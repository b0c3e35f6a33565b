//! Shared test harness: the real server on 127.0.0.1:0 in a thread, clients that
//! wait on messages with a deadline (never on sleeps), and raw-socket helpers.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loopchat::server::{Config, Handle, Server};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A config for tests: loopback, ephemeral port, short shutdown.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// A running server; stopped and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    pub line_addr: Option<SocketAddr>,
    handle: Handle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub fn start(cfg: Config) -> TestServer {
        let server = Server::bind(cfg).expect("bind");
        let addr = server.local_addr();
        let line_addr = server.line_addr();
        let handle = server.handle();
        let thread = std::thread::spawn(move || server.run());
        TestServer {
            addr,
            line_addr,
            handle,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Stop and wait for the loop to exit; returns its result.
    pub fn stop(&mut self) -> std::io::Result<()> {
        self.handle.stop();
        match self.thread.take() {
            Some(t) => t.join().expect("server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            self.stop().expect("server loop error");
        } else {
            self.handle.stop();
        }
    }
}

/// A tungstenite client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(server: &TestServer, path: &str) -> Client {
        let stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _resp) = tungstenite::client(server.url(path), stream).expect("handshake");
        Client { ws }
    }

    /// Connect to the chat and read the WELCOME line; returns the client and its nick.
    pub fn chat(server: &TestServer, query: &str) -> (Client, String) {
        let mut c = Client::connect(server, &format!("/ws{query}"));
        let w = c.recv_text();
        let nick = w
            .strip_prefix("WELCOME ")
            .unwrap_or_else(|| panic!("expected WELCOME, got {w:?}"))
            .to_string();
        (c, nick)
    }

    pub fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next data message or close; pings are answered by tungstenite itself.
    pub fn next(&mut self) -> Message {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no message within {WAIT:?}");
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => continue,
                Ok(m) => return m,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    pub fn recv_text(&mut self) -> String {
        match self.next() {
            Message::Text(t) => t.to_string(),
            m => panic!("expected text, got {m:?}"),
        }
    }

    /// Read lines until one satisfies `pred` (at most 10,000 lines); returns it.
    pub fn recv_until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        for _ in 0..10_000 {
            let t = self.recv_text();
            if pred(&t) {
                return t;
            }
        }
        panic!("no matching line in 10,000 messages");
    }

    /// Read until the line `want` arrives, collecting everything before it.
    pub fn recv_until_eq(&mut self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let t = self.recv_text();
            if t == want {
                return seen;
            }
            seen.push(t);
        }
        panic!("{want:?} not received");
    }

    /// Wait for the server's close frame; returns its code.
    pub fn expect_close(&mut self) -> CloseCode {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no close within {WAIT:?}");
            match self.ws.read() {
                Ok(Message::Close(Some(CloseFrame { code, .. }))) => return code,
                Ok(Message::Close(None)) => return CloseCode::Status,
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
    }

    /// A round trip through the server: everything sent before it has been processed.
    pub fn sync(&mut self, token: &str) {
        self.send(&format!("/ping {token}"));
        self.recv_until(|l| l == format!("PONG {token}"));
    }
}

/// A raw TCP connection with a read timeout.
/// The address a spawned `loopchat` prints as its first stdout line
/// (`listening on ADDR`).
pub fn listening_addr(out: &mut impl std::io::BufRead) -> SocketAddr {
    let mut line = String::new();
    out.read_line(&mut line)
        .expect("read the first stdout line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address")
}

pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Read until the peer closes (or `WAIT` passes); returns what arrived.
pub fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} after {} bytes", out.len()),
        }
    }
    panic!("peer did not close within {WAIT:?}");
}

/// Send a raw request and return (status, whole response text).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = raw(addr);
    s.write_all(request.as_bytes()).unwrap();
    let resp = String::from_utf8_lossy(&read_to_close(&mut s)).to_string();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    (status, resp)
}

/// A valid upgrade request head for `path`.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Read an HTTP response head from a raw stream (up to "\r\n\r\n"); returns it and any bytes after it.
pub fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..1000 {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).to_string(), rest);
        }
        let n = s.read(&mut chunk).expect("read head");
        assert!(n > 0, "closed before the head ended: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("no response head");
}

/// A masked client frame.
pub fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Parse server frames (unmasked) from `buf`: returns (opcode, payload) pairs and leftover bytes.
pub fn server_frames(mut buf: &[u8]) -> (Vec<(u8, Vec<u8>)>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        if buf.len() < 2 {
            break;
        }
        let op = buf[0] & 0x0f;
        let (len, hl) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
            127 if buf.len() >= 10 => (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            l => (l as usize, 2),
        };
        if buf.len() < hl + len {
            break;
        }
        out.push((op, buf[hl..hl + len].to_vec()));
        buf = &buf[hl + len..];
    }
    (out, buf.to_vec())
}

/// Read raw server frames until a close frame arrives; returns all frames.
pub fn read_frames_until_close(s: &mut TcpStream, mut pending: Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 65536];
    let deadline = Instant::now() + WAIT;
    loop {
        let (frames, rest) = server_frames(&pending);
        pending = rest;
        let done = frames.iter().any(|(op, _)| *op == 8);
        all.extend(frames);
        if done {
            return all;
        }
        assert!(Instant::now() < deadline, "no close frame");
        match s.read(&mut chunk) {
            Ok(0) => panic!("closed without a close frame; frames: {all:?}"),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => panic!("reset; frames {all:?}"),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The close code in a close frame payload.
pub fn close_code(frames: &[(u8, Vec<u8>)]) -> u16 {
    let (_, p) = frames.iter().find(|(op, _)| *op == 8).expect("close frame");
    assert!(p.len() >= 2, "close frame without a code");
    u16::from_be_bytes([p[0], p[1]])
}
