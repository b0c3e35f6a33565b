//! `--log-format json`: every stderr line of the real binary is one JSON object
//! with an RFC 3339 UTC timestamp, level, target and message, plus the record's
//! structured fields; the text format carries a date.

mod common;

use std::io::{BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the server with `args`, chat once (join, say something, /quit), stop it
/// with SIGTERM and return everything it wrote to stderr.
fn run_and_collect_stderr(args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["--listen", "127.0.0.1:0", "--shutdown-timeout", "2s"])
        .args(args)
        .env_remove("LOOPCHAT_LOG_FORMAT")
        .env_remove("LOOPCHAT_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loopchat");
    let addr =
        common::listening_addr(&mut BufReader::new(child.stdout.take().unwrap())).to_string();
    // Read stderr on a thread so a full pipe never stalls the server.
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let mut p = Proc(child);

    let (mut ws, _) =
        tungstenite::connect(format!("ws://{addr}/ws?nick=logbot&room=logs")).expect("connect");
    ws.send(tungstenite::Message::text("hello logs")).unwrap();
    ws.send(tungstenite::Message::text("/quit bye")).unwrap();
    // Bounded: the server closes after /quit.
    for _ in 0..20 {
        match ws.read() {
            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(ws);

    // A page on another origin: refused, and said so at info.
    for _ in 0..3 {
        use std::io::Write;
        let mut t = std::net::TcpStream::connect(&addr).unwrap();
        t.write_all(
            b"GET /ws HTTP/1.1\r\nHost: chat.example\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nOrigin: https://elsewhere.example\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let mut answer = Vec::new();
        t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = t.read_to_end(&mut answer);
        assert!(answer.starts_with(b"HTTP/1.1 403"), "{answer:?}");
    }

    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) }, 0);
    let out = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server exits after SIGTERM");
    let status = p.0.wait().unwrap();
    assert!(status.success(), "{status:?}\n{out}");
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn is_rfc3339_utc_millis(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

#[test]
fn json_logs_are_one_object_per_line() {
    let out = run_and_collect_stderr(&["--log-format", "json", "--log-level", "debug"]);
    let mut n = 0;
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n--- all ---\n{out}"));
        let obj = v.as_object().expect("an object");
        let ts = obj["@timestamp"].as_str().expect("@timestamp");
        assert!(is_rfc3339_utc_millis(ts), "{ts}");
        let level = obj["level"].as_str().expect("level");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "{line}"
        );
        assert!(obj["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("loopchat")));
        assert!(obj["message"].is_string(), "{line}");
        n += 1;
    }
    assert!(n >= 3, "too few lines:\n{out}");
    // Records about a connection carry its fields, numbers as numbers.
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let closed = records
        .iter()
        .find(|r| r["message"] == "closed" && r["nick"] == "logbot")
        .unwrap_or_else(|| panic!("no `closed` record with the nick:\n{out}"));
    assert!(closed["conn"].is_u64(), "{closed}");
    assert_eq!(closed["peer"], "127.0.0.1", "{closed}");
    assert!(
        records
            .iter()
            .any(|r| r["message"] == "closing" && r["code"] == 1000 && r["conn"] == closed["conn"]),
        "no `closing` record with code 1000 for the connection:\n{out}"
    );
    assert!(out.contains("shutdown complete"), "{out}");
    // Three refusals in well under a second: logged once or a few times, never
    // once per request without limit; with the Origin as a field.
    let refused: Vec<_> = records
        .iter()
        .filter(|r| {
            r["level"] == "INFO"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("WebSocket upgrade refused"))
        })
        .collect();
    assert!((1..=3).contains(&refused.len()), "{out}");
    assert_eq!(refused[0]["origin"], "https://elsewhere.example", "{out}");
    assert_eq!(refused[0]["host"], "chat.example", "{out}");
}

#[test]
fn text_logs_carry_a_date() {
    let out = run_and_collect_stderr(&["--log-format", "text"]);
    assert!(!out.is_empty());
    for line in out.lines() {
        let ts = line.split(' ').next().unwrap();
        assert!(is_rfc3339_utc_millis(ts), "{line:?}");
    }
}
