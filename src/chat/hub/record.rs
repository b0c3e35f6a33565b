//! A dropped session as written to Redis, so that any node can resume it.
//!
//! One line of space-separated fields (names are `[A-Za-z0-9_.-]`, patterns
//! add `*`, ids are `EPOCH-SEQ`, so no field needs quoting):
//!
//! ```text
//! NICK CAPS ROLE EXP CLAIM ROOM:LAST ...
//! ```
//!
//! - `CAPS`: the capability bits, decimal;
//! - `ROLE`: `viewer`, `member` or `mod`;
//! - `EXP`: `-` for a guest, else the token's `exp` (Unix seconds): the
//!   session is a token holder's and ends with its token;
//! - `CLAIM`: `-`, or the token's `rooms` patterns joined by `,`;
//! - one `ROOM:LAST` per room in join order, `LAST` the id of the last message
//!   the dropped connection was handed there, `0-0` when the room had none
//!   then, or `-` when that is not known.
//!
//! The node that stores it puts `NODE NICKKEY ` in front (see
//! `cluster::node`); [`Record::parse`] reads what follows. Parsing is total:
//! anything malformed is `None`, and the resume is refused.

use std::fmt::Write as _;

use super::super::access::{valid_pattern, Access, Role};
use super::super::history::MsgId;
use super::super::names::{valid_nick, valid_room, Folded};

/// Most rooms a record may name (more than `--max-rooms` allows anyway).
const MAX_ROOMS: usize = 1024;
/// Most patterns of a `rooms` claim.
const MAX_CLAIM: usize = 64;

/// A dropped session, as any node needs it to resume it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub(super) nick: Box<str>,
    pub(super) caps: u8,
    pub(super) access: Access,
    /// `exp` of a token holder's token.
    pub(super) exp: Option<u64>,
    /// The token's `rooms` claim.
    pub(super) claim: Option<Box<[Box<str>]>>,
    /// Rooms in join order, with the last id handed to the connection.
    pub(super) rooms: Vec<(Box<str>, Option<MsgId>)>,
}

impl Record {
    /// Append the written form to `out`.
    pub(super) fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "{} {} {} ",
            self.nick,
            self.caps,
            self.access.role().as_str()
        );
        match self.exp {
            Some(e) => {
                let _ = write!(out, "{e} ");
            }
            None => out.push_str("- "),
        }
        match &self.claim {
            Some(c) if !c.is_empty() => {
                for (i, p) in c.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(p);
                }
            }
            _ => out.push('-'),
        }
        let mut buf = [0u8; 41];
        for (room, last) in &self.rooms {
            out.push(' ');
            out.push_str(room);
            out.push(':');
            match last {
                Some(id) => out.push_str(id.write(&mut buf)),
                None => out.push('-'),
            }
        }
    }

    /// Read a written record; `None` for anything malformed.
    pub(super) fn parse(s: &str) -> Option<Record> {
        let mut it = s.split(' ');
        let nick = it.next().filter(|n| valid_nick(n))?;
        let caps: u8 = it.next()?.parse().ok()?;
        let role = Role::parse(it.next()?)?;
        let exp = match it.next()? {
            "-" => None,
            e => Some(e.parse::<u64>().ok()?),
        };
        let claim = match it.next()? {
            "-" => None,
            c => {
                let list: Vec<Box<str>> = c.split(',').map(Into::into).collect();
                if list.len() > MAX_CLAIM || !list.iter().all(|p| valid_pattern(p)) {
                    return None;
                }
                Some(list.into_boxed_slice())
            }
        };
        let mut rooms = Vec::new();
        for r in it {
            let (room, last) = r.split_once(':')?;
            if !valid_room(room) || rooms.len() >= MAX_ROOMS {
                return None;
            }
            // One membership per room, whatever the letter case.
            let key = Folded::new(room)?;
            if rooms.iter().any(|(r, _): &(Box<str>, _)| {
                Folded::new(r).is_some_and(|f| f.as_str() == key.as_str())
            }) {
                return None;
            }
            let last = match last {
                "-" => None,
                l => Some(MsgId::parse(l)?),
            };
            rooms.push((room.into(), last));
        }
        let access = if exp.is_some() {
            Access::signed(role)
        } else {
            Access::guest(role)
        };
        Some(Record {
            nick: nick.into(),
            caps,
            access,
            exp,
            claim,
            rooms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(r: &Record) -> String {
        let mut s = String::new();
        r.write(&mut s);
        s
    }

    #[test]
    fn a_guest_and_a_token_holder_round_trip() {
        let guest = Record {
            nick: "alice".into(),
            caps: 3,
            access: Access::guest(Role::Member),
            exp: None,
            claim: None,
            rooms: vec![
                ("lobby".into(), Some(MsgId { epoch: 17, seq: 4 })),
                ("dev".into(), None),
            ],
        };
        assert_eq!(written(&guest), "alice 3 member - - lobby:17-4 dev:-");
        assert_eq!(Record::parse(&written(&guest)), Some(guest));
        let holder = Record {
            nick: "Bob".into(),
            caps: 2,
            access: Access::signed(Role::Mod),
            exp: Some(1_900_000_000),
            claim: Some(vec!["team-*".into(), "lobby".into()].into_boxed_slice()),
            rooms: vec![],
        };
        assert_eq!(written(&holder), "Bob 2 mod 1900000000 team-*,lobby");
        assert_eq!(Record::parse(&written(&holder)), Some(holder));
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            "",
            "alice",
            "alice 3 member -",
            "al ice 3 member - -",
            "alice x member - -",
            "alice 3 king - -",
            "alice 3 member soon -",
            "alice 3 member - a,b c",
            "alice 3 member - - lobby",
            "alice 3 member - - lobby:4",
            "alice 3 member - - lob/by:-",
            "alice 3 member - -  lobby:-",
            "alice 3 member - - lobby:- LOBBY:-",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,200}") {
            let _ = Record::parse(&s);
        }

        #[test]
        fn whatever_parses_writes_back_the_same(s in "[a-z0-9 :,*-]{0,80}") {
            if let Some(r) = Record::parse(&s) {
                prop_assert_eq!(Record::parse(&written(&r)), Some(r));
            }
        }
    }
}
