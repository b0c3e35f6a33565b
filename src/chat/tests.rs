//! Behaviour of the hub through a recording sink.

use super::*;

/// Records every delivery per recipient, and every close.
#[derive(Default)]
struct Rec {
    lines: Vec<(ConnId, String)>,
    closes: Vec<(ConnId, u16, String)>,
    deliver_calls: usize,
}

impl Sink for Rec {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        self.deliver_calls += 1;
        for &id in to {
            self.lines.push((id, line.to_string()));
        }
    }
    fn close(&mut self, id: ConnId, code: u16, reason: &str) {
        self.closes.push((id, code, reason.to_string()));
    }
}

impl Rec {
    /// Lines received by `id` since the last call, in order.
    fn take(&mut self, id: ConnId) -> Vec<String> {
        let mut out = Vec::new();
        self.lines.retain(|(to, line)| {
            if *to == id {
                out.push(line.clone());
                false
            } else {
                true
            }
        });
        out
    }
    fn clear(&mut self) {
        self.lines.clear();
        self.closes.clear();
        self.deliver_calls = 0;
    }
}

fn cfg() -> ChatConfig {
    ChatConfig {
        rate_limit: 0,
        ..ChatConfig::default()
    }
}

/// A hub with `nicks.len()` connections (ids 0..), all in the lobby, output cleared.
fn hub_with(config: ChatConfig, nicks: &[&str]) -> (Hub, Rec) {
    let mut hub = Hub::new(config);
    let mut rec = Rec::default();
    for (i, n) in nicks.iter().enumerate() {
        hub.connect(i, Some(n), None, 0, &mut rec);
    }
    rec.clear();
    hub.check_invariants();
    (hub, rec)
}

fn h(hub: &mut Hub, rec: &mut Rec, id: ConnId, line: &str) {
    hub.handle(id, line, 0, rec);
    hub.check_invariants();
}

#[test]
fn connect_sends_welcome_then_joined() {
    let mut hub = Hub::new(cfg());
    let mut rec = Rec::default();
    hub.connect(0, Some("alice"), None, 0, &mut rec);
    assert_eq!(rec.take(0), ["WELCOME alice", "JOINED lobby alice"]);
    hub.connect(1, None, Some("dev"), 0, &mut rec);
    assert_eq!(rec.take(1), ["WELCOME guest-1", "JOINED dev guest-1"]);
    assert_eq!(hub.connections(), 2);
    assert_eq!(hub.rooms(), 2);
    hub.connect(2, Some("bob"), Some("lobby"), 0, &mut rec);
    assert_eq!(rec.take(0), ["JOINED lobby bob"]);
    assert_eq!(rec.take(1), Vec::<String>::new());
    hub.check_invariants();
}

#[test]
fn connect_fallbacks_report_errors() {
    let mut hub = Hub::new(cfg());
    let mut rec = Rec::default();
    hub.connect(0, Some("alice"), None, 0, &mut rec);
    rec.clear();
    hub.connect(1, Some("bad nick"), Some("#bad"), 0, &mut rec);
    assert_eq!(
        rec.take(1),
        [
            "WELCOME guest-1",
            "ERR bad-nick bad nick, using a guest nick",
            "JOINED lobby guest-1",
            "ERR bad-room bad room, joined the default room",
        ]
    );
    hub.connect(2, Some("ALICE"), Some(""), 0, &mut rec);
    assert_eq!(
        rec.take(2),
        [
            "WELCOME guest-2",
            "ERR nick-taken nick taken, using a guest nick",
            "JOINED lobby guest-2",
        ]
    );
    // Guest nicks are the server's to hand out.
    hub.connect(3, Some("Guest-7"), None, 0, &mut rec);
    assert_eq!(
        rec.take(3),
        [
            "WELCOME guest-3",
            "ERR bad-nick guest-* nicks are reserved, using a guest nick",
            "JOINED lobby guest-3",
        ]
    );
    hub.connect(4, Some(""), None, 0, &mut rec);
    assert_eq!(rec.take(4)[0], "WELCOME guest-4");
    hub.check_invariants();
}

#[test]
fn say_reaches_every_member_including_sender_in_one_deliver() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b", "c"]);
    h(&mut hub, &mut rec, 0, "hello there");
    assert_eq!(rec.deliver_calls, 1, "encode once: one deliver per message");
    for id in 0..3 {
        assert_eq!(rec.take(id), ["MSG lobby a hello there"]);
    }
    assert_eq!(hub.messages(), 1);
}

#[test]
fn rooms_are_isolated() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b", "c"]);
    h(&mut hub, &mut rec, 0, "/join dev");
    h(&mut hub, &mut rec, 1, "/join dev");
    h(&mut hub, &mut rec, 0, "/leave lobby");
    h(&mut hub, &mut rec, 1, "/leave lobby");
    rec.clear();
    h(&mut hub, &mut rec, 0, "in dev");
    h(&mut hub, &mut rec, 2, "in lobby");
    assert_eq!(rec.take(0), ["MSG dev a in dev"]);
    assert_eq!(rec.take(1), ["MSG dev a in dev"]);
    assert_eq!(rec.take(2), ["MSG lobby c in lobby"]);
}

#[test]
fn slash_escape_and_newlines_in_text() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a"]);
    h(&mut hub, &mut rec, 0, "//help me");
    h(&mut hub, &mut rec, 0, "one\r\ntwo\nthree\r");
    h(&mut hub, &mut rec, 0, "/say lobby x\ny");
    h(&mut hub, &mut rec, 0, "");
    assert_eq!(
        rec.take(0),
        [
            "MSG lobby a /help me",
            "MSG lobby a one  two three ",
            "MSG lobby a x y"
        ]
    );
}

#[test]
fn one_trailing_line_ending_is_dropped() {
    // websocat and other line-mode tools send "/rooms\n" as the message.
    let (mut hub, mut rec) = hub_with(cfg(), &["a"]);
    h(&mut hub, &mut rec, 0, "/rooms\n");
    h(&mut hub, &mut rec, 0, "/ping x\r\n");
    h(&mut hub, &mut rec, 0, "hello\n\n");
    assert_eq!(
        rec.take(0),
        ["ROOMS lobby=1", "PONG x", "MSG lobby a hello "]
    );
}

#[test]
fn join_many_rooms_current_room_and_leave() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a"]);
    h(&mut hub, &mut rec, 0, "/join Dev");
    h(&mut hub, &mut rec, 0, "/join ops");
    assert_eq!(hub.current_room(0), Some("ops"));
    // Already a member: becomes current, no second JOINED.
    h(&mut hub, &mut rec, 0, "/join DEV");
    assert_eq!(hub.current_room(0), Some("Dev"));
    assert_eq!(rec.take(0), ["JOINED Dev a", "JOINED ops a"]);
    h(&mut hub, &mut rec, 0, "x");
    assert_eq!(rec.take(0), ["MSG Dev a x"]);
    // Leaving the current room falls back to the most recently joined remaining one.
    h(&mut hub, &mut rec, 0, "/leave");
    assert_eq!(rec.take(0), ["LEFT Dev a"]);
    assert_eq!(hub.current_room(0), Some("ops"));
    h(&mut hub, &mut rec, 0, "/leave lobby");
    assert_eq!(hub.current_room(0), Some("ops"));
    h(&mut hub, &mut rec, 0, "/leave");
    assert_eq!(hub.current_room(0), None);
    assert_eq!(hub.rooms(), 0, "empty rooms are deleted");
    rec.clear();
    h(&mut hub, &mut rec, 0, "anyone?");
    h(&mut hub, &mut rec, 0, "/leave");
    h(&mut hub, &mut rec, 0, "/leave dev");
    h(&mut hub, &mut rec, 0, "/say dev hi");
    h(&mut hub, &mut rec, 0, "/who");
    assert_eq!(
        rec.take(0),
        [
            "ERR not-in-room join a room first",
            "ERR not-in-room not in that room",
            "ERR not-in-room not in that room",
            "ERR not-in-room not in that room",
            "ERR not-in-room join a room first",
        ]
    );
}

#[test]
fn rooms_per_connection_are_capped() {
    let config = ChatConfig {
        max_rooms: 2,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["a"]);
    h(&mut hub, &mut rec, 0, "/join x");
    h(&mut hub, &mut rec, 0, "/join y");
    // Re-joining a room already joined is still fine at the cap.
    h(&mut hub, &mut rec, 0, "/join lobby");
    assert_eq!(hub.current_room(0), Some("lobby"));
    assert_eq!(
        rec.take(0),
        ["JOINED x a", "ERR bad-room too many rooms, leave one first"]
    );
    assert_eq!(hub.rooms(), 2, "the refused room was not created");
    h(&mut hub, &mut rec, 0, "/leave x");
    h(&mut hub, &mut rec, 0, "/join y");
    assert_eq!(rec.take(0), ["LEFT x a", "JOINED y a"]);
}

#[test]
fn rooms_are_case_insensitive_and_keep_first_spelling() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b"]);
    h(&mut hub, &mut rec, 0, "/join Dev");
    h(&mut hub, &mut rec, 1, "/join dEV");
    assert_eq!(hub.rooms(), 2);
    assert_eq!(hub.room_len("DEV"), 2);
    assert_eq!(rec.take(1), ["JOINED Dev b"]);
    h(&mut hub, &mut rec, 1, "/say dev hi");
    assert_eq!(
        rec.take(0),
        ["JOINED Dev a", "JOINED Dev b", "MSG Dev b hi"]
    );
}

#[test]
fn say_to_requires_membership() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b"]);
    h(&mut hub, &mut rec, 1, "/join dev");
    h(&mut hub, &mut rec, 0, "/say dev sneaky");
    assert_eq!(rec.take(0), ["ERR not-in-room not in that room"]);
    assert_eq!(rec.take(1), ["JOINED dev b"]);
    h(&mut hub, &mut rec, 1, "/say lobby from afar");
    assert_eq!(rec.take(0), ["MSG lobby b from afar"]);
}

#[test]
fn private_messages() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "Bob", "c"]);
    h(&mut hub, &mut rec, 0, "/msg BOB psst\nhey");
    assert_eq!(rec.take(0), ["PRIV a Bob psst hey"]);
    assert_eq!(rec.take(1), ["PRIV a Bob psst hey"]);
    assert!(rec.take(2).is_empty());
    h(&mut hub, &mut rec, 0, "/msg a note to self");
    assert_eq!(rec.take(0), ["PRIV a a note to self"]);
    h(&mut hub, &mut rec, 0, "/msg nobody hi");
    assert_eq!(rec.take(0), ["ERR no-such-nick no such nick"]);
    // Private messages need no shared room.
    h(&mut hub, &mut rec, 2, "/leave");
    h(&mut hub, &mut rec, 0, "/msg c still there?");
    assert_eq!(rec.take(2), ["LEFT lobby c", "PRIV a c still there?"]);
}

#[test]
fn nick_changes_and_collisions() {
    let (mut hub, mut rec) = hub_with(cfg(), &["alice", "bob"]);
    h(&mut hub, &mut rec, 1, "/nick ALICE");
    assert_eq!(rec.take(1), ["ERR nick-taken nick taken"]);
    h(&mut hub, &mut rec, 1, "/nick b@d");
    assert_eq!(
        rec.take(1),
        ["ERR bad-nick nick must be 1-32 of A-Z a-z 0-9 _ . -"]
    );
    h(&mut hub, &mut rec, 1, "/nick");
    assert_eq!(rec.take(1), ["ERR bad-command usage: /nick NICK"]);
    // Own nick in another case: a display change, propagated.
    h(&mut hub, &mut rec, 1, "/nick Bob");
    assert_eq!(rec.take(0), ["NICK bob Bob"]);
    assert_eq!(rec.take(1), ["NICK bob Bob"]);
    // Exactly the same nick: confirmed to the subject only.
    h(&mut hub, &mut rec, 1, "/nick Bob");
    assert_eq!(rec.take(1), ["NICK Bob Bob"]);
    assert!(rec.take(0).is_empty());
    h(&mut hub, &mut rec, 1, "/nick robert");
    assert_eq!(hub.nick(1), Some("robert"));
    // The old nick is free again.
    h(&mut hub, &mut rec, 0, "/nick bob");
    assert_eq!(hub.nick(0), Some("bob"));
    h(&mut hub, &mut rec, 0, "/msg ROBERT hi");
    assert_eq!(rec.take(1).last().unwrap(), "PRIV bob robert hi");
}

#[test]
fn nick_propagates_to_each_room_mate_once() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b", "c", "d"]);
    // a and b share lobby, x and y; c shares only y; d leaves the lobby.
    for line in ["/join x", "/join y"] {
        h(&mut hub, &mut rec, 0, line);
        h(&mut hub, &mut rec, 1, line);
    }
    h(&mut hub, &mut rec, 2, "/join y");
    h(&mut hub, &mut rec, 2, "/leave lobby");
    h(&mut hub, &mut rec, 3, "/leave lobby");
    h(&mut hub, &mut rec, 3, "/join z");
    rec.clear();
    h(&mut hub, &mut rec, 0, "/nick aa");
    assert_eq!(rec.deliver_calls, 1);
    assert_eq!(rec.take(0), ["NICK a aa"]);
    assert_eq!(rec.take(1), ["NICK a aa"]);
    assert_eq!(rec.take(2), ["NICK a aa"]);
    assert!(rec.take(3).is_empty());
    // The subject alone in no room still hears its own change.
    h(&mut hub, &mut rec, 3, "/leave");
    rec.clear();
    h(&mut hub, &mut rec, 3, "/nick dd");
    assert_eq!(rec.take(3), ["NICK d dd"]);
    assert!(rec.lines.is_empty());
}

#[test]
fn disconnect_sends_left_and_frees_nick_and_rooms() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b"]);
    h(&mut hub, &mut rec, 0, "/join solo");
    rec.clear();
    hub.disconnect(0, &mut rec);
    hub.check_invariants();
    assert_eq!(rec.take(1), ["LEFT lobby a"]);
    assert_eq!(rec.take(0), ["LEFT solo a", "LEFT lobby a"]);
    assert_eq!(hub.connections(), 1);
    assert_eq!(hub.rooms(), 1);
    h(&mut hub, &mut rec, 1, "/nick A");
    assert_eq!(hub.nick(1), Some("A"));
    // Unknown or repeated ids are ignored.
    hub.disconnect(0, &mut rec);
    hub.disconnect(99, &mut rec);
    hub.handle(99, "hi", 0, &mut rec);
    hub.check_invariants();
}

#[test]
fn conn_id_is_reused_after_disconnect() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b"]);
    h(&mut hub, &mut rec, 0, "/join dev");
    hub.disconnect(0, &mut rec);
    rec.clear();
    hub.connect(0, Some("a"), Some("ops"), 0, &mut rec);
    hub.check_invariants();
    assert_eq!(rec.take(0), ["WELCOME a", "JOINED ops a"]);
    assert_eq!(hub.current_room(0), Some("ops"));
    assert_eq!(hub.room_len("dev"), 0);
    // A live id connected again is disconnected first (LEFT to its rooms).
    rec.clear();
    hub.connect(1, Some("b2"), None, 0, &mut rec);
    hub.check_invariants();
    assert_eq!(
        rec.take(1),
        ["LEFT lobby b", "WELCOME b2", "JOINED lobby b2"]
    );
    assert_eq!(hub.connections(), 2);
    // Sparse ids grow the table.
    hub.connect(1000, None, None, 0, &mut rec);
    hub.check_invariants();
    assert_eq!(hub.connections(), 3);
}

#[test]
fn presence_limit_keeps_join_and_leave_private_in_big_rooms() {
    let config = ChatConfig {
        presence_limit: 2,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["a", "b"]);
    hub.connect(2, Some("c"), None, 0, &mut rec);
    hub.check_invariants();
    assert!(rec.take(0).is_empty());
    assert!(rec.take(1).is_empty());
    assert_eq!(rec.take(2), ["WELCOME c", "JOINED lobby c"]);
    h(&mut hub, &mut rec, 2, "/leave");
    assert_eq!(rec.take(2), ["LEFT lobby c"]);
    assert!(rec.lines.is_empty());
    // Back at the limit: presence goes to everyone again.
    h(&mut hub, &mut rec, 1, "/leave");
    assert_eq!(rec.take(0), ["LEFT lobby b"]);
    assert_eq!(rec.take(1), ["LEFT lobby b"]);
    // Messages are not affected by the limit.
    h(&mut hub, &mut rec, 2, "/join lobby");
    h(&mut hub, &mut rec, 1, "/join lobby");
    rec.clear();
    hub.disconnect(2, &mut rec);
    assert!(
        rec.take(0).is_empty(),
        "LEFT of a 3-member room stays private"
    );
    h(&mut hub, &mut rec, 0, "hi");
    assert_eq!(rec.take(1), ["MSG lobby a hi"]);
}

#[test]
fn who_lists_members_with_limit() {
    let config = ChatConfig {
        who_limit: 2,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["a", "b", "c", "d"]);
    h(&mut hub, &mut rec, 0, "/who");
    assert_eq!(rec.take(0), ["WHO lobby a b +2"]);
    h(&mut hub, &mut rec, 3, "/join Dev");
    h(&mut hub, &mut rec, 0, "/who dev");
    assert_eq!(rec.take(0), ["WHO Dev d"]);
    h(&mut hub, &mut rec, 0, "/who Nowhere");
    assert_eq!(rec.take(0), ["WHO Nowhere"]);
    h(&mut hub, &mut rec, 0, "/who #x");
    assert_eq!(
        rec.take(0),
        ["ERR bad-room room must be 1-64 of A-Z a-z 0-9 _ . -"]
    );
    // swap_remove keeps the list exact.
    hub.disconnect(0, &mut rec);
    h(&mut hub, &mut rec, 1, "/who");
    assert_eq!(rec.take(1).last().unwrap(), "WHO lobby d b +1");
}

#[test]
fn rooms_are_listed_sorted_with_limit() {
    let config = ChatConfig {
        rooms_limit: 3,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["a", "b"]);
    for r in ["zeta", "Beta", "alpha", "gamma"] {
        h(&mut hub, &mut rec, 0, &format!("/join {r}"));
    }
    h(&mut hub, &mut rec, 1, "/join alpha");
    rec.clear();
    h(&mut hub, &mut rec, 1, "/rooms");
    assert_eq!(rec.take(1), ["ROOMS alpha=2 Beta=1 gamma=1 +2"]);
    h(&mut hub, &mut rec, 1, "/rooms now");
    assert_eq!(rec.take(1), ["ERR bad-command usage: /rooms"]);
    let (mut hub, mut rec) = hub_with(cfg(), &["a"]);
    h(&mut hub, &mut rec, 0, "/leave");
    h(&mut hub, &mut rec, 0, "/rooms");
    assert_eq!(rec.take(0), ["LEFT lobby a", "ROOMS"]);
}

#[test]
fn ping_help_and_bad_commands() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b"]);
    h(&mut hub, &mut rec, 0, "/ping");
    h(&mut hub, &mut rec, 0, "/ping 42 x\ry");
    assert_eq!(rec.take(0), ["PONG", "PONG 42 x y"]);
    h(&mut hub, &mut rec, 0, "/help");
    let help = rec.take(0);
    assert!(help.len() >= 11);
    assert!(help.iter().all(|l| l.starts_with("SYS ")));
    assert!(help.iter().any(|l| l.contains("/quit")));
    h(&mut hub, &mut rec, 0, "/frobnicate");
    h(&mut hub, &mut rec, 0, "/join");
    h(&mut hub, &mut rec, 0, "/join #no");
    h(&mut hub, &mut rec, 0, "/msg");
    assert_eq!(
        rec.take(0),
        [
            "ERR bad-command unknown command, try /help",
            "ERR bad-command usage: /join ROOM",
            "ERR bad-room room must be 1-64 of A-Z a-z 0-9 _ . -",
            "ERR bad-command usage: /msg NICK TEXT",
        ]
    );
    assert!(rec.take(1).is_empty());
}

#[test]
fn too_long_lines_are_refused() {
    let config = ChatConfig {
        max_line: 10,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["a", "b"]);
    h(&mut hub, &mut rec, 0, "0123456789");
    h(&mut hub, &mut rec, 0, "0123456789x");
    assert_eq!(
        rec.take(0),
        ["MSG lobby a 0123456789", "ERR too-long line too long"]
    );
    assert_eq!(rec.take(1), ["MSG lobby a 0123456789"]);
}

#[test]
fn quit_leaves_closes_and_ignores_the_rest() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b"]);
    h(&mut hub, &mut rec, 0, "/quit see you");
    assert_eq!(rec.take(1), ["LEFT lobby a"]);
    assert_eq!(rec.take(0), ["LEFT lobby a"]);
    assert_eq!(rec.closes, [(0, 1000, "see you".to_string())]);
    h(&mut hub, &mut rec, 0, "still here?");
    h(&mut hub, &mut rec, 0, "/join lobby");
    assert!(rec.lines.is_empty());
    // The nick is held until the server reports the disconnect.
    h(&mut hub, &mut rec, 1, "/nick A");
    assert_eq!(rec.take(1), ["ERR nick-taken nick taken"]);
    hub.disconnect(0, &mut rec);
    hub.check_invariants();
    assert!(rec.lines.is_empty());
    rec.clear();
    h(&mut hub, &mut rec, 1, "/quit");
    let long = "é".repeat(100);
    assert_eq!(rec.closes, [(1, 1000, "bye".to_string())]);
    let (mut hub, mut rec) = hub_with(cfg(), &["a"]);
    h(&mut hub, &mut rec, 0, &format!("/quit {long}"));
    assert_eq!(rec.closes[0].2.len(), 122);
}

#[test]
fn rate_limit_refuses_then_closes_abusers() {
    let config = ChatConfig {
        rate_limit: 3,
        ..ChatConfig::default()
    };
    let mut hub = Hub::new(config);
    let mut rec = Rec::default();
    hub.connect(0, Some("a"), None, 1000, &mut rec);
    hub.connect(1, Some("b"), None, 1000, &mut rec);
    rec.clear();
    for i in 0..3 {
        hub.handle(0, &format!("m{i}"), 1000, &mut rec);
    }
    hub.handle(0, "over", 1000, &mut rec);
    assert_eq!(
        rec.take(1),
        ["MSG lobby a m0", "MSG lobby a m1", "MSG lobby a m2"]
    );
    assert_eq!(
        rec.take(0).last().unwrap(),
        "ERR rate-limited too many commands, slow down"
    );
    // A third of a second pays the debt back and refills one command.
    hub.handle(0, "later", 1667, &mut rec);
    assert_eq!(rec.take(1), ["MSG lobby a later"]);
    rec.clear();
    // Other connections are unaffected.
    hub.handle(1, "b talks", 1667, &mut rec);
    assert_eq!(rec.take(0), ["MSG lobby b b talks"]);
    rec.clear();
    // Keep flooding: refused lines dig a debt; past one burst the connection is closed.
    let mut refused = 0;
    for _ in 0..10 {
        hub.handle(0, "flood", 1667, &mut rec);
        if !rec.closes.is_empty() {
            break;
        }
        refused += 1;
    }
    assert_eq!(refused, 3);
    assert_eq!(rec.closes, [(0, 1008, "rate limit".to_string())]);
    assert_eq!(
        rec.take(0).last().unwrap(),
        "ERR rate-limited too many commands, closing"
    );
    assert!(rec.take(1).is_empty(), "refused lines reach nobody");
    hub.handle(0, "ignored", 100_000, &mut rec);
    assert!(rec.take(0).is_empty());
    hub.disconnect(0, &mut rec);
    assert_eq!(rec.take(1), ["LEFT lobby a"]);
    hub.check_invariants();
}

#[test]
fn broadcast_sys_and_counters() {
    let (mut hub, mut rec) = hub_with(cfg(), &["a", "b", "c"]);
    h(&mut hub, &mut rec, 2, "/leave");
    rec.clear();
    let before = hub.deliveries();
    hub.broadcast_sys("going down\nnow", &mut rec);
    for id in 0..3 {
        assert_eq!(rec.take(id), ["SYS going down now"]);
    }
    assert_eq!(hub.deliveries() - before, 3);
    assert_eq!(hub.config().presence_limit, 100);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Connect(usize, Option<String>, Option<String>),
        Disconnect(usize),
        Line(usize, String),
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("A".to_string()),
            Just("b".to_string()),
            Just("Dev".to_string()),
            Just("dev".to_string()),
            Just("lobby".to_string()),
            Just("guest-1".to_string()),
            Just("x!".to_string()),
            "[a-cA-C]{1,3}",
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            name().prop_map(|n| format!("/join {n}")),
            name().prop_map(|n| format!("/leave {n}")),
            Just("/leave".to_string()),
            name().prop_map(|n| format!("/nick {n}")),
            name().prop_map(|n| format!("/say {n} hi")),
            name().prop_map(|n| format!("/msg {n} hi")),
            name().prop_map(|n| format!("/who {n}")),
            Just("/who".to_string()),
            Just("/rooms".to_string()),
            Just("/ping t".to_string()),
            Just("/quit".to_string()),
            Just("/help".to_string()),
            Just("hello".to_string()),
            Just("".to_string()),
            ".{0,20}",
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..6usize, proptest::option::of(name()), proptest::option::of(name()))
                .prop_map(|(i, n, r)| Op::Connect(i, n, r)),
            1 => (0..6usize).prop_map(Op::Disconnect),
            6 => (0..6usize, line()).prop_map(|(i, l)| Op::Line(i, l)),
        ]
    }

    proptest! {
        #[test]
        fn random_sequences_keep_invariants(
            ops in proptest::collection::vec(op(), 1..60),
            presence in 0..4usize,
            rate in 0..4u32,
        ) {
            let config = ChatConfig {
                presence_limit: presence,
                who_limit: 2,
                rooms_limit: 2,
                rate_limit: rate,
                max_line: 16,
                max_rooms: 2,
                ..ChatConfig::default()
            };
            let mut hub = Hub::new(config);
            let mut rec = Rec::default();
            for (t, op) in ops.into_iter().enumerate() {
                let now = t as u64 * 100;
                match op {
                    Op::Connect(i, n, r) => hub.connect(i, n.as_deref(), r.as_deref(), now, &mut rec),
                    Op::Disconnect(i) => hub.disconnect(i, &mut rec),
                    Op::Line(i, l) => hub.handle(i, &l, now, &mut rec),
                }
                hub.check_invariants();
                // Every line goes to a connection the hub knows.
                for (to, line) in rec.lines.drain(..) {
                    prop_assert!(hub.nick(to).is_some() || line.starts_with("LEFT "), "{to} {line}");
                    prop_assert!(!line.contains('\n') && !line.contains('\r'));
                }
            }
        }
    }
}

mod auth;
