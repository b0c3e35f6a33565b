//! Users who stay within the protocol and the rate limit but choose expensive
//! things: none of them may hurt anyone else.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, WAIT};

/// A line-protocol client that reads whole lines with a deadline.
struct Line {
    r: BufReader<TcpStream>,
}

impl Line {
    fn connect(addr: SocketAddr) -> Line {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_nodelay(true).unwrap();
        Line {
            r: BufReader::new(s),
        }
    }

    fn send(&mut self, text: &str) {
        self.r.get_mut().write_all(text.as_bytes()).expect("send");
    }

    fn recv(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).expect("read");
        assert!(n > 0, "closed while waiting for a line");
        l.trim_end_matches('\n').to_string()
    }

    /// Lines until one starts with `prefix` (at most 100,000); returns it.
    fn recv_until(&mut self, prefix: &str) -> String {
        for _ in 0..100_000 {
            let l = self.recv();
            if l.starts_with(prefix) {
                return l;
            }
        }
        panic!("no line starting with {prefix:?}");
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
    samples[i]
}

/// The scenario, scaled to a test: tens of thousands of rooms, clients
/// asking for `/rooms` as often as the rate limit lets them, and a bystander
/// whose `/ping` must stay fast. `/rooms` walks only the rooms it lists and
/// costs `query_cost` tokens, so the flood costs the loop next to nothing.
#[test]
fn a_rooms_flood_over_30000_rooms_does_not_delay_a_bystander() {
    let _ = loopchat::server::raise_nofile_limit();
    const CREATORS: usize = 625;
    const PER: usize = 48;
    let mut cfg = common::config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    // 48 joins fit one connection's burst of 50 commands; the lobby is one more.
    cfg.chat.max_rooms = PER + 1;
    let s = TestServer::start(cfg);
    let line = s.line_addr.unwrap();

    let mut creators = Vec::with_capacity(CREATORS);
    for i in 0..CREATORS {
        let mut c = Line::connect(line);
        let mut joins = String::new();
        for j in 0..PER {
            joins.push_str(&format!("/join r{}\n", i * PER + j));
        }
        c.send(&joins);
        creators.push(c);
    }
    for (i, c) in creators.iter_mut().enumerate() {
        c.recv_until(&format!("JOINED r{} ", i * PER + PER - 1));
    }
    let mut bystander = Line::connect(line);
    bystander.recv_until("JOINED ");
    bystander.send("/rooms\n");
    let rooms = bystander.recv_until("ROOMS ");
    let listed = rooms.split(' ').filter(|w| w.contains('=')).count();
    let more: usize = rooms
        .rsplit_once(" +")
        .map_or(0, |(_, n)| n.parse().expect("+N"));
    assert_eq!(listed, 500, "the answer is capped");
    assert_eq!(
        listed + more,
        CREATORS * PER + 1,
        "every room (and the lobby)"
    );

    // Twenty clients ask for /rooms five times a second each: what the rate
    // limit allows at ten tokens per query.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let mut flooders: Vec<TcpStream> = (0..20)
            .map(|_| {
                let s = TcpStream::connect(line).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut answers = 0usize;
            // Bounded: the main thread stops it within seconds (and WAIT caps it).
            let end = Instant::now() + WAIT;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for f in &mut flooders {
                    let _ = f.write(b"/rooms\n");
                }
                let round = Instant::now() + Duration::from_millis(200);
                while Instant::now() < round {
                    for f in &mut flooders {
                        loop {
                            match f.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    answers += buf[..n].iter().filter(|&&b| b == b'\n').count()
                                }
                                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                                Err(_) => break,
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            answers
        })
    };
    let mut rtts = Vec::with_capacity(100);
    for k in 0..100 {
        let t = Instant::now();
        bystander.send(&format!("/ping {k}\n"));
        bystander.recv_until(&format!("PONG {k}"));
        rtts.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let answers = flood.join().unwrap();
    let p50 = percentile(&mut rtts, 0.5);
    let p99 = percentile(&mut rtts, 0.99);
    println!("bystander /ping over {answers} flood answers: p50 {p50:?}, p99 {p99:?}");
    assert!(answers >= 100, "the flood ran ({answers} answers)");
    assert!(
        p99 < Duration::from_millis(100),
        "bystander p99 {p99:?} (p50 {p50:?})"
    );
}
