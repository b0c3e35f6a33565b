//! Nick and room names: validation and case folding.
//!
//! Both use the ASCII charset `[A-Za-z0-9_.-]`, so folding is plain ASCII
//! lowercasing and a folded name has the same length as the original. That
//! lets lookups fold into a stack buffer instead of allocating.

/// Longest nick in bytes.
pub const MAX_NICK: usize = 32;
/// Longest room name in bytes.
pub const MAX_ROOM: usize = 64;

/// True for the bytes allowed in nicks and room names.
#[inline]
pub const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'
}

/// [`is_name_byte`] of every byte, looked up rather than computed: every
/// server line parsed checks one or two names (the load generator parses
/// millions of lines a second), and a lookup is one load per byte.
static NAME_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_name_byte(b as u8);
        b += 1;
    }
    t
};

fn valid(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.bytes().all(|b| NAME_BYTES[b as usize])
}

/// True when `name` is 1–32 of `[A-Za-z0-9_.-]`.
pub fn valid_nick(name: &str) -> bool {
    valid(name, MAX_NICK)
}

/// True for nicks only the server hands out: `guest-*` in any letter case.
/// Users cannot choose them, so nobody can pre-claim a node's next guest
/// nick from another node.
pub fn reserved_nick(name: &str) -> bool {
    name.as_bytes()
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"guest-"))
}

/// True when `name` is 1–64 of `[A-Za-z0-9_.-]`.
pub fn valid_room(name: &str) -> bool {
    valid(name, MAX_ROOM)
}

/// A stack buffer for a folded name, so a lookup by a case-insensitive key
/// allocates nothing.
#[derive(Clone, Copy)]
pub struct Folded {
    buf: [u8; MAX_ROOM],
    len: u8,
}

impl Folded {
    /// Fold a valid nick or room name (at most [`MAX_ROOM`] bytes); `None` when
    /// the name is too long or not ASCII, which valid names never are.
    pub fn new(name: &str) -> Option<Folded> {
        if name.len() > MAX_ROOM || !name.is_ascii() {
            return None;
        }
        let mut buf = [0u8; MAX_ROOM];
        for (d, s) in buf.iter_mut().zip(name.bytes()) {
            *d = s.to_ascii_lowercase();
        }
        Some(Folded {
            buf,
            len: name.len() as u8,
        })
    }

    /// The folded name.
    pub fn as_str(&self) -> &str {
        // ASCII in, ASCII out: always valid UTF-8; the fallback is unreachable
        // but keeps this path panic-free.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

/// Case-insensitive ordering of two names, for sorted `/rooms` output.
pub fn cmp_folded(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_lowercase())
        .cmp(b.bytes().map(|c| c.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_rules() {
        assert!(valid_nick("a"));
        assert!(valid_nick("Al_ice.B-2"));
        assert!(valid_nick(&"x".repeat(32)));
        assert!(!valid_nick(&"x".repeat(33)));
        assert!(!valid_nick(""));
        assert!(!valid_nick("a b"));
        assert!(!valid_nick("é"));
        assert!(!valid_nick("a/b"));
    }

    #[test]
    fn room_rules() {
        assert!(valid_room(&"r".repeat(64)));
        assert!(!valid_room(&"r".repeat(65)));
        assert!(!valid_room("#dev"));
    }

    #[test]
    fn folding() {
        assert_eq!(Folded::new("DeV.Ops").unwrap().as_str(), "dev.ops");
        assert!(Folded::new(&"x".repeat(65)).is_none());
        assert!(Folded::new("é").is_none());
        assert_eq!(cmp_folded("B", "a"), std::cmp::Ordering::Greater);
        assert_eq!(cmp_folded("a", "A"), std::cmp::Ordering::Equal);
    }
}
