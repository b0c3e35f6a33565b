//! Frame decode + unmask and encode throughput, with tungstenite 0.24 as the
//! baseline on the same bytes.
//!
//! Decode variants, all over the same masked client-to-server frames:
//! - `loopchat/decoder`: `FrameDecoder` over the buffer in place (parse + unmask).
//! - `tungstenite/frame_header`: `FrameHeader::parse` over a cursor on the
//!   same buffer + unmasking the payload in place (with loopchat's unmask, so
//!   only the parsing differs).
//! - `loopchat/receiver`: copy into a scratch buffer (as a socket read would),
//!   then `Receiver::feed` until every message is out.
//! - `tungstenite/websocket`: `WebSocket::read` over a cursor (its own buffered
//!   read, parse, unmask, message assembly).

use std::hint::black_box;
use std::io::{Cursor, Read, Write};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loopchat::ws::frame::{encode_frame, FrameDecoder, OpCode, Role};
use loopchat::ws::mask::apply_mask;
use loopchat::ws::message::{Limits, Receiver};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const CASES: [(&str, usize, usize); 3] =
    [("16B", 16, 1000), ("1KiB", 1024, 64), ("64KiB", 65536, 4)];

fn wire(size: usize, count: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut out = Vec::new();
    for _ in 0..count {
        encode_frame(&mut out, OpCode::Binary, true, &payload, Some(MASK));
    }
    out
}

fn decoder_in_place(buf: &mut [u8], limits: &Limits) -> usize {
    let mut dec = FrameDecoder::new(Role::Server);
    let mut pos = 0;
    let mut frames = 0;
    while pos < buf.len() {
        let (n, chunk) = dec.decode(&mut buf[pos..], limits.max_frame).unwrap();
        pos += n;
        if let Some(c) = chunk {
            black_box(c.payload);
            frames += usize::from(c.is_last());
        }
    }
    frames
}

fn tungstenite_header_in_place(buf: &mut [u8]) -> usize {
    use tungstenite::protocol::frame::FrameHeader;
    let mut pos = 0usize;
    let mut frames = 0;
    while pos < buf.len() {
        let mut cursor = Cursor::new(&buf[pos..]);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = pos + cursor.position() as usize;
        let end = start + len as usize;
        let payload = &mut buf[start..end];
        if let Some(m) = header.mask {
            apply_mask(payload, m);
        }
        black_box(&*payload);
        pos = end;
        frames += 1;
    }
    frames
}

fn receiver_copy_in(src: &[u8], scratch: &mut [u8], limits: &Limits) -> usize {
    scratch.copy_from_slice(src);
    let mut rx = Receiver::new(Role::Server);
    let mut pos = 0;
    let mut messages = 0;
    loop {
        let (n, msg) = rx.feed(&mut scratch[pos..], limits).unwrap();
        pos += n;
        match msg {
            Some(m) => {
                black_box(m);
                messages += 1;
            }
            None => break,
        }
    }
    messages
}

/// A byte source for tungstenite's `WebSocket`, which wants Read + Write.
struct Source<'a>(Cursor<&'a [u8]>);

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Source<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tungstenite_websocket(src: &[u8], count: usize) -> usize {
    use tungstenite::protocol::{Role as TRole, WebSocket};
    let mut ws = WebSocket::from_raw_socket(Source(Cursor::new(src)), TRole::Server, None);
    for _ in 0..count {
        black_box(ws.read().unwrap());
    }
    count
}

fn decode(c: &mut Criterion) {
    let limits = Limits::default();
    for (name, size, count) in CASES {
        let src = wire(size, count);
        let mut group = c.benchmark_group(format!("decode_{name}"));
        if size == 16 {
            group.throughput(Throughput::Elements(count as u64));
        } else {
            group.throughput(Throughput::Bytes(src.len() as u64));
        }
        let mut buf = src.clone();
        // Unmasking in place twice restores the bytes; the headers never change.
        group.bench_function("loopchat/decoder", |b| {
            b.iter(|| assert_eq!(decoder_in_place(black_box(&mut buf), &limits), count))
        });
        group.bench_function("tungstenite/frame_header", |b| {
            b.iter(|| assert_eq!(tungstenite_header_in_place(black_box(&mut buf)), count))
        });
        let mut scratch = vec![0u8; src.len()];
        group.bench_function("loopchat/receiver", |b| {
            b.iter(|| {
                assert_eq!(
                    receiver_copy_in(black_box(&src), &mut scratch, &limits),
                    count
                )
            })
        });
        group.bench_function("tungstenite/websocket", |b| {
            b.iter(|| assert_eq!(tungstenite_websocket(black_box(&src), count), count))
        });
        group.finish();
    }
}

fn encode(c: &mut Criterion) {
    for (name, size, _) in CASES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut group = c.benchmark_group(format!("encode_{name}"));
        group.throughput(Throughput::Bytes(size as u64));
        let mut out = Vec::with_capacity(size + 14);
        group.bench_function("loopchat/server", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(&mut out, OpCode::Binary, true, black_box(&payload), None);
                black_box(&out);
            })
        });
        group.bench_function("loopchat/client_masked", |b| {
            b.iter(|| {
                out.clear();
                encode_frame(
                    &mut out,
                    OpCode::Binary,
                    true,
                    black_box(&payload),
                    Some(MASK),
                );
                black_box(&out);
            })
        });
        group.bench_function("tungstenite/server", |b| {
            use tungstenite::protocol::frame::coding::{Data, OpCode as TOp};
            use tungstenite::protocol::frame::FrameHeader;
            let header = FrameHeader {
                opcode: TOp::Data(Data::Binary),
                ..FrameHeader::default()
            };
            b.iter(|| {
                out.clear();
                let p = black_box(&payload);
                header.format(p.len() as u64, &mut out).unwrap();
                out.extend_from_slice(p);
                black_box(&out);
            })
        });
        group.finish();
    }
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
