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
