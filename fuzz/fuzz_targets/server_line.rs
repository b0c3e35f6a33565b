//! Fuzz the server-line parser (`chat::line`): any input either is refused
//! with a typed error or parses to a line that writes back to something that
//! parses to the same line and tags (the writer and the parser agree), and no
//! written line ever holds a CR or LF; the fields-only parse agrees with it. Also feeds the bytes to the history
//! and resume argument parsers, which share the id and pair rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopchat::chat::command::since_pairs;
use loopchat::chat::history::MsgId;
use loopchat::chat::line::{parse, parse_fields, parse_time};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for candidate in text.split('\n').take(64) {
        // The fields-only parse (the load generator's) never panics, and
        // agrees with the full one on every line the full one accepts.
        let fields = parse_fields(candidate);
        if let Ok((tags, line)) = parse(candidate) {
            assert_eq!(fields, Ok((tags, line)));
            let mut out = Vec::new();
            line.write_to(&mut out, Some(&tags));
            let again = std::str::from_utf8(&out).expect("written lines are UTF-8");
            assert!(!again.contains(['\r', '\n']), "{again:?}");
            let (t2, l2) = parse(again).expect("a written line parses");
            assert_eq!(l2, line);
            assert_eq!(t2, tags);
        }
        if let Some(id) = MsgId::parse(candidate) {
            assert_eq!(MsgId::parse(&id.to_string()), Some(id));
        }
        let _ = parse_time(candidate);
        for pair in since_pairs(candidate, ',', ':').take(64) {
            if let Some((room, id)) = pair {
                assert!(!room.is_empty() && !id.is_empty());
            }
        }
    }
});
