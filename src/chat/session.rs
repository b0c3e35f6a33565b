//! Resumable sessions: the secret tokens and what a dropped connection leaves
//! behind until it comes back or its time runs out.
//!
//! A token is 24 random bytes from the OS, written as 32 characters of
//! URL-safe base64: an 8-byte *selector* (the lookup key, so the table is an
//! ordinary hash map) and a 16-byte *verifier* (128 secret bits), compared in
//! constant time, so timing tells an attacker nothing about how much of a
//! guess was right. A session is:
//! - `Live` while its connection is open (the token was sent in `SESSION`);
//! - `Detached` once that connection dropped without `/quit`, holding the
//!   hub's data (nick, rooms, last message ids) until `now + ttl`;
//! - gone when it is taken (resumed: single use, the new connection gets a new
//!   token), when its connection quits, or when its time runs out.
//!
//! Expiry: the TTL is one constant and `now` never goes back, so deadlines
//! come in order and a FIFO queue replaces a priority queue; entries resumed
//! in the meantime are skipped when they reach its front (lazy deletion,
//! bounded by the number of detaches).

use std::collections::{HashMap, VecDeque};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::ConnId;

/// Bytes of randomness in a token: 64 bits of selector, 128 of verifier.
pub const TOKEN_BYTES: usize = 24;
/// Characters of a written token.
pub const TOKEN_CHARS: usize = 32;

pub use crate::sys::os_random;

/// A decoded token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token {
    selector: u64,
    verifier: [u8; 16],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        write!(f, "Token({:016x}, ..)", self.selector)
    }
}

impl Token {
    fn from_bytes(b: &[u8; TOKEN_BYTES]) -> Token {
        let mut sel = [0u8; 8];
        sel.copy_from_slice(&b[..8]);
        let mut verifier = [0u8; 16];
        verifier.copy_from_slice(&b[8..]);
        Token {
            selector: u64::from_le_bytes(sel),
            verifier,
        }
    }

    /// Decode the 32-character form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Token> {
        if s.len() != TOKEN_CHARS {
            return None;
        }
        let mut b = [0u8; TOKEN_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut b) {
            Ok(TOKEN_BYTES) => Some(Token::from_bytes(&b)),
            _ => None,
        }
    }

    /// The key of this token's session record in Redis (`lc:sess:` and the
    /// SHA-256 of the written token, in hex): whoever reads Redis learns no
    /// token, and a lookup needs the whole token.
    pub fn redis_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.encode().as_bytes());
        let mut key = String::with_capacity(8 + 64);
        key.push_str("lc:sess:");
        for b in digest {
            let _ = std::fmt::Write::write_fmt(&mut key, format_args!("{b:02x}"));
        }
        key
    }

    /// The lookup half (the session table's key).
    pub fn selector(&self) -> u64 {
        self.selector
    }

    /// The 32-character URL-safe form.
    pub fn encode(&self) -> String {
        let mut b = [0u8; TOKEN_BYTES];
        b[..8].copy_from_slice(&self.selector.to_le_bytes());
        b[8..].copy_from_slice(&self.verifier);
        URL_SAFE_NO_PAD.encode(b)
    }
}

/// Equal in time independent of where the first difference is.
fn ct_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[derive(Debug)]
enum State<T> {
    Live(ConnId),
    Detached { deadline: u64, data: T },
}

#[derive(Debug)]
struct Entry<T> {
    verifier: [u8; 16],
    state: State<T>,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not a token, unknown, used, or expired: `ERR bad-session`.
    BadSession,
}

/// What [`Sessions::take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken<T> {
    /// A dropped session's data; the token is now used up.
    Detached(T),
    /// The session's connection is still open (its drop has not been noticed,
    /// e.g. a half-open TCP connection after a network change): the caller
    /// detaches that connection and takes the session over.
    Live(ConnId),
}

/// The session table. `T` is what the hub keeps for a dropped connection.
#[derive(Debug)]
pub struct Sessions<T> {
    ttl_ms: u64,
    max_detached: usize,
    by_selector: HashMap<u64, Entry<T>>,
    by_conn: HashMap<ConnId, u64>,
    /// (deadline, selector), in deadline order; may hold stale pairs.
    expiries: VecDeque<(u64, u64)>,
    detached: usize,
}

impl<T> Sessions<T> {
    /// A table keeping dropped sessions for `ttl_ms`, at most `max_detached`
    /// of them at once.
    pub fn new(ttl_ms: u64, max_detached: usize) -> Self {
        Sessions {
            ttl_ms,
            max_detached,
            by_selector: HashMap::new(),
            by_conn: HashMap::new(),
            expiries: VecDeque::new(),
            detached: 0,
        }
    }

    /// A new session for the open connection `conn` with the random `bytes`
    /// (from [`os_random`]); replaces any session `conn` had. The token to send.
    pub fn issue(&mut self, conn: ConnId, bytes: [u8; TOKEN_BYTES]) -> Token {
        self.end(conn);
        let mut token = Token::from_bytes(&bytes);
        // A selector collision (2^-64 per pair) would make two sessions share a
        // slot; step to a free one instead (the verifier stays secret).
        while self.by_selector.contains_key(&token.selector) {
            token.selector = token.selector.wrapping_add(1);
        }
        self.by_selector.insert(
            token.selector,
            Entry {
                verifier: token.verifier,
                state: State::Live(conn),
            },
        );
        self.by_conn.insert(conn, token.selector);
        token
    }

    /// The token of `conn`'s live session.
    pub fn token_of(&self, conn: ConnId) -> Option<Token> {
        let selector = *self.by_conn.get(&conn)?;
        let entry = self.by_selector.get(&selector)?;
        Some(Token {
            selector,
            verifier: entry.verifier,
        })
    }

    /// The data of every dropped session (in no particular order).
    pub fn detached_values(&self) -> impl Iterator<Item = &T> {
        self.by_selector.values().filter_map(|e| match &e.state {
            State::Detached { data, .. } => Some(data),
            State::Live(_) => None,
        })
    }

    /// True when `conn` has a live session.
    pub fn has(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// `conn` quit (or gave up `resume`): its session ends.
    pub fn end(&mut self, conn: ConnId) {
        if let Some(sel) = self.by_conn.remove(&conn) {
            self.by_selector.remove(&sel);
        }
    }

    /// True when [`Sessions::detach`] of `conn` would keep its session.
    pub fn can_detach(&self, conn: ConnId) -> bool {
        self.ttl_ms > 0 && self.detached < self.max_detached && self.by_conn.contains_key(&conn)
    }

    /// `conn` dropped: keep `data` until `now_ms + ttl`. Gives `data` back
    /// when `conn` had no session, the TTL is 0, or the table is full, so the
    /// caller ends it as a plain disconnect.
    pub fn detach(&mut self, conn: ConnId, now_ms: u64, data: T) -> Result<(), T> {
        self.detach_until(conn, now_ms, u64::MAX, data)
    }

    /// [`Sessions::detach`], but kept no later than `until_ms` (a signed
    /// session ends with its token). A deadline already passed keeps nothing.
    pub fn detach_until(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        until_ms: u64,
        data: T,
    ) -> Result<(), T> {
        let Some(sel) = self.by_conn.remove(&conn) else {
            return Err(data);
        };
        if self.ttl_ms == 0 || self.detached >= self.max_detached {
            self.by_selector.remove(&sel);
            return Err(data);
        }
        let Some(entry) = self.by_selector.get_mut(&sel) else {
            return Err(data);
        };
        let deadline = now_ms.saturating_add(self.ttl_ms).min(until_ms);
        if deadline <= now_ms {
            self.by_selector.remove(&sel);
            return Err(data);
        }
        entry.state = State::Detached { deadline, data };
        // Deadlines mostly arrive in order (now + ttl); an earlier one (a
        // token's expiry) is inserted in place so the queue stays sorted.
        let at = self.expiries.partition_point(|&(d, _)| d <= deadline);
        self.expiries.insert(at, (deadline, sel));
        self.detached += 1;
        Ok(())
    }

    /// Look a written token up and use it: a detached session's data (the
    /// token is spent), or the connection that still holds the session.
    pub fn take(&mut self, token: &str, now_ms: u64) -> Result<Taken<T>, Refused> {
        let token = Token::parse(token).ok_or(Refused::BadSession)?;
        let entry = self
            .by_selector
            .get(&token.selector)
            .ok_or(Refused::BadSession)?;
        if !ct_eq(&entry.verifier, &token.verifier) {
            return Err(Refused::BadSession);
        }
        match entry.state {
            State::Live(conn) => return Ok(Taken::Live(conn)),
            State::Detached { deadline, .. } if now_ms >= deadline => {
                return Err(Refused::BadSession)
            }
            State::Detached { .. } => {}
        }
        match self.by_selector.remove(&token.selector) {
            Some(Entry {
                state: State::Detached { data, .. },
                ..
            }) => {
                self.detached -= 1;
                self.prune();
                Ok(Taken::Detached(data))
            }
            _ => Err(Refused::BadSession),
        }
    }

    /// What [`Sessions::take`] would find for `token`, without using it:
    /// `None` when it is not a good token or its session expired.
    pub fn peek(&self, token: &str, now_ms: u64) -> Option<Taken<&T>> {
        let token = Token::parse(token)?;
        let entry = self.by_selector.get(&token.selector)?;
        if !ct_eq(&entry.verifier, &token.verifier) {
            return None;
        }
        match &entry.state {
            State::Live(conn) => Some(Taken::Live(*conn)),
            State::Detached { deadline, data } if now_ms < *deadline => Some(Taken::Detached(data)),
            State::Detached { .. } => None,
        }
    }

    /// Remove the first detached session whose data satisfies `pred` (a scan
    /// of the table: for the rare case of a token holder taking its nick back
    /// from its own held session).
    pub fn remove_detached(&mut self, mut pred: impl FnMut(&T) -> bool) -> Option<T> {
        let sel = self
            .by_selector
            .iter()
            .find_map(|(sel, e)| match &e.state {
                State::Detached { data, .. } if pred(data) => Some(*sel),
                _ => None,
            })?;
        self.remove_detached_at(sel, |_| true)
    }

    /// Remove the detached session under `selector` if its data satisfies
    /// `pred` (O(1): a session moved to another node, named by its token's
    /// selector).
    pub fn remove_detached_at(
        &mut self,
        selector: u64,
        pred: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        match self.by_selector.get(&selector) {
            Some(Entry {
                state: State::Detached { data, .. },
                ..
            }) if pred(data) => {}
            _ => return None,
        }
        match self.by_selector.remove(&selector) {
            Some(Entry {
                state: State::Detached { data, .. },
                ..
            }) => {
                self.detached -= 1;
                self.prune();
                Some(data)
            }
            _ => None,
        }
    }

    /// Drop queue entries of sessions resumed meanwhile from the front, so the
    /// front is always a waiting session and `poll_timeout` is exact.
    fn prune(&mut self) {
        while let Some(&(deadline, sel)) = self.expiries.front() {
            let current = matches!(
                self.by_selector.get(&sel),
                Some(Entry { state: State::Detached { deadline: d, .. }, .. }) if *d == deadline
            );
            if current {
                break;
            }
            self.expiries.pop_front();
        }
    }

    /// When the next detached session expires, on the caller's clock.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.expiries.front().map(|&(d, _)| d)
    }

    /// The next session whose time ran out by `now_ms`, removed; call until `None`.
    pub fn pop_expired(&mut self, now_ms: u64) -> Option<T> {
        while let Some(&(deadline, sel)) = self.expiries.front() {
            if deadline > now_ms {
                return None;
            }
            self.expiries.pop_front();
            let current = matches!(
                self.by_selector.get(&sel),
                Some(Entry { state: State::Detached { deadline: d, .. }, .. }) if *d == deadline
            );
            if !current {
                continue;
            }
            if let Some(Entry {
                state: State::Detached { data, .. },
                ..
            }) = self.by_selector.remove(&sel)
            {
                self.detached -= 1;
                self.prune();
                return Some(data);
            }
        }
        None
    }

    /// Bytes of one session in the tables, without the heap blocks `T`
    /// owns and without the hash maps' spare capacity: the selector map's
    /// slot and control byte, the connection map's (while live) or the expiry
    /// queue's (while dropped) slot.
    pub fn slot_bytes(live: bool) -> usize {
        let by_selector = std::mem::size_of::<(u64, Entry<T>)>() + 1;
        let side = if live {
            std::mem::size_of::<(ConnId, u64)>() + 1
        } else {
            std::mem::size_of::<(u64, u64)>()
        };
        by_selector + side
    }

    /// Sessions of open connections.
    pub fn live(&self) -> usize {
        self.by_conn.len()
    }

    /// Dropped sessions waiting to be resumed.
    pub fn detached(&self) -> usize {
        self.detached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u8) -> [u8; TOKEN_BYTES] {
        let mut b = [0u8; TOKEN_BYTES];
        for (i, x) in b.iter_mut().enumerate() {
            *x = seed.wrapping_mul(31).wrapping_add(i as u8);
        }
        b
    }

    #[test]
    fn os_random_fills_and_differs() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        os_random(&mut a).unwrap();
        os_random(&mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_are_url_safe_and_round_trip() {
        let mut s: Sessions<()> = Sessions::new(1000, 10);
        let t = s.issue(1, bytes(200));
        let text = t.encode();
        assert_eq!(text.len(), TOKEN_CHARS);
        assert!(text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Token::parse(&text), Some(t));
        assert_eq!(Token::parse(&text[1..]), None);
        assert_eq!(Token::parse(&format!("{}=", &text[1..])), None);
        assert!(
            !format!("{t:?}").contains(&text[12..]),
            "debug hides the secret"
        );
    }

    #[test]
    fn detach_take_is_single_use() {
        let mut s = Sessions::new(1000, 10);
        let t = s.issue(1, bytes(1)).encode();
        assert_eq!(s.take(&t, 0), Ok(Taken::Live(1)));
        assert!(s.detach(1, 100, "alice").is_ok());
        assert!(!s.has(1));
        assert_eq!(s.detached(), 1);
        assert_eq!(s.take(&t, 500), Ok(Taken::Detached("alice")));
        assert_eq!(s.take(&t, 500), Err(Refused::BadSession), "used");
        assert_eq!(s.detached(), 0);
        assert_eq!(s.pop_expired(10_000), None, "resumed: nothing expires");
    }

    #[test]
    fn wrong_secret_is_refused() {
        let mut s = Sessions::new(1000, 10);
        let t = s.issue(1, bytes(2));
        s.detach(1, 0, ()).unwrap();
        let mut forged = t;
        forged.verifier[15] ^= 1;
        assert_eq!(s.take(&forged.encode(), 1), Err(Refused::BadSession));
        assert_eq!(s.take("x", 1), Err(Refused::BadSession));
        assert_eq!(s.take(&t.encode(), 1), Ok(Taken::Detached(())));
    }

    #[test]
    fn expiry_in_order() {
        let mut s = Sessions::new(1000, 10);
        let a = s.issue(1, bytes(3)).encode();
        s.issue(2, bytes(4));
        s.issue(3, bytes(5));
        s.detach(1, 0, "a").unwrap();
        s.detach(2, 10, "b").unwrap();
        s.detach(3, 20, "c").unwrap();
        assert_eq!(s.poll_timeout(), Some(1000));
        assert_eq!(s.pop_expired(999), None);
        assert_eq!(s.take(&a, 1000), Err(Refused::BadSession), "expired");
        assert_eq!(s.pop_expired(1010), Some("a"));
        assert_eq!(s.pop_expired(1010), Some("b"));
        assert_eq!(s.pop_expired(1010), None);
        assert_eq!(s.poll_timeout(), Some(1020));
        assert_eq!(s.pop_expired(5000), Some("c"));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.detached(), 0);
    }

    #[test]
    fn quit_zero_ttl_and_full_table_keep_nothing() {
        let mut s = Sessions::new(1000, 1);
        s.issue(1, bytes(6));
        s.end(1);
        assert_eq!(s.detach(1, 0, 'q'), Err('q'), "quit ends it");
        assert_eq!(s.detach(9, 0, 'n'), Err('n'), "never had one");
        s.issue(2, bytes(7));
        s.issue(3, bytes(8));
        assert!(s.detach(2, 0, 'a').is_ok());
        assert_eq!(s.detach(3, 0, 'b'), Err('b'), "table full");
        assert_eq!(s.live(), 0);
        let mut z = Sessions::new(0, 10);
        z.issue(1, bytes(9));
        assert_eq!(z.detach(1, 0, 'z'), Err('z'));
    }

    #[test]
    fn reissue_replaces_and_selector_collisions_step_aside() {
        let mut s: Sessions<()> = Sessions::new(1000, 10);
        let old = s.issue(1, bytes(10)).encode();
        let new = s.issue(1, bytes(11)).encode();
        assert_eq!(s.take(&old, 0), Err(Refused::BadSession));
        assert_eq!(s.take(&new, 0), Ok(Taken::Live(1)));
        let mut same = bytes(11);
        same[20] ^= 0xff;
        let other = s.issue(2, same);
        assert_eq!(s.take(&other.encode(), 0), Ok(Taken::Live(2)));
        assert_eq!(s.take(&new, 0), Ok(Taken::Live(1)));
    }
}
