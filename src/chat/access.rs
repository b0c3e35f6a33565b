//! Who may do what: roles, the rooms a signed user may join, and what the hub
//! keeps of a verified token. The token itself is checked by `crate::auth`;
//! the chat only sees the resulting [`Grant`].

use super::names::{is_name_byte, MAX_ROOM};

/// What a connection may do (PROTOCOL.md "Signed tokens").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Role {
    /// May join rooms and read; may not speak (`ERR forbidden`).
    Viewer,
    /// May join, read and speak: every guest and every token without `role`.
    #[default]
    Member,
    /// A member who may also `/kick ROOM NICK [TEXT]`.
    Mod,
}

impl Role {
    /// The claim value: `viewer`, `member` or `mod`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "member" => Some(Role::Member),
            "mod" => Some(Role::Mod),
            _ => None,
        }
    }

    /// The claim spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Mod => "mod",
        }
    }
}

/// A user's role, whether a token vouches for its nick, and whether its close
/// was requested, packed in one byte so it fits in the padding of the hub's
/// per-user entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(u8);

const SIGNED: u8 = 4;
const CLOSING: u8 = 8;

impl Access {
    /// A guest with `role`.
    pub fn guest(role: Role) -> Access {
        Access(role as u8)
    }

    /// A token holder with `role`.
    pub fn signed(role: Role) -> Access {
        Access(role as u8 | SIGNED)
    }

    /// The role.
    pub fn role(self) -> Role {
        match self.0 & 3 {
            0 => Role::Viewer,
            2 => Role::Mod,
            _ => Role::Member,
        }
    }

    /// True for a token holder.
    pub fn is_signed(self) -> bool {
        self.0 & SIGNED != 0
    }

    /// True once a close was requested (quit, rate abuse, expiry): further
    /// lines are ignored.
    pub fn closing(self) -> bool {
        self.0 & CLOSING != 0
    }

    /// Mark the close requested.
    pub fn set_closing(&mut self) {
        self.0 |= CLOSING;
    }

    /// `to`'s role and signed flag, keeping this one's closing flag.
    pub fn become_(&mut self, to: Access) {
        self.0 = (self.0 & CLOSING) | (to.0 & !CLOSING);
    }
}

/// What the hub keeps of a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The token's `sub`: the nick, reserved for its holder.
    pub nick: String,
    /// The role.
    pub role: Role,
    /// Room patterns the holder may join; `None` means any room.
    pub rooms: Option<Box<[Box<str>]>>,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// True when `p` is 1–64 bytes of room-name bytes and `*`.
pub fn valid_pattern(p: &str) -> bool {
    !p.is_empty() && p.len() <= MAX_ROOM && p.bytes().all(|b| b == b'*' || is_name_byte(b))
}

/// Case-insensitive glob match of a room name against a pattern where `*`
/// matches any run of bytes (including none). Iterative with one backtrack
/// point, so O(len(pattern) × len(room)) at worst: both are at most 64 bytes.
pub fn pattern_matches(pattern: &str, room: &str) -> bool {
    let (p, r) = (pattern.as_bytes(), room.as_bytes());
    let (mut pi, mut ri) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ri < r.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ri));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&r[ri]) {
            pi += 1;
            ri += 1;
        } else if let Some((sp, sr)) = star {
            pi = sp + 1;
            ri = sr + 1;
            star = Some((sp, sr + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// True when `room` matches one of `patterns`.
pub fn room_allowed(patterns: &[Box<str>], room: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, room))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(pattern_matches("dev", "DEV"));
        assert!(!pattern_matches("dev", "dev2"));
        assert!(pattern_matches("ops-*", "ops-"));
        assert!(pattern_matches("ops-*", "Ops-East"));
        assert!(!pattern_matches("ops-*", "ops"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
        assert!(!pattern_matches("a*b*c", "aXXbYY"));
        assert!(pattern_matches("*-team", "red-team"));
        assert!(valid_pattern("ops-*"));
        assert!(!valid_pattern("#ops"));
        assert!(!valid_pattern(""));
        let list: Vec<Box<str>> = vec!["dev".into(), "ops-*".into()];
        assert!(room_allowed(&list, "ops-1"));
        assert!(!room_allowed(&list, "lobby"));
        assert_eq!(Role::parse("mod"), Some(Role::Mod));
        assert_eq!(Role::parse("admin"), None);
        for r in [Role::Viewer, Role::Member, Role::Mod] {
            assert_eq!(Access::guest(r).role(), r);
            assert_eq!(Access::signed(r).role(), r);
            assert!(Access::signed(r).is_signed());
            assert!(!Access::guest(r).is_signed());
            let mut a = Access::guest(r);
            a.set_closing();
            a.become_(Access::signed(Role::Viewer));
            assert!(a.closing() && a.is_signed() && a.role() == Role::Viewer);
        }
    }

    proptest::proptest! {
        #[test]
        fn star_matches_every_room_and_literals_match_themselves(room in "[A-Za-z0-9_.-]{1,64}") {
            proptest::prop_assert!(pattern_matches("*", &room));
            proptest::prop_assert!(pattern_matches(&room.to_ascii_uppercase(), &room));
            let prefix = &room[..room.len() / 2];
            let pat = format!("{prefix}*");
            proptest::prop_assert!(pattern_matches(&pat, &room));
        }
    }
}
