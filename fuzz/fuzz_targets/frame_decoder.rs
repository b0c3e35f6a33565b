//! Arbitrary bytes through the frame decoder and the Receiver, in arbitrary
//! chunks: no panic, heap bounded by the limits, the same result for every
//! chunking, and decoded frames/messages re-encode to equivalent bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use loopchat::ws::frame::{encode_frame, FrameDecoder, OpCode, Role, MAX_CONTROL_PAYLOAD};
use loopchat::ws::message::{Limits, Message, ProtocolError, Receiver};

const LIMITS: Limits = Limits {
    max_frame: 2048,
    max_message: 4096,
};

use loopchat::ws::message::OwnedMessage as Owned;

fn own(m: Message<'_>) -> Owned {
    m.to_owned_message()
}

/// Chunk lengths from a seed: a small xorshift so every length 1..=max appears.
fn chunk_lens(seed: u8, max: usize) -> impl FnMut() -> usize {
    let mut x = u32::from(seed) | 0x100;
    move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as usize % max) + 1
    }
}

fn receive(
    role: Role,
    bytes: &[u8],
    seed: u8,
    max_chunk: usize,
) -> (Vec<Owned>, Option<ProtocolError>) {
    let mut rx = Receiver::new(role);
    let mut data = bytes.to_vec();
    let mut next = chunk_lens(seed, max_chunk);
    let mut out = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = (start + next()).min(data.len());
        let piece = &mut data[start..end];
        start = end;
        let len = piece.len();
        let mut pos = 0;
        // Each call consumes bytes or returns None, so this ends.
        for _ in 0..=len + 1 {
            match rx.feed(&mut piece[pos..], &LIMITS) {
                Err(e) => return (out, Some(e)),
                Ok((n, msg)) => {
                    pos += n;
                    assert!(pos <= len);
                    let msg = msg.map(own);
                    assert!(rx.heap_bytes() <= LIMITS.max_message + MAX_CONTROL_PAYLOAD);
                    match msg {
                        Some(m) => out.push(m),
                        None => break,
                    }
                }
            }
        }
        assert_eq!(pos, len);
    }
    (out, None)
}

type Frame = (bool, OpCode, Vec<u8>);

fn frames(role: Role, bytes: &[u8], seed: u8) -> (Vec<Frame>, Option<ProtocolError>) {
    let mut dec = FrameDecoder::new(role);
    let mut data = bytes.to_vec();
    let mut next = chunk_lens(seed, 40);
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut start = 0;
    while start < data.len() {
        let end = (start + next()).min(data.len());
        let piece = &mut data[start..end];
        start = end;
        let len = piece.len();
        let mut pos = 0;
        for _ in 0..=len + 1 {
            match dec.decode(&mut piece[pos..], LIMITS.max_frame) {
                Err(e) => return (out, Some(e)),
                Ok((n, chunk)) => {
                    pos += n;
                    let Some(c) = chunk else { break };
                    current.extend_from_slice(c.payload);
                    assert!(current.len() as u64 <= LIMITS.max_frame);
                    if c.is_last() {
                        out.push((c.fin, c.opcode, std::mem::take(&mut current)));
                    } else if pos == len {
                        break;
                    }
                }
            }
        }
        assert_eq!(pos, len);
    }
    (out, None)
}

fuzz_target!(|data: &[u8]| {
    let &[flags, seed, ref rest @ ..] = data else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let mask = (role == Role::Server).then_some([flags, seed, 0x5A, 0xA5]);
    let max_chunk = usize::from(flags >> 1) + 1;

    // Messages: any chunking gives the same result as all at once.
    let whole = receive(role, rest, seed, usize::MAX);
    let chunked = receive(role, rest, seed, max_chunk);
    assert_eq!(whole, chunked);
    let bytewise = receive(role, rest, seed, 1);
    assert_eq!(whole, bytewise);

    // Re-encoding the messages (one frame each) decodes to the same messages.
    let mut again = Vec::new();
    for m in &whole.0 {
        match m {
            Owned::Text(s) => encode_frame(&mut again, OpCode::Text, true, s.as_bytes(), mask),
            Owned::Binary(b) => encode_frame(&mut again, OpCode::Binary, true, b, mask),
            Owned::Ping(b) => encode_frame(&mut again, OpCode::Ping, true, b, mask),
            Owned::Pong(b) => encode_frame(&mut again, OpCode::Pong, true, b, mask),
            Owned::Close(code, reason) => {
                loopchat::ws::frame::encode_close(&mut again, *code, reason, mask)
            }
        }
    }
    assert_eq!(receive(role, &again, seed, max_chunk), (whole.0, None));

    // Frames: decode, re-encode with the shortest header, decode again.
    let (decoded, err) = frames(role, rest, seed);
    assert_eq!(
        (decoded.clone(), err.clone()),
        frames(role, rest, seed.wrapping_add(1))
    );
    let mut encoded = Vec::new();
    for (fin, op, payload) in &decoded {
        encode_frame(&mut encoded, *op, *fin, payload, mask);
    }
    assert!(encoded.len() <= rest.len());
    assert_eq!(frames(role, &encoded, seed), (decoded, None));
});
