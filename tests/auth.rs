//! Signed tokens through real sockets (`--auth-key`): the upgrade check, `/auth`
//! on both transports, roles, rooms, `/kick`, replacement, expiry, guest
//! policies, and key rotation on SIGHUP (in a child process).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{config, http, raw, read_head, upgrade_request, Client, TestServer, WAIT};
use loopchat::auth::token::{sign, sign_raw, Claims, Key, Policy};
use loopchat::chat::access::Role;
use loopchat::server::{AuthConfig, Config, GuestPolicy};
use tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &[u8] = b"integration-test-key-0123456789abcdef";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key() -> Key {
    Key::new(SECRET).unwrap()
}

/// A key file unique to this test run.
fn key_file(secret: &[u8]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "loopchat-auth-{}-{}.key",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, secret).unwrap();
    path
}

fn auth_config(guests: GuestPolicy, tweak: impl FnOnce(&mut Policy)) -> Config {
    let mut policy = Policy {
        leeway: 0,
        ..Policy::default()
    };
    tweak(&mut policy);
    let mut cfg = config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.chat.rate_limit = 0;
    cfg.chat.token_leeway = policy.leeway;
    cfg.auth = Some(AuthConfig {
        key_file: key_file(SECRET),
        policy,
        guests,
        key_grace: Duration::from_secs(3600),
    });
    cfg
}

fn server(guests: GuestPolicy) -> TestServer {
    TestServer::start(auth_config(guests, |_| {}))
}

fn token(sub: &str, ttl: u64, f: impl FnOnce(&mut Claims)) -> String {
    let mut c = Claims::new(sub, now() + ttl);
    f(&mut c);
    sign(&c, &key())
}

fn signed(s: &TestServer, t: &str, extra: &str) -> Client {
    let mut c = Client::connect(s, &format!("/ws?token={t}{extra}"));
    let w = c.recv_text();
    assert!(w.starts_with("WELCOME "), "{w}");
    c.recv_until(|l| l.starts_with("SYS signed in as "));
    c
}

/// A line-protocol client.
struct Line {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Line {
    fn connect(s: &TestServer) -> Line {
        let w = raw(s.line_addr.unwrap());
        Line {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }
    fn send(&mut self, line: &str) {
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    /// The next line, or `None` at end of stream.
    fn recv(&mut self) -> Option<String> {
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) => None,
            Ok(_) => Some(s.trim_end().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("line read: {e}"),
        }
    }
    fn expect(&mut self, want: &str) {
        assert_eq!(self.recv().as_deref(), Some(want));
    }
    fn expect_end(&mut self) {
        for _ in 0..100 {
            if self.recv().is_none() {
                return;
            }
        }
        panic!("connection not closed");
    }
}

#[test]
fn a_valid_token_names_the_connection() {
    let s = server(GuestPolicy::Deny);
    let t = token("alice", 60, |c| c.role = Role::Mod);
    let mut c = Client::connect(&s, &format!("/ws?token={t}&nick=mallory&room=dev"));
    assert_eq!(c.recv_text(), "WELCOME alice");
    assert_eq!(c.recv_text(), "JOINED dev alice");
    assert_eq!(c.recv_text(), "SYS signed in as alice, role mod");
    c.send("/nick bob");
    assert_eq!(c.recv_text(), "ERR forbidden a signed nick cannot change");
}

#[test]
fn bad_tokens_get_401_before_the_upgrade() {
    let s = TestServer::start(auth_config(GuestPolicy::Allow, |p| {
        p.audience = Some("chat".into());
        p.max_len = 1024;
    }));
    let ok = token("alice", 60, |c| c.aud = vec!["chat".into()]);
    let wrong_key = sign(
        &Claims::new("alice", now() + 60),
        &Key::new(&[7u8; 32]).unwrap(),
    );
    let body = format!(r#"{{"sub":"alice","exp":{},"aud":"chat"}}"#, now() + 60);
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(&body)
    );
    let cases = [
        (
            "expired",
            token("alice", 0, |c| c.exp = now() - 5),
            "expired",
        ),
        (
            "not yet valid",
            token("alice", 60, |c| {
                c.aud = vec!["chat".into()];
                c.nbf = Some(now() + 30)
            }),
            "not yet valid",
        ),
        ("wrong signature", wrong_key, "bad signature"),
        ("alg none", none, "algorithm not accepted"),
        (
            "HS512",
            sign_raw(r#"{"alg":"HS512"}"#, &body, &key()),
            "algorithm not accepted",
        ),
        (
            "oversize",
            format!("{ok}{}", "A".repeat(1024)),
            "token too long",
        ),
        (
            "malformed base64",
            ok.replacen('.', "*.", 1),
            "bad base64url",
        ),
        (
            "wrong audience",
            token("alice", 60, |c| c.aud = vec!["other".into()]),
            "wrong audience",
        ),
        ("no audience", token("alice", 60, |_| {}), "wrong audience"),
    ];
    for (what, t, reason) in cases {
        let (status, resp) = http(s.addr, &upgrade_request(&format!("/ws?token={t}")));
        assert_eq!(status, 401, "{what}: {resp}");
        assert!(
            resp.contains(&format!("bad token: {reason}")),
            "{what}: {resp}"
        );
        assert!(resp.contains("WWW-Authenticate: Bearer"), "{what}");
    }
    // The good one still upgrades, and a guest (allowed here) does too.
    let mut c = Client::connect(&s, &format!("/ws?token={ok}"));
    assert_eq!(c.recv_text(), "WELCOME alice");
    let (_g, nick) = Client::chat(&s, "");
    assert!(nick.starts_with("guest-"), "{nick}");
}

#[test]
fn auth_first_on_the_line_listener() {
    let s = server(GuestPolicy::Deny);
    let mut a = Line::connect(&s);
    a.send(&format!("/auth {}", token("lin", 60, |_| {})));
    a.expect("WELCOME lin");
    a.expect("JOINED lobby lin");
    a.expect("SYS signed in as lin, role member");
    a.send("hi");
    a.expect("MSG lobby lin hi");
    // Anything but /auth first: refused and closed.
    let mut b = Line::connect(&s);
    b.send("hello");
    b.expect("ERR forbidden sign in first: /auth TOKEN");
    b.expect_end();
    // A bad token: ERR bad-token and closed.
    let mut c = Line::connect(&s);
    c.send("/auth not.a.token");
    c.expect("ERR bad-token bad base64url");
    c.expect_end();
    // A bad /auth from a connected WebSocket client: ERR and close 1008.
    let mut w = signed(&s, &token("wsu", 60, |_| {}), "");
    w.send("/auth eyJhbGciOiJub25lIn0.e30.");
    assert_eq!(
        w.recv_text(),
        "ERR bad-token algorithm not accepted (HS256 only)"
    );
    assert_eq!(w.expect_close(), CloseCode::Policy);
}

#[test]
fn viewers_read_but_cannot_speak() {
    let s = server(GuestPolicy::Deny);
    let mut v = signed(&s, &token("val", 60, |c| c.role = Role::Viewer), "");
    let mut m = signed(&s, &token("mem", 60, |_| {}), "");
    for line in ["hello", "/say lobby hello", "/msg mem hello"] {
        v.send(line);
        assert_eq!(
            v.recv_until(|l| l.starts_with("ERR")),
            "ERR forbidden viewers may read but not speak"
        );
    }
    m.send("from mem");
    assert_eq!(
        m.recv_until(|l| l.starts_with("MSG")),
        "MSG lobby mem from mem"
    );
    assert_eq!(
        v.recv_until(|l| l.starts_with("MSG")),
        "MSG lobby mem from mem"
    );
}

#[test]
fn the_rooms_claim_limits_joins() {
    let s = server(GuestPolicy::Deny);
    let t = token("opsy", 60, |c| {
        c.rooms = Some(vec!["dev".into(), "ops-*".into()])
    });
    let mut c = Client::connect(&s, &format!("/ws?token={t}&room=secret"));
    assert_eq!(c.recv_text(), "WELCOME opsy");
    assert_eq!(
        c.recv_text(),
        "ERR forbidden your token does not allow that room"
    );
    assert_eq!(c.recv_text(), "JOINED dev opsy");
    c.recv_text();
    c.send("/join lobby");
    assert_eq!(
        c.recv_text(),
        "ERR forbidden your token does not allow that room"
    );
    c.send("/join ops-east");
    assert_eq!(c.recv_text(), "JOINED ops-east opsy");
}

#[test]
fn moderators_kick_and_the_kicked_cannot_rejoin() {
    let s = server(GuestPolicy::Deny);
    let mut m = signed(&s, &token("moda", 60, |c| c.role = Role::Mod), "&room=dev");
    let mut u = signed(&s, &token("usr", 60, |_| {}), "&room=dev");
    m.recv_until(|l| l == "JOINED dev usr");
    u.send("/kick dev moda");
    assert_eq!(u.recv_text(), "ERR forbidden only moderators may kick");
    m.send("/kick dev usr flooding");
    assert_eq!(m.recv_text(), "KICKED dev usr moda flooding");
    assert_eq!(m.recv_text(), "LEFT dev usr");
    assert_eq!(u.recv_text(), "KICKED dev usr moda flooding");
    assert_eq!(u.recv_text(), "LEFT dev usr");
    u.send("/join dev");
    assert_eq!(
        u.recv_text(),
        "ERR forbidden you were kicked from that room, try later"
    );
    // The ban follows the identity to a new connection (same token subject).
    drop(u);
    let mut again = Client::connect(
        &s,
        &format!("/ws?token={}&room=dev", token("usr", 60, |_| {})),
    );
    assert_eq!(again.recv_text(), "WELCOME usr");
    assert_eq!(
        again.recv_text(),
        "ERR forbidden you were kicked from that room, try later"
    );
}

#[test]
fn a_second_sign_in_replaces_the_first() {
    let s = server(GuestPolicy::Allow);
    // A guest using the nick is renamed when its holder arrives.
    let (mut g, nick) = Client::chat(&s, "?nick=bea");
    assert_eq!(nick, "bea");
    let mut first = signed(&s, &token("bea", 60, |_| {}), "");
    assert!(g
        .recv_until(|l| l.starts_with("NICK bea "))
        .starts_with("NICK bea guest-"));
    assert_eq!(g.recv_text(), "SYS nick bea belongs to a signed user");
    // A guest cannot take it while it is held.
    let (_h, nick) = Client::chat(&s, "?nick=bea");
    assert!(nick.starts_with("guest-"));
    let _second = signed(&s, &token("bea", 60, |_| {}), "");
    assert_eq!(
        first.recv_until(|l| l.starts_with("SYS")),
        "SYS signed in elsewhere"
    );
    assert_eq!(first.expect_close(), CloseCode::Library(4001));
}

#[test]
fn tokens_expire_unless_refreshed() {
    let s = server(GuestPolicy::Deny);
    // Both tokens expire within a few seconds; one is refreshed at once.
    // Margins of seconds: on a loaded machine an upgrade can take a while.
    let mut kept = signed(&s, &token("kept", 4, |_| {}), "");
    let mut gone = signed(&s, &token("gone", 5, |_| {}), "");
    kept.send(&format!("/auth {}", token("kept", 120, |_| {})));
    assert_eq!(
        kept.recv_until(|l| l.starts_with("SYS")),
        "SYS signed in as kept, role member"
    );
    assert_eq!(
        gone.recv_until(|l| l.starts_with("SYS")),
        "SYS token expired"
    );
    assert_eq!(gone.expect_close(), CloseCode::Library(4001));
    // `gone` expired after `kept`'s first token: `kept` is still here.
    kept.sync("still");
    // A token for another nick is refused.
    kept.send(&format!("/auth {}", token("other", 120, |_| {})));
    assert_eq!(
        kept.recv_until(|l| l.starts_with("ERR")),
        "ERR bad-token token is for another nick"
    );
    assert_eq!(kept.expect_close(), CloseCode::Policy);
}

#[test]
fn guest_policies() {
    // deny: 401 on /ws without a token.
    let s = server(GuestPolicy::Deny);
    let (status, resp) = http(s.addr, &upgrade_request("/ws?nick=x"));
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("token required"));
    drop(s);
    // read-only: a viewer guest; it can sign in with /auth and then speak.
    let s = server(GuestPolicy::ReadOnly);
    let (mut g, nick) = Client::chat(&s, "?nick=ro");
    assert_eq!(nick, "ro");
    g.recv_until(|l| l.starts_with("JOINED"));
    g.send("hello");
    assert_eq!(
        g.recv_text(),
        "ERR forbidden viewers may read but not speak"
    );
    let mut l = Line::connect(&s);
    l.expect(&format!("WELCOME {}", "guest-1"));
    l.recv();
    l.send("hi");
    l.expect("ERR forbidden viewers may read but not speak");
    g.send(&format!("/auth {}", token("rosa", 60, |_| {})));
    assert_eq!(g.recv_until(|l| l.starts_with("NICK")), "NICK ro rosa");
    assert_eq!(g.recv_text(), "SYS signed in as rosa, role member");
    g.send("now I speak");
    assert_eq!(g.recv_text(), "MSG lobby rosa now I speak");
    drop(s);
    // allow: a guest as without --auth-key.
    let s = server(GuestPolicy::Allow);
    let (mut g, _) = Client::chat(&s, "?nick=free");
    g.recv_until(|l| l.starts_with("JOINED"));
    g.send("hello");
    assert_eq!(g.recv_text(), "MSG lobby free hello");
}

/// The binary with `--auth-key`, its stderr read line by line.
struct Child {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::sync::mpsc::Receiver<String>,
}

impl Child {
    fn wait_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return,
                Ok(_) => continue,
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }
    fn hup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) },
            0
        );
    }
    /// The status of an upgrade with token `t` (the connection is then dropped).
    fn status(&self, t: &str) -> u16 {
        let mut s = raw(self.addr);
        s.write_all(upgrade_request(&format!("/ws?token={t}")).as_bytes())
            .unwrap();
        let (head, _) = read_head(&mut s);
        head.split(' ').nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_rotates_the_key_and_the_old_one_stays_for_the_grace() {
    let file = key_file(SECRET);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(["--listen", "127.0.0.1:0", "--auth-key"])
        .arg(&file)
        .args(["--auth-key-grace", "1h"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let addr = common::listening_addr(&mut out);
    let err = BufReader::new(child.stderr.take().unwrap());
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            assert!(!line.contains("eyJ"), "a token in the log: {line}");
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let c = Child { child, addr, log };
    let k1 = |sub: &str| token(sub, 60, |_| {});
    let with =
        |secret: &[u8], sub: &str| sign(&Claims::new(sub, now() + 60), &Key::new(secret).unwrap());
    let k2: &[u8] = b"second-key-second-key-second-key-2";
    let k3: &[u8] = b"third-key-third-key-third-key-3333";
    assert_eq!(c.status(&k1("a")), 101);
    assert_eq!(c.status(&with(k2, "a")), 401);
    c.wait_log("auth: 127.0.0.1 token refused before the upgrade: bad signature");
    std::fs::write(&file, k2).unwrap();
    c.hup();
    c.wait_log("auth: SIGHUP, new key loaded");
    assert_eq!(c.status(&with(k2, "b")), 101);
    assert_eq!(c.status(&k1("c")), 101, "the old key within its grace");
    // A second rotation: only the key just replaced is still accepted.
    std::fs::write(&file, k3).unwrap();
    c.hup();
    c.wait_log("auth: SIGHUP, new key loaded");
    assert_eq!(c.status(&with(k3, "d")), 101);
    assert_eq!(c.status(&with(k2, "e")), 101);
    assert_eq!(c.status(&k1("f")), 401);
    // A SIGHUP that changes nothing, and one with a bad file, keep the key.
    c.hup();
    c.wait_log("auth: SIGHUP, key unchanged");
    std::fs::write(&file, b"short").unwrap();
    c.hup();
    c.wait_log("keeping the current key");
    assert_eq!(c.status(&with(k3, "g")), 101);
    let _ = std::fs::remove_file(&file);
}

/// The `SESSION` token among what `c` receives next.
fn session_token(c: &mut Client) -> String {
    c.recv_until(|l| l.starts_with("SESSION "))["SESSION ".len()..].to_string()
}

#[test]
fn a_signed_session_resumes_with_its_identity_and_still_expires() {
    let s = server(GuestPolicy::Deny);
    let mut obs = signed(&s, &token("obs", 120, |_| {}), "&room=dev");
    obs.sync("start");
    // Resumed with the session token alone (guests are denied): nick, role,
    // rooms claim and expiry come back.
    let t = token("sam", 6, |c| {
        c.role = Role::Mod;
        c.rooms = Some(vec!["dev".into()]);
    });
    let mut sam = Client::connect(&s, &format!("/ws?token={t}&room=dev&caps=resume"));
    let session = session_token(&mut sam);
    sam.sync("before");
    // The old connection still looks open (a half-open one after a network
    // change): the resume takes it over.
    let mut back = Client::connect(&s, &format!("/ws?resume={session}"));
    assert_eq!(back.recv_text(), "WELCOME sam");
    assert!(back.recv_text().starts_with("SESSION "));
    assert_eq!(back.recv_text(), "RESUMED dev 0");
    assert_eq!(back.recv_text(), "SYS signed in as sam, role mod");
    assert_eq!(sam.expect_close(), CloseCode::Normal);
    back.send("/join ops");
    assert_eq!(
        back.recv_text(),
        "ERR forbidden your token does not allow that room"
    );
    back.send("/kick dev obs");
    assert_eq!(back.recv_text(), "KICKED dev obs sam");
    // ... and the token's expiry still ends it.
    assert_eq!(
        back.recv_until(|l| l.starts_with("SYS")),
        "SYS token expired"
    );
    assert_eq!(back.expect_close(), CloseCode::Library(4001));
    // A resume token naming no held signed session: no way in without a token.
    let mut bad = raw(s.addr);
    bad.write_all(upgrade_request("/ws?resume=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").as_bytes())
        .unwrap();
    let (head, _) = read_head(&mut bad);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[test]
fn a_held_signed_session_ends_at_exp_or_when_its_holder_signs_in() {
    let s = server(GuestPolicy::Deny);
    let mut obs = signed(&s, &token("obs", 120, |_| {}), "&room=dev");
    // Held past its token's exp: ended, the room sees LEFT.
    let exp = now() + 3;
    let mut ann = signed(&s, &token("ann", 3, |_| {}), "&room=dev&caps=resume");
    ann.sync("a");
    drop(ann);
    assert_eq!(
        obs.recv_until(|l| l.starts_with("LEFT")),
        "LEFT dev ann",
        "the held session ended with its token"
    );
    assert!(
        now() >= exp,
        "held until exp (leeway 0), not dropped at once"
    );
    // A new connection with a token for a held nick takes it over at once.
    let bo_token = token("bo", 120, |_| {});
    let mut bo = Client::connect(&s, &format!("/ws?token={bo_token}&room=dev&caps=resume"));
    let session = session_token(&mut bo);
    bo.sync("b");
    drop(bo);
    obs.sync("held");
    let mut again = signed(&s, &token("bo", 120, |_| {}), "&room=dev");
    again.sync("c");
    assert_eq!(
        obs.recv_until(|l| l.starts_with("LEFT") || l.starts_with("JOINED")),
        "LEFT dev bo"
    );
    assert_eq!(obs.recv_text(), "JOINED dev bo");
    // The replaced session's token is spent.
    let mut late = Line::connect(&s);
    late.send(&format!("/resume {session}"));
    late.expect("ERR forbidden sign in first: /auth TOKEN");
    late.expect_end();
}

#[test]
fn a_line_connection_resumes_a_signed_session_first() {
    let s = server(GuestPolicy::Deny);
    let mut cy = Line::connect(&s);
    cy.send(&format!("/auth {}", token("cy", 120, |_| {})));
    cy.expect("WELCOME cy");
    cy.expect("JOINED lobby cy");
    cy.expect("SYS signed in as cy, role member");
    cy.send("/caps resume");
    cy.expect("CAPS resume");
    let session = cy.recv().unwrap()["SESSION ".len()..].to_string();
    drop(cy);
    let mut back = Line::connect(&s);
    back.send(&format!("/resume {session} lobby=0"));
    back.expect("WELCOME cy");
    assert!(back.recv().unwrap().starts_with("SESSION "));
    assert!(back.recv().unwrap().starts_with("RESUMED lobby "));
    back.expect("SYS signed in as cy, role member");
    back.send("hello");
    back.expect("MSG lobby cy hello");
}
