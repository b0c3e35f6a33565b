//! Signed identity without I/O: HS256 JWT verification and signing
//! ([`token`]) over a strict flat-JSON parser ([`json`]).
//!
//! The server reads the key file and passes `now` (Unix seconds); this layer
//! reads no clock and no file. What a verified token grants in the chat
//! (nick, role, rooms, expiry) is a [`crate::chat::access::Grant`].

pub mod json;
pub mod token;

pub use token::{sign, verify, Claims, Key, KeyError, KeySet, Policy, TokenError};

/// The token of an `/auth JWT` line (command word case-insensitive, one space,
/// the rest of the line), or `None` when the line is not `/auth`.
pub fn auth_command(line: &str) -> Option<&str> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    word.eq_ignore_ascii_case("/auth").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_lines() {
        assert_eq!(auth_command("/auth abc"), Some("abc"));
        assert_eq!(auth_command("/AUTH abc\r\n"), Some("abc"));
        assert_eq!(auth_command("/auth"), Some(""));
        assert_eq!(auth_command("/authx abc"), None);
        assert_eq!(auth_command("hello"), None);
    }
}
