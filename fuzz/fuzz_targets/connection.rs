//! A whole connection, sans I/O: arbitrary bytes in arbitrary chunks through
//! the server's own request parsing, upgrade, frame decoding, chat commands
//! and closing (`loopchat::server::fuzzing::Harness`). The harness asserts the
//! buffers stay within their limits after every chunk; this target checks
//! what the server wrote: well-formed HTTP, then well-formed server frames
//! whose close codes are ones the RFC lets an endpoint send, and chat lines
//! free of control characters.
//!
//! Input: byte 0 is the mode (bit 0: line protocol; bit 1: a valid upgrade to
//! `/ws` first, bit 2: to `/echo` instead; bit 3: wrap each chunk in one masked
//! client frame, opcode from the chunk's first byte; bit 4: the upgrade offers
//! permessage-deflate, and a wrapped chunk whose first byte has bit 6 set is
//! sent compressed). Then chunks: one byte of time gap (in 10 ms steps), one
//! byte of length, that many bytes.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use loopchat::server::fuzzing::Harness;
use loopchat::ws::close::is_valid_close_code;
use loopchat::ws::deflate::{set_rsv1, Deflater, Inflater};
use loopchat::ws::frame::{encode_frame, OpCode, Role};
use loopchat::ws::message::{Limits, Message, Receiver};

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new().expect("harness"));
}

const UPGRADE: &str = "HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

const OPCODES: [OpCode; 6] = [
    OpCode::Text,
    OpCode::Binary,
    OpCode::Continuation,
    OpCode::Ping,
    OpCode::Pong,
    OpCode::Close,
];

fn chunks(mode: u8, mut data: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    if mode & 1 == 0 && mode & 6 != 0 {
        let path = if mode & 4 != 0 { "/echo" } else { "/ws?nick=f" };
        let offer = if mode & 16 != 0 {
            "Sec-WebSocket-Extensions: permessage-deflate\r\n"
        } else {
            ""
        };
        out.push((0, format!("GET {path} {UPGRADE}{offer}\r\n").into_bytes()));
    }
    while let [gap, len, rest @ ..] = data {
        let n = (*len as usize).min(rest.len());
        let bytes = &rest[..n];
        data = &rest[n..];
        let bytes = if mode & 8 != 0 && !bytes.is_empty() {
            let op = OPCODES[bytes[0] as usize % OPCODES.len()];
            let fin = bytes[0] & 0x80 == 0;
            let mut frame = Vec::new();
            if mode & 16 != 0 && bytes[0] & 0x40 != 0 {
                let z = Deflater::new().compress(&bytes[1..]).to_vec();
                encode_frame(&mut frame, op, fin, &z, Some([1, 2, 3, 4]));
                set_rsv1(&mut frame, 0);
            } else {
                encode_frame(&mut frame, op, fin, &bytes[1..], Some([1, 2, 3, 4]));
            }
            frame
        } else {
            bytes.to_vec()
        };
        out.push((u16::from(*gap) * 10, bytes));
    }
    out
}

/// No control character but TAB: what another client could paint a terminal with.
fn clean(line: &str) -> bool {
    !line
        .chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}')
}

fn check_output(mode: u8, out: &mut [u8]) {
    if mode & 1 != 0 {
        let text = std::str::from_utf8(out).expect("line output is UTF-8");
        for line in text.split_terminator('\n') {
            assert!(clean(line), "control characters in {line:?}");
        }
        return;
    }
    if out.is_empty() {
        return;
    }
    assert!(out.starts_with(b"HTTP/1.1 "), "not an HTTP answer");
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!("an unterminated response head");
    };
    if !out.starts_with(b"HTTP/1.1 101 ") {
        return;
    }
    let echo = mode & 4 != 0;
    // The server may have accepted permessage-deflate (any offer in raw bytes).
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    let mut rx = if head.contains("sec-websocket-extensions: permessage-deflate") {
        Receiver::with_deflate(Role::Client, false)
    } else {
        Receiver::new(Role::Client)
    };
    let mut inflater = Inflater::new();
    let limits = Limits {
        max_frame: 1 << 20,
        max_message: 1 << 20,
    };
    let mut rest = &mut out[end + 4..];
    while !rest.is_empty() {
        let (used, msg) = rx
            .feed_with(rest, &limits, Some(&mut inflater))
            .expect("the server sends valid frames");
        match msg {
            Some(Message::Close { code, .. }) => {
                if let Some(code) = code {
                    assert!(is_valid_close_code(code), "close code {code}");
                }
            }
            Some(Message::Text(t)) if !echo => assert!(clean(t), "control characters in {t:?}"),
            _ => {}
        }
        assert!(used > 0 || msg.is_some(), "no progress");
        rest = &mut rest[used..];
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunks = chunks(mode, rest);
    let mut out = HARNESS.with(|h| {
        h.borrow_mut()
            .run(
                mode & 1 != 0,
                chunks.iter().map(|(gap, b)| (*gap, b.as_slice())),
            )
            .expect("harness")
    });
    check_output(mode, &mut out);
});
