//! The inflate path with its bound: arbitrary bytes as one compressed
//! message (cut into fragments) through the shared `Inflater`, and the same
//! bytes as RSV1 frames through a deflate `Receiver`. Whatever the input, the
//! output never passes the limit, the shared buffer never grows past it, and a
//! message that does inflate matches a reference inflate with no limit.
#![no_main]
use flate2::{Decompress, FlushDecompress};
use libfuzzer_sys::fuzz_target;
use loopchat::ws::deflate::{set_rsv1, Inflater, TAIL};
use loopchat::ws::frame::{encode_frame, OpCode, Role, MAX_CONTROL_PAYLOAD};
use loopchat::ws::message::{wire_limit, Limits, Receiver};

/// Reference: inflate everything with a generous bound; `None` when invalid
/// or larger than `cap`.
fn reference(data: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(cap + 1);
    let mut pos = 0;
    loop {
        let before = d.total_in();
        let st = d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync).ok()?;
        pos += (d.total_in() - before) as usize;
        if st == flate2::Status::StreamEnd || pos == input.len() || out.len() > cap {
            break;
        }
        if d.total_in() == before {
            break;
        }
    }
    (out.len() <= cap).then_some(out)
}

fuzz_target!(|data: &[u8]| {
    let &[limit_sel, cut_sel, ref body @ ..] = data else {
        return;
    };
    let max = [0usize, 1, 100, 1000, 64 << 10][usize::from(limit_sel % 5)];
    let mut inf = Inflater::new();

    // Direct: fragments of pseudo-random size.
    let step = usize::from(cut_sel % 50) + 1;
    let parts: Vec<&[u8]> = body.chunks(step).collect();
    let got = inf.inflate(&parts, max).map(<[u8]>::to_vec);
    assert!(inf.heap_bytes() <= (max + 1).max(256));
    if let Ok(out) = &got {
        assert!(out.len() <= max);
        // Bytes after a final block are ignored by both; otherwise equal.
        if let Some(want) = reference(body, max) {
            assert_eq!(out, &want);
        }
    }

    // Through a receiver: the same bytes as a compressed binary message in
    // frames of `step` bytes, with a ping in between.
    let limits = Limits {
        max_frame: 1 << 20,
        max_message: max,
    };
    let mask = Some([limit_sel, cut_sel, 7, 9]);
    let mut bytes = Vec::new();
    let n = parts.len().max(1);
    for i in 0..n {
        let at = bytes.len();
        let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
        encode_frame(&mut bytes, op, i + 1 == n, parts.get(i).copied().unwrap_or_default(), mask);
        if i == 0 {
            set_rsv1(&mut bytes, at);
        }
        if i + 1 < n && cut_sel & 0x80 != 0 {
            encode_frame(&mut bytes, OpCode::Ping, true, b"p", mask);
        }
    }
    let mut rx = Receiver::with_deflate(Role::Server, false);
    let mut pos = 0;
    let mut result = None;
    for _ in 0..bytes.len() + 2 {
        match rx.feed_with(&mut bytes[pos..], &limits, Some(&mut inf)) {
            Err(e) => {
                result = Some(Err(e.close_code()));
                break;
            }
            Ok((_, Some(loopchat::ws::message::Message::Binary(b)))) => {
                assert!(b.len() <= max);
                result = Some(Ok(b.to_vec()));
                break;
            }
            Ok((used, Some(_))) => pos += used,
            Ok((_, None)) => break,
        }
        assert!(rx.heap_bytes() <= wire_limit(max) + MAX_CONTROL_PAYLOAD);
        assert!(inf.heap_bytes() <= (max + 1).max(256));
    }
    assert!(inf.heap_bytes() <= (max + 1).max(256));
    match (&got, result) {
        // The compressed size itself passes the wire bound before any inflating.
        (_, Some(Err(1009))) if body.len() > wire_limit(max) => {}
        (Ok(a), Some(Ok(b))) => assert_eq!(a, &b),
        // Data both corrupt and too large may be caught either way first,
        // depending on where the fragments split it.
        (Err(e), Some(Err(code))) => {
            assert!(matches!((e.close_code(), code), (1007 | 1009, 1007 | 1009)))
        }
        (a, b) => panic!("direct {a:?} vs receiver {b:?}"),
    }
});
