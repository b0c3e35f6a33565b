//! Server-side opening handshake: parse a typical browser upgrade request,
//! validate it, compute Sec-WebSocket-Accept and write the 101 response; and the
//! same request through tungstenite's server handshake as the baseline.
//!
//! Run: `cargo bench --bench handshake -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use loopchat::ws::handshake::{
    accept_key, origin_allowed, parse_request, write_upgrade_response, Status,
    DEFAULT_MAX_HEADER_BYTES,
};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request as TsRequest};

/// What Chrome sends to a WebSocket endpoint: ~520 bytes, 12 headers.
const BROWSER_REQUEST: &[u8] = b"GET /ws?nick=ann&room=lobby HTTP/1.1\r\n\
Host: chat.example.com:9000\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://chat.example.com:9000\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// The whole server path; returns the head length so nothing is optimised away.
fn loopchat_handshake(buf: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let Ok(Status::Complete(req)) = parse_request(buf, DEFAULT_MAX_HEADER_BYTES) else {
        return 0;
    };
    let Ok(up) = req.websocket() else {
        return 0;
    };
    if !origin_allowed(req.origin, req.host, &[]) {
        return 0;
    }
    write_upgrade_response(out, up.key, None);
    req.len
}

fn tungstenite_handshake(buf: &[u8], out: &mut Vec<u8>) -> usize {
    out.clear();
    let Ok(Some((len, req))) = TsRequest::try_parse(buf) else {
        return 0;
    };
    let Ok(resp) = create_response(&req) else {
        return 0;
    };
    if write_response(&mut *out, &resp).is_err() {
        return 0;
    }
    len
}

fn bench(c: &mut Criterion) {
    // Both must accept the request and produce a 101, or the comparison is void.
    let mut out = Vec::with_capacity(256);
    assert_eq!(
        loopchat_handshake(BROWSER_REQUEST, &mut out),
        BROWSER_REQUEST.len()
    );
    assert!(out.starts_with(b"HTTP/1.1 101"));
    assert_eq!(
        tungstenite_handshake(BROWSER_REQUEST, &mut out),
        BROWSER_REQUEST.len()
    );
    assert!(out.starts_with(b"HTTP/1.1 101"));

    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("loopchat/parse+validate+accept+write", |b| {
        b.iter(|| loopchat_handshake(black_box(BROWSER_REQUEST), &mut out))
    });
    g.bench_function("tungstenite/parse+validate+accept+write", |b| {
        b.iter(|| tungstenite_handshake(black_box(BROWSER_REQUEST), &mut out))
    });
    g.bench_function("loopchat/parse+validate", |b| {
        b.iter(
            || match parse_request(black_box(BROWSER_REQUEST), DEFAULT_MAX_HEADER_BYTES) {
                Ok(Status::Complete(req)) => req.websocket().is_ok(),
                _ => false,
            },
        )
    });
    g.bench_function("tungstenite/parse", |b| {
        b.iter(|| TsRequest::try_parse(black_box(BROWSER_REQUEST)).is_ok())
    });
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    g.bench_function("loopchat/accept_key", |b| {
        b.iter(|| accept_key(black_box(key)))
    });
    g.bench_function("tungstenite/derive_accept_key", |b| {
        b.iter(|| tungstenite::handshake::derive_accept_key(black_box(key.as_bytes())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
