//! The chat of PROTOCOL.md between real clients.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use tungstenite::Message;

#[test]
fn welcome_join_and_default_nick() {
    let s = TestServer::start(config());
    let (mut a, nick) = Client::chat(&s, "");
    assert!(nick.starts_with("guest-"), "{nick}");
    assert_eq!(a.recv_text(), format!("JOINED lobby {nick}"));
    let (mut b, nick) = Client::chat(&s, "?nick=bob&room=dev");
    assert_eq!(nick, "bob");
    assert_eq!(b.recv_text(), "JOINED dev bob");
    a.sync("a");
}

#[test]
fn rooms_are_isolated_and_messages_reach_the_sender_too() {
    let s = TestServer::start(config());
    let (mut alice, _) = Client::chat(&s, "?nick=alice&room=dev");
    alice.recv_until(|l| l == "JOINED dev alice");
    let (mut bob, _) = Client::chat(&s, "?nick=bob&room=dev");
    bob.recv_until(|l| l == "JOINED dev bob");
    alice.recv_until(|l| l == "JOINED dev bob");
    let (mut carol, _) = Client::chat(&s, "?nick=carol&room=ops");
    carol.recv_until(|l| l == "JOINED ops carol");

    alice.send("hello dev");
    assert_eq!(alice.recv_text(), "MSG dev alice hello dev");
    assert_eq!(bob.recv_text(), "MSG dev alice hello dev");
    carol.send("hello ops");
    assert_eq!(carol.recv_text(), "MSG ops carol hello ops");
    // Bob sees nothing from ops: his next line is his own round trip.
    bob.send("/ping x");
    assert_eq!(bob.recv_text(), "PONG x");
    // `//` escapes a leading slash; CR/LF in text become spaces.
    alice.send("//not a command");
    assert_eq!(alice.recv_text(), "MSG dev alice /not a command");
    alice.send("two\r\nlines");
    assert_eq!(alice.recv_text(), "MSG dev alice two  lines");
    assert_eq!(bob.recv_text(), "MSG dev alice /not a command");
    assert_eq!(bob.recv_text(), "MSG dev alice two  lines");
}

#[test]
fn many_rooms_say_and_leave() {
    let s = TestServer::start(config());
    let (mut a, _) = Client::chat(&s, "?nick=ann");
    a.recv_until(|l| l == "JOINED lobby ann");
    a.send("/join dev");
    assert_eq!(a.recv_text(), "JOINED dev ann");
    a.send("in dev");
    assert_eq!(a.recv_text(), "MSG dev ann in dev");
    a.send("/say lobby in lobby");
    assert_eq!(a.recv_text(), "MSG lobby ann in lobby");
    a.send("/say nowhere hi");
    assert!(a.recv_text().starts_with("ERR not-in-room"));
    a.send("/leave dev");
    assert_eq!(a.recv_text(), "LEFT dev ann");
    // Current room falls back to the remaining one.
    a.send("back");
    assert_eq!(a.recv_text(), "MSG lobby ann back");
    a.send("/rooms");
    assert_eq!(a.recv_text(), "ROOMS lobby=1");
    a.send("/who");
    assert_eq!(a.recv_text(), "WHO lobby ann");
    a.send("/join bad room!");
    assert!(a.recv_text().starts_with("ERR "));
    a.send("/frobnicate");
    assert!(a.recv_text().starts_with("ERR bad-command"));
    a.send("/help");
    assert!(!a.recv_text().is_empty());
    a.sync("done");
}

#[test]
fn private_messages_and_nick_rules() {
    let s = TestServer::start(config());
    let (mut a, _) = Client::chat(&s, "?nick=alice&room=x");
    a.recv_until(|l| l == "JOINED x alice");
    let (mut b, _) = Client::chat(&s, "?nick=bob&room=y");
    b.recv_until(|l| l == "JOINED y bob");
    a.send("/msg BOB psst");
    assert_eq!(a.recv_text(), "PRIV alice bob psst");
    assert_eq!(b.recv_text(), "PRIV alice bob psst");
    a.send("/msg nobody hi");
    assert!(a.recv_text().starts_with("ERR no-such-nick"));
    // Case-insensitive uniqueness, at connect and on /nick.
    b.send("/nick ALICE");
    assert!(b.recv_text().starts_with("ERR nick-taken"));
    b.send("/nick no spaces allowed");
    assert!(b.recv_text().starts_with("ERR "));
    let (mut c, nick) = Client::chat(&s, "?nick=Alice");
    assert!(nick.starts_with("guest-"), "{nick}");
    assert!(c
        .recv_until(|l| l.starts_with("ERR "))
        .starts_with("ERR nick-taken"));
}

#[test]
fn nick_changes_and_departures_propagate() {
    let s = TestServer::start(config());
    let (mut a, _) = Client::chat(&s, "?nick=a1&room=r");
    a.recv_until(|l| l == "JOINED r a1");
    let (mut b, _) = Client::chat(&s, "?nick=b1&room=r");
    b.recv_until(|l| l == "JOINED r b1");
    a.recv_until(|l| l == "JOINED r b1");
    let (mut c, _) = Client::chat(&s, "?nick=c1&room=other");
    c.recv_until(|l| l == "JOINED other c1");
    b.send("/join other");
    b.recv_until(|l| l == "JOINED other b1");
    c.recv_until(|l| l == "JOINED other b1");

    // b shares room r with a and room other with c: each gets NICK once.
    b.send("/nick b2");
    assert_eq!(b.recv_text(), "NICK b1 b2");
    assert_eq!(a.recv_text(), "NICK b1 b2");
    assert_eq!(c.recv_text(), "NICK b1 b2");
    a.sync("1");
    c.sync("1");

    // A dropped connection is announced in every room it was in.
    drop(b);
    assert_eq!(a.recv_text(), "LEFT r b2");
    assert_eq!(c.recv_text(), "LEFT other b2");

    // /quit: LEFT, then close 1000.
    c.send("/quit bye");
    c.recv_until(|l| l == "LEFT other c1");
    assert_eq!(u16::from(c.expect_close()), 1000);
}

#[test]
fn line_clients_and_websocket_clients_share_rooms() {
    let mut cfg = config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start(cfg);
    let (mut w, _) = Client::chat(&s, "?nick=web");
    w.recv_until(|l| l == "JOINED lobby web");

    let tcp = raw(s.line_addr.unwrap());
    let mut lines = BufReader::new(tcp.try_clone().unwrap());
    let mut tcp = tcp;
    let mut line = String::new();
    let mut next = |lines: &mut BufReader<std::net::TcpStream>| {
        line.clear();
        lines.read_line(&mut line).unwrap();
        line.trim_end_matches('\n').to_string()
    };
    let welcome = next(&mut lines);
    let guest = welcome
        .strip_prefix("WELCOME ")
        .expect("WELCOME")
        .to_string();
    assert_eq!(next(&mut lines), format!("JOINED lobby {guest}"));
    assert_eq!(w.recv_text(), format!("JOINED lobby {guest}"));
    tcp.write_all(b"/nick cli\r\n").unwrap();
    assert_eq!(next(&mut lines), format!("NICK {guest} cli"));
    assert_eq!(w.recv_text(), format!("NICK {guest} cli"));
    tcp.write_all(b"hi from nc\n").unwrap();
    assert_eq!(next(&mut lines), "MSG lobby cli hi from nc");
    assert_eq!(w.recv_text(), "MSG lobby cli hi from nc");
    w.send("hi from web");
    assert_eq!(next(&mut lines), "MSG lobby web hi from web");
    // A line split over two writes is one command.
    tcp.write_all(b"/pi").unwrap();
    tcp.flush().unwrap();
    tcp.write_all(b"ng z\n").unwrap();
    assert_eq!(next(&mut lines), "PONG z");
}

#[test]
fn binary_frames_holding_utf8_are_chat_lines() {
    let s = TestServer::start(config());
    let (mut a, _) = Client::chat(&s, "?nick=tsung");
    a.recv_until(|l| l == "JOINED lobby tsung");
    a.ws.send(Message::binary(b"from binary".to_vec())).unwrap();
    assert_eq!(a.recv_text(), "MSG lobby tsung from binary");
    a.ws.send(Message::binary(vec![0xff, 0xfe])).unwrap();
    assert!(a.recv_text().starts_with("ERR bad-command"));
}
