//! What nodes say to each other over Redis pub/sub: a typed payload, its
//! encoding, and (with `--cluster-secret-file`) its HMAC-SHA256 signature.
//!
//! A payload is one line of text: `KIND NODE SEQ REST`, the publishing node's
//! id, its per-node sequence number, and a body that depends on the kind (see
//! [`Body`]). Signed, it is prefixed with `#TAG ` where TAG is the lowercase
//! hex HMAC-SHA256, under the cluster secret, of the channel name, one zero
//! byte, and the unsigned payload: a payload cannot be altered, moved to
//! another channel, or made up without the secret. A receiver with a secret
//! checks the tag (in constant time) before it reads anything else, so a
//! forged payload never reaches sequence tracking.
//!
//! Invariants: [`Signer::open`] never panics and never allocates; what it
//! accepts re-encodes to the same bytes; payloads are single lines (a CR or
//! LF anywhere is refused, whatever the signature says), so nothing from
//! another node can split a line delivered to a client.

use std::fmt::{self, Write as _};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::chat::history::MsgId;

type HmacSha256 = Hmac<Sha256>;

/// Hex digits of a tag.
const TAG_HEX: usize = 64;
/// Longest node id (ids this code makes are 16 hex digits).
const MAX_NODE: usize = 32;

/// Split `!ID TIME PAYLOAD`: a room message as Redis publishes it after
/// numbering it (the node's room script writes `!ID TIME ` in front of the
/// signed payload; see `cluster::node`). `None` unless ID is `EPOCH-SEQ`
/// and TIME decimal milliseconds. Never panics, never allocates.
pub fn split_numbered(payload: &[u8]) -> Option<(MsgId, u64, &[u8])> {
    let rest = payload.strip_prefix(b"!")?;
    let (id, time, rest) = split_id_time(rest)?;
    let rest = rest.strip_prefix(b" ")?;
    Some((id, time, rest))
}

/// Parse `ID TIME` at the start of `b` (also the room script's reply);
/// returns what follows.
pub fn split_id_time(b: &[u8]) -> Option<(MsgId, u64, &[u8])> {
    let sp = b.iter().position(|&c| c == b' ')?;
    let id = MsgId::parse(std::str::from_utf8(&b[..sp]).ok()?)?;
    let rest = &b[sp + 1..];
    let end = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
    let digits = &rest[..end];
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let time = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((id, time, &rest[end..]))
}

/// What a payload carries after `KIND NODE SEQ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// `M LINE`: a room's line (`MSG`, `JOINED`, `LEFT`); the room is the channel's.
    Room {
        /// The line as local members got it.
        line: &'a str,
    },
    /// `N ROOMS LINE`: a `NICK` line for the members of the comma-separated `rooms`.
    Nick {
        /// Folded room names, comma-separated.
        rooms: &'a str,
        /// The `NICK OLD NEW` line.
        line: &'a str,
    },
    /// `P TO LINE`: a private line for the folded nick `to` on the channel's node.
    Private {
        /// Folded recipient nick.
        to: &'a str,
        /// The `PRIV` line.
        line: &'a str,
    },
    /// `W QID ROOM`: who is in ROOM on your node? Answer to the asker's channel.
    WhoAsk {
        /// The asker's query id.
        qid: u64,
        /// The room as asked.
        room: &'a str,
    },
    /// `w QID TOTAL NICKS`: an answer to `W`; `nicks` space-separated, `total`
    /// members in all.
    WhoAnswer {
        /// The query id from the request.
        qid: u64,
        /// Members on the answering node.
        total: u64,
        /// Some of their nicks, space-separated (may be empty).
        nicks: &'a str,
    },
    /// `R QID`: which rooms does your node have?
    RoomsAsk {
        /// The asker's query id.
        qid: u64,
    },
    /// `r QID ROOMS`: an answer to `R`; `rooms` is space-separated `NAME=N`.
    RoomsAnswer {
        /// The query id from the request.
        qid: u64,
        /// `NAME=N` pairs, space-separated (may be empty).
        rooms: &'a str,
    },
    /// `H MEMBERS`: the node is alive; it has `members` local connections.
    Alive {
        /// Local chat connections.
        members: u64,
    },
    /// `S FROM SELECTOR KEY NICK ROOMS` on `lc:all`: the session stored
    /// under `KEY` (`lc:sess:HASH`; its token's lookup half `SELECTOR`),
    /// dropped on node `FROM`, was resumed on the sender's node with `NICK`
    /// in `ROOMS` (display names, comma-separated, or `-`). `FROM` forgets
    /// its copy; every node files the nick's memberships under the sender.
    Resumed {
        /// The node the session dropped from.
        from: &'a str,
        /// The token's selector (the session table's key there).
        selector: u64,
        /// The session's Redis key.
        key: &'a str,
        /// The nick.
        nick: &'a str,
        /// Its rooms, comma-separated display names, or `-`.
        rooms: &'a str,
    },
}

impl Body<'_> {
    fn kind(&self) -> char {
        match self {
            Body::Room { .. } => 'M',
            Body::Nick { .. } => 'N',
            Body::Private { .. } => 'P',
            Body::WhoAsk { .. } => 'W',
            Body::WhoAnswer { .. } => 'w',
            Body::RoomsAsk { .. } => 'R',
            Body::RoomsAnswer { .. } => 'r',
            Body::Alive { .. } => 'H',
            Body::Resumed { .. } => 'S',
        }
    }
}

/// One payload: who sent it, its sequence number, and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The publishing node's id.
    pub node: &'a str,
    /// The node's sequence number for this payload (increasing).
    pub seq: u64,
    /// The content.
    pub body: Body<'a>,
}

/// Why a payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not UTF-8, or a CR/LF inside: no node sends that.
    NotALine,
    /// A secret is configured and the payload has no tag.
    Unsigned,
    /// The tag does not match (or is not 64 hex digits).
    BadSignature,
    /// Signed correctly or unsigned, but not `KIND NODE SEQ REST` with a
    /// known kind and a well-formed body.
    Malformed,
}

impl WireError {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            WireError::NotALine => "not-a-line",
            WireError::Unsigned => "unsigned",
            WireError::BadSignature => "bad-signature",
            WireError::Malformed => "malformed",
        }
    }

    /// True for the errors a secret catches (forgeries).
    pub fn is_signature(self) -> bool {
        matches!(self, WireError::Unsigned | WireError::BadSignature)
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for WireError {}

/// Encodes and opens payloads, signing and checking them when a secret is set.
#[derive(Clone)]
pub struct Signer {
    /// The keyed state, cloned per payload (the key schedule runs once).
    mac: Option<HmacSha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Signer")
            .field("signed", &self.mac.is_some())
            .finish()
    }
}

impl Signer {
    /// A signer for `secret`; `None` sends unsigned payloads and accepts
    /// either kind (it cannot check a tag).
    pub fn new(secret: Option<&[u8]>) -> Signer {
        Signer {
            // HMAC takes keys of any length: this cannot fail.
            mac: secret.and_then(|k| HmacSha256::new_from_slice(k).ok()),
        }
    }

    /// True when payloads are signed and checked.
    pub fn is_signing(&self) -> bool {
        self.mac.is_some()
    }

    fn tag(&self, channel: &[u8], payload: &[u8]) -> Option<HmacSha256> {
        let mut mac = self.mac.clone()?;
        mac.update(channel);
        mac.update(&[0]);
        mac.update(payload);
        Some(mac)
    }

    /// Write `env`, for `channel`, to `out` (cleared first). Text in the body
    /// must not contain CR or LF (the chat layer replaces them), or the
    /// receivers refuse the payload.
    pub fn encode(&self, channel: &[u8], env: &Envelope<'_>, out: &mut Vec<u8>) {
        out.clear();
        let start = if self.mac.is_some() {
            1 + TAG_HEX + 1
        } else {
            0
        };
        out.resize(start, b' ');
        let mut s = String::new();
        let _ = write!(s, "{} {} {}", env.body.kind(), env.node, env.seq);
        match env.body {
            Body::Room { line } => {
                let _ = write!(s, " {line}");
            }
            Body::Nick { rooms, line } => {
                let _ = write!(s, " {rooms} {line}");
            }
            Body::Private { to, line } => {
                let _ = write!(s, " {to} {line}");
            }
            Body::WhoAsk { qid, room } => {
                let _ = write!(s, " {qid} {room}");
            }
            Body::WhoAnswer { qid, total, nicks } => {
                let _ = write!(s, " {qid} {total}");
                if !nicks.is_empty() {
                    let _ = write!(s, " {nicks}");
                }
            }
            Body::RoomsAsk { qid } => {
                let _ = write!(s, " {qid}");
            }
            Body::Resumed {
                from,
                selector,
                key,
                nick,
                rooms,
            } => {
                let _ = write!(s, " {from} {selector} {key} {nick} {rooms}");
            }
            Body::RoomsAnswer { qid, rooms } => {
                let _ = write!(s, " {qid}");
                if !rooms.is_empty() {
                    let _ = write!(s, " {rooms}");
                }
            }
            Body::Alive { members } => {
                let _ = write!(s, " {members}");
            }
        }
        out.extend_from_slice(s.as_bytes());
        if let Some(mac) = self.tag(channel, &out[start..]) {
            let tag = mac.finalize().into_bytes();
            out[0] = b'#';
            for (i, b) in tag.iter().enumerate() {
                out[1 + 2 * i] = HEX[(b >> 4) as usize];
                out[2 + 2 * i] = HEX[(b & 15) as usize];
            }
        }
    }

    /// Check and parse a payload received on `channel`.
    pub fn open<'a>(&self, channel: &[u8], payload: &'a [u8]) -> Result<Envelope<'a>, WireError> {
        let text = std::str::from_utf8(payload).map_err(|_| WireError::NotALine)?;
        if text.contains(['\r', '\n']) {
            return Err(WireError::NotALine);
        }
        let body = match text.strip_prefix('#') {
            Some(signed) => {
                let tag = signed.get(..TAG_HEX).ok_or(WireError::BadSignature)?;
                let body = signed
                    .get(TAG_HEX..)
                    .and_then(|b| b.strip_prefix(' '))
                    .ok_or(WireError::BadSignature)?;
                if let Some(mac) = self.tag(channel, body.as_bytes()) {
                    let mut raw = [0u8; TAG_HEX / 2];
                    unhex(tag, &mut raw).ok_or(WireError::BadSignature)?;
                    mac.verify_slice(&raw)
                        .map_err(|_| WireError::BadSignature)?;
                }
                body
            }
            None if self.mac.is_some() => return Err(WireError::Unsigned),
            None => text,
        };
        parse(body).ok_or(WireError::Malformed)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex to bytes; None for anything else.
fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// A decimal u64 without sign, leading `+` or leading zeros (so that the
/// accepted text is exactly what [`Signer::encode`] writes).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn valid_node(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NODE && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `KIND NODE SEQ REST` (unsigned) into an envelope.
fn parse(text: &str) -> Option<Envelope<'_>> {
    let mut it = text.splitn(4, ' ');
    let kind = it.next()?;
    let node = it.next().filter(|n| valid_node(n))?;
    let seq = number(it.next()?)?;
    let rest = it.next();
    let body = match (kind, rest) {
        ("M", Some(line)) if !line.is_empty() => Body::Room { line },
        ("N", Some(rest)) => {
            let (rooms, line) = rest.split_once(' ')?;
            if rooms.is_empty() || line.is_empty() {
                return None;
            }
            Body::Nick { rooms, line }
        }
        ("P", Some(rest)) => {
            let (to, line) = rest.split_once(' ')?;
            if to.is_empty() || line.is_empty() {
                return None;
            }
            Body::Private { to, line }
        }
        ("W", Some(rest)) => {
            let (qid, room) = rest.split_once(' ')?;
            if room.is_empty() {
                return None;
            }
            Body::WhoAsk {
                qid: number(qid)?,
                room,
            }
        }
        ("w", Some(rest)) => {
            let mut p = rest.splitn(3, ' ');
            let qid = number(p.next()?)?;
            let total = number(p.next()?)?;
            let nicks = p.next().unwrap_or("");
            if rest.ends_with(' ') {
                return None;
            }
            Body::WhoAnswer { qid, total, nicks }
        }
        ("R", Some(qid)) => Body::RoomsAsk { qid: number(qid)? },
        ("S", Some(rest)) => {
            let mut p = rest.split(' ');
            let from = p.next().filter(|n| valid_node(n))?;
            let selector = number(p.next()?)?;
            let (key, nick, rooms) = (p.next()?, p.next()?, p.next()?);
            if key.is_empty() || nick.is_empty() || rooms.is_empty() || p.next().is_some() {
                return None;
            }
            Body::Resumed {
                from,
                selector,
                key,
                nick,
                rooms,
            }
        }
        ("r", Some(rest)) => {
            let (qid, rooms) = rest.split_once(' ').unwrap_or((rest, ""));
            if rest.ends_with(' ') {
                return None;
            }
            Body::RoomsAnswer {
                qid: number(qid)?,
                rooms,
            }
        }
        ("H", Some(members)) => Body::Alive {
            members: number(members)?,
        },
        _ => return None,
    };
    Some(Envelope { node, seq, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CH: &[u8] = b"lc:room:dev";

    fn env(body: Body<'_>) -> Envelope<'_> {
        Envelope {
            node: "0123abcd",
            seq: 7,
            body,
        }
    }

    #[test]
    fn unsigned_payloads_keep_todays_format() {
        let s = Signer::new(None);
        let mut out = Vec::new();
        s.encode(
            CH,
            &env(Body::Room {
                line: "MSG dev a hi",
            }),
            &mut out,
        );
        assert_eq!(out, b"M 0123abcd 7 MSG dev a hi");
        assert_eq!(
            s.open(CH, &out),
            Ok(env(Body::Room {
                line: "MSG dev a hi"
            }))
        );
        for bad in [
            &b"M"[..],
            b"M node",
            b"M node x line",
            b"M node 07 line",
            b"M node +7 line",
            b"M no-de 7 line",
            b"M node 7",
            b"X node 7 line",
            b"N node 7 rooms",
            b"w node 7 1",
            b"w node 7 1 2 ",
            b"H node 7",
            b"M node 18446744073709551616 x",
        ] {
            assert_eq!(s.open(CH, bad), Err(WireError::Malformed), "{bad:?}");
        }
        assert_eq!(s.open(CH, b"M n 1 a\nb"), Err(WireError::NotALine));
        assert_eq!(s.open(CH, b"M n 1 \xff"), Err(WireError::NotALine));
    }

    #[test]
    fn signed_payloads_are_checked_before_anything_else() {
        let s = Signer::new(Some(b"sesame"));
        let other = Signer::new(Some(b"open"));
        let mut out = Vec::new();
        let e = Envelope {
            node: "0123abcd",
            seq: u64::MAX,
            body: Body::Room {
                line: "MSG dev a hi",
            },
        };
        s.encode(CH, &e, &mut out);
        assert_eq!(out[0], b'#');
        assert_eq!(s.open(CH, &out), Ok(e));
        // Another key, another channel, a changed byte, no tag at all.
        assert_eq!(other.open(CH, &out), Err(WireError::BadSignature));
        assert_eq!(s.open(b"lc:room:ops", &out), Err(WireError::BadSignature));
        let mut changed = out.clone();
        *changed.last_mut().unwrap() = b'!';
        assert_eq!(s.open(CH, &changed), Err(WireError::BadSignature));
        assert_eq!(
            s.open(CH, b"M 0123abcd 18446744073709551615 MSG dev a forged"),
            Err(WireError::Unsigned)
        );
        assert_eq!(s.open(CH, b"#abc M n 1 x"), Err(WireError::BadSignature));
        // Upper-case hex is not what encode writes: refused.
        let upper = String::from_utf8(out.clone()).unwrap();
        let upper = format!("#{}{}", upper[1..65].to_uppercase(), &upper[65..]);
        if upper.as_bytes() != out.as_slice() {
            assert_eq!(s.open(CH, upper.as_bytes()), Err(WireError::BadSignature));
        }
        // Without a secret, a tag is skipped (it cannot be checked).
        assert_eq!(Signer::new(None).open(CH, &out), Ok(e));
        assert!(!format!("{s:?}").contains("sesame"));
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_.=,-]{1,12}( [a-zA-Z0-9_.=,-]{1,12}){0,4}"
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-z0-9_.-]{1,12}"
    }

    proptest! {
        #[test]
        fn every_body_round_trips(
            kind in 0..9u8, a in text(), w in word(), n in any::<u64>(), m in any::<u64>(),
            node in "[0-9a-f]{1,32}", seq in any::<u64>(), signed in any::<bool>(),
            empty in any::<bool>(),
        ) {
            let list = if empty { "" } else { a.as_str() };
            let body = match kind {
                0 => Body::Room { line: &a },
                1 => Body::Nick { rooms: &w, line: &a },
                2 => Body::Private { to: &w, line: &a },
                3 => Body::WhoAsk { qid: n, room: &w },
                4 => Body::WhoAnswer { qid: n, total: m, nicks: list },
                5 => Body::RoomsAsk { qid: n },
                6 => Body::RoomsAnswer { qid: n, rooms: list },
                7 => Body::Resumed { from: &node, selector: n, key: &w, nick: &w, rooms: &w },
                _ => Body::Alive { members: m },
            };
            let e = Envelope { node: &node, seq, body };
            let s = Signer::new(signed.then_some(&b"k"[..]));
            let mut out = Vec::new();
            s.encode(CH, &e, &mut out);
            prop_assert_eq!(s.open(CH, &out), Ok(e));
        }

        #[test]
        fn whatever_is_accepted_re_encodes_to_the_same_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..80),
            pick in proptest::collection::vec(0..12usize, 0..40),
        ) {
            // Mostly payload-like input: letters of the grammar.
            let alphabet = b"MNPWwRrH 0123 abc=,";
            let mut p: Vec<u8> = pick.iter().map(|&i| alphabet[i]).collect();
            p.extend_from_slice(&bytes[..bytes.len().min(4)]);
            let s = Signer::new(None);
            if let Ok(e) = s.open(CH, &p) {
                let mut out = Vec::new();
                s.encode(CH, &e, &mut out);
                prop_assert_eq!(out, p);
            }
        }

        #[test]
        fn no_flipped_bit_passes_the_signature(
            a in text(), bit in 0..512usize,
        ) {
            let s = Signer::new(Some(b"k"));
            let mut out = Vec::new();
            s.encode(CH, &env(Body::Room { line: &a }), &mut out);
            let i = bit / 8 % out.len();
            out[i] ^= 1 << (bit % 8);
            prop_assert!(s.open(CH, &out).is_err());
        }
    }
}
