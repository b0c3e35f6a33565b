//! The load generator's message payloads and the parsing of what comes back.
//!
//! A payload is the text `s<SENDER> <SEQ> <NANOS> ` padded with `x` to the
//! requested size; NANOS is the send time in nanoseconds since the generator's
//! start. The loopchat server delivers it as `MSG ROOM NICK PAYLOAD`; plain
//! broadcast servers deliver the payload itself. Either may put several lines
//! in one frame, separated by `\n`.

use std::fmt::Write as _;

use crate::chat::line::{self as server_line, Count};
use crate::chat::ErrorCode;

/// Append the payload for (`sender`, `seq`, `nanos`), padded to `size` bytes
/// (never shorter than its header).
pub fn write_payload(out: &mut String, sender: u32, seq: u64, nanos: u64, size: usize) {
    let start = out.len();
    let _ = write!(out, "s{sender} {seq} {nanos} ");
    let len = out.len() - start;
    if len < size {
        // Chat-like text, from a point that moves with `seq`: it compresses
        // like chat (about 1.1x for a short line, 2-3x for a paragraph, per
        // message), where a run of one letter would compress a hundredfold
        // and flatter permessage-deflate.
        let from = (seq as usize).wrapping_mul(61) % FILLER.len();
        out.extend(
            FILLER[from..]
                .chars()
                .chain(FILLER.chars().cycle())
                .take(size - len),
        );
    }
}

/// ASCII English, so any byte offset is a char boundary.
const FILLER: &str = "anyone around for the release review at three? the build is green \
again, thanks to whoever fixed the flaky websocket test. lunch is at noon in the big room, \
bring questions about the new deploy script. I pushed the benchmark numbers to the wiki; \
fan-out per CPU second went up after the outbox change, latency is flat. can someone look \
at the nginx config before friday? the staging box keeps dropping idle connections after \
sixty seconds, probably the proxy timeout. also: coffee machine on the second floor works \
again. reminder that the on-call rota changes next week, check your slots. who owns the \
metrics dashboard now? the graphs for open descriptors look odd since tuesday. ";

/// A parsed payload header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Index of the sending connection.
    pub sender: u32,
    /// Sequence number within that sender.
    pub seq: u64,
    /// Send time, nanoseconds since the generator's start.
    pub nanos: u64,
}

/// Parse a payload header; None for anything else (never panics).
pub fn parse_payload(p: &str) -> Option<Stamp> {
    let rest = p.strip_prefix('s')?;
    let mut it = rest.splitn(4, ' ');
    Some(Stamp {
        sender: it.next()?.parse().ok()?,
        seq: it.next()?.parse().ok()?,
        nanos: it.next()?.parse().ok()?,
    })
}

/// What one server line means to the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A chat message (or, on plain servers, any line) carrying this payload.
    Payload(&'a str),
    /// `JOINED ...` (loopchat): the connection is in its room.
    Joined,
    /// `ERR CODE ...` (loopchat): e.g. `rate-limited`.
    Err(ErrorCode),
    /// `SESSION TOKEN` (loopchat, capability `resume`).
    Session(&'a str),
    /// `RESUMED ROOM COUNT` (Some(COUNT): that many `MSG` lines follow) or
    /// `RESUMED ROOM lost` (None).
    Resumed(Option<u32>),
    /// `CAPS LIST`: the capabilities the server enabled, comma-separated.
    Caps(&'a str),
    /// Anything else (`WELCOME`, `SYS`, ...), and lines that are not loopchat's.
    Other,
}

/// Classify one line of a loopchat server (`plain == false`) or a plain
/// broadcast server, through the protocol's own parser (`chat::line`), which
/// borrows and never allocates. Its fields-only form: the generator never
/// shows TEXT, and a per-line cost that grew with the message size would
/// bend the figures it measures.
pub fn classify(line: &str, plain: bool) -> Line<'_> {
    if plain {
        return Line::Payload(line);
    }
    match server_line::parse_fields(line) {
        Ok((_, server_line::Line::Msg { text, .. })) => Line::Payload(text),
        Ok((_, server_line::Line::Joined { .. })) => Line::Joined,
        Ok((_, server_line::Line::Err { code, .. })) => Line::Err(code),
        Ok((_, server_line::Line::Session(token))) => Line::Session(token),
        Ok((_, server_line::Line::Resumed { count, .. })) => Line::Resumed(match count {
            Count::Lines(n) => Some(n),
            Count::Lost => None,
        }),
        Ok((_, server_line::Line::Caps(list))) => Line::Caps(list),
        _ => Line::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_pads() {
        let mut s = String::new();
        write_payload(&mut s, 7, 42, 123_456_789, 32);
        assert_eq!(s.len(), 32);
        assert!(s.starts_with("s7 42 123456789 "));
        assert!(s.is_ascii() && !s.contains('\n'));
        // A long payload wraps around the filler text.
        let mut long = String::new();
        write_payload(&mut long, 1, 5, 9, 5000);
        assert_eq!(long.len(), 5000);
        assert_eq!(
            parse_payload(&s),
            Some(Stamp {
                sender: 7,
                seq: 42,
                nanos: 123_456_789
            })
        );
        let mut short = String::new();
        write_payload(&mut short, 1, 2, 3, 1);
        assert_eq!(short, "s1 2 3 ");
        assert_eq!(parse_payload(&short).map(|s| s.nanos), Some(3));
    }

    #[test]
    fn bad_payloads_are_none() {
        for p in [
            "",
            "s",
            "x1 2 3",
            "s1 2",
            "s1 two 3 ",
            "s-1 2 3 ",
            "s1 2 99999999999999999999 ",
        ] {
            assert_eq!(parse_payload(p), None, "{p:?}");
        }
    }

    #[test]
    fn lines_are_classified_and_coalesced_frames_split() {
        let frame = "MSG load guest-1 s0 1 5 xx\nMSG load guest-2 s1 9 6 \nJOINED load a\nERR rate-limited slow down";
        let kinds: Vec<Line> = frame.split('\n').map(|l| classify(l, false)).collect();
        assert_eq!(
            kinds,
            vec![
                Line::Payload("s0 1 5 xx"),
                Line::Payload("s1 9 6 "),
                Line::Joined,
                Line::Err(ErrorCode::RateLimited)
            ]
        );
        assert_eq!(classify("MSG onlyroom", false), Line::Other);
        assert_eq!(classify("SESSION abc-_9", false), Line::Session("abc-_9"));
        assert_eq!(classify("RESUMED load 3", false), Line::Resumed(Some(3)));
        assert_eq!(classify("RESUMED load lost", false), Line::Resumed(None));
        assert_eq!(classify("RESUMED load x", false), Line::Other);
        assert_eq!(classify("RESUMED", false), Line::Other);
        assert_eq!(classify("WELCOME x", false), Line::Other);
        assert_eq!(classify("CAPS ids,resume", false), Line::Caps("ids,resume"));
        assert_eq!(classify("CAPS", false), Line::Caps(""));
        assert_eq!(
            classify("ERR bad-session unknown or expired session", false),
            Line::Err(ErrorCode::BadSession)
        );
        assert_eq!(classify("s0 1 2 ", true), Line::Payload("s0 1 2 "));
    }

    /// What the hand-written matcher got wrong: a message with `ids` tags in
    /// front is still a message; a line that only starts like one (a bad room
    /// name, an unknown code, a token with a space) is not.
    #[test]
    fn tagged_and_malformed_lines() {
        assert_eq!(
            classify(
                "@id=1-2;time=2026-11-30T10:00:00.123Z MSG load a s0 1 5 x",
                false
            ),
            Line::Payload("s0 1 5 x")
        );
        assert_eq!(classify("MSG #load a s0 1 5 x", false), Line::Other);
        assert_eq!(classify("ERR made-up text", false), Line::Other);
        assert_eq!(classify("SESSION two words", false), Line::Other);
        assert_eq!(classify("RESUMED load 3 4", false), Line::Other);
    }
}
