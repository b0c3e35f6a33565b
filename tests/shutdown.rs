//! Graceful shutdown of the real binary on SIGTERM.

mod common;
use common::*;
use std::io::BufReader;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn loopchat");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let addr = common::listening_addr(&mut out);
    Proc { child, addr }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(p.child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

/// Wait for the process to exit (bounded); returns its exit code.
fn wait_exit(p: &mut Proc, within: Duration) -> i32 {
    let (tx, rx) = mpsc::channel();
    let pid = p.child.id();
    let mut child = std::mem::replace(
        &mut p.child,
        Command::new("true").spawn().expect("spawn true"),
    );
    std::thread::spawn(move || {
        let _ = tx.send(child.wait().map(|s| s.code().unwrap_or(-1)));
    });
    rx.recv_timeout(within)
        .unwrap_or_else(|_| panic!("pid {pid} did not exit within {within:?}"))
        .unwrap()
}

fn connect(addr: SocketAddr, query: &str) -> Client {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}/ws{query}"), stream).unwrap();
    Client { ws }
}

#[test]
fn sigterm_delivers_everything_then_1001_and_exits_zero() {
    let mut p = spawn(&["--rate-limit", "0"]);
    let mut clients: Vec<Client> = (0..3)
        .map(|i| connect(p.addr, &format!("?nick=c{i}&room=r")))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.recv_until(|l| l == format!("JOINED r c{i}"));
    }
    // Everyone has seen everyone join before the messages start.
    clients[0].recv_until(|l| l == "JOINED r c2");
    clients[1].recv_until(|l| l == "JOINED r c2");
    for i in 0..100 {
        clients[0].send(&format!("m{i}"));
    }
    // The server has processed all 100 once the ping comes back.
    clients[0].send("/ping sent");
    let mut seen0 = clients[0].recv_until_eq("PONG sent");
    signal(&p, libc::SIGTERM);
    for (i, c) in clients.iter_mut().enumerate() {
        let mut before = c.recv_until_eq("SYS server shutting down");
        if i == 0 {
            seen0.append(&mut before);
            before = std::mem::take(&mut seen0);
        }
        let msgs = before.iter().filter(|l| l.starts_with("MSG r c0 ")).count();
        assert_eq!(msgs, 100, "client {i} lost messages: {before:?}");
        assert_eq!(u16::from(c.expect_close()), 1001);
    }
    drop(clients);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(10)), 0);
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut p = spawn(&["--shutdown-timeout", "60s"]);
    // A client that never answers our close keeps the graceful path waiting.
    let _stuck = connect(p.addr, "?nick=stuck");
    let mut probe = connect(p.addr, "?nick=probe");
    probe.sync("ready");
    signal(&p, libc::SIGTERM);
    probe.recv_until(|l| l == "SYS server shutting down");
    signal(&p, libc::SIGINT);
    assert_eq!(wait_exit(&mut p, Duration::from_secs(5)), 0);
}
