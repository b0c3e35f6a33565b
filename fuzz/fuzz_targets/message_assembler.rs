//! Structured frames (valid and invalid sequences) built with `encode_frame`
//! and fed to the Receiver in arbitrary chunks, checked against a simple
//! reference model of RFC 6455 message assembly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopchat::ws::close::parse_close_payload;
use loopchat::ws::frame::{encode_frame, OpCode, Role, MAX_CONTROL_PAYLOAD};
use loopchat::ws::message::{Limits, Message, Receiver};

const LIMITS: Limits = Limits {
    max_frame: 300,
    max_message: 600,
};

use loopchat::ws::message::OwnedMessage as Owned;

fn own(m: Message<'_>) -> Owned {
    m.to_owned_message()
}

/// Could `bytes` still become valid UTF-8 with more bytes appended?
fn utf8_prefix_ok(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    }
}

/// The reference: frames one by one, whole; returns messages and the close
/// code of the first error.
fn model(frames: &[(bool, OpCode, Vec<u8>)]) -> (Vec<Owned>, Option<u16>) {
    let mut out = Vec::new();
    let mut partial: Option<(bool, Vec<u8>)> = None;
    for (fin, op, payload) in frames {
        if op.is_control() {
            if !fin || payload.len() > MAX_CONTROL_PAYLOAD {
                return (out, Some(1002));
            }
        }
        if payload.len() as u64 > LIMITS.max_frame {
            return (out, Some(1009));
        }
        match op {
            OpCode::Ping => out.push(Owned::Ping(payload.clone())),
            OpCode::Pong => out.push(Owned::Pong(payload.clone())),
            OpCode::Close => match parse_close_payload(payload) {
                Ok((code, reason)) => {
                    out.push(Owned::Close(code, reason.to_owned()));
                    return (out, None);
                }
                Err(e) => return (out, Some(e.close_code())),
            },
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let (text, mut buf) = match (op, partial.take()) {
                    (OpCode::Continuation, None) => return (out, Some(1002)),
                    (OpCode::Continuation, Some(p)) => p,
                    (_, Some(_)) => return (out, Some(1002)),
                    (o, None) => (*o == OpCode::Text, Vec::new()),
                };
                if buf.len() + payload.len() > LIMITS.max_message {
                    return (out, Some(1009));
                }
                buf.extend_from_slice(payload);
                if text && !utf8_prefix_ok(&buf) {
                    return (out, Some(1007));
                }
                if *fin {
                    if text {
                        match String::from_utf8(buf) {
                            Ok(s) => out.push(Owned::Text(s)),
                            Err(_) => return (out, Some(1007)),
                        }
                    } else {
                        out.push(Owned::Binary(buf));
                    }
                } else {
                    partial = Some((text, buf));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let &[flags, mut seed, ref rest @ ..] = data else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let mask = (role == Role::Server).then_some([seed, flags, 0x11, 0x99]);

    // Build frames: [op/fin byte][length byte][payload...] repeated.
    let mut frames = Vec::new();
    let mut input = rest;
    while let [ctl, len, tail @ ..] = input {
        let op = match ctl % 8 {
            0 | 1 => OpCode::Continuation,
            2 => OpCode::Text,
            3 => OpCode::Binary,
            4 => OpCode::Ping,
            5 => OpCode::Pong,
            6 if ctl & 0x40 != 0 => OpCode::Close,
            _ => OpCode::Text,
        };
        let fin = ctl & 0x80 != 0 || (op.is_control() && ctl & 0x20 == 0);
        // Mostly short; sometimes past the control or frame limit.
        let n = usize::from(*len) * if ctl & 0x10 != 0 { 2 } else { 1 };
        let take = n.min(tail.len());
        let mut payload = tail[..take].to_vec();
        payload.resize(n, b'a');
        frames.push((fin, op, payload));
        input = &tail[take..];
    }
    let mut bytes = Vec::new();
    for (fin, op, payload) in &frames {
        encode_frame(&mut bytes, *op, *fin, payload, mask);
    }
    let (expected, expected_err) = model(&frames);

    // Receiver, in chunks of pseudo-random length.
    let mut rx = Receiver::new(role);
    let mut got = Vec::new();
    let mut err = None;
    let mut start = 0;
    'outer: while start < bytes.len() {
        seed = seed.wrapping_mul(73).wrapping_add(41);
        let end = (start + usize::from(seed % 97) + 1).min(bytes.len());
        let piece = &mut bytes[start..end];
        start = end;
        let mut pos = 0;
        for _ in 0..=piece.len() + 1 {
            match rx.feed(&mut piece[pos..], &LIMITS) {
                Err(e) => {
                    err = Some(e.close_code());
                    break 'outer;
                }
                Ok((n, msg)) => {
                    pos += n;
                    let msg = msg.map(own);
                    assert!(rx.heap_bytes() <= LIMITS.max_message + MAX_CONTROL_PAYLOAD);
                    match msg {
                        Some(m) => got.push(m),
                        None => break,
                    }
                }
            }
        }
    }
    assert_eq!(got, expected);
    assert_eq!(err, expected_err);
    if err.is_none() && rx.feed(&mut [], &LIMITS).is_ok() && !rx.is_closed() {
        // Idle between messages: no heap, unless a message is still open.
        let open = model_open(&frames);
        assert!(open || rx.heap_bytes() == 0);
    }
});

/// Whether the frames leave a fragmented message (or a frame) unfinished.
fn model_open(frames: &[(bool, OpCode, Vec<u8>)]) -> bool {
    let mut open = false;
    for (fin, op, _) in frames {
        if !op.is_control() {
            open = !fin;
        }
    }
    open
}
