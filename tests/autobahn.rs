//! The behaviours of Autobahn|Testsuite's fuzzingclient (groups 1-7, 9, 10)
//! checked against `/echo` through real sockets. Case numbers in comments
//! follow autobahntestsuite/case/. "Fail" means: the server sends a close with
//! the expected code (and echoes nothing sent after the offending frame), then
//! closes the TCP connection.

mod common;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CONT: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

/// One upgraded raw connection to `/echo`.
struct Peer {
    s: TcpStream,
    pending: Vec<u8>,
}

impl Peer {
    fn open(server: &TestServer) -> Peer {
        let mut s = raw(server.addr);
        s.set_nodelay(true).unwrap();
        s.write_all(upgrade_request("/echo").as_bytes()).unwrap();
        let (head, pending) = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Peer { s, pending }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Send in `chunk`-byte writes (the "chopped" variants).
    fn send_chopped(&mut self, bytes: &[u8], chunk: usize) {
        for c in bytes.chunks(chunk) {
            self.s.write_all(c).unwrap();
        }
    }

    /// The next frame (opcode, payload); None when the server closed the TCP connection.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let (frames, _) = server_frames(&self.pending);
            if let Some(f) = frames.into_iter().next() {
                let header = match self.pending[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                self.pending.drain(..header + f.1.len());
                return Some(f);
            }
            assert!(Instant::now() < deadline, "no frame within {WAIT:?}");
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn expect(&mut self, op: u8, payload: &[u8]) {
        match self.frame() {
            Some((o, p)) => {
                assert_eq!(o, op, "opcode");
                assert!(
                    p == payload,
                    "payload differs ({} vs {} bytes)",
                    p.len(),
                    payload.len()
                );
            }
            None => panic!("closed while expecting opcode {op}"),
        }
    }

    /// The server fails the connection with `code`: a close frame with that code
    /// (no data frame first), then the TCP close.
    fn expect_fail(&mut self, code: u16) {
        match self.frame() {
            Some((CLOSE, p)) => {
                assert!(p.len() >= 2, "close without code");
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), code, "close code");
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
        self.expect_tcp_close();
    }

    /// A clean close handshake initiated by us with `payload`; returns the echoed close payload.
    fn close_with(&mut self, payload: &[u8]) -> Vec<u8> {
        self.send(&client_frame(CLOSE, true, payload));
        let got = match self.frame() {
            Some((CLOSE, p)) => p,
            other => panic!("expected close, got {other:?}"),
        };
        self.expect_tcp_close();
        got
    }

    fn expect_tcp_close(&mut self) {
        let rest = read_to_close(&mut self.s);
        assert!(
            rest.is_empty() && self.pending.is_empty(),
            "data after close: {rest:?}"
        );
    }
}

fn frame_with_rsv(op: u8, rsv: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = client_frame(op, true, payload);
    f[0] |= rsv << 4;
    f
}

fn code_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[0], p[1]])
}

#[test]
fn case_1_framing_text_and_binary() {
    let s = TestServer::start(config());
    let mut p = Peer::open(&s);
    // 1.1.1-1.1.6, 1.2.1-1.2.6: lengths around each length-encoding boundary.
    for len in [0usize, 125, 126, 127, 128, 65535, 65536] {
        let text = vec![b'*'; len];
        p.send(&client_frame(TEXT, true, &text));
        p.expect(TEXT, &text);
        let bin = vec![0xfe; len];
        p.send(&client_frame(BINARY, true, &bin));
        p.expect(BINARY, &bin);
    }
    // 1.1.8 / 1.2.8: 65536 bytes sent in 997-byte chops.
    let text = vec![b'*'; 65536];
    p.send_chopped(&client_frame(TEXT, true, &text), 997);
    p.expect(TEXT, &text);
    assert_eq!(code_of(&p.close_with(&1000u16.to_be_bytes())), 1000);
}

#[test]
fn case_2_pings_and_pongs() {
    let s = TestServer::start(config());
    let mut p = Peer::open(&s);
    p.send(&client_frame(PING, true, b"")); // 2.1
    p.expect(PONG, b"");
    p.send(&client_frame(PING, true, b"Hello, world!")); // 2.2
    p.expect(PONG, b"Hello, world!");
    p.send(&client_frame(PING, true, &[0x00, 0xff, 0xfe, 0xfd])); // 2.3
    p.expect(PONG, &[0x00, 0xff, 0xfe, 0xfd]);
    let max = vec![b'p'; 125]; // 2.4, 2.6 (chopped)
    p.send(&client_frame(PING, true, &max));
    p.expect(PONG, &max);
    p.send_chopped(&client_frame(PING, true, &max), 1);
    p.expect(PONG, &max);
    // 2.7-2.9: unsolicited pongs are ignored, a ping after them still answered.
    p.send(&client_frame(PONG, true, b""));
    p.send(&client_frame(PONG, true, b"unsolicited"));
    p.send(&client_frame(PING, true, b"after"));
    p.expect(PONG, b"after");
    // 2.10, 2.11: ten pings, ten pongs in order, whole and chopped.
    let mut ten = Vec::new();
    for i in 0..10u8 {
        ten.extend(client_frame(PING, true, &[i; 10]));
    }
    p.send(&ten);
    for i in 0..10u8 {
        p.expect(PONG, &[i; 10]);
    }
    p.send_chopped(&ten, 7);
    for i in 0..10u8 {
        p.expect(PONG, &[i; 10]);
    }
    // 2.5: a 126-byte ping fails the connection.
    p.send(&client_frame(PING, true, &[0; 126]));
    p.expect_fail(1002);
}

#[test]
fn case_3_reserved_bits() {
    let s = TestServer::start(config());
    for (op, rsv) in [
        (TEXT, 1),
        (TEXT, 2),
        (TEXT, 4),
        (BINARY, 5),
        (PING, 6),
        (CLOSE, 7),
    ] {
        // 3.2-3.4 pattern: a good message, the bad frame, then a ping that must not be answered.
        let mut p = Peer::open(&s);
        let mut bytes = client_frame(TEXT, true, b"Hello, world!");
        bytes.extend(frame_with_rsv(op, rsv, b"bad"));
        bytes.extend(client_frame(PING, true, b""));
        p.send(&bytes);
        p.expect(TEXT, b"Hello, world!");
        p.expect_fail(1002);
    }
}

#[test]
fn case_4_reserved_opcodes() {
    let s = TestServer::start(config());
    for op in [3u8, 4, 5, 6, 7, 11, 12, 13, 14, 15] {
        let mut p = Peer::open(&s);
        let mut bytes = client_frame(TEXT, true, b"Hello, world!");
        bytes.extend(client_frame(op, true, b"reserved"));
        bytes.extend(client_frame(PING, true, b""));
        p.send_chopped(&bytes, 1);
        p.expect(TEXT, b"Hello, world!");
        p.expect_fail(1002);
    }
}

#[test]
fn case_5_fragmentation() {
    let s = TestServer::start(config());
    // 5.1, 5.2: fragmented ping / pong.
    for op in [PING, PONG] {
        let mut p = Peer::open(&s);
        let mut b = client_frame(op, false, b"frag");
        b.extend(client_frame(CONT, true, b"ment"));
        p.send(&b);
        p.expect_fail(1002);
    }
    // 5.3-5.5: text in two fragments, whole, chopped, byte by byte.
    for chop in [usize::MAX, 3, 1] {
        let mut p = Peer::open(&s);
        let mut b = client_frame(TEXT, false, b"fragment1");
        b.extend(client_frame(CONT, true, b"fragment2"));
        p.send_chopped(&b, chop.min(b.len()));
        p.expect(TEXT, b"fragment1fragment2");
        p.close_with(&1000u16.to_be_bytes());
    }
    // 5.6-5.8: a ping between the fragments is answered at once.
    for chop in [usize::MAX, 1] {
        let mut p = Peer::open(&s);
        let mut b = client_frame(TEXT, false, b"fragment1");
        b.extend(client_frame(PING, true, b"ping payload"));
        b.extend(client_frame(CONT, true, b"fragment2"));
        p.send_chopped(&b, chop.min(b.len()));
        p.expect(PONG, b"ping payload");
        p.expect(TEXT, b"fragment1fragment2");
        p.close_with(&1000u16.to_be_bytes());
    }
    // 5.9-5.14: continuations without a start (fin set or not), then a valid text.
    for fin in [true, false] {
        let mut p = Peer::open(&s);
        let mut b = client_frame(CONT, fin, b"non-continuation payload");
        b.extend(client_frame(TEXT, true, b"Hello, world!"));
        p.send(&b);
        p.expect_fail(1002);
    }
    // 5.15: a complete fragmented message, then a continuation with no start.
    let mut p = Peer::open(&s);
    let mut b = client_frame(TEXT, false, b"fragment1");
    b.extend(client_frame(CONT, true, b"fragment2"));
    b.extend(client_frame(CONT, false, b"fragment3"));
    b.extend(client_frame(TEXT, true, b"fragment4"));
    p.send(&b);
    p.expect(TEXT, b"fragment1fragment2");
    p.expect_fail(1002);
    // 5.18: a new text frame inside a fragmented message.
    let mut p = Peer::open(&s);
    let mut b = client_frame(TEXT, false, b"fragment1");
    b.extend(client_frame(TEXT, true, b"fragment2"));
    p.send(&b);
    p.expect_fail(1002);
    // 5.19, 5.20: pings among five fragments, answered as they arrive.
    let mut p = Peer::open(&s);
    p.send(&client_frame(TEXT, false, b"fragment1"));
    p.send(&client_frame(CONT, false, b"fragment2"));
    p.send(&client_frame(PING, true, b"pongme 1!"));
    p.expect(PONG, b"pongme 1!");
    p.send(&client_frame(CONT, false, b"fragment3"));
    p.send(&client_frame(CONT, false, b"fragment4"));
    p.send(&client_frame(PING, true, b"pongme 2!"));
    p.expect(PONG, b"pongme 2!");
    p.send(&client_frame(CONT, true, b"fragment5"));
    p.expect(TEXT, b"fragment1fragment2fragment3fragment4fragment5");
    p.close_with(&1000u16.to_be_bytes());
}

#[test]
fn case_6_utf8() {
    let s = TestServer::start(config());
    // Valid: 6.2 (Hello-µ@ßöäüàá-UTF-8!!), 6.5 (kosme), 6.6 boundary code points.
    let valid: &[&[u8]] = &[
        "Hello-µ@ßöäüàá-UTF-8!!".as_bytes(),
        "κόσμε".as_bytes(),
        b"\x00",
        "\u{80}\u{800}\u{10000}\u{7ff}\u{ffff}\u{10ffff}\u{d7ff}\u{e000}\u{fffd}".as_bytes(),
    ];
    let mut p = Peer::open(&s);
    for v in valid {
        p.send(&client_frame(TEXT, true, v));
        p.expect(TEXT, v);
        // 6.2.2-6.2.4 style: the same text split at every byte boundary into fragments.
        let mut b = Vec::new();
        for (i, byte) in v.iter().enumerate() {
            let op = if i == 0 { TEXT } else { CONT };
            b.extend(client_frame(
                op,
                i == v.len() - 1,
                std::slice::from_ref(byte),
            ));
        }
        p.send(&b);
        p.expect(TEXT, v);
    }
    p.close_with(&1000u16.to_be_bytes());
    // Invalid: 6.3 (bad continuation), 6.8 (>U+10FFFF), 6.9 overlong, 6.10 surrogates,
    // 6.11 lone continuation bytes, 6.14 truncated sequences at the end.
    let invalid: &[&[u8]] = &[
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64",
        b"\xf8\x88\x80\x80\x80",
        b"\xf4\x90\x80\x80",
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xed\xa0\x80",
        b"\xed\xbf\xbf",
        b"\x80",
        b"\xbf",
        b"\xfe",
        b"\xff",
        b"\xce\xba\xe1\xbd",
    ];
    for bad in invalid {
        let mut p = Peer::open(&s);
        p.send(&client_frame(TEXT, true, bad));
        p.expect_fail(1007);
    }
    // 6.4.1-6.4.4 fail fast: the invalid part arrives in the second of three
    // fragments (or mid-frame); the server must fail without waiting for the rest.
    let mut p = Peer::open(&s);
    p.send(&client_frame(TEXT, false, "κόσμε".as_bytes()));
    p.send(&client_frame(CONT, false, b"\xf4\x90\x80\x80"));
    p.expect_fail(1007);
    let mut p = Peer::open(&s);
    let whole = client_frame(
        TEXT,
        true,
        b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64",
    );
    // Everything up to and including the first invalid byte, and not a byte more.
    p.send(&whole[..6 + 13]);
    p.expect_fail(1007);
}

#[test]
fn case_7_close_handling() {
    let s = TestServer::start(config());
    // 7.1.1: a message, then a close: echo, then the close answered.
    let mut p = Peer::open(&s);
    p.send(&client_frame(TEXT, true, b"Hello World!"));
    p.expect(TEXT, b"Hello World!");
    assert_eq!(code_of(&p.close_with(&1000u16.to_be_bytes())), 1000);
    // 7.1.3, 7.1.4: after the close, a ping and a text get nothing.
    let mut p = Peer::open(&s);
    let mut b = client_frame(CLOSE, true, &1000u16.to_be_bytes());
    b.extend(client_frame(PING, true, b"late"));
    b.extend(client_frame(TEXT, true, b"late"));
    p.send(&b);
    match p.frame() {
        Some((CLOSE, c)) => assert_eq!(code_of(&c), 1000),
        other => panic!("{other:?}"),
    }
    p.expect_tcp_close();
    // 7.1.5: the start of a fragmented message, then a close.
    let mut p = Peer::open(&s);
    p.send(&client_frame(TEXT, false, b"fragment1"));
    assert_eq!(code_of(&p.close_with(&1000u16.to_be_bytes())), 1000);
    // 7.3.1: an empty close payload is answered (with 1000).
    let mut p = Peer::open(&s);
    let got = p.close_with(b"");
    assert!(got.is_empty() || code_of(&got) == 1000, "{got:?}");
    // 7.3.2: a one-byte payload fails.
    let mut p = Peer::open(&s);
    p.send(&client_frame(CLOSE, true, b"\x03"));
    p.expect_fail(1002);
    // 7.3.3-7.3.5: a code, a code with a reason, a 125-byte payload: the code is echoed.
    for reason in ["", "Hello World!", &"*".repeat(123)] {
        let mut p = Peer::open(&s);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        assert_eq!(code_of(&p.close_with(&payload)), 1000);
    }
    // 7.3.6: a 126-byte close payload fails.
    let mut p = Peer::open(&s);
    p.send(&client_frame(CLOSE, true, &[b'*'; 126]));
    p.expect_fail(1002);
    // 7.5.1: a reason that is not UTF-8.
    let mut p = Peer::open(&s);
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80");
    p.send(&client_frame(CLOSE, true, &payload));
    p.expect_fail(1007);
    // 7.7.x: valid codes are echoed.
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let mut p = Peer::open(&s);
        assert_eq!(
            code_of(&p.close_with(&code.to_be_bytes())),
            code,
            "code {code}"
        );
    }
    // 7.9.x: invalid codes fail with 1002.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let mut p = Peer::open(&s);
        p.send(&client_frame(CLOSE, true, &code.to_be_bytes()));
        p.expect_fail(1002);
    }
}

#[test]
fn case_9_limits_and_performance() {
    let s = TestServer::start(config());
    let mut p = Peer::open(&s);
    // 9.1.x / 9.2.x: large text and binary messages (16 MiB is in tests/echo.rs).
    for len in [64 << 10, 256 << 10, 1 << 20, 4 << 20] {
        let text = vec![b'*'; len];
        p.send(&client_frame(TEXT, true, &text));
        p.expect(TEXT, &text);
        let bin = vec![0xfe; len];
        p.send(&client_frame(BINARY, true, &bin));
        p.expect(BINARY, &bin);
    }
    // 9.3.x / 9.4.x: 1 MiB in fragments of 64 B .. 1 MiB (4 MiB in 64 B is in tests/echo.rs).
    let total = 1 << 20;
    for frag in [
        64usize,
        256,
        1 << 10,
        4 << 10,
        16 << 10,
        64 << 10,
        256 << 10,
        1 << 20,
    ] {
        let mut b = Vec::with_capacity(total + total / frag * 14);
        let chunk = vec![b'x'; frag];
        let n = total / frag;
        for i in 0..n {
            b.extend(client_frame(
                if i == 0 { TEXT } else { CONT },
                i == n - 1,
                &chunk,
            ));
        }
        p.send(&b);
        p.expect(TEXT, &vec![b'x'; total]);
    }
    // 9.5.x / 9.6.x: 1 MiB sent in chops of 64 B .. 4 KiB.
    let msg = client_frame(BINARY, true, &vec![7u8; 1 << 20]);
    for chop in [64usize, 512, 4096] {
        p.send_chopped(&msg, chop);
        p.expect(BINARY, &vec![7u8; 1 << 20]);
    }
    // 9.7.x / 9.8.x: 1000 small messages, each waiting for its echo.
    for i in 0..1000u32 {
        let m = i.to_be_bytes();
        p.send(&client_frame(BINARY, true, &m));
        p.expect(BINARY, &m);
    }
    p.close_with(&1000u16.to_be_bytes());
}

#[test]
fn case_10_auto_fragmentation() {
    // 10.1.1: 65536 bytes in 1300-byte fragments come back as one message.
    let s = TestServer::start(config());
    let mut p = Peer::open(&s);
    let data = vec![b'*'; 65536];
    let chunks: Vec<_> = data.chunks(1300).collect();
    let mut b = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        b.extend(client_frame(
            if i == 0 { TEXT } else { CONT },
            i == chunks.len() - 1,
            c,
        ));
    }
    p.send(&b);
    p.expect(TEXT, &data);
    p.close_with(&1000u16.to_be_bytes());
}
