//! The cluster with real components: a `redis-server` on a free loopback port
//! and two or three `loopchat` processes joined through it, driven by
//! tungstenite clients. Every wait is bounded; synchronisation is on messages
//! and on `/metrics` (subscription counts), never on a fixed sleep.
//!
//! `LOOPCHAT_TEST_BIN=path` runs them against another `loopchat` binary.
//!
//! Without `redis-server` these tests print `SKIPPED: redis-server not
//! installed`; with `LOOPCHAT_REQUIRE_TOOLS=1` they fail instead.

mod common;

use std::collections::HashSet;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tungstenite::{Message, WebSocket};

/// Longest single wait.
const WAIT: Duration = Duration::from_secs(15);

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn redis_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// None (after saying so loudly) when redis-server is missing, unless
/// `LOOPCHAT_REQUIRE_TOOLS=1` makes that a failure.
fn need_redis(test: &str) -> Option<()> {
    if redis_installed() {
        return Some(());
    }
    if std::env::var("LOOPCHAT_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("{test}: redis-server is required (LOOPCHAT_REQUIRE_TOOLS=1) but not installed: apt-get install redis-server");
    }
    // Straight to the descriptor: the test harness captures print macros.
    let _ = std::io::stderr()
        .write_all(format!("\n*** SKIPPED: redis-server not installed ({test}) ***\n").as_bytes());
    None
}

/// A `redis-server` child, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_on(free_port())
    }

    fn start_on(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let r = Redis { child, port };
        r.wait_ready();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// PING until PONG (bounded).
    fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 16];
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        // PONG, or NOAUTH from a server with a password: it is up.
                        if &buf[..n] == b"+PONG\r\n" || buf[..n].starts_with(b"-NOAUTH") {
                            return;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP (`false`) or SIGCONT (`true`): a Redis that stops answering.
    fn run(&self, go: bool) {
        signal(&self.child, go);
    }
}

/// SIGCONT or SIGSTOP to a child.
fn signal(child: &Child, go: bool) {
    let sig = if go { libc::SIGCONT } else { libc::SIGSTOP };
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({sig})");
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `loopchat` process, killed on drop.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Node {
    fn start(redis: &Redis, extra: &[&str]) -> Node {
        Node::start_listen(redis, "127.0.0.1:0", extra)
    }

    fn start_listen(redis: &Redis, listen: &str, extra: &[&str]) -> Node {
        Node::start_url(&redis.url(), listen, extra)
    }

    fn start_url(url: &str, listen: &str, extra: &[&str]) -> Node {
        // `LOOPCHAT_TEST_BIN` runs the scenarios against another build (say,
        // an older one, to see a test fail there).
        let bin = std::env::var_os("LOOPCHAT_TEST_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_loopchat").into());
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--redis", url, "--rate-limit", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("LOOPCHAT_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn loopchat");
        let addr = common::listening_addr(&mut BufReader::new(child.stdout.take().unwrap()));
        Node { child, addr }
    }

    /// `GET /metrics`.
    fn metrics(&self) -> String {
        metrics(self.addr)
    }

    /// A metric's value (first sample).
    fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics(), name)
    }

    /// Wait until the subscriber link has confirmed `n` channels
    /// (`lc:all`, the node's own, and one per local room).
    fn wait_subscriptions(&self, n: u64) {
        self.wait_subscriptions_within(n, WAIT);
    }

    fn wait_subscriptions_within(&self, n: u64, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let m = self.metrics();
            if metric(&m, "loopchat_redis_up") == 1.0
                && metric(&m, "loopchat_redis_subscriptions") == n as f64
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never had {n} subscriptions:\n{m}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// This node's id, from `/metrics`.
    fn id(&self) -> String {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("loopchat_redis_node_info{node=\""))
            .and_then(|l| l.split('"').next())
            .expect("node id in /metrics")
            .to_string()
    }

    /// Wait (bounded) until `name` reaches at least `v`.
    fn wait_metric(&self, name: &str, v: f64) {
        let deadline = Instant::now() + WAIT;
        while self.metric(name) < v {
            assert!(Instant::now() < deadline, "{name} never reached {v}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect for /metrics");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name || k.starts_with(&format!("{name}{{"))).then(|| v.parse().ok())?
        })
        .unwrap_or(f64::NAN)
}

/// A chat client.
struct Client {
    ws: WebSocket<TcpStream>,
    nick: String,
}

impl Client {
    fn connect(addr: SocketAddr, query: &str) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (ws, _) =
            tungstenite::client(format!("ws://{addr}/ws{query}"), stream).expect("handshake");
        let mut c = Client {
            ws,
            nick: String::new(),
        };
        let w = c.recv();
        c.nick = w
            .strip_prefix("WELCOME ")
            .unwrap_or_else(|| panic!("expected WELCOME, got {w:?}"))
            .to_string();
        c
    }

    fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Connect and send `lines` at once, before reading anything (pipelined
    /// behind the handshake); then read `WELCOME`.
    fn connect_pipelined(addr: SocketAddr, query: &str, lines: &[String]) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (mut ws, _) =
            tungstenite::client(format!("ws://{addr}/ws{query}"), stream).expect("handshake");
        for l in lines {
            ws.write(Message::text(l.as_str())).expect("write");
        }
        ws.flush().expect("flush");
        let mut c = Client {
            ws,
            nick: String::new(),
        };
        let w = c.recv();
        c.nick = w
            .strip_prefix("WELCOME ")
            .unwrap_or_else(|| panic!("expected WELCOME, got {w:?}"))
            .to_string();
        c
    }

    /// The next text line, or None when nothing arrives within `timeout`.
    fn try_recv(&mut self, timeout: Duration) -> Option<String> {
        self.ws.get_mut().set_read_timeout(Some(timeout)).unwrap();
        let deadline = Instant::now() + timeout;
        let got = loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => break Some(t.to_string()),
                Ok(Message::Close(f)) => panic!("{}: closed: {f:?}", self.nick),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    break None
                }
                Err(e) => panic!("{}: read failed: {e}", self.nick),
            }
            if Instant::now() >= deadline {
                break None;
            }
        };
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        got
    }

    fn recv(&mut self) -> String {
        let nick = self.nick.clone();
        self.try_recv(WAIT)
            .unwrap_or_else(|| panic!("{nick}: nothing within {WAIT:?}"))
    }

    /// Lines up to and including the first that satisfies `pred` (bounded).
    fn until(&mut self, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let Some(l) = self.try_recv(WAIT) else {
                panic!("{}: no matching line after {seen:?}", self.nick);
            };
            let done = pred(&l);
            seen.push(l);
            if done {
                return seen;
            }
        }
        panic!("{}: no matching line in {seen:?}", self.nick);
    }

    /// Lines until every line of `wanted` has arrived (in any order).
    fn until_all(&mut self, wanted: &[String]) -> Vec<String> {
        self.until_all_after(Vec::new(), wanted)
    }

    /// Like `until_all`, counting lines already read (`seen`) as arrived.
    fn until_all_after(&mut self, mut seen: Vec<String>, wanted: &[String]) -> Vec<String> {
        let mut missing: HashSet<&String> = wanted.iter().filter(|w| !seen.contains(w)).collect();
        for _ in 0..10_000 {
            if missing.is_empty() {
                return seen;
            }
            let Some(l) = self.try_recv(WAIT) else {
                panic!("{}: missing {missing:?} after {seen:?}", self.nick);
            };
            missing.remove(&l);
            seen.push(l);
        }
        panic!("{}: missing {missing:?} after {seen:?}", self.nick);
    }

    /// A round trip through this client's node.
    fn sync(&mut self, token: &str) -> Vec<String> {
        self.send(&format!("/ping {token}"));
        let mut v = self.until(|l| l == format!("PONG {token}"));
        v.pop();
        v
    }
}

fn count(lines: &[String], want: &str) -> usize {
    lines.iter().filter(|l| *l == want).count()
}

#[test]
fn messages_notices_and_privates_cross_nodes_exactly_once() {
    let Some(()) = need_redis("messages_notices_and_privates_cross_nodes_exactly_once") else {
        return;
    };
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis, &[])).collect();
    for n in &nodes {
        n.wait_subscriptions(2);
    }
    let mut alice = Client::connect(nodes[0].addr, "?nick=alice&room=dev");
    nodes[0].wait_subscriptions(3);
    let mut bob = Client::connect(nodes[1].addr, "?nick=bob&room=dev");
    nodes[1].wait_subscriptions(3);
    let mut carol = Client::connect(nodes[2].addr, "?nick=carol&room=Dev");
    nodes[2].wait_subscriptions(3);

    // Presence notices crossed: alice saw bob and carol join, bob saw carol.
    // (Lines carry the spelling of the room on the sender's node.)
    let a = alice.until_all(&["JOINED dev bob".into(), "JOINED Dev carol".into()]);
    assert_eq!(count(&a, "JOINED dev bob"), 1, "{a:?}");
    bob.until_all(&["JOINED Dev carol".into()]);

    for i in 0..20 {
        alice.send(&format!("m{i}"));
    }
    bob.send("/nick bobby");
    carol.send("/msg alice psst");
    let ends: Vec<String> = ["dev alice", "dev bobby", "Dev carol"]
        .iter()
        .map(|n| format!("MSG {n} end"))
        .collect();
    alice.send("end");
    // bob's NICK must be through before his end marker carries the new nick.
    let b = bob.until(|l| l == "NICK bob bobby");
    bob.send("end");
    carol.send("end");
    let mut a = alice.until_all(&ends);
    let b = bob.until_all_after(b, &ends);
    let mut c = carol.until_all(&ends);
    // The private message takes another path (a nick lookup, then the node's own
    // channel), so it may reach both ends after the end markers: wait for it,
    // then make sure no second copy follows.
    for (client, lines) in [(&mut alice, &mut a), (&mut carol, &mut c)] {
        if count(lines, "PRIV carol alice psst") == 0 {
            lines.extend(client.until(|l| l == "PRIV carol alice psst"));
        }
        lines.extend(client.sync("priv"));
    }
    for (who, lines) in [("alice", &a), ("bobby", &b), ("carol", &c)] {
        for i in 0..20 {
            assert_eq!(
                count(lines, &format!("MSG dev alice m{i}")),
                1,
                "{who}: {lines:?}"
            );
        }
        if who != "bobby" {
            assert_eq!(count(lines, "NICK bob bobby"), 1, "{who}: {lines:?}");
        }
    }
    assert_eq!(count(&a, "PRIV carol alice psst"), 1, "{a:?}");
    assert_eq!(count(&c, "PRIV carol alice psst"), 1, "{c:?}");
    // bob renamed himself (carol saw it): his old nick is free, nobody has it.
    carol.send("/msg bob hi bob");
    assert_eq!(carol.recv(), "ERR no-such-nick no such nick");
    carol.send("/msg BOBBY hi again");
    let b2 = bob.until(|l| l.starts_with("PRIV carol"));
    assert_eq!(b2.last().unwrap(), "PRIV carol bobby hi again");
    carol.until(|l| l == "PRIV carol bobby hi again");

    // /who and /rooms answer for the whole cluster.
    alice.send("/who");
    let who = alice.until(|l| l.starts_with("WHO "));
    let who: HashSet<&str> = who.last().unwrap().split(' ').skip(2).collect();
    assert_eq!(who, HashSet::from(["alice", "bobby", "carol"]));
    bob.send("/rooms");
    assert_eq!(
        bob.until(|l| l.starts_with("ROOMS")).last().unwrap(),
        "ROOMS dev=3"
    );

    // LEFT crosses once. A /who afterwards is answered by carol's node too,
    // after its LEFT (one publishing link, in order): anything duplicated
    // would have arrived before the WHO line.
    carol.send("/quit");
    for c in [&mut alice, &mut bob] {
        let mut lines = c.until(|l| l == "LEFT Dev carol");
        c.send("/who");
        lines.extend(c.until(|l| l.starts_with("WHO ")));
        assert_eq!(count(&lines, "LEFT Dev carol"), 1, "{lines:?}");
        assert!(!lines.last().unwrap().contains("carol"), "{lines:?}");
    }
    nodes[2].wait_subscriptions(2);
    for n in &nodes {
        assert_eq!(n.metric("loopchat_redis_duplicates_total"), 0.0);
        assert_eq!(n.metric("loopchat_redis_dropped_total"), 0.0);
    }
}

#[test]
fn nicks_are_unique_across_nodes() {
    let Some(()) = need_redis("nicks_are_unique_across_nodes") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=ra");
    // The reservation went out before /rooms on the same Redis link, and
    // replies come in order: once ROOMS arrives, alice is registered.
    alice.send("/rooms");
    alice.until(|l| l.starts_with("ROOMS"));

    // Asking for a taken nick at connect: a node guest nick from the start,
    // and the reason; the taken nick is never announced.
    let mut other = Client::connect(b.addr, "?nick=ALICE&room=rb");
    let guest = other.nick.clone();
    assert!(guest.starts_with("guest-"), "{guest}");
    assert_eq!(
        other.recv(),
        "ERR nick-taken nick taken on another node, using a guest nick"
    );
    assert_eq!(other.recv(), format!("JOINED rb {guest}"));
    // ...and by /nick.
    other.send("/nick Alice");
    assert_eq!(other.recv(), "ERR nick-taken nick taken");
    // A free nick is granted.
    other.send("/nick bob");
    assert_eq!(other.recv(), format!("NICK {guest} bob"));
    // Now alice cannot take bob, and the nick freed by a quit is free again.
    alice.send("/nick bob");
    assert_eq!(alice.recv(), "ERR nick-taken nick taken");
    other.send("/quit");
    let deadline = Instant::now() + WAIT;
    loop {
        alice.send("/nick bob");
        let l = alice.recv();
        if l == "NICK alice bob" {
            break;
        }
        assert_eq!(l, "ERR nick-taken nick taken");
        assert!(Instant::now() < deadline, "bob never became free");
    }
}

#[test]
fn cluster_recovers_after_redis_restarts() {
    let Some(()) = need_redis("cluster_recovers_after_redis_restarts") else {
        return;
    };
    let mut redis = Redis::start();
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED r bob");
    alice.send("before");
    bob.until(|l| l == "MSG r alice before");

    redis.kill();
    // Local chat keeps working while Redis is gone; remote delivery is counted.
    let deadline = Instant::now() + WAIT;
    while a.metric("loopchat_redis_up") != 0.0 {
        assert!(Instant::now() < deadline, "node never noticed Redis down");
        std::thread::sleep(Duration::from_millis(10));
    }
    // What alice says while Redis is gone waits in her node's backlog.
    let down: Vec<String> = (0..20)
        .map(|i| format!("MSG r alice while down {i}"))
        .collect();
    for i in 0..20 {
        alice.send(&format!("while down {i}"));
    }
    alice.until_all(&down);
    // Queries answer for this node alone, without waiting.
    alice.send("/who");
    assert_eq!(
        alice.until(|l| l.starts_with("WHO ")).last().unwrap(),
        "WHO r alice"
    );
    assert!(a.metric("loopchat_redis_backlog_bytes") > 0.0);

    let _redis = Redis::start_on(redis.port);
    // Resubscribed and re-registered by themselves; the backlog arrives
    // exactly once, in order, before anything said after.
    a.wait_subscriptions(3);
    b.wait_subscriptions(3);
    alice.send("after");
    let lines = bob.until(|l| l == "MSG r alice after");
    let got: Vec<&String> = lines.iter().filter(|l| l.contains("while down")).collect();
    assert_eq!(got, down.iter().collect::<Vec<_>>(), "{lines:?}");
    bob.send("reply");
    let lines = alice.until(|l| l == "MSG r bob reply");
    assert_eq!(count(&lines, "MSG r alice after"), 1, "{lines:?}");
    assert_eq!(count(&bob.sync("s"), "MSG r bob reply"), 1);
    assert_eq!(a.metric("loopchat_redis_dropped_total"), 0.0);
    assert_eq!(a.metric("loopchat_redis_backlog_bytes"), 0.0);
    // The nicks were registered again: bob cannot be taken from node a.
    let thief = Client::connect(a.addr, "?nick=bob");
    assert!(thief.nick.starts_with("guest-"), "{}", thief.nick);
    assert!(a.metric("loopchat_redis_connects_total") >= 4.0);
}

#[test]
fn a_killed_nodes_nicks_expire() {
    let Some(()) = need_redis("a_killed_nodes_nicks_expire") else {
        return;
    };
    let redis = Redis::start();
    let ttl = ["--redis-nick-ttl", "1s"];
    let mut a = Node::start(&redis, &ttl);
    let b = Node::start(&redis, &ttl);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=ra");
    alice.send("/rooms");
    alice.until(|l| l.starts_with("ROOMS"));
    let mut bob = Client::connect(b.addr, "?nick=bob&room=rb");
    bob.until(|l| l == "JOINED rb bob");
    bob.send("/nick alice");
    assert_eq!(bob.recv(), "ERR nick-taken nick taken");
    a.kill();
    let killed = Instant::now();
    loop {
        bob.send("/nick alice");
        let l = bob.recv();
        if l == "NICK bob alice" {
            break;
        }
        assert_eq!(l, "ERR nick-taken nick taken");
        assert!(
            killed.elapsed() < WAIT,
            "alice still taken long after the TTL"
        );
        // Paced retries, not synchronisation: the answer is awaited above.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
}

#[test]
fn two_processes_share_one_port() {
    let Some(()) = need_redis("two_processes_share_one_port") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--reuse-port"]);
    let listen = a.addr.to_string();
    let b = Node::start_listen(&redis, &listen, &["--reuse-port"]);
    assert_eq!(a.addr, b.addr);
    a.wait_subscriptions(2);
    // Connections land on either process: distinct node ids in /metrics.
    let mut ids = HashSet::new();
    for _ in 0..200 {
        let m = metrics(a.addr);
        let id = m
            .lines()
            .find_map(|l| l.strip_prefix("loopchat_redis_node_info{node=\""))
            .and_then(|l| l.split('"').next())
            .expect("node id in /metrics")
            .to_string();
        ids.insert(id);
        if ids.len() == 2 {
            break;
        }
    }
    assert_eq!(ids.len(), 2, "every connection went to one process");
    // Clients on different processes of the one port share a room: a guest
    // nick carries its node's tag.
    let mut first = Client::connect(a.addr, "?room=shared");
    let tag = |n: &str| n.split('-').nth(1).unwrap_or("").to_string();
    let mut second = None;
    for _ in 0..200 {
        let c = Client::connect(a.addr, "?room=shared");
        if tag(&c.nick) != tag(&first.nick) {
            second = Some(c);
            break;
        }
    }
    let mut second = second.expect("no connection reached the other process");
    // Both rooms are subscribed once `first` sees `second` join or a probe crosses.
    let mut crossed = false;
    for i in 0..100 {
        first.send(&format!("probe {i}"));
        if let Some(l) = second
            .try_recv(Duration::from_millis(200))
            .filter(|l| l.starts_with("MSG"))
        {
            assert!(
                l.starts_with(&format!("MSG shared {} probe", first.nick)),
                "{l}"
            );
            crossed = true;
            break;
        }
    }
    assert!(crossed, "no message crossed between the two processes");
}

/// Commands over a fresh blocking connection, then QUIT; the raw replies.
fn redis_cmd(port: u16, cmds: &[&[&str]]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    for args in cmds.iter().chain([&["QUIT"][..]].iter()) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in *args {
            out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
    }
    s.write_all(&out).unwrap();
    // Redis closes after answering QUIT: read to the end.
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

#[test]
fn auth_and_select_from_the_url() {
    let Some(()) = need_redis("auth_and_select_from_the_url") else {
        return;
    };
    let redis = Redis::start_with(free_port(), &["--requirepass", "s3cret"]);
    let url = format!("redis://:s3cret@127.0.0.1:{}/2", redis.port);
    let node = Node::start_url(&url, "127.0.0.1:0", &[]);
    node.wait_subscriptions(2);
    let mut alice = Client::connect(node.addr, "?nick=Alice");
    alice.send("/rooms");
    alice.until(|l| l.starts_with("ROOMS"));
    let id = node
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("loopchat_redis_node_info{node=\""))
        .and_then(|l| l.split('"').next())
        .unwrap()
        .to_string();
    let reply = redis_cmd(
        redis.port,
        &[
            &["AUTH", "s3cret"],
            &["SELECT", "2"],
            &["GET", "lc:nick:alice"],
        ],
    );
    // `NODE REGISTERED_MS DISPLAY`.
    assert!(
        reply.contains(&format!("{id} ")) && reply.contains(" Alice\r\n"),
        "registration not in db 2: {reply:?}"
    );
    // A wrong password: the node runs alone and says Redis is down.
    let bad = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let lone = Node::start_url(&bad, "127.0.0.1:0", &[]);
    // Nobody can confirm a nick there: a guest nick, and why.
    let mut bob = Client::connect(lone.addr, "?nick=bob&room=x");
    assert!(bob.nick.starts_with("guest-"), "{}", bob.nick);
    assert_eq!(
        bob.recv(),
        "ERR nick-unavailable nick registry unreachable, using a guest nick"
    );
    bob.send("hello");
    let guest = bob.nick.clone();
    bob.until(|l| l == format!("MSG x {guest} hello"));
    assert_eq!(lone.metric("loopchat_redis_up"), 0.0);
}

#[test]
fn an_idle_node_keeps_its_link_and_loses_nothing() {
    let Some(()) = need_redis("an_idle_node_keeps_its_link_and_loses_nothing") else {
        return;
    };
    let redis = Redis::start();
    // The default nick TTL (30 s): registrations are refreshed every 10 s.
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=idle");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=idle");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED idle bob");
    let connects = [
        a.metric("loopchat_redis_connects_total"),
        b.metric("loopchat_redis_connects_total"),
    ];
    // The scenario is the quiet time itself (three refresh periods and more),
    // not a synchronisation: nothing is expected to happen during it.
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(35) {
        std::thread::sleep(Duration::from_millis(2_500));
        // A message now and then, at moments a refresh may be in flight.
        if i % 4 == 3 {
            alice.send(&format!("quiet {i}"));
            bob.until(|l| l == format!("MSG idle alice quiet {i}"));
        }
        i += 1;
    }
    alice.send("after the quiet");
    bob.until(|l| l == "MSG idle alice after the quiet");
    for (n, before) in [&a, &b].iter().zip(connects) {
        assert_eq!(n.metric("loopchat_redis_connects_total"), before);
        assert_eq!(n.metric("loopchat_redis_dropped_total"), 0.0);
        assert_eq!(n.metric("loopchat_redis_up"), 1.0);
    }
}

#[test]
fn an_impostor_never_wears_a_taken_nick() {
    let Some(()) = need_redis("an_impostor_never_wears_a_taken_nick") else {
        return;
    };
    let redis = Redis::start();
    let timeout = ["--redis-query-timeout", "400ms"];
    let a = Node::start(&redis, &timeout);
    let b = Node::start(&redis, &timeout);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=dev");
    a.wait_subscriptions(3);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=dev");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED dev carol");

    // Frames pipelined behind the handshake run under the granted nick only.
    let forged: Vec<String> = (0..20).map(|i| format!("forged {i}")).collect();
    let mut imp = Client::connect_pipelined(b.addr, "?nick=alice&room=dev", &forged);
    let guest = imp.nick.clone();
    assert!(guest.starts_with("guest-"), "{guest}");
    assert_eq!(
        imp.recv(),
        "ERR nick-taken nick taken on another node, using a guest nick"
    );
    let seen = alice.until(|l| l == format!("MSG dev {guest} forged 19"));
    assert!(seen.iter().all(|l| !l.contains(" alice")), "{seen:?}");
    assert_eq!(count(&seen, &format!("JOINED dev {guest}")), 1, "{seen:?}");

    // Redis stops answering: nobody gets an unconfirmed nick, within the
    // query timeout; /nick fails closed too.
    redis.run(false);
    let started = Instant::now();
    let mut imp2 = Client::connect_pipelined(b.addr, "?nick=Alice&room=dev", &forged);
    let waited = started.elapsed();
    let guest2 = imp2.nick.clone();
    assert!(guest2.starts_with("guest-"), "{guest2}");
    assert_eq!(
        imp2.recv(),
        "ERR nick-unavailable nick registry did not answer in time, using a guest nick"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    imp.send("/nick alice");
    assert_eq!(
        imp.until(|l| l.starts_with("ERR ")).last().unwrap(),
        "ERR nick-unavailable nick registry unreachable, nick unchanged"
    );
    // A private message for alice never reaches an impostor.
    carol.send("/msg alice for alice only");
    redis.run(true);
    let lines = alice.until(|l| l == "PRIV carol alice for alice only");
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("MSG dev alice") && !l.starts_with("JOINED dev alice")),
        "{lines:?}"
    );
    for c in [&mut imp, &mut imp2] {
        let l = c.sync("p");
        assert!(l.iter().all(|l| !l.contains("for alice only")), "{l:?}");
    }
    assert!(b.metric("loopchat_redis_nick_unconfirmed_total") >= 1.0);
}

#[test]
fn the_earlier_registration_wins_after_a_redis_restart() {
    let Some(()) = need_redis("the_earlier_registration_wins_after_a_redis_restart") else {
        return;
    };
    let mut redis = Redis::start();
    let ttl = ["--redis-nick-ttl", "3s"];
    let a = Node::start(&redis, &ttl);
    let b = Node::start(&redis, &ttl);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r");
    assert_eq!(alice.nick, "alice");
    let mut watcher = Client::connect(b.addr, "?nick=watcher&room=r");
    let a_id = a.id();
    for round in 0..3 {
        // Node a is frozen while Redis restarts empty, so the node that
        // comes back first is b, and b's impostor gets the free key.
        let connects = b.metric("loopchat_redis_connects_total");
        signal(&a.child, false);
        redis.kill();
        redis = Redis::start_on(redis.port);
        b.wait_metric("loopchat_redis_connects_total", connects + 2.0);
        b.wait_subscriptions(3);
        let mut imp = Client::connect(b.addr, "?nick=alice&room=r");
        assert_eq!(imp.nick, "alice", "round {round}: the key was free");
        signal(&a.child, true);
        // a registers alice again with her earlier registration time: the
        // impostor is renamed, told first; alice is never renamed.
        let lines = imp.until(|l| l.starts_with("NICK alice guest-"));
        assert!(
            lines.contains(&"ERR nick-taken nick taken on another node, using a guest nick".into()),
            "round {round}: {lines:?}"
        );
        let reply = redis_cmd(redis.port, &[&["GET", "lc:nick:alice"]]);
        assert!(reply.contains(&format!("{a_id} ")), "{reply:?}");
        alice.send(&format!("still me {round}"));
        watcher.until(|l| l == format!("MSG r alice still me {round}"));
        let mine = alice.sync(&format!("s{round}"));
        assert!(
            mine.iter().all(|l| !l.starts_with("NICK alice ")),
            "round {round}: {mine:?}"
        );
        imp.send("/quit");
    }
}

#[test]
fn forged_payloads_are_dropped_and_counted() {
    let Some(()) = need_redis("forged_payloads_are_dropped_and_counted") else {
        return;
    };
    let redis = Redis::start();
    let dir = std::env::temp_dir().join(format!("loopchat-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "correct horse battery staple\n").unwrap();
    let flag = ["--cluster-secret-file", secret.to_str().unwrap()];
    let a = Node::start(&redis, &flag);
    let b = Node::start(&redis, &flag);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=poison");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=poison");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED poison bob");
    alice.send("signed 1");
    bob.until(|l| l == "MSG poison alice signed 1");

    // Anyone with access to Redis publishes as node a, with the largest
    // sequence number (which used to silence a for ten minutes), unsigned
    // and with a made-up tag.
    let a_id = a.id();
    let forged = format!("M {a_id} 18446744073709551615 MSG poison alice forged");
    let tagged = format!("#{} {forged}", "0".repeat(64));
    let reply = redis_cmd(
        redis.port,
        &[
            &["PUBLISH", "lc:room:poison", &forged],
            &["PUBLISH", "lc:room:poison", &tagged],
        ],
    );
    assert!(reply.starts_with(":2\r\n:2\r\n"), "{reply:?}");
    b.wait_metric("loopchat_redis_rejected_total", 2.0);
    a.wait_metric("loopchat_redis_rejected_total", 2.0);
    // a's real traffic still flows, and nothing forged reached anyone.
    alice.send("signed 2");
    let lines = bob.until(|l| l == "MSG poison alice signed 2");
    assert!(lines.iter().all(|l| !l.contains("forged")), "{lines:?}");
    let lines = alice.sync("a");
    assert!(lines.iter().all(|l| !l.contains("forged")), "{lines:?}");
    assert_eq!(b.metric("loopchat_redis_duplicates_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_cannot_be_kept_is_dropped_counted_and_told() {
    let Some(()) = need_redis("what_cannot_be_kept_is_dropped_counted_and_told") else {
        return;
    };
    let mut redis = Redis::start();
    let a = Node::start(&redis, &["--redis-buffer", "65536"]);
    let b = Node::start(&redis, &[]);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED r bob");
    redis.kill();
    let deadline = Instant::now() + WAIT;
    while a.metric("loopchat_redis_up") != 0.0 {
        assert!(Instant::now() < deadline, "node never noticed Redis down");
        std::thread::sleep(Duration::from_millis(10));
    }
    // 3 KB lines into a 64 KiB backlog: some fit, then the sender is told.
    let pad = "x".repeat(3000);
    let mut kept = Vec::new();
    let mut told = None;
    for i in 0..100 {
        alice.send(&format!("big {i} {pad}"));
        let lines = alice.until(|l| l.starts_with(&format!("MSG r alice big {i} ")));
        if let Some(sys) = lines.iter().find(|l| l.starts_with("SYS ")) {
            told = Some((i, sys.clone()));
            break;
        }
        // The SYS line for a message comes right after its echo.
        if let Some(l) = alice.try_recv(Duration::from_millis(100)) {
            assert!(l.starts_with("SYS "), "{l}");
            told = Some((i, l));
            break;
        }
        kept.push(format!("MSG r alice big {i} {pad}"));
    }
    let (first_lost, sys) = told.expect("never told that a line was not delivered");
    assert_eq!(
        sys,
        "SYS not delivered to other nodes: the cluster link is down and its buffer is full"
    );
    assert!(first_lost >= 10, "only {first_lost} kept");
    assert!(a.metric("loopchat_redis_dropped_total") >= 1.0);
    let _redis = Redis::start_on(redis.port);
    a.wait_subscriptions(3);
    b.wait_subscriptions(3);
    alice.send("after");
    let lines = bob.until(|l| l == "MSG r alice after");
    let got: Vec<&String> = lines.iter().filter(|l| l.contains(" big ")).collect();
    assert_eq!(got, kept.iter().collect::<Vec<_>>());
}

#[test]
fn twenty_thousand_rooms_are_resubscribed() {
    let Some(()) = need_redis("twenty_thousand_rooms_are_resubscribed") else {
        return;
    };
    let mut redis = Redis::start();
    let a = Node::start(&redis, &["--redis-buffer", "1048576"]);
    let b = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    // 625 connections of 32 rooms each (the per-connection cap); long names
    // so that the SUBSCRIBEs (about 1.4 MB) do not fit the 1 MiB buffer.
    let room = |i: usize| format!("a-room-with-a-rather-long-name-for-the-test-{i:05}");
    let mut clients = Vec::new();
    for c in 0..625 {
        let mut cl = Client::connect(a.addr, &format!("?room={}", room(c * 32)));
        for j in 1..32 {
            cl.send(&format!("/join {}", room(c * 32 + j)));
        }
        clients.push(cl);
    }
    a.wait_subscriptions_within(20_002, Duration::from_secs(60));
    let mut bob = Client::connect(b.addr, &format!("?nick=bob&room={}", room(19_999)));
    b.wait_subscriptions(3);
    redis.kill();
    let _redis = Redis::start_on(redis.port);
    a.wait_subscriptions_within(20_002, Duration::from_secs(60));
    b.wait_subscriptions(3);
    // The last room hears the other node again.
    bob.send("still there?");
    let last = clients.last_mut().unwrap();
    last.until(|l| l == format!("MSG {} bob still there?", room(19_999)));
}

#[test]
fn a_killed_nodes_members_leave_within_the_ttl() {
    let Some(()) = need_redis("a_killed_nodes_members_leave_within_the_ttl") else {
        return;
    };
    let redis = Redis::start();
    let ttl = ["--redis-nick-ttl", "2s"];
    let mut a = Node::start(&redis, &ttl);
    let b = Node::start(&redis, &ttl);
    a.wait_subscriptions(2);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r");
    b.wait_subscriptions(3);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r");
    bob.until(|l| l == "JOINED r alice");
    // alice was in s before bob's node subscribed to it: bob's node learns
    // of her from /who.
    alice.send("/join s");
    alice.until(|l| l == "JOINED s alice");
    a.wait_subscriptions(4);
    bob.send("/join s");
    bob.until(|l| l == "JOINED s bob");
    alice.until(|l| l == "JOINED s bob");
    bob.send("/who s");
    let who = bob.until(|l| l.starts_with("WHO s"));
    assert!(who.last().unwrap().contains("alice"), "{who:?}");
    a.kill();
    let killed = Instant::now();
    // Both of alice's rooms, once each, within the TTL (plus one liveness
    // period of slack).
    let lines = bob.until_all(&["LEFT r alice".into(), "LEFT s alice".into()]);
    let took = killed.elapsed();
    assert!(took < Duration::from_millis(2_600), "{took:?}");
    assert_eq!(count(&lines, "LEFT r alice"), 1, "{lines:?}");
    // ...and her nick is free at once for someone connecting elsewhere.
    let again = Client::connect(b.addr, "?nick=alice");
    assert_eq!(again.nick, "alice");
    assert_eq!(b.metric("loopchat_redis_dead_nodes_total"), 1.0);
}

#[test]
fn a_crowd_of_queries_costs_one_question_at_a_time_and_chat_flows() {
    let Some(()) = need_redis("a_crowd_of_queries_costs_one_question_at_a_time_and_chat_flows")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED r bob");
    // Many rooms on b, so its answer to /rooms is large (capped, built once).
    let mut rooms = Client::connect(b.addr, "?room=q0");
    for i in 1..32 {
        rooms.send(&format!("/join q{i}"));
    }
    rooms.sync("joined");
    let mut crowd: Vec<Client> = (0..50)
        .map(|_| Client::connect(a.addr, "?room=crowd"))
        .collect();
    for c in crowd.iter_mut() {
        for _ in 0..4 {
            c.send("/rooms");
        }
    }
    for i in 0..100 {
        bob.send(&format!("chat {i}"));
    }
    // Every question is answered, with b's rooms in it.
    for c in crowd.iter_mut() {
        for _ in 0..4 {
            let l = c.until(|l| l.starts_with("ROOMS "));
            assert!(l.last().unwrap().contains("q31=1"), "{l:?}");
        }
    }
    // The chat went through meanwhile, in order.
    let lines = alice.until(|l| l == "MSG r bob chat 99");
    let chat: Vec<&String> = lines.iter().filter(|l| l.contains(" chat ")).collect();
    assert_eq!(chat.len(), 100, "{lines:?}");
    // 200 /rooms cost a handful of questions to the cluster.
    let asked = a.metric("loopchat_redis_queries_total");
    assert!((1.0..=10.0).contains(&asked), "{asked}");
}

/// `(id, time, line)` of an `@id=ID;time=TIME LINE` line.
fn tagged(l: &str) -> Option<(String, String, String)> {
    let (tags, line) = l.strip_prefix('@')?.split_once(' ')?;
    let mut id = None;
    let mut time = None;
    for t in tags.split(';') {
        match t.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("time", v)) => time = Some(v.to_string()),
            _ => {}
        }
    }
    Some((id?, time?, line.to_string()))
}

/// `EPOCH-SEQ` as numbers.
fn id_parts(id: &str) -> (u64, u64) {
    let (e, s) = id.split_once('-').expect("EPOCH-SEQ");
    (e.parse().unwrap(), s.parse().unwrap())
}

#[test]
fn interleaved_senders_on_two_nodes_give_every_member_one_id_order() {
    let Some(()) = need_redis("interleaved_senders_on_two_nodes_give_every_member_one_id_order")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids");
    assert_eq!(alice.recv(), "CAPS ids");
    a.wait_subscriptions(3);
    let mut carol = Client::connect(a.addr, "?nick=carol&room=r");
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r&caps=ids,resume");
    // A cluster node offers ids and resume.
    assert_eq!(bob.recv(), "CAPS ids,resume");
    assert!(bob.recv().starts_with("SESSION "));
    b.wait_subscriptions(3);
    let mut dave = Client::connect(b.addr, "?nick=dave&room=r&caps=ids");
    assert_eq!(dave.recv(), "CAPS ids");
    for c in [&mut alice, &mut carol, &mut bob] {
        c.until(|l| l == "JOINED r dave");
    }

    // Two senders on two nodes, interleaved, then an end marker each.
    for i in 0..60 {
        alice.send(&format!("a{i}"));
        bob.send(&format!("b{i}"));
    }
    alice.send("end");
    bob.send("end");
    let ends = ["MSG r alice end".to_string(), "MSG r bob end".to_string()];
    let mut orders: Vec<Vec<String>> = Vec::new();
    let mut ids: Vec<Vec<String>> = Vec::new();
    for c in [&mut alice, &mut carol, &mut bob, &mut dave] {
        let mut msgs = Vec::new();
        let mut got_ids = Vec::new();
        let mut seen_ends = 0;
        for _ in 0..10_000 {
            if seen_ends == 2 {
                break;
            }
            let l = c.recv();
            let line = match tagged(&l) {
                Some((id, time, line)) => {
                    assert!(time.ends_with('Z') && time.len() == 24, "{l}");
                    got_ids.push(id);
                    line
                }
                None => l,
            };
            if line.starts_with("MSG ") {
                seen_ends += usize::from(ends.contains(&line));
                msgs.push(line);
            }
        }
        assert_eq!(seen_ends, 2, "{}: {msgs:?}", c.nick);
        // Nothing more (no second copy) behind a round trip.
        let rest = c.sync("after");
        assert!(
            rest.iter().all(|l| !l.contains("MSG ")),
            "{}: {rest:?}",
            c.nick
        );
        orders.push(msgs);
        ids.push(got_ids);
    }
    // Every member, on both nodes, v1 or ids, saw each message once and in
    // one order; the ids members saw the same ids, growing.
    assert_eq!(orders[0].len(), 122, "{:?}", orders[0]);
    for o in &orders[1..] {
        assert_eq!(o, &orders[0]);
    }
    for i in 0..60 {
        assert_eq!(count(&orders[0], &format!("MSG r alice a{i}")), 1);
        assert_eq!(count(&orders[0], &format!("MSG r bob b{i}")), 1);
    }
    assert!(ids[1].is_empty(), "the v1 member got tags: {:?}", ids[1]);
    for i in [2, 3] {
        assert_eq!(ids[i], ids[0]);
    }
    let parts: Vec<(u64, u64)> = ids[0].iter().map(|id| id_parts(id)).collect();
    assert!(
        parts
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[1].1 == w[0].1 + 1),
        "{parts:?}"
    );
    // (How the two senders' lines interleave depends on scheduling; that
    // alice, carol, bob and dave saw the same sequence is the point: a
    // sender's node delivering its own lines at once would disagree with the
    // other node as soon as they interleave at Redis.)
    // Redis holds the room's history, trimmed to --history (100).
    let reply = redis_cmd(redis.port, &[&["LLEN", "lc:hist:r"]]);
    assert!(reply.starts_with(":100\r\n"), "{reply:?}");
    // The counter expires a week after the room's last message.
    let reply = redis_cmd(redis.port, &[&["PTTL", "lc:seq:r"]]);
    let pttl: i64 = reply[1..reply.find('\r').unwrap()].parse().unwrap();
    assert!(pttl > 6 * 24 * 3600 * 1000, "{reply:?}");
    for n in [&a, &b] {
        assert_eq!(n.metric("loopchat_redis_dropped_total"), 0.0);
    }

    // Private messages across nodes carry an id and time too, for the ends
    // that asked for `ids` only.
    bob.send("/msg alice psst");
    let got = alice.until(|l| l.ends_with("PRIV bob alice psst"));
    let (id, time, _) = tagged(got.last().unwrap()).expect("a tagged PRIV");
    assert!(time.ends_with('Z'), "{time}");
    let echo = bob.until(|l| l.ends_with("PRIV bob alice psst"));
    assert_eq!(tagged(echo.last().unwrap()).map(|t| t.0), Some(id));
    dave.send("/msg carol psst");
    carol.until(|l| l == "PRIV dave carol psst");
    carol.send("/msg dave back");
    let got = dave.until(|l| l.ends_with("PRIV carol dave back"));
    assert!(got.last().unwrap().starts_with("@id="), "{got:?}");
    carol.until(|l| l == "PRIV carol dave back");

    // A Redis that lost everything (FLUSHALL): the room's counter starts
    // again in a later epoch, so no id is ever handed out twice, and
    // delivery goes on.
    redis_cmd(redis.port, &[&["FLUSHALL"]]);
    bob.send("after flush");
    for c in [&mut alice, &mut bob, &mut dave] {
        let l = c.until(|l| l.ends_with("MSG r bob after flush"));
        let (id, _, _) = tagged(l.last().unwrap()).unwrap();
        let (epoch, seq) = id_parts(&id);
        assert!(epoch > parts[0].0, "{id} after {:?}", parts[0]);
        assert_eq!(seq, 1, "{id}");
    }
    carol.until(|l| l == "MSG r bob after flush");
}

#[test]
fn history_is_read_from_redis_the_same_on_every_node() {
    let Some(()) = need_redis("history_is_read_from_redis_the_same_on_every_node") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--history", "10"]);
    let b = Node::start(&redis, &["--history", "10"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids");
    alice.recv();
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r&caps=ids");
    bob.recv();
    b.wait_subscriptions(3);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    alice.until(|l| l == "JOINED r carol");
    bob.until(|l| l == "JOINED r carol");
    // Nothing said yet: an empty history, and no position to start after.
    bob.send("/history r");
    assert_eq!(bob.recv(), "HISTORY r 0");
    bob.send("/history r after 1-1");
    assert_eq!(bob.recv(), "HISTORY r lost");
    for i in 0..15 {
        let c = if i % 2 == 0 { &mut alice } else { &mut bob };
        c.send(&format!("m{i}"));
    }
    let said: Vec<String> = (0..15)
        .map(|i| format!("MSG r {} m{i}", if i % 2 == 0 { "alice" } else { "bob" }))
        .collect();
    let live = carol.until_all(&said);
    let live: Vec<&String> = live.iter().filter(|l| l.starts_with("MSG ")).collect();
    assert_eq!(live.len(), 15, "{live:?}");
    let mut tagged_live = Vec::new();
    while tagged_live.len() < 15 {
        let l = alice.recv();
        if l.contains(" MSG ") {
            tagged_live.push(l);
        }
    }
    let ids: Vec<String> = tagged_live
        .iter()
        .filter_map(|l| tagged(l))
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(ids.len(), 15);

    let ask = |c: &mut Client, q: &str| -> Vec<String> {
        c.send(q);
        let head = c.until(|l| l.starts_with("HISTORY "));
        let head = head.last().unwrap().clone();
        let n: usize = head.rsplit(' ').next().unwrap().parse().unwrap_or(0);
        let mut out = vec![head];
        for _ in 0..n {
            out.push(c.recv());
        }
        out
    };
    // The same answer on both nodes: the last 10 (trimmed to --history),
    // oldest first, with the ids the members saw live.
    let on_a = ask(&mut alice, "/history r");
    let on_b = ask(&mut bob, "/history r");
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.len(), 11, "{on_a:?}");
    assert_eq!(on_a[0], "HISTORY r 10");
    let expect: Vec<&String> = tagged_live
        .iter()
        .filter(|l| l.contains(" MSG "))
        .skip(5)
        .collect();
    assert_eq!(on_a[1..].iter().collect::<Vec<_>>(), expect);
    // v1 members get the same lines untagged.
    let plain = ask(&mut carol, "/history r 3");
    assert_eq!(
        plain[1..],
        live[12..].iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
    // `after ID`: what follows, at most N; an id trimmed away: lost.
    let after = ask(&mut bob, &format!("/history r after {} 2", ids[9]));
    assert_eq!(after[0], "HISTORY r 2");
    assert_eq!(after[1..], on_a[6..8]);
    assert_eq!(
        ask(&mut alice, &format!("/history r after {}", ids[14])),
        ["HISTORY r 0"]
    );
    assert_eq!(
        ask(&mut alice, &format!("/history r after {}", ids[2])),
        ["HISTORY r lost"]
    );
    assert_eq!(
        ask(&mut alice, &format!("/history r after {}", ids[4])).len(),
        11
    );
    // Only members read a room.
    carol.send("/history elsewhere");
    assert_eq!(carol.recv(), "ERR not-in-room not in that room");
}

/// Signed tokens on a cluster: nodes started with this key file.
mod signed {
    use super::*;
    use loopchat::auth::token::{sign, Claims, Key};
    use loopchat::chat::access::Role;

    const SECRET: &[u8] = b"cluster-test-key-0123456789abcdef0123";

    pub(super) fn key_file() -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "loopchat-cluster-auth-{}-{}.key",
            std::process::id(),
            free_port()
        ));
        std::fs::write(&path, SECRET).unwrap();
        path
    }

    pub(super) fn token(sub: &str, role: Role) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut c = Claims::new(sub, now + 600);
        c.role = role;
        sign(&c, &Key::new(SECRET).unwrap())
    }
}

impl Client {
    /// Lines until the server closes; returns them and the close code.
    fn until_close(&mut self) -> (Vec<String>, u16) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => seen.push(t.to_string()),
                Ok(Message::Close(f)) => return (seen, f.map_or(1005, |f| f.code.into())),
                Ok(_) => {}
                Err(e) => panic!(
                    "{}: read failed before a close: {e} after {seen:?}",
                    self.nick
                ),
            }
        }
        panic!("{}: no close within {WAIT:?} after {seen:?}", self.nick);
    }
}

fn auth_nodes(redis: &Redis, key: &std::path::Path) -> (Node, Node) {
    let key = key.to_str().unwrap();
    let args = [
        "--redis-nick-ttl",
        "3s",
        "--auth-key",
        key,
        "--guests",
        "allow",
        "--auth-leeway",
        "0s",
    ];
    let a = Node::start(redis, &args);
    let b = Node::start(redis, &args);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    (a, b)
}

#[test]
fn a_token_takes_its_nick_on_any_node_and_a_newer_sign_in_replaces_the_older() {
    let Some(()) = need_redis("a_token_takes_its_nick_on_any_node") else {
        return;
    };
    use loopchat::chat::access::Role;
    let redis = Redis::start();
    let key = signed::key_file();
    let (a, b) = auth_nodes(&redis, &key);
    // A guest on b has "alice"; her token on a takes it, the guest is renamed.
    let mut guest = Client::connect(b.addr, "?nick=alice&room=r");
    assert_eq!(guest.nick, "alice");
    let t = signed::token("alice", Role::Member);
    let mut first = Client::connect(a.addr, &format!("?token={t}&room=r"));
    assert_eq!(first.nick, "alice");
    first.until(|l| l == "SYS signed in as alice, role member");
    let lines = guest.until(|l| l.starts_with("NICK alice guest-"));
    assert!(
        lines.contains(&"ERR nick-taken nick taken on another node, using a guest nick".into()),
        "{lines:?}"
    );
    let reply = redis_cmd(redis.port, &[&["GET", "lc:nick:alice"]]);
    assert!(
        reply.contains(&format!("{} ", a.id())) && reply.contains(" alice signed"),
        "{reply:?}"
    );
    // A second sign-in on b replaces the first, on a.
    let t = signed::token("alice", Role::Member);
    let mut second = Client::connect(b.addr, &format!("?token={t}&room=r"));
    assert_eq!(second.nick, "alice");
    let (lines, code) = first.until_close();
    assert!(
        lines.contains(&"SYS signed in elsewhere".into()),
        "{lines:?}"
    );
    assert_eq!(code, 4001);
    second.send("still here");
    second.until(|l| l == "MSG r alice still here");
    let reply = redis_cmd(redis.port, &[&["GET", "lc:nick:alice"]]);
    assert!(reply.contains(&format!("{} ", b.id())), "{reply:?}");
}

#[test]
fn the_token_holder_wins_when_the_registry_returns() {
    let Some(()) = need_redis("the_token_holder_wins_when_the_registry_returns") else {
        return;
    };
    use loopchat::chat::access::Role;
    let redis = Redis::start();
    let key = signed::key_file();
    let (a, b) = auth_nodes(&redis, &key);
    // The guest registered first; then the registry stops answering and the
    // token holder signs in on a: the signature is enough for now.
    let mut guest = Client::connect(b.addr, "?nick=bob&room=r");
    assert_eq!(guest.nick, "bob");
    guest.sync("registered");
    redis.run(false);
    let t = signed::token("bob", Role::Member);
    let mut holder = Client::connect(a.addr, &format!("?token={t}&room=r"));
    let lines = holder.until(|l| l == "SYS signed in as bob, role member");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("NICK guest-") && l.ends_with(" bob")),
        "{lines:?}"
    );
    redis.run(true);
    // Back: the later, signed registration wins over the earlier guest's.
    let lines = guest.until(|l| l.starts_with("NICK bob guest-"));
    assert!(
        lines.contains(&"ERR nick-taken nick taken on another node, using a guest nick".into()),
        "{lines:?}"
    );
    let mine = holder.sync("after");
    assert!(
        mine.iter()
            .all(|l| !l.starts_with("NICK bob ") && !l.starts_with("SYS")),
        "{mine:?}"
    );
    holder.send("mine");
    holder.until(|l| l == "MSG r bob mine");
    let reply = redis_cmd(redis.port, &[&["GET", "lc:nick:bob"]]);
    assert!(
        reply.contains(&format!("{} ", a.id())) && reply.contains(" bob signed"),
        "{reply:?}"
    );
}

#[test]
fn a_kick_reaches_the_nick_on_another_node() {
    let Some(()) = need_redis("a_kick_reaches_the_nick_on_another_node") else {
        return;
    };
    use loopchat::chat::access::Role;
    let redis = Redis::start();
    let key = signed::key_file();
    let (a, b) = auth_nodes(&redis, &key);
    let t = signed::token("moe", Role::Mod);
    let mut moe = Client::connect(a.addr, &format!("?token={t}&room=r"));
    moe.until(|l| l == "SYS signed in as moe, role mod");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r");
    // bob's JOINED can reach moe before Redis has taken bob's node's
    // SUBSCRIBE (two links): wait for it, or the KICKED may pass it by.
    b.wait_subscriptions(3);
    moe.until(|l| l == "JOINED r bob");
    moe.send("/kick r bob off-topic");
    moe.until(|l| l == "KICKED r bob moe off-topic");
    moe.until(|l| l == "LEFT r bob");
    bob.until(|l| l == "KICKED r bob moe off-topic");
    bob.until(|l| l == "LEFT r bob");
    // The ban holds on bob's node.
    bob.send("/join r");
    bob.until(|l| l == "ERR forbidden you were kicked from that room, try later");
    // A nick in the room on no node.
    moe.send("/kick r nobody");
    let lines = moe.until(|l| l.starts_with("ERR "));
    assert!(
        lines.last().unwrap().starts_with("ERR no-such-nick "),
        "{lines:?}"
    );
}

/// Connect with `query` (a `?resume=`), returning the client and every line
/// up to and including the `RESUMED` of each of `rooms`.
fn resume_on(addr: SocketAddr, query: &str, rooms: usize) -> (Client, Vec<String>) {
    let mut c = Client::connect(addr, query);
    let mut lines = Vec::new();
    let mut resumed = 0;
    for _ in 0..10_000 {
        if resumed == rooms {
            break;
        }
        let l = c.recv();
        resumed += usize::from(l.starts_with("RESUMED "));
        lines.push(l);
    }
    (c, lines)
}

/// The token of the `SESSION` line among `lines`.
fn session_token(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("SESSION "))
        .unwrap_or_else(|| panic!("no SESSION in {lines:?}"))
        .to_string()
}

/// Ask `node` to resume `token` and close the connection right after the
/// upgrade's answer (while the session waits for Redis); return once the
/// node has seen the close (`left` chat connections remain).
fn resume_and_hang_up(node: &Node, token: &str, left: usize) {
    let mut s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let req = format!(
        "GET /ws?resume={token} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    // The upgrade is answered at once; the session waits for Redis.
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let _ = s.shutdown(std::net::Shutdown::Both);
    let deadline = Instant::now() + WAIT;
    while metric(&node.metrics(), "loopchat_connections{kind=\"chat\"}") > left as f64 {
        assert!(Instant::now() < deadline, "the closed connection stayed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Close the TCP connection under `c` without a close frame (a lost network).
fn drop_abruptly(c: Client) {
    let _ = c.ws.get_ref().shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_session_dropped_on_one_node_resumes_on_the_other_exactly_once() {
    let Some(()) = need_redis("a_session_dropped_on_one_node_resumes_on_the_other_exactly_once")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "60s"]);
    let b = Node::start(&redis, &["--session-ttl", "60s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids,resume");
    let start = alice.until(|l| l.starts_with("SESSION "));
    let token = session_token(&start);
    assert_eq!(start[0], "CAPS ids,resume", "{start:?}");
    a.wait_subscriptions(3);
    carol.until(|l| l == "JOINED r alice");
    carol.send("before");
    let seen = alice.until(|l| l.ends_with("MSG r carol before"));
    let (before_id, _, _) = tagged(seen.last().unwrap()).expect("tagged");

    // The network goes: no close frame. The node keeps the session and
    // writes it to Redis; carol sees no LEFT.
    drop_abruptly(alice);
    a.wait_metric("loopchat_sessions_detached", 1.0);
    let carol_mark = carol.sync("dropped");
    let wanted: Vec<String> = (0..20).map(|i| format!("MSG r carol m{i}")).collect();
    for i in 0..20 {
        carol.send(&format!("m{i}"));
    }
    let mut carol_seen = carol_mark;
    carol_seen.extend(carol.until_all(&wanted));

    // Resumed on the other node: exactly the 20 missed lines, in order,
    // tagged, then live lines once.
    let (mut alice, lines) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(lines[0], "CAPS ids,resume", "{lines:?}");
    assert!(lines[1].starts_with("SESSION "), "{lines:?}");
    assert_eq!(alice.nick, "alice");
    assert_eq!(lines.last().unwrap(), "RESUMED r 20", "{lines:?}");
    let (mut alice2_token, mut got) = (session_token(&lines), Vec::new());
    let mut last = id_parts(&before_id);
    for _ in 0..20 {
        let l = alice.recv();
        let (id, _, line) = tagged(&l).unwrap_or_else(|| panic!("untagged {l:?}"));
        let (e, s) = id_parts(&id);
        assert!(e == last.0 && s == last.1 + 1, "{id} after {last:?}");
        last = (e, s);
        got.push(line);
    }
    assert_eq!(got, wanted);
    carol.send("live");
    let l = alice.until(|l| l.ends_with("MSG r carol live"));
    assert_eq!(l.len(), 1, "{l:?}");
    let rest = alice.sync("after");
    assert!(rest.iter().all(|l| !l.contains("MSG ")), "{rest:?}");
    carol_seen.extend(carol.sync("end"));
    assert!(
        carol_seen
            .iter()
            .all(|l| l != "LEFT r alice" && l != "JOINED r alice"),
        "{carol_seen:?}"
    );
    // /who on either node names alice once.
    carol.send("/who r");
    let who = carol.until(|l| l.starts_with("WHO r"));
    assert_eq!(who.last().unwrap().matches("alice").count(), 1, "{who:?}");

    // The token is spent, on both nodes (the first node last: it drops its
    // stale copy when asked, so the later resume there runs without it).
    for n in [&b, &a] {
        let mut c = Client::connect(n.addr, &format!("?resume={token}&nick=alice"));
        let l = c.until(|l| l.starts_with("ERR "));
        assert!(l.last().unwrap().starts_with("ERR bad-session"), "{l:?}");
        assert_ne!(c.nick, "alice");
    }
    // The new token works, here on the first node (which still holds its
    // stale copy of the first session: the registry says the nick moved).
    drop_abruptly(alice);
    b.wait_metric("loopchat_sessions_detached", 1.0);
    carol.send("second gap");
    carol.until(|l| l == "MSG r carol second gap");
    let (alice, lines) = resume_on(
        a.addr,
        &format!("?resume={alice2_token}&caps=ids,resume"),
        1,
    );
    assert_eq!(alice.nick, "alice");
    assert_eq!(lines.last().unwrap(), "RESUMED r 1", "{lines:?}");
    alice2_token.clear();
    drop(alice);
}

#[test]
fn an_unresumed_clustered_session_expires_with_left_and_frees_the_nick() {
    let Some(()) =
        need_redis("an_unresumed_clustered_session_expires_with_left_and_frees_the_nick")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "1s"]);
    let b = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=resume");
    alice.until(|l| l.starts_with("SESSION "));
    carol.until(|l| l == "JOINED r alice");
    drop_abruptly(alice);
    // While held, nobody can take the nick, on either node.
    let mut eve = Client::connect(b.addr, "?nick=alice");
    assert_ne!(eve.nick, "alice");
    drop(eve);
    // Then the grace period ends: LEFT on the other node, the nick is free.
    carol.until(|l| l == "LEFT r alice");
    eve = Client::connect(b.addr, "?nick=alice");
    assert_eq!(eve.nick, "alice");
    assert_eq!(a.metric("loopchat_sessions_detached"), 0.0);
}

#[test]
fn a_redis_restart_between_drop_and_resume_keeps_the_session_on_its_node() {
    let Some(()) =
        need_redis("a_redis_restart_between_drop_and_resume_keeps_the_session_on_its_node")
    else {
        return;
    };
    let mut redis = Redis::start();
    let port = redis.port;
    let a = Node::start(&redis, &["--session-ttl", "60s"]);
    let b = Node::start(&redis, &["--session-ttl", "60s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids,resume");
    let token = session_token(&alice.until(|l| l.starts_with("SESSION ")));
    let mut carol = Client::connect(a.addr, "?nick=carol&room=r");
    alice.until(|l| l == "JOINED r carol");
    carol.send("before");
    alice.until(|l| l.ends_with("MSG r carol before"));
    drop_abruptly(alice);
    a.wait_metric("loopchat_sessions_detached", 1.0);
    redis.kill();
    redis = Redis::start_on(port);
    a.wait_metric("loopchat_redis_connects_total", 4.0);
    b.wait_metric("loopchat_redis_connects_total", 4.0);
    a.wait_subscriptions(3);
    // The other node cannot know the session (Redis forgot it).
    let mut c = Client::connect(b.addr, &format!("?resume={token}"));
    let l = c.until(|l| l.starts_with("ERR "));
    assert!(l.last().unwrap().starts_with("ERR bad-session"), "{l:?}");
    drop(c);
    // Its own node still has it: same nick, no LEFT/JOINED; what Redis
    // forgot of the room's history is reported lost, and live lines flow.
    let (mut alice, lines) = resume_on(a.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(alice.nick, "alice");
    assert_eq!(lines.last().unwrap(), "RESUMED r lost", "{lines:?}");
    carol.send("after");
    alice.until(|l| l.ends_with("MSG r carol after"));
    let seen = carol.sync("end");
    assert!(seen.iter().all(|l| !l.contains("r alice")), "{seen:?}");
    drop(redis);
}

#[test]
fn a_resume_in_the_middle_of_a_flood_loses_and_doubles_nothing() {
    let Some(()) = need_redis("a_resume_in_the_middle_of_a_flood_loses_and_doubles_nothing") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "60s", "--history", "1000"]);
    let b = Node::start(&redis, &["--session-ttl", "60s", "--history", "1000"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let mut dave = Client::connect(a.addr, "?nick=dave&room=r");
    a.wait_subscriptions(3);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids,resume");
    let token = session_token(&alice.until(|l| l.starts_with("SESSION ")));
    carol.until(|l| l == "JOINED r alice");
    dave.send("before");
    let seen = alice.until(|l| l.ends_with("MSG r dave before"));
    let (before_id, _, _) = tagged(seen.last().unwrap()).expect("tagged");
    drop_abruptly(alice);
    a.wait_metric("loopchat_sessions_detached", 1.0);

    // A guest on the other node resumes with `/resume` while dave floods
    // the room: lines come live to that node during the catch-up.
    let mut alice = Client::connect(b.addr, "?caps=ids,resume");
    alice.until(|l| l.starts_with("SESSION "));
    for i in 0..150 {
        dave.send(&format!("f{i}"));
    }
    alice.send(&format!("/resume {token} r={before_id}"));
    for i in 150..300 {
        dave.send(&format!("f{i}"));
    }
    let head = alice.until(|l| l.starts_with("RESUMED "));
    assert!(head.contains(&"WELCOME alice".to_string()), "{head:?}");
    assert!(head.last().unwrap() != "RESUMED r lost", "{head:?}");
    let mut got = Vec::new();
    let mut last = id_parts(&before_id);
    for _ in 0..10_000 {
        let l = alice.recv();
        let Some((id, _, line)) = tagged(&l) else {
            continue;
        };
        let (e, s) = id_parts(&id);
        assert!(
            e == last.0 && s == last.1 + 1,
            "{id} after {last:?}: {got:?}"
        );
        last = (e, s);
        let done = line == "MSG r dave f299";
        got.push(line);
        if done {
            break;
        }
    }
    let wanted: Vec<String> = (0..300).map(|i| format!("MSG r dave f{i}")).collect();
    assert_eq!(got, wanted);
    let rest = alice.sync("after");
    assert!(rest.iter().all(|l| !l.contains("MSG ")), "{rest:?}");
    let seen = carol.until(|l| l == "MSG r dave f299");
    assert!(seen.iter().all(|l| !l.ends_with("r alice")), "{seen:?}");
}

#[test]
fn scripts_flushed_under_a_node_are_loaded_again_and_nothing_is_lost() {
    let Some(()) = need_redis("scripts_flushed_under_a_node_are_loaded_again_and_nothing_is_lost")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids");
    a.wait_subscriptions(3);
    let mut bob = Client::connect(b.addr, "?nick=bob&room=r");
    b.wait_subscriptions(3);
    alice.until(|l| l == "JOINED r bob");
    alice.send("one");
    bob.until(|l| l == "MSG r alice one");
    let connects = a.metric("loopchat_redis_connects_total");
    // An operator flushes the script cache: the node's next script call is
    // refused (NOSCRIPT); it reconnects, loads its scripts and resends.
    redis_cmd(redis.port, &[&["SCRIPT", "FLUSH"]]);
    for i in 0..5 {
        alice.send(&format!("after {i}"));
    }
    let wanted: Vec<String> = (0..5).map(|i| format!("MSG r alice after {i}")).collect();
    let got = bob.until_all(&wanted);
    for w in &wanted {
        assert_eq!(count(&got, w), 1, "{got:?}");
    }
    let rest = bob.sync("end");
    assert!(rest.iter().all(|l| !l.contains("after")), "{rest:?}");
    assert!(a.metric("loopchat_redis_connects_total") > connects);
}

#[test]
fn a_line_said_right_before_quit_comes_back_to_its_sender() {
    let Some(()) = need_redis("a_line_said_right_before_quit_comes_back_to_its_sender") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    let mut bob = Client::connect(a.addr, "?nick=bob&room=r");
    a.wait_subscriptions(3);
    for round in 0..5 {
        let mut alice = Client::connect(a.addr, &format!("?nick=alice{round}&room=r"));
        bob.until(|l| l == format!("JOINED r alice{round}"));
        // Said and quit in one write: the line goes to Redis and back before
        // the node may deliver it, even to its sender.
        alice.ws.write(Message::text("last words")).unwrap();
        alice.ws.write(Message::text("/quit gone")).unwrap();
        alice.ws.flush().unwrap();
        let want = format!("MSG r alice{round} last words");
        let mut seen = Vec::new();
        let closed = loop {
            match alice.ws.read() {
                Ok(Message::Text(t)) => seen.push(t.to_string()),
                Ok(Message::Close(f)) => break f,
                Ok(_) => {}
                Err(e) => panic!("read: {e} after {seen:?}"),
            }
            assert!(seen.len() < 100, "{seen:?}");
        };
        assert!(seen.contains(&want), "round {round}: {seen:?}");
        assert_eq!(closed.map(|f| f.reason.to_string()), Some("gone".into()));
        // The others got the line, then the LEFT.
        let got = bob.until(|l| l == format!("LEFT r alice{round}"));
        assert_eq!(count(&got, &want), 1, "{got:?}");
    }
}

/// alice (caps resume) in room r on `a`, dropped; returns her token.
fn drop_alice_on(a: &Node, carol: &mut Client, nick: &str) -> String {
    let mut alice = Client::connect(a.addr, &format!("?nick={nick}&room=r&caps=ids,resume"));
    let token = session_token(&alice.until(|l| l.starts_with("SESSION ")));
    carol.until(|l| l == format!("JOINED r {nick}"));
    drop_abruptly(alice);
    a.wait_metric("loopchat_sessions_detached", 1.0);
    token
}

#[test]
fn a_session_resumed_elsewhere_keeps_its_nick_against_its_old_copy() {
    let Some(()) = need_redis("a_session_resumed_elsewhere_keeps_its_nick_against_its_old_copy")
    else {
        return;
    };
    let redis = Redis::start();
    let opts = ["--session-ttl", "60s", "--redis-nick-ttl", "600ms"];
    // Same settings; the nodes' refresh rounds (every 200 ms) are out of
    // phase, as they are in any real deployment.
    let b = Node::start(&redis, &opts);
    std::thread::sleep(Duration::from_millis(100));
    let a = Node::start(&redis, &opts);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    // Eight sessions dropped on a, resumed on b at staggered times (over two
    // refresh periods, so some takes fall just before b's refresh round).
    let mut tokens = Vec::new();
    for i in 0..8 {
        let nick = format!("alice{i}");
        let mut c = Client::connect(a.addr, &format!("?nick={nick}&room=r&caps=ids,resume"));
        tokens.push(session_token(&c.until(|l| l.starts_with("SESSION "))));
        carol.until(|l| l == format!("JOINED r {nick}"));
        drop_abruptly(c);
        a.wait_metric("loopchat_sessions_detached", (i + 1) as f64);
    }
    let mut resumed = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let (c, lines) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
        assert_eq!(c.nick, format!("alice{i}"), "{lines:?}");
        resumed.push(c);
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few refresh rounds of both nodes.
    std::thread::sleep(Duration::from_secs(2));
    let mut lost = Vec::new();
    for (i, c) in resumed.iter_mut().enumerate() {
        let seen = c.sync("end");
        if seen.iter().any(|l| l.starts_with("ERR nick-taken")) {
            lost.push(format!("alice{i}: {seen:?}"));
        }
    }
    assert!(
        lost.is_empty(),
        "resumed sessions lost their nick to their own stale copies on a: {lost:#?}"
    );
}

#[test]
fn a_nick_resumed_elsewhere_is_free_once_its_holder_quits() {
    let Some(()) = need_redis("a_nick_resumed_elsewhere_is_free_once_its_holder_quits") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(
        &redis,
        &["--session-ttl", "60s", "--redis-nick-ttl", "300ms"],
    );
    let b = Node::start(
        &redis,
        &["--session-ttl", "60s", "--redis-nick-ttl", "300ms"],
    );
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let token = drop_alice_on(&a, &mut carol, "alice");
    let (mut alice, _) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(alice.nick, "alice");
    alice.send("/quit bye");
    // The client answers the close, as clients do: the connection is gone.
    for _ in 0..100 {
        match alice.ws.read() {
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = alice.ws.flush();
    carol.until(|l| l.starts_with("LEFT r alice"));
    // Longer than the nick TTL: a stale copy on `a` would have registered
    // the nick again by now.
    std::thread::sleep(Duration::from_secs(1));
    let eve = Client::connect(b.addr, "?nick=alice");
    assert_eq!(eve.nick, "alice", "alice quit: her nick should be free");
}

#[test]
fn a_resume_whose_connection_closes_before_redis_answers_loses_nothing() {
    let Some(()) =
        need_redis("a_resume_whose_connection_closes_before_redis_answers_loses_nothing")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "3s"]);
    let b = Node::start(&redis, &["--session-ttl", "3s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let token = drop_alice_on(&a, &mut carol, "alice");
    // Redis is slow to answer; meanwhile the resuming connection dies.
    redis.run(false);
    // (Only carol's connection is left on b afterwards.)
    resume_and_hang_up(&b, &token, 1);
    // ...before Redis answers the take; a round trip on the same link after
    // it (carol's /history) says the answer was handled.
    redis.run(true);
    carol.send("/history r");
    carol.until(|l| l.starts_with("HISTORY r"));
    // Nobody ever got the session: it resumes.
    let c = Client::connect(b.addr, &format!("?resume={token}"));
    assert_eq!(c.nick, "alice");
}

#[test]
fn a_session_resumed_elsewhere_never_leaves_when_its_old_copy_expires() {
    let Some(()) = need_redis("a_session_resumed_elsewhere_never_leaves_when_its_old_copy_expires")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "2s"]);
    let b = Node::start(&redis, &["--session-ttl", "2s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let token = drop_alice_on(&a, &mut carol, "alice");
    let (mut alice, lines) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(alice.nick, "alice", "{lines:?}");
    // a's copy times out (2 s after the drop) while alice chats on b.
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Some(l) = carol.try_recv(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    seen.extend(alice.sync("end"));
    assert!(
        seen.iter().all(|l| l != "LEFT r alice"),
        "alice is live on b, yet: {seen:?}"
    );
}

#[test]
fn a_private_message_to_a_dropped_session_on_another_node_is_refused() {
    let Some(()) = need_redis("a_private_message_to_a_dropped_session_on_another_node_is_refused")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "60s"]);
    let b = Node::start(&redis, &["--session-ttl", "60s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let _token = drop_alice_on(&a, &mut carol, "alice");
    // On one process: `ERR no-such-nick` while the session is away.
    carol.send("/msg alice are you there?");
    let got = carol.sync("after");
    assert!(
        got.iter().any(|l| l.starts_with("ERR no-such-nick")),
        "told nothing, or told it was sent: {got:?}"
    );
}

#[test]
fn a_token_resumed_while_the_link_was_down_is_spent_everywhere() {
    let Some(()) = need_redis("a_token_resumed_while_the_link_was_down_is_spent_everywhere") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "60s"]);
    let b = Node::start(&redis, &["--session-ttl", "60s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let token = drop_alice_on(&a, &mut carol, "alice");
    // The command links drop (a blip); alice resumes on a before a has
    // reconnected: a resumes her from its own copy.
    redis_cmd(redis.port, &[&["CLIENT", "KILL", "TYPE", "normal"]]);
    let (first, lines) = resume_on(a.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(first.nick, "alice", "{lines:?}");
    a.wait_metric("loopchat_redis_up", 1.0);
    b.wait_metric("loopchat_redis_up", 1.0);
    // A round trip on a's command link, after its reconnect (which marks the
    // session used first).
    let mut first = first;
    first.send("/history r");
    first.until(|l| l.starts_with("HISTORY r") || l.starts_with("ERR "));
    // The same (spent) token on b.
    let mut c = Client::connect(b.addr, &format!("?resume={token}"));
    let got = c.sync("x");
    assert_ne!(
        c.nick, "alice",
        "the token worked twice: alice live on a and on b: {got:?}"
    );
}

#[test]
fn a_live_user_named_away_is_reachable_from_another_node() {
    let Some(()) = need_redis("a_live_user_named_away_is_reachable_from_another_node") else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &[]);
    let b = Node::start(&redis, &[]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    // A live, connected user whose nick happens to be `away`.
    let mut away = Client::connect(a.addr, "?nick=away");
    assert_eq!(away.nick, "away");
    let mut carol = Client::connect(b.addr, "?nick=carol");
    carol.send("/msg away hello there");
    let got = carol.sync("after");
    assert!(
        !got.iter().any(|l| l.starts_with("ERR no-such-nick")),
        "a live user called away is taken for a dropped session: {got:?}"
    );
    away.until(|l| l == "PRIV carol away hello there");
}

#[test]
fn a_retry_of_a_resume_whose_connection_closed_gets_the_session() {
    let Some(()) = need_redis("a_retry_of_a_resume_whose_connection_closed_gets_the_session")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "30s"]);
    let b = Node::start(&redis, &["--session-ttl", "30s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let token = drop_alice_on(&a, &mut carol, "alice");
    // Redis is slow; the client gives up on its first try and retries on the
    // same node before Redis has answered the first take.
    redis.run(false);
    resume_and_hang_up(&b, &token, 1);
    let addr = b.addr;
    let q = format!("?resume={token}&caps=ids,resume");
    let retry = std::thread::spawn(move || {
        let mut c = Client::connect(addr, &q);
        let got = c.sync("x");
        (c.nick.clone(), got)
    });
    let deadline = Instant::now() + WAIT;
    while metric(&b.metrics(), "loopchat_connections{kind=\"chat\"}") < 2.0 {
        assert!(Instant::now() < deadline, "the retry never connected");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The retry's upgrade is in; its take request goes out on the node's
    // next loop turn (nothing to observe from outside), well within this.
    std::thread::sleep(Duration::from_millis(200));
    redis.run(true);
    let (nick, got) = retry.join().unwrap();
    assert_eq!(
        nick, "alice",
        "the retry was refused (the first take's tombstone) and alice lost her session: {got:?}"
    );
}

#[test]
fn a_signed_session_resumed_elsewhere_is_not_taken_back_by_its_old_copy() {
    let Some(()) =
        need_redis("a_signed_session_resumed_elsewhere_is_not_taken_back_by_its_old_copy")
    else {
        return;
    };
    use loopchat::chat::access::Role;
    let redis = Redis::start();
    let key = signed::key_file();
    let (a, b) = auth_nodes(&redis, &key);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let t = signed::token("alice", Role::Member);
    let mut alice = Client::connect(a.addr, &format!("?token={t}&room=r&caps=ids,resume"));
    let token = session_token(&alice.until(|l| l.starts_with("SESSION ")));
    carol.until(|l| l == "JOINED r alice");
    drop_abruptly(alice);
    a.wait_metric("loopchat_sessions_detached", 1.0);
    // The subscriber links blink: the `S` notice to a is lost (pub/sub keeps
    // nothing for a client that is not there).
    redis_cmd(redis.port, &[&["CLIENT", "KILL", "TYPE", "pubsub"]]);
    let (mut alice, lines) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(alice.nick, "alice", "{lines:?}");
    // A few registry refreshes (every second with a 3 s TTL).
    std::thread::sleep(Duration::from_secs(5));
    let got = alice.sync("still");
    assert!(
        !got.iter().any(|l| l == "SYS signed in elsewhere"),
        "a's stale copy took the signed nick back: {got:?}"
    );
    let reply = redis_cmd(redis.port, &[&["GET", "lc:nick:alice"]]);
    assert!(
        reply.contains(&format!("{} ", b.id())) && !reply.contains(" away"),
        "alice, live on b, is registered as {reply:?}"
    );
}

#[test]
fn a_fresh_sign_in_elsewhere_is_not_taken_back_by_a_dropped_session() {
    let Some(()) = need_redis("a_fresh_sign_in_elsewhere_is_not_taken_back_by_a_dropped_session")
    else {
        return;
    };
    use loopchat::chat::access::Role;
    let redis = Redis::start();
    let key = signed::key_file();
    let (a, b) = auth_nodes(&redis, &key);
    let t = signed::token("alice", Role::Member);
    let alice = {
        let mut c = Client::connect(a.addr, &format!("?token={t}&room=r&caps=ids,resume"));
        c.until(|l| l.starts_with("SESSION "));
        c
    };
    drop_abruptly(alice);
    a.wait_metric("loopchat_sessions_detached", 1.0);
    // alice signs in afresh on b (another device, no resume token): the newer
    // sign-in replaces the older, as on one node.
    let t = signed::token("alice", Role::Member);
    let mut fresh = Client::connect(b.addr, &format!("?token={t}&room=r"));
    assert_eq!(fresh.nick, "alice");
    fresh.until(|l| l == "SYS signed in as alice, role member");
    // A few registry refreshes (every second with a 3 s TTL).
    std::thread::sleep(Duration::from_secs(5));
    let got = fresh.sync("still");
    assert!(
        !got.iter().any(|l| l == "SYS signed in elsewhere"),
        "the dropped session on a took the nick back: {got:?}"
    );
    let reply = redis_cmd(redis.port, &[&["GET", "lc:nick:alice"]]);
    assert!(
        reply.contains(&format!("{} ", b.id())),
        "alice, live on b, is registered as {reply:?}"
    );
}

/// Three nodes: carol on `c` in room r, alice dropped on `a` and resumed on
/// `b` (she says nothing there). Returns (a, b, c, carol, alice on b).
fn three_nodes_alice_moved(redis: &Redis) -> (Node, Node, Node, Client, Client) {
    let opts = ["--session-ttl", "60s", "--redis-nick-ttl", "2s"];
    let a = Node::start(redis, &opts);
    let b = Node::start(redis, &opts);
    let c = Node::start(redis, &opts);
    for n in [&a, &b, &c] {
        n.wait_subscriptions(2);
    }
    let mut carol = Client::connect(c.addr, "?nick=carol&room=r");
    c.wait_subscriptions(3);
    let token = drop_alice_on(&a, &mut carol, "alice");
    let (alice, lines) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(alice.nick, "alice", "{lines:?}");
    // a has forgotten its copy (S notice).
    let deadline = Instant::now() + WAIT;
    while a.metric("loopchat_sessions_detached") != 0.0 {
        assert!(Instant::now() < deadline, "a kept its copy");
        std::thread::sleep(Duration::from_millis(10));
    }
    carol.sync("moved");
    (a, b, c, carol, alice)
}

#[test]
fn a_third_node_does_not_say_left_for_a_session_resumed_elsewhere_when_its_old_node_dies() {
    let Some(()) = need_redis(
        "a_third_node_does_not_say_left_for_a_session_resumed_elsewhere_when_its_old_node_dies",
    ) else {
        return;
    };
    let redis = Redis::start();
    let (mut a, _b, _c, mut carol, mut alice) = three_nodes_alice_moved(&redis);
    // The node alice dropped from crashes; she lives on b.
    a.kill();
    // Past the nick TTL (2 s) plus a liveness period: a is declared dead.
    std::thread::sleep(Duration::from_millis(3_500));
    let seen = carol.sync("after");
    assert!(
        !seen.iter().any(|l| l == "LEFT r alice"),
        "carol (on c) was told alice left, but alice is live on b: {seen:?}"
    );
    // alice is in fact still there and reachable.
    alice.send("still here");
    carol.until(|l| l == "MSG r alice still here");
}

#[test]
fn a_session_resumed_elsewhere_leaves_when_its_new_node_dies() {
    let Some(()) = need_redis("a_session_resumed_elsewhere_leaves_when_its_new_node_dies") else {
        return;
    };
    let redis = Redis::start();
    let (_a, mut b, _c, mut carol, _alice) = three_nodes_alice_moved(&redis);
    // The node alice now lives on crashes (her connection still open): the
    // others must say she left, as for any member of a dead node.
    b.kill();
    let lines = carol.try_until_within(|l| l == "LEFT r alice", Duration::from_secs(5));
    assert!(
        lines.iter().any(|l| l == "LEFT r alice"),
        "b (alice's node since her resume) died, carol never saw her leave: {lines:?}"
    );
}

impl Client {
    /// Lines up to the first matching `pred`, or all lines seen within `wait`.
    fn try_until_within(&mut self, pred: impl Fn(&str) -> bool, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(l) = self.try_recv(Duration::from_millis(200)) {
                let done = pred(&l);
                seen.push(l);
                if done {
                    break;
                }
            }
        }
        seen
    }
}

#[test]
fn a_session_moved_back_and_forth_leaves_one_registration_and_no_copy() {
    let Some(()) = need_redis("a_session_moved_back_and_forth_leaves_one_registration_and_no_copy")
    else {
        return;
    };
    let redis = Redis::start();
    let opts = ["--session-ttl", "60s", "--redis-nick-ttl", "1s"];
    let a = Node::start(&redis, &opts);
    let b = Node::start(&redis, &opts);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=ids,resume");
    let mut token = session_token(&alice.until(|l| l.starts_with("SESSION ")));
    carol.until(|l| l == "JOINED r alice");
    // (A position in r first: a room quiet since she joined resumes as lost,
    // see a_session_in_a_quiet_room_resumes_elsewhere_with_the_lines_said_since.)
    carol.send("hop");
    alice.until(|l| l.ends_with("MSG r carol hop"));
    let nodes = [&a, &b];
    for hop in 0..6 {
        let (from, to) = (nodes[hop % 2], nodes[(hop + 1) % 2]);
        drop_abruptly(alice);
        from.wait_metric("loopchat_sessions_detached", 1.0);
        carol.send(&format!("hop{hop}"));
        let (c, lines) = resume_on(to.addr, &format!("?resume={token}&caps=ids,resume"), 1);
        assert_eq!(c.nick, "alice", "hop {hop}: {lines:?}");
        assert_eq!(lines.last().unwrap(), "RESUMED r 1", "hop {hop}: {lines:?}");
        token = session_token(&lines);
        alice = c;
        alice.until(|l| l.ends_with(&format!("MSG r carol hop{hop}")));
    }
    // Several refresh rounds.
    std::thread::sleep(Duration::from_millis(1_500));
    let end = alice.sync("end");
    assert!(end.iter().all(|l| !l.starts_with("ERR")), "{end:?}");
    for n in nodes {
        assert_eq!(n.metric("loopchat_sessions_detached"), 0.0);
    }
    let reg = redis_cmd(redis.port, &[&["GET", "lc:nick:alice"]]);
    let a_id = a.id();
    assert!(
        reg.contains(&format!("{a_id} ")),
        "alice lives on a: {reg:?}"
    );
    assert!(!reg.contains("away"), "{reg:?}");
    let seen = carol.sync("end");
    assert!(
        seen.iter()
            .all(|l| !l.contains("alice") || l.starts_with("MSG")),
        "{seen:?}"
    );
}

#[test]
fn a_session_in_a_quiet_room_resumes_elsewhere_with_the_lines_said_since() {
    let Some(()) =
        need_redis("a_session_in_a_quiet_room_resumes_elsewhere_with_the_lines_said_since")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(&redis, &["--session-ttl", "60s"]);
    let b = Node::start(&redis, &["--session-ttl", "60s"]);
    a.wait_subscriptions(2);
    b.wait_subscriptions(2);
    let mut carol = Client::connect(b.addr, "?nick=carol&room=r");
    b.wait_subscriptions(3);
    // alice joins r; nothing is said while she is there; her network drops.
    let token = drop_alice_on(&a, &mut carol, "alice");
    carol.send("said after the drop");
    carol.until(|l| l == "MSG r carol said after the drop");
    // (One process, without Redis, replays it from its memory.)
    let (_alice, lines) = resume_on(b.addr, &format!("?resume={token}&caps=ids,resume"), 1);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("RESUMED r 1"),
        "the one line said since the drop, which Redis has: {lines:?}"
    );
}

#[test]
fn a_dropped_sessions_nick_change_does_not_rename_the_next_connection() {
    let Some(()) = need_redis("a_dropped_sessions_nick_change_does_not_rename_the_next_connection")
    else {
        return;
    };
    let redis = Redis::start();
    let a = Node::start(
        &redis,
        &["--session-ttl", "60s", "--redis-query-timeout", "5s"],
    );
    a.wait_subscriptions(2);
    let mut alice = Client::connect(a.addr, "?nick=alice&room=r&caps=resume");
    alice.until(|l| l.starts_with("SESSION "));
    a.wait_subscriptions(3);
    // Redis holds writes for a moment (a slow Redis, a failover...): alice's
    // /nick waits for its SET.
    let paused = redis_cmd(redis.port, &[&["CLIENT", "PAUSE", "1500", "WRITE"]]);
    assert!(paused.starts_with("+OK"), "{paused}");
    alice.send("/nick alice2");
    std::thread::sleep(Duration::from_millis(100));
    drop_abruptly(alice);
    // (No /metrics request here: its connection would take the freed slot.)
    std::thread::sleep(Duration::from_millis(300));
    // The next connection (a guest: no registry write needed) gets the
    // freed connection slot.
    let mut guest = Client::connect(a.addr, "?room=r");
    let nick = guest.nick.clone();
    assert_ne!(nick, "alice2");
    // Redis answers alice's SET once the pause ends.
    std::thread::sleep(Duration::from_millis(1_600));
    let seen = guest.sync("after");
    assert!(
        seen.iter()
            .all(|l| !l.starts_with(&format!("NICK {nick} ")) && !l.starts_with("ERR")),
        "alice's /nick answered to the guest who took her connection slot: {seen:?}"
    );
}
