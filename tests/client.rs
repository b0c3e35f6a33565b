//! `loopchat client`: pipe mode, and reconnecting across a server restart.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

struct Bot {
    child: Child,
    lines: Receiver<String>,
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bot(url: &str, extra: &[&str]) -> Bot {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .arg("client")
        .arg(url)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    Bot { child, lines }
}

impl Bot {
    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Wait for a printed line equal to `want` (bounded by WAIT and 10,000 lines).
    fn expect(&mut self, want: &str) {
        for _ in 0..10_000 {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) if l == want => return,
                Ok(_) => continue,
                Err(_) => panic!("client never printed {want:?}"),
            }
        }
        panic!("client never printed {want:?}");
    }
}

#[test]
fn pipe_mode_sends_every_line_and_exits_cleanly() {
    let s = TestServer::start(config());
    let (mut watcher, _) = Client::chat(&s, "?nick=watcher&room=dev");
    watcher.recv_until(|l| l == "JOINED dev watcher");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["client", &format!("ws://{}/ws?nick=bot", s.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"/join dev\nhello from a pipe\n/who dev\n")
        .unwrap();
    // stdin is closed now: the client sends everything, closes with 1000, exits 0.
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "WELCOME bot");
    assert!(
        lines.contains(&"MSG dev bot hello from a pipe"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("WHO dev ")), "{lines:?}");
    watcher.recv_until(|l| l == "MSG dev bot hello from a pipe");
    watcher.recv_until(|l| l == "LEFT dev bot");
}

#[test]
fn refused_connections_are_not_retried() {
    let mut cfg = config();
    cfg.allow_origin = vec![];
    let s = TestServer::start(cfg);
    // A 404 (wrong path) is the server's final word.
    let out = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["client", &format!("ws://{}/nowhere", s.addr)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404"), "{err}");
    assert!(!err.contains("reconnecting"), "{err}");
}

#[test]
fn reconnects_across_a_server_restart_and_rejoins() {
    let mut first = TestServer::start(config());
    let addr = first.addr;
    let url = format!("ws://{addr}/ws?nick=bot");
    let mut b = bot(
        &url,
        &[
            "--reconnect-base",
            "50ms",
            "--reconnect-max",
            "300ms",
            "--max-attempts",
            "100",
        ],
    );
    b.expect("JOINED lobby bot");
    b.say("/join dev");
    b.expect("JOINED dev bot");

    first.stop().unwrap();
    b.expect("SYS server shutting down");
    let mut cfg = config();
    cfg.listen = addr;
    let second = TestServer::start(cfg);
    // Same nick, both rooms again, dev (the current room) last.
    b.expect("WELCOME bot");
    b.expect("JOINED lobby bot");
    b.expect("JOINED dev bot");
    let (mut watcher, _) = Client::chat(&second, "?nick=watcher&room=dev");
    watcher.recv_until(|l| l == "JOINED dev watcher");
    b.say("back again");
    watcher.recv_until(|l| l == "MSG dev bot back again");
}

/// Wait for `child` to exit, at most `limit`; None if it is still running.
fn wait_bounded(child: &mut Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn exits_promptly_when_input_ends_without_pings() {
    // With no server pings nothing else would wake the client: the end of stdin
    // alone must. Repeated, because the lost wake-up was a race.
    let mut cfg = config();
    cfg.ping_interval = std::time::Duration::ZERO;
    let s = TestServer::start(cfg);
    for round in 0..5 {
        let mut b = bot(&format!("ws://{}/ws?nick=bot{round}", s.addr), &[]);
        b.expect(&format!("JOINED lobby bot{round}"));
        drop(b.child.stdin.take());
        let st =
            wait_bounded(&mut b.child, std::time::Duration::from_secs(5)).unwrap_or_else(|| {
                panic!("round {round}: client still running 5 s after its input ended")
            });
        assert!(st.success(), "round {round}: {st:?}");
    }
}

#[test]
fn a_dead_server_is_reported_as_unreachable_and_exits_1() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    // Input already ended: one attempt, then a failure.
    let out = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["client", &url])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("connection lost"), "{err}");
    // Input still open: it retries, then gives up with 1.
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args([
            "client",
            &url,
            "--max-attempts",
            "2",
            "--reconnect-base",
            "10ms",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = wait_bounded(&mut child, WAIT).expect("client never gave up");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("giving up after 2 attempts"), "{err}");
    assert_eq!(err.matches("cannot connect").count(), 3, "{err}");
}

#[test]
fn a_taken_nick_is_won_back_when_it_frees_up() {
    let s = TestServer::start(config());
    let (mut holder, _) = Client::chat(&s, "?nick=alice");
    holder.recv_until(|l| l == "JOINED lobby alice");
    let mut b = bot(
        &format!("ws://{}/ws?nick=alice", s.addr),
        &["--nick-retry-max", "100ms"],
    );
    let welcome = b.lines.recv_timeout(WAIT).expect("no WELCOME");
    let guest = welcome
        .strip_prefix("WELCOME ")
        .filter(|n| n.starts_with("guest-"))
        .unwrap_or_else(|| panic!("expected a guest nick, got {welcome:?}"))
        .to_string();
    b.expect("ERR nick-taken nick taken, using a guest nick");
    // Retries while alice is here are refused quietly; once she leaves, the
    // client gets its nick back by itself.
    holder.send("/quit");
    holder.expect_close();
    b.expect(&format!("NICK {guest} alice"));
    b.say("it is me again");
    b.expect("MSG lobby alice it is me again");
}

#[test]
fn a_quiet_nc_user_is_told_to_send_ping_before_the_idle_close() {
    let mut cfg = config();
    cfg.idle_timeout = std::time::Duration::from_secs(3);
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start(cfg);
    let sock = raw(s.line_addr.unwrap());
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut w = sock.try_clone().unwrap();
    let mut lines = BufReader::new(sock).lines();
    let mut next = || {
        lines
            .next()
            .expect("connection open")
            .expect("a line within WAIT")
    };
    assert!(next().starts_with("WELCOME guest-"));
    assert!(next().starts_with("JOINED lobby guest-"));
    let start = std::time::Instant::now();
    // At two thirds of the timeout, before any close.
    let warn = "SYS idle: this connection closes in 1 s (after 3 s without input); send /ping or any line to stay";
    assert_eq!(next(), warn);
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    // Doing as told keeps it open: the next thing is the next warning, not a close.
    w.write_all(b"/ping 1\n").unwrap();
    assert_eq!(next(), "PONG 1");
    assert_eq!(next(), warn);
    // Silence after that: closed, as before.
    assert_eq!(next(), "SYS idle timeout");
}

#[test]
fn quit_typed_ends_the_client_without_reconnecting() {
    let s = TestServer::start(config());
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["client", &format!("ws://{}/ws?nick=leaver", s.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The input stays open: only the /quit says the user is done.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "/quit see you").unwrap();
    stdin.flush().unwrap();
    let st = wait_bounded(&mut child, WAIT).expect("client still running after /quit");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(st.success(), "{st:?}: {err}");
    assert!(!err.contains("reconnecting"), "{err}");
    drop(stdin);
}

#[test]
fn times_come_from_the_servers_tags_and_the_tag_block_is_not_printed() {
    let s = TestServer::start(config());
    let url = format!("ws://{}/ws?nick=stamp&room=dev&caps=ids", s.addr);
    let run = |time: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
            .args(["client", &url, "--time", time])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"stamped\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let raw = run("never");
    let tagged = raw
        .lines()
        .find(|l| l.ends_with(" MSG dev stamp stamped"))
        .unwrap_or_else(|| panic!("{raw}"));
    assert!(tagged.starts_with("@id="), "the server tags it: {tagged}");
    let timed = run("always");
    let line = timed
        .lines()
        .find(|l| l.ends_with(" MSG dev stamp stamped"))
        .unwrap_or_else(|| panic!("{timed}"));
    let (clock, rest) = line.split_at(8);
    assert_eq!(rest, " MSG dev stamp stamped", "{line}");
    assert!(
        clock.bytes().enumerate().all(|(i, b)| if i == 2 || i == 5 {
            b == b':'
        } else {
            b.is_ascii_digit()
        }),
        "{line}"
    );
    assert!(timed.lines().all(|l| !l.contains('@')), "{timed}");
}

/// A TCP proxy in front of the server whose connections the test can cut
/// (both sides shut down: no close frame, as when a network drops) and whose
/// new connections it can hold back until told, so lines are said while the
/// client is surely away.
struct Proxy {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    /// One message per connection accepted.
    accepted: Receiver<()>,
}

impl Proxy {
    fn start(target: std::net::SocketAddr) -> Proxy {
        use std::sync::{Arc, Condvar, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new((Mutex::new(true), Condvar::new()));
        let live: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (a, accepted) = mpsc::channel();
        let (o, l) = (open.clone(), live.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { return };
                let _ = a.send(());
                // Held while the proxy is closed: the client's connect
                // succeeds, its handshake waits.
                let (lock, cv) = &*o;
                let guard = cv.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
                drop(guard);
                let Ok(up) = std::net::TcpStream::connect(target) else {
                    return;
                };
                let mut live = l.lock().unwrap();
                live.push(down.try_clone().unwrap());
                live.push(up.try_clone().unwrap());
                drop(live);
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            addr,
            open,
            live,
            accepted,
        }
    }

    /// Drop every connection (no close frame either way) and hold new ones.
    fn cut(&self) {
        *self.open.0.lock().unwrap() = false;
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Let connections through again.
    fn reopen(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }
}

impl Bot {
    /// Every printed line up to and including the one equal to `want`.
    fn until(&mut self, want: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) => {
                    let done = l == want;
                    seen.push(l);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("client never printed {want:?}; printed {seen:?}"),
            }
        }
        panic!("client never printed {want:?}");
    }
}

/// The bot's connection is cut; 20 lines are said while it is away; it
/// comes back and prints each exactly once, in order, then live traffic.
fn cut_and_come_back(cfg: loopchat::server::Config, resumes: bool) {
    let s = TestServer::start(cfg);
    let proxy = Proxy::start(s.addr);
    let mut b = bot(
        &format!("ws://{}/ws?nick=bot&room=lobby", proxy.addr),
        &["--reconnect-base", "20ms", "--reconnect-max", "100ms"],
    );
    b.expect("JOINED lobby bot");
    b.say("/join dev");
    b.expect("JOINED dev bot");
    let (mut w, _) = Client::chat(&s, "?nick=watcher&room=dev");
    w.recv_until(|l| l == "JOINED dev watcher");
    w.send("before the cut");
    b.expect("MSG dev watcher before the cut");

    while proxy.accepted.try_recv().is_ok() {}
    proxy.cut();
    // The client noticed and is trying again (held by the proxy) before
    // anything is said: every line below is said while it is away.
    proxy
        .accepted
        .recv_timeout(WAIT)
        .expect("the client did not reconnect");
    for i in 1..=20 {
        w.send(&format!("away {i}"));
    }
    let mut heard = w.recv_until_eq("MSG dev watcher away 20");
    proxy.reopen();

    // Back: the same nick, the 20 lines (resumed, or from the room's
    // history after a rejoin), then a live line.
    let mut printed = b.until("WELCOME bot");
    printed.extend(b.until("MSG dev watcher away 20"));
    w.send("live after");
    printed.extend(b.until("MSG dev watcher live after"));
    let away: Vec<&str> = printed
        .iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("MSG dev watcher "))
        .collect();
    let want: Vec<String> = (1..=20)
        .map(|i| format!("MSG dev watcher away {i}"))
        .chain(["MSG dev watcher live after".to_string()])
        .collect();
    assert_eq!(away, want, "every line once, in order: {printed:#?}");
    assert!(
        printed.iter().all(|l| !l.starts_with('@')),
        "tags the client asked for are not printed: {printed:#?}"
    );
    w.send("/ping end");
    heard.extend(w.recv_until_eq("PONG end"));
    if resumes {
        assert!(
            printed.contains(&"RESUMED dev 20".to_string()),
            "{printed:#?}"
        );
        // Resumed, not rejoined: no JOINED for the bot, no LEFT for the others.
        assert!(
            !printed.iter().any(|l| l.starts_with("JOINED ")),
            "{printed:#?}"
        );
        assert!(!heard.iter().any(|l| l == "LEFT dev bot"), "{heard:?}");
    } else {
        // No session: the v1 rejoin (the others see it), and the gap is
        // filled from the room's history.
        assert!(
            printed.contains(&"JOINED dev bot".to_string()),
            "{printed:#?}"
        );
        assert!(
            printed.iter().any(|l| l.starts_with("HISTORY dev ")),
            "{printed:#?}"
        );
        assert!(heard.iter().any(|l| l == "LEFT dev bot"), "{heard:?}");
    }
    assert!(b.child.try_wait().unwrap().is_none(), "the client exited");
}

#[test]
fn a_cut_connection_resumes_and_prints_every_missed_line_once() {
    cut_and_come_back(config(), true);
}

#[test]
fn without_resume_on_the_server_the_client_rejoins_and_fills_the_gap_from_history() {
    let mut cfg = config();
    cfg.chat.session_ttl_ms = 0;
    cut_and_come_back(cfg, false);
}
