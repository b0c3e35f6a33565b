//! Connect-to-`WELCOME` latency for a connection asking for a nick
//! (`?nick=`), one process alone against one node of a cluster (where the
//! registry in Redis confirms the nick first), in the same run, interleaved.
//!
//!   cargo bench --bench welcome            # N=2000 connects per setup
//!   WELCOME_N=5000 cargo bench --bench welcome
//!
//! Needs redis-server. Sequential connects from one client: the figures are
//! latency, not capacity. Prints p50/p90/p99 in microseconds and the ratios.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::Message;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(extra: &[&str]) -> (Kill, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--rate-limit",
            "0",
            "--log-level",
            "error",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn loopchat");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .parse()
        .unwrap();
    (Kill(child), addr)
}

fn redis_up(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"+PONG\r\n"
}

fn cluster_up(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut m = String::new();
    let _ = s.read_to_string(&mut m);
    m.lines().any(|l| l == "loopchat_redis_up 1")
}

/// Microseconds from TCP connect to the `WELCOME` line, for `nick`.
fn one(addr: SocketAddr, nick: &str) -> u64 {
    let t = Instant::now();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) =
        tungstenite::client(format!("ws://{addr}/ws?nick={nick}&room=bench"), stream).unwrap();
    loop {
        if let Message::Text(l) = ws.read().unwrap() {
            assert_eq!(l.as_str(), format!("WELCOME {nick}"), "nick not granted");
            break;
        }
    }
    let us = t.elapsed().as_micros() as u64;
    let _ = ws.close(None);
    let _ = ws.flush();
    us
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let n: usize = std::env::var("WELCOME_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let port = free_port();
    let _redis = Kill(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_up(port) {
        assert!(Instant::now() < deadline, "redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("redis://127.0.0.1:{port}");
    let (_alone, alone) = start(&[]);
    let (_node, node) = start(&["--redis", &url]);
    while !cluster_up(node) {
        assert!(Instant::now() < deadline, "node did not join");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Warm-up, then interleaved: one connect to each per round.
    for i in 0..100 {
        one(alone, &format!("w{i}"));
        one(node, &format!("w{i}"));
    }
    let (mut a, mut c) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        a.push(one(alone, &format!("u{i}")));
        c.push(one(node, &format!("u{i}")));
    }
    println!("connect-to-WELCOME for ?nick=, {n} sequential connects each, microseconds");
    println!("{:<28}{:>8}{:>8}{:>8}", "setup", "p50", "p90", "p99");
    let rows = [
        (
            "single process",
            pct(&mut a, 0.5),
            pct(&mut a, 0.9),
            pct(&mut a, 0.99),
        ),
        (
            "cluster node (registry)",
            pct(&mut c, 0.5),
            pct(&mut c, 0.9),
            pct(&mut c, 0.99),
        ),
    ];
    for (name, p50, p90, p99) in rows {
        println!("{name:<28}{p50:>8}{p90:>8}{p99:>8}");
    }
    println!(
        "ratio cluster/single: p50 {:.2}x, p99 {:.2}x",
        rows[1].1 as f64 / rows[0].1 as f64,
        rows[1].3 as f64 / rows[0].3 as f64
    );
}
