//! permessage-deflate (RFC 7692) against the real server, through a client
//! written here: its own frame code and its own deflate (flate2 directly), so
//! the server's `ws::deflate` is not checked against itself.
//!
//! Cases equivalent to Autobahn groups 12 (compressed messages of many sizes
//! and payloads) and 13 (every parameter combination), decompression bombs,
//! negotiation edge cases, RSV1 rules, and a chat room mixing compressing and
//! plain clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::{config, Client, TestServer, WAIT};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use loopchat::server::Config;

const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// Raw DEFLATE of one message from an empty window, sync-flushed, tail stripped.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut input = data;
    loop {
        let before = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync)
            .unwrap();
        input = &input[(c.total_in() - before) as usize..];
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

/// Inflate one message from an empty window (the server never keeps context).
fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(data.len() * 4 + 256);
    let mut pos = 0;
    for _ in 0..100_000 {
        let before = d.total_in();
        d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
            .expect("server sent invalid deflate data");
        pos += (d.total_in() - before) as usize;
        if pos == input.len() && out.len() < out.capacity() {
            return out;
        }
        out.reserve(out.capacity().max(1024));
    }
    panic!("inflate did not finish");
}

struct Frame {
    fin: bool,
    rsv1: bool,
    op: u8,
    payload: Vec<u8>,
}

/// A WebSocket client on a raw socket.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// `Sec-WebSocket-Extensions` of the 101, if any.
    ext: Option<String>,
    /// The payload bytes of the last data message as they came off the wire.
    wire: Vec<u8>,
}

impl Raw {
    fn connect(server: &TestServer, path: &str, offer: Option<&str>) -> Raw {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let ext = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        )
        .unwrap();
        let (head, rest) = common::read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut exts = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v.trim().to_string());
        let ext = exts.next();
        assert!(exts.next().is_none(), "two extension headers: {head}");
        Raw {
            s,
            buf: rest,
            ext,
            wire: Vec::new(),
        }
    }

    fn frame(&mut self, first: u8, payload: &[u8]) {
        let mask = [0xa1u8, 0x5b, 0x07, 0xee];
        let mut f = vec![first];
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
        self.s.write_all(&f).unwrap();
    }

    /// Send a data message (op 1 or 2), compressed or not, its wire payload in
    /// fragments of `frag` bytes (0: one frame).
    fn send(&mut self, op: u8, data: &[u8], compress: bool, frag: usize) {
        let wire = if compress {
            deflate(data)
        } else {
            data.to_vec()
        };
        let pieces: Vec<&[u8]> = if frag == 0 || wire.is_empty() {
            vec![&wire[..]]
        } else {
            wire.chunks(frag).collect()
        };
        for (i, p) in pieces.iter().enumerate() {
            let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
            let opcode = if i == 0 { op } else { 0 };
            let rsv1 = if i == 0 && compress { 0x40 } else { 0 };
            self.frame(fin | rsv1 | opcode, p);
        }
    }

    fn read_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            assert!(Instant::now() < deadline, "no frame within {WAIT:?}");
            if let Some((f, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next data message: (opcode, rsv1 on the wire, inflated payload).
    fn read_msg(&mut self) -> (u8, bool, Vec<u8>) {
        let mut first: Option<(u8, bool)> = None;
        let mut data = Vec::new();
        for _ in 0..100_000 {
            let f = self.read_frame().expect("connection closed");
            match f.op {
                0x9 => {
                    let p = f.payload.clone();
                    self.frame(0x8A, &p);
                    continue;
                }
                0xA => continue,
                0x8 => panic!("unexpected close {:?}", close_code(&f.payload)),
                op => {
                    if first.is_none() {
                        first = Some((op, f.rsv1));
                    } else {
                        assert!(!f.rsv1, "RSV1 on a continuation frame");
                    }
                    data.extend_from_slice(&f.payload);
                }
            }
            if f.fin {
                let (op, z) = first.unwrap();
                self.wire = data.clone();
                let payload = if z { inflate(&data) } else { data };
                return (op, z, payload);
            }
        }
        panic!("message never ended");
    }

    fn text(&mut self) -> (bool, String) {
        let (op, z, p) = self.read_msg();
        assert_eq!(op, 1);
        (z, String::from_utf8(p).unwrap())
    }

    /// Read until the server's close; its code.
    fn expect_close(&mut self) -> Option<u16> {
        for _ in 0..100_000 {
            let f = self.read_frame().expect("closed without a close frame");
            if f.op == 0x8 {
                return close_code(&f.payload);
            }
        }
        panic!("no close");
    }
}

fn close_code(p: &[u8]) -> Option<u16> {
    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
}

fn parse(buf: &[u8]) -> Option<(Frame, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    assert_eq!(b0 & 0x30, 0, "RSV2/RSV3 set");
    let (len, hl) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = buf.get(hl..hl + len)?.to_vec();
    Some((
        Frame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            op: b0 & 0x0f,
            payload,
        },
        hl + len,
    ))
}

/// Text that compresses like chat text, `len` bytes.
fn words(len: usize, seed: u32) -> Vec<u8> {
    let w = [
        "hello",
        "lobby",
        "anyone",
        "release",
        "review",
        "at",
        "three",
        "ok",
        "thanks",
        "the",
        "build",
        "is",
        "green",
        "ünïcödé",
        "🙂",
        "again",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(w[x as usize % w.len()].as_bytes());
        out.push(b' ');
    }
    // Cut on a char boundary.
    let mut end = len;
    while std::str::from_utf8(&out[..end]).is_err() {
        end -= 1;
    }
    out.truncate(end);
    out
}

/// Bytes that barely compress.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn server(threshold: usize) -> TestServer {
    let mut cfg: Config = config();
    cfg.compression_threshold = threshold;
    cfg.chat.rate_limit = 0;
    TestServer::start(cfg)
}

const SIZES: [usize; 10] = [16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072];
const FULL: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Autobahn 12.x: compressed text and binary of every size, in one frame and
/// fragmented, echoed compressed (above the threshold) and intact.
#[test]
fn autobahn_12_payloads_sizes_and_fragments() {
    let s = server(64);
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    assert_eq!(c.ext.as_deref(), Some(FULL));
    for (i, &size) in SIZES.iter().enumerate() {
        let seed = i as u32 + 1;
        for (op, data) in [
            (1u8, words(size, seed)),
            (2, noise(size, seed)),
            (2, words(size, seed)),
        ] {
            for frag in [0, 1, 7, 1000, 65536] {
                if frag == 1 && size > 4096 {
                    continue;
                }
                c.send(op, &data, true, frag);
                let (rop, z, back) = c.read_msg();
                assert_eq!(
                    (rop, back.len()),
                    (op, data.len()),
                    "size {size} frag {frag}"
                );
                assert!(back == data, "size {size} frag {frag}: payload differs");
                assert_eq!(z, data.len() >= 64, "size {size}: compressed reply");
            }
            // The same message uncompressed on a deflate connection.
            c.send(op, &data, false, 0);
            assert!(c.read_msg().2 == data);
        }
    }
    // Empty and tiny messages.
    for data in [&b""[..], b"x", b"hello"] {
        c.send(1, data, true, 0);
        assert_eq!(c.read_msg(), (1, false, data.to_vec()));
    }
}

/// Autobahn 13.x: every parameter combination of the offer; what the server
/// answers, and that messages flow either way.
#[test]
fn autobahn_13_parameter_combinations() {
    let s = server(0);
    let narrow9 = format!("{FULL}; server_max_window_bits=9");
    let cases: Vec<(String, Option<String>)> = vec![
        ("permessage-deflate".into(), Some(FULL.into())),
        ("permessage-deflate; client_no_context_takeover".into(), Some(FULL.into())),
        ("permessage-deflate; server_no_context_takeover".into(), Some(FULL.into())),
        ("permessage-deflate; client_max_window_bits".into(), Some(FULL.into())),
        ("permessage-deflate; client_max_window_bits=8".into(), Some(FULL.into())),
        ("permessage-deflate; client_max_window_bits=15".into(), Some(FULL.into())),
        ("permessage-deflate; server_max_window_bits=8".into(), None),
        ("permessage-deflate; server_max_window_bits=9".into(), Some(narrow9.clone())),
        (
            "permessage-deflate; server_max_window_bits=15".into(),
            Some(format!("{FULL}; server_max_window_bits=15")),
        ),
        (
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; \
             client_max_window_bits=9; server_max_window_bits=9"
                .into(),
            Some(narrow9.clone()),
        ),
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits"
                .into(),
            Some(FULL.into()),
        ),
        (
            "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8, \
             permessage-deflate; server_max_window_bits=9"
                .into(),
            Some(narrow9.clone()),
        ),
    ];
    for (offer, answer) in &cases {
        let mut c = Raw::connect(&s, "/echo", Some(offer));
        assert_eq!(&c.ext, answer, "offer {offer:?}");
        let on = answer.is_some();
        let narrow = answer.as_deref().is_some_and(|a| a.contains("=9"));
        for &size in &SIZES[..8] {
            let data = words(size, size as u32);
            c.send(1, &data, on, if size > 1000 { 333 } else { 0 });
            let (_, z, back) = c.read_msg();
            assert!(back == data, "offer {offer:?} size {size}");
            // A narrowed window gets compressed replies only up to 512 bytes,
            // so no back-reference can reach past 2^9.
            assert_eq!(
                z,
                on && (!narrow || size <= 512),
                "offer {offer:?} size {size}"
            );
        }
    }
}

/// Offers the server must decline (and then go on without the extension).
#[test]
fn negotiation_edge_cases() {
    let s = server(0);
    for offer in [
        "permessage-deflate; unknown_param",
        "permessage-deflate; x=1",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=0",
        "permessage-deflate; server_max_window_bits=09",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=yes",
        "x-webkit-deflate-frame",
        "permessage-deflate;;",
        "",
    ] {
        let mut c = Raw::connect(&s, "/echo", Some(offer));
        assert_eq!(c.ext, None, "offer {offer:?}");
        c.send(1, b"plain after a declined offer", false, 0);
        assert_eq!(c.text(), (false, "plain after a declined offer".into()));
        // RSV1 without negotiation: 1002.
        c.send(1, b"compressed anyway", true, 0);
        assert_eq!(c.expect_close(), Some(1002), "offer {offer:?}");
    }
    // Quoted values and a bad offer before a good one.
    let mut c = Raw::connect(
        &s,
        "/ws",
        Some("foo; a=\"x,y\", permessage-deflate; bogus, permessage-deflate; server_max_window_bits=\"12\""),
    );
    assert_eq!(
        c.ext.as_deref(),
        Some(&*format!("{FULL}; server_max_window_bits=12"))
    );
    assert!(c.text().1.starts_with("WELCOME "));
}

#[test]
fn compression_off_declines_every_offer() {
    let mut cfg = config();
    cfg.compression = false;
    let s = TestServer::start(cfg);
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    assert_eq!(c.ext, None);
    c.send(2, &[1, 2, 3], false, 0);
    assert_eq!(c.read_msg(), (2, false, vec![1, 2, 3]));
}

/// RSV1 where RFC 7692 forbids it: 1002.
#[test]
fn rsv1_on_control_or_continuation_is_1002() {
    let s = server(0);
    // On a ping.
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    c.frame(0x80 | 0x40 | 0x9, b"");
    assert_eq!(c.expect_close(), Some(1002));
    // On a continuation.
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    let z = deflate(b"hello hello hello");
    c.frame(0x40 | 0x1, &z[..3]);
    c.frame(0x80 | 0x40, &z[3..]);
    assert_eq!(c.expect_close(), Some(1002));
    // On a close.
    let mut c = Raw::connect(&s, "/ws", Some("permessage-deflate"));
    c.text();
    c.frame(0x80 | 0x40 | 0x8, &1000u16.to_be_bytes());
    assert_eq!(c.expect_close(), Some(1002));
    // Invalid deflate data: 1007.
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    c.frame(0x80 | 0x40 | 0x2, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(c.expect_close(), Some(1007));
    // Compressed text that is not UTF-8 once inflated: 1007.
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    c.send(1, b"ok \xff\xfe", true, 2);
    assert_eq!(c.expect_close(), Some(1007));
}

/// A 64 MiB message in under 64 KiB: refused with 1009 once the inflated size
/// passes the limit, in one frame and in fragments, on /ws and /echo.
#[test]
fn decompression_bombs_are_1009() {
    let mut cfg = config();
    cfg.max_message = 1 << 20;
    let s = TestServer::start(cfg);
    let bomb = deflate(&vec![b'A'; 64 << 20]);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    for (path, frag) in [("/ws", 0), ("/ws", 4096), ("/echo", 0), ("/echo", 1000)] {
        let mut c = Raw::connect(&s, path, Some("permessage-deflate"));
        if path == "/ws" {
            c.text();
        }
        let pieces: Vec<&[u8]> = if frag == 0 {
            vec![&bomb[..]]
        } else {
            bomb.chunks(frag).collect()
        };
        for (i, p) in pieces.iter().enumerate() {
            let fin = if i + 1 == pieces.len() { 0x80 } else { 0 };
            let first = if i == 0 { 0x40 | 0x2 } else { 0 };
            c.frame(fin | first, p);
        }
        assert_eq!(c.expect_close(), Some(1009), "{path} frag {frag}");
    }
    // The server is fine afterwards.
    let mut c = Raw::connect(&s, "/echo", Some("permessage-deflate"));
    c.send(2, &[7; 100_000], true, 0);
    assert!(c.read_msg().2 == [7; 100_000]);
}

/// One room, compressing and plain clients: each gets every line intact, the
/// compressing ones as the same compressed frame.
#[test]
fn chat_room_mixing_compressing_and_plain_clients() {
    let s = server(32);
    let mut z1 = Raw::connect(&s, "/ws?nick=zed&room=mix", Some("permessage-deflate"));
    let mut z2 = Raw::connect(
        &s,
        "/ws?nick=zoe&room=mix",
        Some("permessage-deflate; client_max_window_bits"),
    );
    let mut n1 = Raw::connect(
        &s,
        "/ws?nick=ned&room=mix",
        Some("permessage-deflate; server_max_window_bits=9"),
    );
    let (mut plain, _) = Client::chat(&s, "?nick=pat&room=mix");
    for c in [&mut z1, &mut z2, &mut n1] {
        assert!(c.text().1.starts_with("WELCOME "));
    }
    // Everyone has joined once pat's own line comes back to pat.
    plain.send("/ping ready");
    plain.recv_until(|l| l == "PONG ready");
    let long = "x".repeat(600);
    let lines = [
        "hi".to_string(),
        "a line long enough to be compressed by the server for everyone".to_string(),
        long.clone(),
    ];
    for (i, line) in lines.iter().enumerate() {
        if i % 2 == 0 {
            plain.send(line);
        } else {
            z1.send(1, line.as_bytes(), true, 5);
        }
        let want = |nick: &str| format!("MSG mix {nick} {line}");
        let sender = if i % 2 == 0 { "pat" } else { "zed" };
        let got = plain.recv_until(|l| l.starts_with("MSG "));
        assert_eq!(got, want(sender));
        let mut wires: Vec<(bool, Vec<u8>)> = Vec::new();
        for (c, narrow) in [(&mut z1, false), (&mut z2, false), (&mut n1, true)] {
            let (z, text) = loop {
                let (z, t) = c.text();
                if t.starts_with("MSG ") {
                    break (z, t);
                }
            };
            assert_eq!(text, want(sender));
            let big_enough = text.len() >= 32;
            assert_eq!(
                z,
                big_enough && (!narrow || text.len() <= 512),
                "{text:.20}"
            );
            wires.push((z, c.wire.clone()));
        }
        // Deflated once: every compressing member got the very same bytes.
        let compressed: Vec<&Vec<u8>> = wires.iter().filter(|w| w.0).map(|w| &w.1).collect();
        assert!(compressed.windows(2).all(|w| w[0] == w[1]), "line {i}");
    }
    // Two lines were long enough to compress; each was deflated once for the
    // whole room (every other line here is under the 32-byte threshold).
    let (status, metrics) =
        common::http(s.addr, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l == "loopchat_deflated_messages_total 2"),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|l| l == "loopchat_websocket_deflate_total 3"));
}

/// `loopchat client --compression`: negotiates, and prints the compressed
/// replies intact.
#[test]
fn terminal_client_negotiates_and_inflates() {
    use std::process::{Command, Stdio};
    let s = server(16);
    let line = "a chat line long enough to be compressed on its way back to the client";
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args([
            "client",
            "--compression",
            "--no-reconnect",
            &format!("ws://{}/ws?nick=zip&room=z", s.addr),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n/who z\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("MSG z zip {line}");
    assert!(stdout.lines().any(|l| l == want), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("WHO z ")), "{stdout}");
    let (_, metrics) = common::http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics
        .lines()
        .any(|l| l == "loopchat_websocket_deflate_total 1"));
    let deflated = metrics
        .lines()
        .find_map(|l| l.strip_prefix("loopchat_deflated_messages_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap();
    assert!(deflated >= 1, "{metrics}");
}

const SCRAPE: &str = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

fn metric(s: &TestServer, name: &str) -> u64 {
    let body = common::http(s.addr, SCRAPE).1;
    body.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// An `/echo` client that never reads cannot make one read inflate into many
/// echoes: compressed 256 KiB messages of zeros are ~300 bytes each, and the
/// peer's narrowed window (`server_max_window_bits=9`) makes the echoes go out
/// uncompressed. The server stops echoing once the outbox is over its cap and
/// keeps the rest of the read for later, so it holds the cap plus one message,
/// not everything one read inflates to; once the client reads, every echo
/// still arrives, in order.
#[test]
fn an_echo_client_that_never_reads_gets_one_message_past_its_cap() {
    const SOFT: usize = 64 * 1024;
    const MSG: usize = 256 * 1024;
    const COUNT: u64 = 24;
    let mut cfg: Config = config();
    cfg.outbox_soft = SOFT;
    cfg.send_buffer = 16 * 1024;
    let s = TestServer::start(cfg);
    let mut c = Raw::connect(
        &s,
        "/echo",
        Some("permessage-deflate; server_max_window_bits=9"),
    );
    assert!(c
        .ext
        .as_deref()
        .is_some_and(|e| e.contains("server_max_window_bits=9")));
    let before = metric(&s, "loopchat_bytes_in_total");
    // Every message in one write, so that the server reads many in one read.
    let mask = [0xa1u8, 0x5b, 0x07, 0xee];
    let mut wire = Vec::new();
    for k in 0..COUNT {
        let mut m = vec![0u8; MSG];
        m[..8].copy_from_slice(&k.to_be_bytes());
        let z = deflate(&m);
        wire.extend_from_slice(&[0x80 | 0x40 | 0x2, 0x80 | 126]);
        wire.extend_from_slice(&(z.len() as u16).to_be_bytes());
        wire.extend_from_slice(&mask);
        wire.extend(z.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    assert!(
        wire.len() < 32 * 1024,
        "{} bytes: more than one read",
        wire.len()
    );
    c.s.write_all(&wire).unwrap();
    // Wait (bounded) until the server has read all of it; every scrape's own
    // request counts too, the first one included.
    let want = before + wire.len() as u64;
    let mut read = 0;
    for k in 1..=500u64 {
        read = metric(&s, "loopchat_bytes_in_total");
        if read >= want + k * SCRAPE.len() as u64 {
            break;
        }
    }
    assert!(read >= want, "the server never read the batch");
    let queued = metric(&s, "loopchat_outbox_bytes") as usize;
    println!(
        "{COUNT} messages of {MSG} B in {} B: {queued} B queued",
        wire.len()
    );
    assert!(queued <= SOFT + MSG + 16, "{queued} bytes queued");
    for k in 0..COUNT {
        let (op, z, p) = c.read_msg();
        assert_eq!((op, z, p.len()), (2, false, MSG), "echo {k}");
        assert_eq!(p[..8], k.to_be_bytes(), "echo {k} in order");
    }
}
