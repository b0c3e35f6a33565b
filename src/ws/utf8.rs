//! Incremental, fail-fast UTF-8 validation across message fragments.
//!
//! A text message may be split anywhere, even inside a character. The
//! validator carries the incomplete tail (at most 3 bytes) of one piece into
//! the next and reports an error as soon as the bytes seen so far cannot start
//! valid UTF-8, without waiting for the end of the message (Autobahn 6.x
//! "fail fast"). `std::str::from_utf8` already rejects an impossible prefix
//! such as `F4 90` or `ED A0` at the end of its input (`error_len()` is
//! `Some`), so an incomplete tail it leaves (`error_len()` is `None`) is always
//! the valid beginning of some character.

/// The input is not valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

/// State between pieces of one text message: the incomplete last character.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    tail: [u8; 3],
    tail_len: u8,
}

/// Length of the UTF-8 sequence started by `lead` (0 when `lead` cannot start one).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Utf8Validator {
            tail: [0; 3],
            tail_len: 0,
        }
    }

    /// Forget any carried tail (start of a new message).
    pub fn reset(&mut self) {
        self.tail_len = 0;
    }

    /// True when no incomplete character is pending.
    pub fn is_complete(&self) -> bool {
        self.tail_len == 0
    }

    /// Validate the next piece of the message; fails as soon as the bytes seen
    /// so far are invalid, including an impossible incomplete last character.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.tail_len > 0 {
            let have = usize::from(self.tail_len);
            let need = sequence_len(self.tail[0]);
            let mut buf = [0u8; 4];
            buf[..have].copy_from_slice(&self.tail[..have]);
            let take = need.saturating_sub(have).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            buf[have..have + take].copy_from_slice(head);
            match std::str::from_utf8(&buf[..have + take]) {
                Ok(_) => self.tail_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still incomplete: everything was taken.
                    self.tail[..have + take].copy_from_slice(&buf[..have + take]);
                    self.tail_len = (have + take) as u8;
                    return Ok(());
                }
            }
            bytes = rest;
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                let tail = bytes.get(e.valid_up_to()..).unwrap_or_default();
                let n = tail.len().min(3);
                self.tail[..n].copy_from_slice(&tail[..n]);
                self.tail_len = n as u8;
                Ok(())
            }
        }
    }

    /// The message ended: an incomplete character left over is an error.
    /// Resets the validator for the next message.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.tail_len == 0;
        self.tail_len = 0;
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn validate_pieces(pieces: &[&[u8]]) -> Result<(), InvalidUtf8> {
        let mut v = Utf8Validator::new();
        for p in pieces {
            v.feed(p)?;
        }
        v.finish()
    }

    #[test]
    fn valid_split_inside_characters() {
        let s = "κόσμε €𝄞 hello".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(validate_pieces(&[&s[..i], &s[i..j], &s[j..]]), Ok(()));
            }
        }
        // One byte at a time.
        let mut v = Utf8Validator::new();
        for b in s {
            v.feed(std::slice::from_ref(b)).unwrap();
        }
        assert!(v.finish().is_ok());
    }

    #[test]
    fn fails_fast_on_impossible_prefixes() {
        // Each of these is already invalid although more bytes could follow.
        let cases: &[&[u8]] = &[
            &[0xF4, 0x90],       // > U+10FFFF
            &[0xF5],             // never a lead byte
            &[0xED, 0xA0],       // surrogate
            &[0xE0, 0x80],       // overlong 3-byte
            &[0xF0, 0x80],       // overlong 4-byte
            &[0xC0],             // overlong 2-byte
            &[0xC1],             // overlong 2-byte
            &[0x80],             // lone continuation
            &[0xCE, 0x41],       // missing continuation
            &[0xE2, 0x82, 0x41], // missing continuation
            &[0xFF],
        ];
        for c in cases {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(c), Err(InvalidUtf8), "whole {c:x?}");
            let mut v = Utf8Validator::new();
            let r = c.iter().try_for_each(|b| v.feed(std::slice::from_ref(b)));
            assert_eq!(r, Err(InvalidUtf8), "bytewise {c:x?}");
            // After a valid prefix, in a later fragment.
            let mut v = Utf8Validator::new();
            v.feed("ab".as_bytes()).unwrap();
            assert_eq!(v.feed(c), Err(InvalidUtf8), "later {c:x?}");
        }
    }

    #[test]
    fn incomplete_valid_prefix_is_carried() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[b'a', 0xF4, 0x8F]), Ok(()));
        assert!(!v.is_complete());
        assert_eq!(v.feed(&[0xBF]), Ok(()));
        assert_eq!(v.feed(&[0xBF, b'z']), Ok(()));
        assert_eq!(v.finish(), Ok(()));
        let mut v = Utf8Validator::new();
        v.feed(&[0xE2, 0x82]).unwrap();
        assert_eq!(v.finish(), Err(InvalidUtf8));
        // finish resets
        assert_eq!(v.finish(), Ok(()));
    }

    proptest! {
        #[test]
        fn agrees_with_std_for_any_split(data in proptest::collection::vec(any::<u8>(), 0..40),
                                         cuts in proptest::collection::vec(0usize..40, 0..4)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts { pieces.push(&data[last..c]); last = c; }
            pieces.push(&data[last..]);
            prop_assert_eq!(validate_pieces(&pieces).is_ok(), std::str::from_utf8(&data).is_ok());
        }

        #[test]
        fn valid_strings_pass_bytewise(s in "\\PC{0,20}") {
            let mut v = Utf8Validator::new();
            for b in s.as_bytes() { prop_assert!(v.feed(std::slice::from_ref(b)).is_ok()); }
            prop_assert!(v.finish().is_ok());
        }
    }
}
