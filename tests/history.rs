//! Message ids, history and resumable sessions through real sockets
//! (PROTOCOL.md, v2). Every wait is on a line, with a deadline.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{config, Client, TestServer, WAIT};
use loopchat::chat::line::{parse, Count, Line};

/// `(id, text)` of a tagged `MSG` line.
fn tagged_msg(line: &str) -> (String, String) {
    match parse(line) {
        Ok((tags, Line::Msg { text, .. })) => {
            (tags.id.expect("an id tag").to_string(), text.to_string())
        }
        other => panic!("expected a tagged MSG, got {line:?} ({other:?})"),
    }
}

fn id_seq(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

fn session_of(c: &mut Client) -> String {
    let l = c.recv_until(|l| l.starts_with("SESSION "));
    l["SESSION ".len()..].to_string()
}

/// Wait until `/who ROOM` (asked by `c`) no longer lists `nick`: the server
/// has noticed the drop. Bounded: 200 round trips.
fn wait_until_not_listed(c: &mut Client, room: &str, nick: &str) {
    for _ in 0..200 {
        c.send(&format!("/who {room}"));
        let who = c.recv_until(|l| l.starts_with("WHO "));
        if !who.split(' ').skip(2).any(|n| n == nick) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{nick} still listed in {room}");
}

#[test]
fn abrupt_drop_then_resume_gets_exactly_the_missed_messages() {
    let server = TestServer::start(config());
    let (mut ann, nick) = Client::chat(&server, "?nick=ann&caps=ids,resume");
    assert_eq!(nick, "ann");
    assert_eq!(ann.recv_text(), "CAPS ids,resume");
    let token = session_of(&mut ann);
    ann.recv_until(|l| l == "JOINED lobby ann");
    let (mut bob, _) = Client::chat(&server, "?nick=bob");
    bob.recv_until(|l| l == "JOINED lobby bob");
    bob.send("m0");
    assert_eq!(
        bob.recv_text(),
        "MSG lobby bob m0",
        "a v1 client sees no tags"
    );
    let (seen, text) = tagged_msg(&ann.recv_until(|l| l.contains(" MSG ")));
    assert_eq!(text, "m0");

    // No close frame: the TCP connection just goes.
    drop(ann);
    for i in 1..=20 {
        bob.send(&format!("m{i}"));
    }
    bob.sync("sent");

    let (mut back, guest) = Client::chat(&server, "?caps=ids");
    assert!(guest.starts_with("guest-"));
    back.recv_until(|l| l == format!("JOINED lobby {guest}"));
    back.send(&format!("/resume {token} lobby={seen}"));
    back.recv_until_eq(&format!("LEFT lobby {guest}"));
    assert_eq!(back.recv_text(), "WELCOME ann");
    let fresh = session_of(&mut back);
    assert_ne!(fresh, token);
    assert_eq!(back.recv_text(), "RESUMED lobby 20");
    let mut last = id_seq(&seen);
    for i in 1..=20 {
        let (id, text) = tagged_msg(&back.recv_text());
        assert_eq!(text, format!("m{i}"));
        assert!(id_seq(&id) > last, "ids follow the room's order");
        last = id_seq(&id);
    }
    bob.send("live");
    let (_, text) = tagged_msg(&back.recv_text());
    assert_eq!(text, "live", "the next live message, once");
    back.sync("after");

    // Bob saw the guest come and go, never ann leave.
    let seen_by_bob = bob.recv_until_eq("MSG lobby bob live");
    assert!(
        !seen_by_bob.iter().any(|l| l == "LEFT lobby ann"),
        "{seen_by_bob:?}"
    );

    // The used token is refused; the connection goes on as a guest.
    let (mut again, guest) = Client::chat(&server, &format!("?resume={token}"));
    assert!(guest.starts_with("guest-"), "{guest}");
    assert!(again.recv_text().starts_with("ERR bad-session "));
    again.recv_until(|l| l == format!("JOINED lobby {guest}"));

    // The fresh token resumes at connect, with the position in `since`.
    drop(back);
    wait_until_not_listed(&mut bob, "lobby", "ann");
    let (mut third, nick) = Client::chat(
        &server,
        &format!("?resume={fresh}&caps=ids%2Cresume&since=lobby%3A{seen}"),
    );
    assert_eq!(nick, "ann");
    assert_eq!(third.recv_text(), "CAPS ids,resume");
    session_of(&mut third);
    assert_eq!(third.recv_text(), "RESUMED lobby 21");
    let (_, metrics) = common::http(
        server.addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        metrics.contains("\nloopchat_sessions_resumed_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nloopchat_sessions_detached 0\n"),
        "{metrics}"
    );
}

#[test]
fn grace_period_keeps_the_nick_and_expiry_sends_left() {
    let mut cfg = config();
    cfg.chat.session_ttl_ms = 1500;
    let server = TestServer::start(cfg);
    let (mut ann, _) = Client::chat(&server, "?nick=ann&caps=resume");
    session_of(&mut ann);
    let (mut bob, _) = Client::chat(&server, "?nick=bob");
    bob.recv_until(|l| l == "JOINED lobby bob");
    drop(ann);
    wait_until_not_listed(&mut bob, "lobby", "ann");
    bob.send("/nick ann");
    assert_eq!(bob.recv_text(), "ERR nick-taken nick taken");
    // Nothing but the expiry's LEFT may come now.
    assert_eq!(bob.recv_text(), "LEFT lobby ann");
    bob.send("/nick ann");
    assert_eq!(bob.recv_text(), "NICK bob ann");
}

#[test]
fn without_resume_a_drop_is_a_plain_leave() {
    let server = TestServer::start(config());
    let (ann, _) = Client::chat(&server, "?nick=ann&caps=ids");
    let (mut bob, _) = Client::chat(&server, "?nick=bob");
    bob.recv_until(|l| l == "JOINED lobby bob");
    drop(ann);
    assert_eq!(bob.recv_text(), "LEFT lobby ann");
}

/// A line-protocol client (`nc`).
struct Nc {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Nc {
    fn connect(server: &TestServer) -> Nc {
        let s = TcpStream::connect(server.line_addr.unwrap()).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        Nc {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }
    fn send(&mut self, l: &str) {
        self.w.write_all(format!("{l}\n").as_bytes()).unwrap();
    }
    fn recv(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with('\n'), "line {l:?}");
        l.trim_end().to_string()
    }
    fn recv_until(&mut self, want: &str) {
        for _ in 0..1000 {
            if self.recv() == want {
                return;
            }
        }
        panic!("{want:?} not received");
    }
}

#[test]
fn history_both_forms_over_the_line_listener() {
    let mut cfg = config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.chat.history.keep = 5;
    let server = TestServer::start(cfg);
    let mut nc = Nc::connect(&server);
    nc.send("/nick sam");
    nc.recv_until("NICK guest-1 sam");
    for i in 1..=7 {
        nc.send(&format!("h{i}"));
    }
    nc.recv_until("MSG lobby sam h7");
    nc.send("/history lobby 2");
    assert_eq!(nc.recv(), "HISTORY lobby 2");
    assert_eq!(nc.recv(), "MSG lobby sam h6");
    assert_eq!(nc.recv(), "MSG lobby sam h7");
    nc.send("/history lobby");
    assert_eq!(nc.recv(), "HISTORY lobby 5", "at most --history");
    for i in 3..=7 {
        assert_eq!(nc.recv(), format!("MSG lobby sam h{i}"));
    }
    // Ids come with the `ids` capability, switched on mid-connection.
    nc.send("/caps ids");
    assert_eq!(nc.recv(), "CAPS ids");
    nc.send("/history lobby 3");
    assert_eq!(nc.recv(), "HISTORY lobby 3");
    let ids: Vec<String> = (5..=7)
        .map(|i| {
            let (id, text) = tagged_msg(&nc.recv());
            assert_eq!(text, format!("h{i}"));
            id
        })
        .collect();
    nc.send(&format!("/history lobby after {}", ids[0]));
    assert_eq!(nc.recv(), "HISTORY lobby 2");
    assert_eq!(tagged_msg(&nc.recv()).0, ids[1]);
    assert_eq!(tagged_msg(&nc.recv()).0, ids[2]);
    nc.send(&format!("/history lobby after {} 0", ids[0]));
    assert_eq!(nc.recv(), "HISTORY lobby 0");
    // h1 is no longer kept: after it, h2 is missing.
    let h1 = format!(
        "{}-{}",
        ids[0].split('-').next().unwrap(),
        id_seq(&ids[0]) - 4
    );
    nc.send(&format!("/history lobby after {h1}"));
    let l = nc.recv();
    assert_eq!(
        parse(&l).unwrap().1,
        Line::History {
            room: "lobby",
            count: Count::Lost
        }
    );
    nc.send("/history elsewhere");
    assert_eq!(nc.recv(), "ERR not-in-room not in that room");
}

#[test]
fn history_off() {
    let mut cfg = config();
    cfg.chat.history.keep = 0;
    let server = TestServer::start(cfg);
    let (mut c, _) = Client::chat(&server, "");
    c.send("/history lobby");
    assert_eq!(
        c.recv_until(|l| l.starts_with("ERR")),
        "ERR history-off this server keeps no history"
    );
}
