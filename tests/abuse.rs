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

/// The issue's scenario, scaled to a test: tens of thousands of rooms, clients
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

/// Resident memory of this process (the server runs in it), from /proc.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A client socket with a tiny receive buffer, so that what it does not read
/// piles up in the server's outbox instead of the kernel (loopback would
/// otherwise take most of a megabyte per connection).
fn small_window(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 expected")
    };
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr is a fully initialised local.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// The issue's fan-out scenario, scaled down: hundreds of clients that never
/// read, in one room with a sender of 4 KB lines within its rate limit. Each
/// may hold its own cap (512 KiB), far more than the budget in all; the budget
/// holds, and a reader that keeps up still gets every line.
#[test]
fn fan_out_to_readers_that_never_read_stays_under_the_outbox_budget() {
    let _ = loopchat::server::raise_nofile_limit();
    const SILENT: usize = 300;
    const LINES: usize = 200;
    const BUDGET: usize = 16 << 20;
    let mut cfg = common::config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.chat.rate_limit = 200;
    cfg.chat.presence_limit = 0;
    cfg.outbox_total = BUDGET;
    cfg.outbox_grace = Duration::from_secs(60);
    // What a reader does not take stays in the process, not in the kernel.
    cfg.send_buffer = 16 * 1024;
    let s = TestServer::start(cfg);
    let line = s.line_addr.unwrap();
    let mut reader = Line::connect(line);
    reader.recv_until("JOINED lobby");
    let mut sender = Line::connect(line);
    sender.recv_until("JOINED lobby");
    let silent: Vec<TcpStream> = (0..SILENT).map(|_| small_window(line)).collect();
    // Every silent client is in once the sender's /who counts them all.
    for _ in 0..100 {
        sender.send("/who\n");
        let who = sender.recv_until("WHO ");
        let listed = who.split(' ').count() - 2;
        let more: usize = who.rsplit_once(" +").map_or(0, |(_, n)| n.parse().unwrap());
        if listed + more == SILENT + 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The sender's own copies are read and thrown away, so it is never paused.
    let mut discard = sender.r.get_ref().try_clone().unwrap();
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(discard.read(&mut buf), Ok(n) if n > 0) {}
    });
    let base = rss_bytes();

    let text = "x".repeat(4000);
    let reading = std::thread::spawn(move || {
        for k in 0..LINES {
            let l = reader.recv_until("MSG lobby ");
            assert!(
                l.ends_with(&format!("{k} {text}")),
                "line {k} lost or reordered"
            );
        }
    });
    let text = "x".repeat(4000);
    let mut w = sender.r.get_ref().try_clone().unwrap();
    for k in 0..LINES {
        w.write_all(format!("{k} {text}\n").as_bytes()).unwrap();
        if k % 10 == 9 {
            // 100 lines a second, half the rate limit.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    reading
        .join()
        .expect("the reader that keeps up got every line");
    let grown = rss_bytes().saturating_sub(base);
    let mut metrics = common::http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1;
    metrics.retain(|c| c != '\r');
    let drops = metrics
        .lines()
        .find_map(|l| l.strip_prefix("loopchat_slow_consumer_drops_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("drops counter");
    println!(
        "RSS grew {} KiB for {} KiB of fan-out to {SILENT} silent readers (budget {} KiB, {drops} lines dropped)",
        grown >> 10,
        (SILENT * LINES * 4000) >> 10,
        BUDGET >> 10
    );
    assert!(drops > 0, "the silent readers lost lines");
    // The budget, an eighth over it, a few KiB per reader and allocator slack
    // (without the budget: 160 MB).
    assert!(
        grown < BUDGET * 2 + SILENT * 8192,
        "RSS grew by {grown} bytes"
    );
    drop(silent);
    drop(sender);
    drop(s);
    draining.join().unwrap();
}

fn metric(s: &TestServer, name: &str) -> u64 {
    let body = common::http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1;
    body.lines()
        .find_map(|l| l.trim_end().strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A reader that stays behind its own cap longer than `--outbox-grace` is
/// closed, even far below `--outbox-hard`.
#[test]
fn a_reader_behind_longer_than_the_grace_period_is_closed() {
    let mut cfg = common::config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.chat.rate_limit = 0;
    cfg.outbox_soft = 64 * 1024;
    cfg.outbox_hard = 1 << 30;
    cfg.outbox_grace = Duration::from_millis(500);
    cfg.send_buffer = 16 * 1024;
    let s = TestServer::start(cfg);
    let line = s.line_addr.unwrap();
    let mut sender = Line::connect(line);
    sender.recv_until("JOINED lobby");
    let mut silent = small_window(line);
    sender.recv_until("JOINED lobby");
    let mut discard = sender.r.get_ref().try_clone().unwrap();
    let draining = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(discard.read(&mut buf), Ok(n) if n > 0) {}
    });
    let text = "y".repeat(4000);
    let start = Instant::now();
    let mut closed = false;
    // Bounded: ten seconds at most.
    while start.elapsed() < WAIT {
        for k in 0..20 {
            sender.send(&format!("{k} {text}\n"));
        }
        if metric(&s, "loopchat_slow_consumer_disconnects_total") == 1 {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    assert!(closed, "still connected after {took:?}");
    // Deadlines are accurate to one 100 ms tick.
    assert!(
        took >= Duration::from_millis(400),
        "closed before the grace period: {took:?}"
    );
    // The server's side is gone: reading reaches the end.
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut ended = false;
    for _ in 0..10_000 {
        match silent.read(&mut buf) {
            Ok(0) | Err(_) => {
                ended = true;
                break;
            }
            Ok(_) => {}
        }
    }
    assert!(ended);
    drop(sender);
    drop(s);
    draining.join().unwrap();
}

/// Nothing another user types can drive a terminal: control characters,
/// DEL and the Unicode line separators arrive replaced, over WebSocket and
/// over the line protocol alike.
#[test]
fn control_characters_are_replaced_in_what_others_see() {
    let mut cfg = common::config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start(cfg);
    let (mut mallory, _) = common::Client::chat(&s, "?nick=mallory");
    let mut nc = Line::connect(s.line_addr.unwrap());
    nc.recv_until("JOINED lobby");
    mallory.recv_until(|l| l.starts_with("JOINED lobby guest"));
    let evil =
        "\x1b[1G\x1b[2KSYS mallory is now an operator\0\x0b\x0c\u{85}\u{2028}\u{2029}\x7f\tok\r";
    mallory.send(evil);
    let want = "MSG lobby mallory \u{FFFD}[1G\u{FFFD}[2KSYS mallory is now an operator\
                \u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\tok ";
    assert_eq!(nc.recv_until("MSG "), want);
    assert_eq!(mallory.recv_until(|l| l.starts_with("MSG ")), want);
}

/// The real binary, killed on drop (even while stopped).
struct Proc {
    child: std::process::Child,
    line: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_line_server() -> Proc {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["--listen", "127.0.0.1:0", "--line-listen", "127.0.0.1:0"])
        .args(["--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn loopchat");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = None;
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        if let Some(a) = l.trim().strip_prefix("line protocol on ") {
            line = Some(a.parse().unwrap());
        }
    }
    Proc {
        child,
        line: line.expect("line listener address on stdout"),
    }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(p.child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

/// A client sending at half the rate limit is not punished for a backlog
/// that built up while the server was stopped: its commands are charged by
/// when they arrived, not when the server got to them.
#[test]
fn a_backlog_from_a_stopped_server_is_not_rate_limited() {
    let p = spawn_line_server();
    let mut c = Line::connect(p.line);
    c.recv_until("JOINED lobby");
    c.send("/ping start\n");
    c.recv_until("PONG start");
    signal(&p, libc::SIGSTOP);
    // 25 lines a second (the limit is 50) for 4.5 s: 112 lines queue up.
    let sent = 112;
    for k in 0..sent {
        c.send(&format!("line {k}\n"));
        std::thread::sleep(Duration::from_millis(40));
    }
    signal(&p, libc::SIGCONT);
    c.send("/ping end\n");
    let mut got = 0;
    for _ in 0..10_000 {
        let l = c.recv();
        assert!(
            !l.starts_with("ERR"),
            "punished for the server's stall: {l}"
        );
        if l.starts_with("MSG lobby ") {
            got += 1;
        }
        if l == "PONG end" {
            break;
        }
    }
    assert_eq!(got, sent, "every line was said");
}

/// An echo client that never reads stops being read once all outboxes
/// together are over the budget, long before its own cap.
#[test]
fn an_echo_client_that_never_reads_is_paused_by_the_budget() {
    const BUDGET: usize = 256 * 1024;
    let mut cfg = common::config();
    cfg.outbox_soft = 4 << 20;
    cfg.outbox_hard = 8 << 20;
    cfg.outbox_total = BUDGET;
    cfg.send_buffer = 16 * 1024;
    let s = TestServer::start(cfg);
    let mut c = small_window(s.addr);
    c.write_all(common::upgrade_request("/echo").as_bytes())
        .unwrap();
    let (head, _) = common::read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = common::client_frame(0x2, true, &[7u8; 64 * 1024]);
    c.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Bounded: 64 MiB at most; the server stops reading long before.
    let mut sent = 0;
    for _ in 0..1024 {
        if c.write_all(&frame).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent < 1024, "the server never stopped reading");
    let queued = metric(&s, "loopchat_outbox_bytes") as usize;
    println!("echo paused after {sent} frames of 64 KiB with {queued} bytes queued");
    assert!(queued <= BUDGET + 2 * frame.len(), "{queued} bytes queued");
}

/// An echo client that never reads is closed once it has been behind its own
/// cap for `--outbox-grace`, as a chat reader that stays behind is, instead of
/// holding its output until the idle timeout (90 s by default).
#[test]
fn an_echo_client_that_never_reads_is_closed_after_the_grace() {
    let mut cfg = common::config();
    cfg.outbox_soft = 64 * 1024;
    cfg.outbox_grace = Duration::from_millis(500);
    cfg.send_buffer = 16 * 1024;
    let s = TestServer::start(cfg);
    let mut c = small_window(s.addr);
    c.write_all(common::upgrade_request("/echo").as_bytes())
        .unwrap();
    let (head, _) = common::read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // One message far over the cap and over what the sockets can hold.
    let frame = common::client_frame(0x2, true, &vec![7u8; 1 << 20]);
    c.write_all(&frame).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut closed = 0;
    while Instant::now() < deadline {
        closed = metric(&s, "loopchat_slow_consumer_disconnects_total");
        if closed > 0 {
            break;
        }
    }
    assert_eq!(closed, 1, "the silent echo client is still open");
    assert_eq!(
        metric(&s, "loopchat_outbox_bytes"),
        0,
        "its output went with it"
    );
}
