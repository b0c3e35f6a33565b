//! Heartbeats, timeouts, connection limits, rate limits and slow consumers.

mod common;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Upgrade a raw connection to `path`; returns it and any bytes after the head.
fn raw_ws(s: &TestServer, path: &str) -> (std::net::TcpStream, Vec<u8>) {
    let mut r = raw(s.addr);
    r.write_all(upgrade_request(path).as_bytes()).unwrap();
    let (head, rest) = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (r, rest)
}

/// The next server frame from a raw connection; `pending` holds bytes read past it.
fn next_frame(r: &mut std::net::TcpStream, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        let (frames, _) = server_frames(pending);
        if let Some(f) = frames.into_iter().next() {
            let header = match pending[1] & 0x7f {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            pending.drain(..header + f.1.len());
            return f;
        }
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0, "closed while waiting for a frame");
        pending.extend_from_slice(&buf[..n]);
    }
    panic!("no frame");
}

#[test]
fn pings_are_sent_and_pongs_keep_the_connection_alive() {
    let mut cfg = config();
    cfg.ping_interval = Duration::from_millis(200);
    cfg.idle_timeout = Duration::from_millis(700);
    let s = TestServer::start(cfg);
    let (mut r, mut pending) = raw_ws(&s, "/echo");
    // Ten pings span well over the idle timeout: answering them keeps us open.
    for _ in 0..10 {
        let (op, payload) = next_frame(&mut r, &mut pending);
        assert_eq!(op, 9, "expected a ping");
        r.write_all(&client_frame(10, true, &payload)).unwrap();
    }
    // Now stay silent: the idle timeout closes us.
    let start = Instant::now();
    loop {
        let (op, payload) = next_frame(&mut r, &mut pending);
        if op == 8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1000);
            break;
        }
        assert!(start.elapsed() < WAIT);
    }
}

#[test]
fn idle_connections_are_closed_and_zero_turns_it_off() {
    let mut cfg = config();
    cfg.ping_interval = Duration::ZERO;
    cfg.idle_timeout = Duration::from_millis(300);
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start(cfg);
    let (mut r, pending) = raw_ws(&s, "/ws");
    let frames = read_frames_until_close(&mut r, pending);
    assert_eq!(close_code(&frames), 1000);
    // Line clients are told and closed too.
    let mut l = raw(s.line_addr.unwrap());
    let text = String::from_utf8(read_to_close(&mut l)).unwrap();
    assert!(text.ends_with("SYS idle timeout\n"), "{text:?}");
}

#[test]
fn slowloris_handshake_times_out() {
    let mut cfg = config();
    cfg.handshake_timeout = Duration::from_millis(500);
    let s = TestServer::start(cfg);
    let mut r = raw(s.addr);
    let start = Instant::now();
    let mut w = r.try_clone().unwrap();
    // Trickle one byte every 100 ms: activity must not extend the deadline.
    let trickle = std::thread::spawn(move || {
        for b in b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if w.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let got = read_to_close(&mut r);
    assert!(got.is_empty(), "no answer expected, got {got:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    trickle.join().unwrap();
}

#[test]
fn max_connections_answers_503() {
    let mut cfg = config();
    cfg.max_connections = 2;
    let s = TestServer::start(cfg);
    let (a, _) = raw_ws(&s, "/echo");
    let (mut b, _) = raw_ws(&s, "/echo");
    let (st, resp) = http(s.addr, &upgrade_request("/echo"));
    assert_eq!(st, 503, "{resp}");
    // Once one has closed, there is room again. The server learns of the close
    // asynchronously, so a few attempts may still meet 503 (bounded).
    b.write_all(&client_frame(8, true, &1000u16.to_be_bytes()))
        .unwrap();
    let _ = read_to_close(&mut b);
    drop(b);
    let mut admitted = false;
    for _ in 0..200 {
        let (st, _) = http(s.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        if st == 200 {
            admitted = true;
            break;
        }
        assert_eq!(st, 503);
    }
    assert!(admitted, "the closed connection's slot was never freed");
    drop(a);
}

/// A line client refused at accept gets one protocol line saying why, then
/// the close: `ERR server-full`, a code of PROTOCOL.md that parses.
#[test]
fn a_line_client_over_max_connections_is_told_server_full() {
    let mut cfg = config();
    cfg.max_connections = 1;
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start(cfg);
    let (_a, _) = raw_ws(&s, "/echo");
    let mut l = raw(s.line_addr.unwrap());
    let text = String::from_utf8(read_to_close(&mut l)).unwrap();
    assert_eq!(text, "ERR server-full server full\n");
    let parsed = loopchat::chat::line::parse(text.trim_end()).map(|(_, l)| l);
    assert_eq!(
        parsed,
        Ok(loopchat::chat::line::Line::Err {
            code: loopchat::chat::ErrorCode::ServerFull,
            text: "server full"
        })
    );
}

#[test]
fn max_per_ip_answers_429() {
    let mut cfg = config();
    cfg.max_per_ip = 1;
    let s = TestServer::start(cfg);
    let (_a, _) = raw_ws(&s, "/echo");
    let (st, _) = http(s.addr, &upgrade_request("/echo"));
    assert_eq!(st, 429);
}

#[test]
fn rate_limit_answers_then_closes_abusers() {
    let mut cfg = config();
    cfg.chat.rate_limit = 5;
    let s = TestServer::start(cfg);
    let (mut c, _) = Client::chat(&s, "?nick=spam");
    for i in 0..200 {
        c.send(&format!("line {i}"));
    }
    c.recv_until(|l| l.starts_with("ERR rate-limited"));
    assert_eq!(u16::from(c.expect_close()), 1008);
}

#[test]
fn a_slow_consumer_is_dropped_and_the_others_get_everything() {
    let mut cfg = config();
    cfg.chat.rate_limit = 0;
    cfg.outbox_soft = 64 * 1024;
    cfg.outbox_hard = 256 * 1024;
    let s = TestServer::start(cfg);
    // The slow one joins and never reads again.
    let (slow, _) = raw_ws(&s, "/ws?nick=slow&room=r");
    let (mut good, _) = Client::chat(&s, "?nick=good&room=r");
    good.recv_until(|l| l == "JOINED r good");
    let (mut talker, _) = Client::chat(&s, "?nick=talker&room=r");
    talker.recv_until(|l| l == "JOINED r talker");
    good.recv_until(|l| l == "JOINED r talker");

    const N: usize = 6000;
    let pad = "x".repeat(4000);
    let reader = std::thread::spawn(move || {
        let mut next = 0;
        let mut saw_left = false;
        for _ in 0..N + 100 {
            let l = good.recv_text();
            if l == "LEFT r slow" {
                saw_left = true;
            } else if let Some(rest) = l.strip_prefix("MSG r talker ") {
                let seq: usize = rest.split(' ').next().unwrap().parse().unwrap();
                assert_eq!(seq, next, "the good reader lost or reordered a message");
                next += 1;
                if next == N {
                    break;
                }
            }
        }
        assert_eq!(next, N);
        (good, saw_left)
    });
    for i in 0..N {
        talker.send(&format!("{i} {pad}"));
        // The talker reads its own copies so that it is not a slow consumer itself.
        let _ = talker.recv_text();
    }
    let (mut good, saw_left) = reader.join().unwrap();
    if !saw_left {
        good.recv_until(|l| l == "LEFT r slow");
    }
    let (st, metrics) = http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(
        metrics.contains("loopchat_slow_consumer_disconnects_total 1"),
        "{metrics}"
    );
    drop(slow);
}

#[test]
fn an_echo_client_that_never_reads_cannot_grow_the_server() {
    let mut cfg = config();
    cfg.outbox_soft = 64 * 1024;
    let s = TestServer::start(cfg);
    let (r, _) = raw_ws(&s, "/echo");
    let mut w = r.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let frame = client_frame(2, true, &vec![7u8; 16 * 1024]);
    // Keep writing until the server stops reading and our writes block (bounded: 64 MiB).
    let mut sent = 0usize;
    while sent < 64 * 1024 * 1024 {
        match w.write(&frame) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 * 1024 * 1024,
        "the server kept reading without bound"
    );
    let (_, metrics) = http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let outbox: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("loopchat_outbox_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    // Soft cap, plus at most one read (64 KiB) of echoes, plus one message.
    assert!(
        outbox <= 64 * 1024 + 64 * 1024 + 16 * 1024 + 1024,
        "outbox grew to {outbox}"
    );
}

#[test]
fn per_ip_limits_use_forwarded_for_only_from_trusted_proxies() {
    let mut cfg = config();
    cfg.max_per_ip = 1;
    cfg.trust_proxy = vec!["127.0.0.1".parse().unwrap()];
    let s = TestServer::start(cfg);
    let via = |client: &str| {
        upgrade_request("/echo").replace(
            "\r\n\r\n",
            &format!("\r\nX-Forwarded-For: 198.51.100.1, {client}\r\n\r\n"),
        )
    };
    let mut first = raw(s.addr);
    first.write_all(via("203.0.113.7").as_bytes()).unwrap();
    let (head, _) = read_head(&mut first);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Same client behind the proxy: over its limit.
    assert_eq!(http(s.addr, &via("203.0.113.7")).0, 429);
    // Another client through the same proxy: its own count.
    let mut other = raw(s.addr);
    other.write_all(via("203.0.113.8").as_bytes()).unwrap();
    let (head, _) = read_head(&mut other);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // Without trust, the header is ignored: all of these are one address.
    let mut cfg = config();
    cfg.max_per_ip = 1;
    let s = TestServer::start(cfg);
    let mut a = raw(s.addr);
    a.write_all(via("203.0.113.7").as_bytes()).unwrap();
    let (head, _) = read_head(&mut a);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(http(s.addr, &via("203.0.113.9")).0, 429);
}
