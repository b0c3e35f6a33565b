//! Signed sessions: identity, roles, rooms, `/kick`, expiry.

use super::*;
use crate::chat::access::{Grant, Role};
use crate::chat::hub::{Connect, Identity};

const T0: u64 = 1_800_000_000;

fn grant(nick: &str, role: Role, rooms: Option<&[&str]>, exp: u64) -> Grant {
    Grant {
        nick: nick.into(),
        role,
        rooms: rooms.map(|r| r.iter().map(|&s| s.into()).collect()),
        exp,
    }
}

fn signed(hub: &mut Hub, rec: &mut Rec, id: ConnId, g: Grant, room: Option<&str>) -> Vec<String> {
    let args = Connect {
        room,
        ..Connect::default()
    };
    hub.connect_as(id, Identity::Signed(g), &args, 0, rec);
    rec.take(id)
}

#[test]
fn a_signed_connection_gets_its_nick_and_role() {
    let (mut hub, mut rec) = hub_with(cfg(), &[]);
    let lines = signed(
        &mut hub,
        &mut rec,
        0,
        grant("alice", Role::Mod, None, T0 + 60),
        None,
    );
    assert_eq!(
        lines,
        [
            "WELCOME alice",
            "JOINED lobby alice",
            "SYS signed in as alice, role mod"
        ]
    );
    assert_eq!(hub.access(0), Some((Role::Mod, true)));
    // /nick is refused to a token holder; a guest cannot take the nick.
    hub.handle(0, "/nick bob", 0, &mut rec);
    assert_eq!(rec.take(0), ["ERR forbidden a signed nick cannot change"]);
    hub.connect(1, Some("alice"), None, 0, &mut rec);
    assert_eq!(
        rec.take(1)[1],
        "ERR nick-taken nick taken, using a guest nick"
    );
    hub.check_invariants();
}

#[test]
fn a_guest_using_the_nick_is_renamed_and_a_second_sign_in_replaces_the_first() {
    let (mut hub, mut rec) = hub_with(cfg(), &["alice", "bob"]);
    signed(
        &mut hub,
        &mut rec,
        2,
        grant("alice", Role::Member, None, T0 + 60),
        None,
    );
    let guest = rec.take(0);
    assert_eq!(guest[0], "NICK alice guest-1");
    assert_eq!(guest[1], "SYS nick alice belongs to a signed user");
    assert_eq!(rec.take(1)[0], "NICK alice guest-1");
    assert_eq!(hub.nick(2), Some("alice"));
    let lines = signed(
        &mut hub,
        &mut rec,
        3,
        grant("alice", Role::Member, None, T0 + 60),
        None,
    );
    assert_eq!(lines[0], "WELCOME alice");
    assert_eq!(rec.take(2), ["SYS signed in elsewhere", "LEFT lobby alice"]);
    assert_eq!(rec.closes, [(2, 4001, "signed in elsewhere".to_string())]);
    assert!(rec.take(1).contains(&"LEFT lobby alice".to_string()));
    assert_eq!(hub.nick(2), None, "the old session left the chat at once");
    hub.disconnect(2, &mut rec);
    assert_eq!(hub.nick(3), Some("alice"));
    hub.check_invariants();
}

#[test]
fn viewers_read_but_do_not_speak() {
    let (mut hub, mut rec) = hub_with(cfg(), &["bob"]);
    signed(
        &mut hub,
        &mut rec,
        1,
        grant("val", Role::Viewer, None, T0 + 60),
        None,
    );
    rec.clear();
    for line in ["hi", "/say lobby hi", "/msg bob hi"] {
        hub.handle(1, line, 0, &mut rec);
        assert_eq!(
            rec.take(1),
            ["ERR forbidden viewers may read but not speak"],
            "{line}"
        );
    }
    assert!(rec.take(0).is_empty());
    hub.handle(0, "hello", 0, &mut rec);
    assert_eq!(rec.take(1), ["MSG lobby bob hello"]);
    hub.connect_as(
        2,
        Identity::Guest(Role::Viewer),
        &Connect {
            nick: Some("g"),
            ..Connect::default()
        },
        0,
        &mut rec,
    );
    rec.clear();
    hub.handle(2, "hi", 0, &mut rec);
    assert_eq!(
        rec.take(2),
        ["ERR forbidden viewers may read but not speak"]
    );
    hub.handle(2, "/who", 0, &mut rec);
    assert_eq!(rec.take(2), ["WHO lobby bob val g"]);
}

#[test]
fn the_rooms_claim_limits_joins() {
    let (mut hub, mut rec) = hub_with(cfg(), &[]);
    let g = grant("ops", Role::Member, Some(&["dev", "ops-*"]), T0 + 60);
    let lines = signed(&mut hub, &mut rec, 0, g.clone(), None);
    assert_eq!(
        lines[1], "JOINED dev ops",
        "no lobby: the first literal room"
    );
    hub.handle(0, "/join lobby", 0, &mut rec);
    assert_eq!(
        rec.take(0),
        ["ERR forbidden your token does not allow that room"]
    );
    hub.handle(0, "/join OPS-east", 0, &mut rec);
    assert_eq!(rec.take(0), ["JOINED OPS-east ops"]);
    let lines = signed(
        &mut hub,
        &mut rec,
        1,
        grant("o2", Role::Member, Some(&["dev"]), T0 + 60),
        Some("secret"),
    );
    assert_eq!(
        lines[1],
        "ERR forbidden your token does not allow that room"
    );
    assert_eq!(lines[2], "JOINED dev o2");
    // A refresh that narrows the rooms leaves the ones no longer allowed.
    rec.clear();
    hub.sign_in(
        0,
        grant("ops", Role::Member, Some(&["dev"]), T0 + 90),
        &mut rec,
    );
    let lines = rec.take(0);
    assert_eq!(
        lines,
        ["LEFT OPS-east ops", "SYS signed in as ops, role member"]
    );
    hub.check_invariants();
}

#[test]
fn moderators_kick_and_the_kicked_wait() {
    let config = ChatConfig {
        kick_ban_ms: 1000,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["bob", "carol"]);
    signed(
        &mut hub,
        &mut rec,
        2,
        grant("mo", Role::Mod, None, T0 + 60),
        None,
    );
    rec.clear();
    hub.handle(0, "/kick lobby carol", 0, &mut rec);
    assert_eq!(rec.take(0), ["ERR forbidden only moderators may kick"]);
    hub.handle(2, "/kick lobby nobody", 0, &mut rec);
    assert_eq!(rec.take(2), ["ERR no-such-nick no such nick here"]);
    hub.handle(2, "/kick nowhere bob", 0, &mut rec);
    assert_eq!(rec.take(2), ["ERR not-in-room no such room"]);
    hub.handle(2, "/kick lobby Bob spam\nagain", 10, &mut rec);
    for id in 0..3 {
        assert_eq!(
            rec.take(id),
            ["KICKED lobby bob mo spam again", "LEFT lobby bob"]
        );
    }
    assert_eq!(hub.current_room(0), None);
    hub.handle(0, "/join LOBBY", 500, &mut rec);
    assert_eq!(
        rec.take(0),
        ["ERR forbidden you were kicked from that room, try later"]
    );
    hub.handle(0, "/join dev", 500, &mut rec);
    assert_eq!(rec.take(0), ["JOINED dev bob"]);
    hub.handle(0, "/join lobby", 1010, &mut rec);
    assert_eq!(rec.take(0), ["JOINED lobby bob"]);
    hub.check_invariants();
}

#[test]
fn tokens_expire_unless_refreshed() {
    let config = ChatConfig {
        token_leeway: 5,
        ..cfg()
    };
    let (mut hub, mut rec) = hub_with(config, &["bob"]);
    signed(
        &mut hub,
        &mut rec,
        1,
        grant("al", Role::Member, None, T0 + 60),
        None,
    );
    signed(
        &mut hub,
        &mut rec,
        2,
        grant("cy", Role::Member, None, T0 + 70),
        None,
    );
    assert_eq!(hub.token_deadline(0, T0), None, "a guest never expires");
    assert_eq!(hub.token_deadline(1, T0), Some(T0 + 65));
    assert!(!hub.expire_if_due(1, T0 + 64, &mut rec));
    rec.clear();
    hub.sign_in(1, grant("al", Role::Member, None, T0 + 120), &mut rec);
    assert_eq!(rec.take(1), ["SYS signed in as al, role member"]);
    assert_eq!(hub.token_deadline(1, T0 + 64), Some(T0 + 125));
    assert!(!hub.expire_if_due(1, T0 + 80, &mut rec), "refreshed");
    assert!(hub.expire_if_due(2, T0 + 80, &mut rec));
    assert_eq!(rec.take(2), ["SYS token expired"]);
    assert_eq!(rec.closes, [(2, 4001, "token expired".to_string())]);
    assert_eq!(hub.token_deadline(2, T0 + 80), None, "closing already");
    hub.handle(2, "still here?", 0, &mut rec);
    assert!(rec.take(2).is_empty(), "lines after expiry are ignored");
    assert!(hub.expire_if_due(1, T0 + 125, &mut rec));
    assert_eq!(rec.take(1), ["SYS token expired"]);
    // A token for another nick is refused.
    hub.connect_as(
        3,
        Identity::Signed(grant("dee", Role::Member, None, T0 + 500)),
        &Connect::default(),
        0,
        &mut rec,
    );
    rec.clear();
    hub.sign_in(3, grant("eve", Role::Member, None, T0 + 500), &mut rec);
    assert_eq!(rec.take(3), ["ERR bad-token token is for another nick"]);
    assert_eq!(rec.closes, [(3, 1008, "bad token".to_string())]);
}

#[test]
fn the_full_exp_comes_back_from_16_bits() {
    use crate::chat::hub::full_exp;
    for now in [T0, T0 + 65_535, 1_000, 0x1_0000 * 30_000 + 7] {
        for exp in [
            now.saturating_sub(735),
            now,
            now + 1,
            now + 30_000,
            now + 64_800,
        ] {
            if exp >= now.saturating_sub(735) {
                assert_eq!(full_exp(exp as u16, now), exp, "now {now} exp {exp}");
            }
        }
    }
}

#[test]
fn a_guest_signs_in_with_auth() {
    let (mut hub, mut rec) = hub_with(cfg(), &["guesty", "bob"]);
    hub.sign_in(0, grant("ann", Role::Viewer, None, T0 + 60), &mut rec);
    assert_eq!(
        rec.take(0),
        ["NICK guesty ann", "SYS signed in as ann, role viewer"]
    );
    assert_eq!(rec.take(1), ["NICK guesty ann"]);
    assert_eq!(hub.access(0), Some((Role::Viewer, true)));
    hub.check_invariants();
}

fn session_of(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("SESSION "))
        .expect("a SESSION line")
        .to_string()
}

#[test]
fn a_signed_session_is_held_resumed_with_its_identity_and_ends_with_its_token() {
    use crate::chat::hub::Caps;
    let (mut hub, mut rec) = hub_with(cfg(), &[]);
    hub.set_epoch(T0 * 1000);
    let args = Connect {
        caps: Some(Caps::parse("resume")),
        room: Some("dev"),
        ..Connect::default()
    };
    let g = grant("sam", Role::Mod, Some(&["dev"]), T0 + 60);
    hub.connect_as(0, Identity::Signed(g.clone()), &args, 0, &mut rec);
    let token = session_of(&rec.take(0));
    hub.disconnect(0, &mut rec);
    assert_eq!(hub.detached_sessions(), 1, "held like a guest's");
    // Nobody else takes the nick meanwhile.
    hub.connect(1, Some("sam"), None, 0, &mut rec);
    assert_eq!(hub.nick(1).map(|n| n.starts_with("guest-")), Some(true));
    rec.clear();
    // The session token alone brings the identity back.
    let resume = Connect {
        resume: Some(&token),
        ..Connect::default()
    };
    hub.connect_as(2, Identity::Guest(Role::Viewer), &resume, 1_000, &mut rec);
    let lines = rec.take(2);
    assert_eq!(lines[0], "WELCOME sam");
    assert!(lines.contains(&"SYS signed in as sam, role mod".to_string()));
    assert_eq!(hub.access(2), Some((Role::Mod, true)));
    assert_eq!(hub.token_deadline(2, T0 + 1), Some(T0 + 60 + 30));
    h(&mut hub, &mut rec, 2, "/join ops");
    assert_eq!(
        rec.take(2),
        ["ERR forbidden your token does not allow that room"]
    );
    // Dropped again: held no longer than the token (exp + leeway = 90 s,
    // before the 120 s session TTL), then LEFT.
    let token = session_of(&lines);
    hub.disconnect(2, &mut rec);
    assert_eq!(hub.poll_timeout(), Some(90_000));
    hub.handle_timeout(89_999, &mut rec);
    assert_eq!(hub.detached_sessions(), 1);
    hub.handle_timeout(90_000, &mut rec);
    assert_eq!(hub.detached_sessions(), 0);
    let resume = Connect {
        resume: Some(&token),
        ..Connect::default()
    };
    hub.connect_as(3, Identity::Guest(Role::Viewer), &resume, 90_000, &mut rec);
    assert_eq!(
        hub.access(3),
        Some((Role::Viewer, false)),
        "expired with it"
    );
    hub.check_invariants();
}

#[test]
fn a_token_for_a_held_nick_replaces_the_held_session() {
    use crate::chat::hub::Caps;
    let (mut hub, mut rec) = hub_with(cfg(), &["bob"]);
    hub.set_epoch(T0 * 1000);
    let args = Connect {
        caps: Some(Caps::parse("resume")),
        ..Connect::default()
    };
    let g = grant("sam", Role::Member, None, T0 + 60);
    hub.connect_as(1, Identity::Signed(g.clone()), &args, 0, &mut rec);
    let token = session_of(&rec.take(1));
    hub.disconnect(1, &mut rec);
    assert_eq!(hub.detached_sessions(), 1);
    rec.clear();
    hub.connect_as(2, Identity::Signed(g), &Connect::default(), 0, &mut rec);
    assert_eq!(hub.detached_sessions(), 0);
    assert_eq!(rec.take(2)[0], "WELCOME sam");
    assert_eq!(
        rec.take(0),
        ["LEFT lobby sam", "JOINED lobby sam"],
        "the held session ended, the new one joined"
    );
    // Its old session token is spent.
    let resume = Connect {
        resume: Some(&token),
        ..Connect::default()
    };
    hub.connect_as(3, Identity::Guest(Role::Member), &resume, 0, &mut rec);
    assert!(rec.take(3).iter().any(|l| l.starts_with("ERR bad-session")));
    hub.check_invariants();
}

#[test]
fn a_clustered_sign_in_waits_for_the_registry() {
    use crate::chat::remote::Claim;
    let mut hub = Hub::new(cfg());
    hub.enable_cluster("n1");
    let mut rec = Rec::default();
    let g = grant("vic", Role::Viewer, None, T0 + 60);
    hub.connect_as(
        0,
        Identity::Signed(g.clone()),
        &Connect::default(),
        0,
        &mut rec,
    );
    assert!(rec.take(0).is_empty(), "held until the registry answers");
    hub.handle(0, "held line", 0, &mut rec);
    assert!(hub.nick_reserved(0, "vic", Claim::Granted, &mut rec));
    let lines = rec.take(0);
    assert_eq!(lines[0], "WELCOME vic");
    assert!(
        lines.contains(&"SYS signed in as vic, role viewer".to_string()),
        "{lines:?}"
    );
    assert_eq!(
        lines.last().unwrap(),
        "ERR forbidden viewers may read but not speak",
        "the held line ran with the token's role"
    );
    assert_eq!(hub.access(0), Some((Role::Viewer, true)));
    // The registry says another node has the nick: this connection ends.
    hub.connect_as(
        1,
        Identity::Signed(grant("wil", Role::Member, None, T0 + 60)),
        &Connect::default(),
        0,
        &mut rec,
    );
    assert!(!hub.nick_reserved(1, "wil", Claim::Taken, &mut rec));
    assert!(rec
        .take(1)
        .contains(&"ERR nick-taken signed in on another node".to_string()));
    assert_eq!(
        rec.closes,
        [(1, 4001, "signed in on another node".to_string())]
    );
    // The registry cannot answer: the signature is enough.
    hub.connect_as(
        2,
        Identity::Signed(grant("xen", Role::Member, None, T0 + 60)),
        &Connect::default(),
        0,
        &mut rec,
    );
    hub.nick_reserved(2, "xen", Claim::Unreachable, &mut rec);
    let lines = rec.take(2);
    assert!(
        lines.contains(&"SYS signed in as xen, role member".to_string()),
        "{lines:?}"
    );
    assert_eq!(hub.nick(2), Some("xen"));
    assert_eq!(hub.access(2), Some((Role::Member, true)));
}

#[test]
fn kicks_cross_nodes_and_a_signed_nick_lost_to_a_newer_sign_in_is_replaced() {
    use crate::chat::remote::{Claim, Request};
    let mut hub = Hub::new(cfg());
    hub.enable_cluster("n1");
    let mut rec = Rec::default();
    for (id, nick) in [(0, "moe"), (1, "bob")] {
        let g = grant(
            nick,
            if id == 0 { Role::Mod } else { Role::Member },
            None,
            T0 + 60,
        );
        let args = Connect {
            room: Some("dev"),
            ..Connect::default()
        };
        hub.connect_as(id, Identity::Signed(g), &args, 0, &mut rec);
        assert!(hub.nick_reserved(id, nick, Claim::Granted, &mut rec));
    }
    let mut reqs = Vec::new();
    hub.take_requests(&mut reqs);
    rec.clear();
    // A nick that is not here: the cluster is asked, nothing is said yet.
    hub.handle(0, "/kick dev zed spam", 0, &mut rec);
    reqs.clear();
    hub.take_requests(&mut reqs);
    assert_eq!(
        reqs,
        [Request::Kick {
            id: 0,
            room: "dev".into(),
            nick: "zed".into(),
            line: "KICKED dev zed moe spam".into(),
        }]
    );
    assert!(rec.take(0).is_empty());
    hub.kick_confirmed("dev", "KICKED dev zed moe spam", &mut rec);
    assert_eq!(rec.take(1), ["KICKED dev zed moe spam"]);
    // Another node's moderator kicked bob, who is here: bob leaves, banned.
    hub.deliver_remote_room("dev", "KICKED dev bob ann", &mut rec);
    assert_eq!(rec.take(1), ["KICKED dev bob ann", "LEFT dev bob"]);
    hub.handle(1, "/join dev", 0, &mut rec);
    assert_eq!(
        rec.take(1),
        ["ERR forbidden you were kicked from that room, try later"]
    );
    // moe's registration lost to a newer sign-in elsewhere: replaced.
    rec.clear();
    assert!(!hub.nick_reserved(0, "moe", Claim::Taken, &mut rec));
    assert_eq!(rec.take(0), ["SYS signed in elsewhere", "LEFT dev moe"]);
    assert_eq!(rec.closes, [(0, 4001, "signed in elsewhere".to_string())]);
    assert_eq!(hub.nick(0), None);
    hub.check_invariants();
}

#[test]
fn a_token_with_its_own_session_resumes_it_rather_than_replacing_it() {
    use crate::chat::hub::Caps;
    let (mut hub, mut rec) = hub_with(cfg(), &["bob"]);
    hub.set_epoch(T0 * 1000);
    let args = Connect {
        caps: Some(Caps::parse("resume")),
        ..Connect::default()
    };
    let g = grant("sam", Role::Member, None, T0 + 60);
    hub.connect_as(1, Identity::Signed(g.clone()), &args, 0, &mut rec);
    let token = session_of(&rec.take(1));
    rec.clear();
    // Its connection still open (half-open): `?token=` with `?resume=`.
    let resume = Connect {
        resume: Some(&token),
        ..Connect::default()
    };
    hub.connect_as(2, Identity::Signed(g), &resume, 0, &mut rec);
    let lines = rec.take(2);
    assert_eq!(lines[0], "WELCOME sam");
    assert!(
        lines.iter().any(|l| l.starts_with("RESUMED lobby ")),
        "{lines:?}"
    );
    assert_eq!(
        rec.closes,
        [(1, 1000, "session resumed elsewhere".to_string())]
    );
    assert!(
        rec.take(0).is_empty(),
        "no LEFT, no JOINED: the same session"
    );
    hub.check_invariants();
}
