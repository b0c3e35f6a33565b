//! Fuzz the chat command parser and a hub driven by several connections.
//!
//! Input: byte 0 picks the config, the rest is split on `\n`; in each line the
//! first byte picks the connection, the operation and how much time passes, the
//! remainder (lossy UTF-8) is the command line or the connect arguments.
//! After every step the hub's indexes must agree (`check_invariants`), and every
//! output line must be a single bounded line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopchat::chat::hub::{Caps, Connect};
use loopchat::chat::{command, ChatConfig, ConnId, Hub, Sink};

const MAX_LINE: usize = 64;

struct Checker {
    calls: u64,
    /// The latest `SESSION` token sent, so inputs can resume real sessions
    /// (the fuzzer could never guess one).
    token: String,
}

impl Sink for Checker {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        self.calls += 1;
        assert!(!to.is_empty());
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        // Longest: a ROOMS or WHO line with a few names, or a MSG/PRIV line.
        assert!(line.len() <= 2 * MAX_LINE + 4 * 80, "{} bytes", line.len());
        if let Some(t) = line.strip_prefix("SESSION ") {
            self.token.clear();
            self.token.push_str(t);
        }
    }
    fn close(&mut self, _id: ConnId, code: u16, reason: &str) {
        assert!(code == 1000 || code == 1008);
        assert!(reason.len() <= 123);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for max in [0, 8, 4096] {
        let _ = command::parse(&text, max);
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let config = ChatConfig {
        presence_limit: usize::from(mode & 3),
        rate_limit: u32::from((mode >> 2) & 3),
        who_limit: 3,
        rooms_limit: 3,
        max_line: MAX_LINE,
        max_rooms: 3,
        history: loopchat::chat::history::HistoryConfig {
            keep: usize::from(mode >> 6),
            ttl_ms: u64::from((mode >> 4) & 3) * 100,
            // A budget of a few messages in some runs, to exercise sharing it.
            max_bytes: if mode & 0x20 != 0 { 200 } else { usize::MAX },
        },
        session_ttl_ms: u64::from(mode & 0x10) * 10,
        ..ChatConfig::default()
    };
    let mut hub = Hub::new(config);
    let mut sink = Checker {
        calls: 0,
        token: String::new(),
    };
    let mut now = 0u64;
    for id in 0..3 {
        hub.connect(id, None, None, now, &mut sink);
    }
    hub.check_invariants();
    for raw in rest.split(|&b| b == b'\n').take(256) {
        let Some((&op, body)) = raw.split_first() else {
            continue;
        };
        let id = usize::from(op & 3);
        now += u64::from(op >> 4) * 37;
        let body = String::from_utf8_lossy(body);
        match op & 0x0c {
            0x0c if op & 0x80 != 0 => hub.disconnect(id, &mut sink),
            0x0c => {
                let (nick, room) = match body.split_once(' ') {
                    Some((n, r)) => (Some(n), Some(r)),
                    None => (Some(&*body), None),
                };
                // Bit 0x40 asks for the v2 capabilities, bit 0x20 resumes
                // the latest session (`room` doubles as `since`).
                let token = sink.token.clone();
                let args = Connect {
                    nick,
                    room,
                    caps: (op & 0x40 != 0).then(|| Caps::parse("ids,resume")),
                    resume: (op & 0x20 != 0).then_some(token.as_str()),
                    since: room,
                };
                hub.connect_with(id, &args, now, &mut sink);
            }
            // A line starting with `~` resumes the latest session, with the
            // rest of the line as `ROOM=ID` pairs.
            _ if body.starts_with('~') => {
                let line = format!("/resume {}{}", sink.token, &body[1..]);
                hub.handle(id, &line, now, &mut sink);
            }
            _ => hub.handle(id, &body, now, &mut sink),
        }
        hub.handle_timeout(now, &mut sink);
        hub.check_invariants();
    }
    for id in 0..4 {
        hub.disconnect(id, &mut sink);
    }
    // Dropped sessions hold nicks and rooms until they expire.
    hub.handle_timeout(u64::MAX, &mut sink);
    hub.check_invariants();
    assert_eq!(hub.connections(), 0);
    assert_eq!(hub.rooms(), 0);
});
