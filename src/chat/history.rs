//! Message ids and the per-room history ring.
//!
//! Ids: every accepted `MSG`/`PRIV` takes the next value of one process-wide
//! sequence, and its id is written `EPOCH-SEQ` (decimal), where EPOCH is the
//! Unix time in milliseconds when the process started. So:
//! - within a room, ids follow the room's order (the sequence only grows);
//! - an id is never reused: not by another room (one sequence for all), not
//!   after the room is deleted and created again, and not after a restart
//!   (the next process has a later EPOCH). The choice of start time over a
//!   random per-boot value: it is as unique in practice (two processes on one
//!   port cannot start in the same millisecond), it tells an operator when the
//!   id was made, and `time` tags can be computed from it plus the
//!   monotonic clock, so a wall-clock step never reorders a room.
//!   An id from another EPOCH is from an earlier process: its history is
//!   gone, so lookups after it answer [`Lost`].
//!
//! The ring: the last `keep` `MSG` lines of a room, each stored once as
//! [`Stored`] (two `u64`s and one heap block holding `NICK` and `TEXT`; the
//! room name is the ring's), and rebuilt into a line only when read. Entries
//! older than `ttl_ms` are dropped when the ring is written or read. The ring
//! remembers the newest id it no longer has (`floor`), which is what makes
//! "after ID" exact: every message after `floor` is kept, so a lookup after an
//! id at or past `floor` is complete, and one before it is [`Lost`].

use std::collections::VecDeque;

/// A message id: the process epoch and the sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId {
    /// Unix milliseconds when the process started.
    pub epoch: u64,
    /// Position in the process-wide sequence (1 is the first message).
    pub seq: u64,
}

impl MsgId {
    /// Parse `EPOCH-SEQ`; `None` for anything else (other servers' ids included).
    pub fn parse(s: &str) -> Option<MsgId> {
        let (e, q) = s.split_once('-')?;
        let num = |d: &str| {
            if d.is_empty() || d.len() > 20 || !d.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                d.parse::<u64>().ok()
            }
        };
        Some(MsgId {
            epoch: num(e)?,
            seq: num(q)?,
        })
    }

    /// Write `EPOCH-SEQ` into `buf` and return it (at most 41 bytes); no allocation.
    pub fn write<'b>(&self, buf: &'b mut [u8; 41]) -> &'b str {
        let mut n = 0;
        for part in [self.epoch, self.seq] {
            if n > 0 {
                buf[n] = b'-';
                n += 1;
            }
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            let mut v = part;
            loop {
                i -= 1;
                digits[i] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            let d = &digits[i..];
            buf[n..n + d.len()].copy_from_slice(d);
            n += d.len();
        }
        std::str::from_utf8(&buf[..n]).unwrap_or("")
    }
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.write(&mut [0; 41]))
    }
}

/// The process-wide id sequence.
#[derive(Clone, Copy, Debug)]
pub struct IdGen {
    epoch: u64,
    last: u64,
}

impl IdGen {
    /// A sequence for a process started at Unix millisecond `epoch`.
    pub fn new(epoch: u64) -> Self {
        IdGen { epoch, last: 0 }
    }

    /// The process epoch (Unix ms).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next id.
    pub fn next_id(&mut self) -> MsgId {
        self.last += 1;
        MsgId {
            epoch: self.epoch,
            seq: self.last,
        }
    }

    /// The last sequence number handed out (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// The id with sequence `seq` in this process.
    pub fn id(&self, seq: u64) -> MsgId {
        MsgId {
            epoch: self.epoch,
            seq,
        }
    }

    /// The sequence number of `id` when it is from this process and already
    /// handed out; `None` for another epoch or a future number.
    pub fn seq_of(&self, id: MsgId) -> Option<u64> {
        (id.epoch == self.epoch && id.seq <= self.last).then_some(id.seq)
    }
}

/// How long and how much a room keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per room (`--history`); 0 keeps none.
    pub keep: usize,
    /// Messages older than this many ms are dropped (`--history-ttl`); 0 = no limit.
    pub ttl_ms: u64,
    /// Bytes all rooms' history may hold together (`--history-bytes`), counted
    /// as [`Stored::cost`]. A room that would go over it first drops its own
    /// oldest messages, and keeps nothing new when it has none: memory stays
    /// bounded whatever the number of rooms and the length of lines.
    pub max_bytes: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            keep: 100,
            ttl_ms: 0,
            max_bytes: 64 << 20,
        }
    }
}

/// One stored message. 40 bytes here plus one heap block of
/// `nick.len() + text.len()` bytes (the allocator rounds it up to 16 and adds
/// its own 8-16 bytes of bookkeeping).
#[derive(Debug)]
pub struct Stored {
    /// Sequence number (the id is `EPOCH-seq`).
    pub seq: u64,
    /// Server time, Unix ms.
    pub time_ms: u64,
    /// `NICK` followed by `TEXT`, one allocation.
    body: Box<str>,
    nick_len: u8,
}

impl Stored {
    /// The sender.
    pub fn nick(&self) -> &str {
        self.body.get(..self.nick_len as usize).unwrap_or("")
    }

    /// The text, as sent (CR/LF are replaced when the line is written).
    pub fn text(&self) -> &str {
        self.body.get(self.nick_len as usize..).unwrap_or("")
    }

    /// Bytes this entry holds on the heap (without allocator overhead).
    pub fn heap_bytes(&self) -> usize {
        self.body.len()
    }

    /// What a message of `nick` and `text` counts against the byte budget:
    /// its slot and its body.
    pub fn cost(nick: &str, text: &str) -> usize {
        std::mem::size_of::<Stored>() + nick.len() + text.len()
    }
}

/// The messages after an id were not all kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost;

/// One room's ring. Invariants: entries are in strictly increasing `seq`, all
/// greater than `floor`; at most `keep` of them; `last` ≥ every `seq` and ≥ `floor`.
#[derive(Debug, Default)]
pub struct RoomHistory {
    entries: VecDeque<Stored>,
    /// The newest sequence number this ring had and dropped (or the sequence
    /// when the room was created): every message after it is still here.
    floor: u64,
    /// The sequence number of the room's last message, kept or not.
    last: u64,
    /// Sum of [`Stored::cost`] over the entries.
    bytes: usize,
}

impl RoomHistory {
    /// An empty ring for a room created when the sequence was at `seq_now`.
    pub fn new(seq_now: u64) -> Self {
        RoomHistory {
            entries: VecDeque::new(),
            floor: seq_now,
            last: seq_now,
            bytes: 0,
        }
    }

    /// Record a message, holding at most `max_bytes` (this room's share of
    /// the budget) afterwards: older entries go first, and when even an
    /// empty ring cannot take it the message is not kept. With `keep == 0`
    /// nothing is stored, but the room's last sequence still advances (resume
    /// needs it to say "nothing missed").
    pub fn push(
        &mut self,
        cfg: &HistoryConfig,
        seq: u64,
        time_ms: u64,
        nick: &str,
        text: &str,
        max_bytes: usize,
    ) {
        debug_assert!(seq > self.last);
        self.last = seq;
        self.expire(cfg, time_ms);
        let cost = Stored::cost(nick, text);
        if cfg.keep == 0 || cost > max_bytes {
            // Not kept: everything up to here is now older than what is kept.
            while !self.entries.is_empty() {
                self.evict();
            }
            self.floor = seq;
            return;
        }
        while self.entries.len() >= cfg.keep || self.bytes + cost > max_bytes {
            self.evict();
        }
        self.bytes += cost;
        let mut body = String::with_capacity(nick.len() + text.len());
        body.push_str(nick);
        body.push_str(text);
        self.entries.push_back(Stored {
            seq,
            time_ms,
            body: body.into_boxed_str(),
            nick_len: nick.len().min(u8::MAX as usize) as u8,
        });
    }

    fn evict(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.floor = e.seq;
            self.bytes -= Stored::cost(e.nick(), e.text());
        }
        // A full ring that shrinks a lot (TTL) gives the memory back.
        if self.entries.capacity() > 16 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }

    /// Drop entries older than the TTL.
    pub fn expire(&mut self, cfg: &HistoryConfig, now_ms: u64) {
        if cfg.ttl_ms == 0 {
            return;
        }
        while self
            .entries
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.time_ms) >= cfg.ttl_ms)
        {
            self.evict();
        }
    }

    /// What the kept messages count against the byte budget.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sequence number of the room's last message (kept or not).
    pub fn last_seq(&self) -> u64 {
        self.last
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `n` most recent messages, oldest first.
    pub fn recent(&self, n: usize) -> impl Iterator<Item = &Stored> + '_ {
        self.entries
            .iter()
            .skip(self.entries.len().saturating_sub(n))
    }

    /// The messages after sequence `seq`, oldest first, at most `n`; [`Lost`]
    /// when some message after `seq` is no longer kept.
    pub fn after(&self, seq: u64, n: usize) -> Result<impl Iterator<Item = &Stored> + '_, Lost> {
        if seq < self.floor {
            return Err(Lost);
        }
        let start = self.entries.partition_point(|e| e.seq <= seq);
        Ok(self.entries.range(start..).take(n))
    }

    /// How many messages [`RoomHistory::after`] would give without a limit.
    pub fn count_after(&self, seq: u64) -> Result<usize, Lost> {
        if seq < self.floor {
            return Err(Lost);
        }
        Ok(self.entries.len() - self.entries.partition_point(|e| e.seq <= seq))
    }

    /// Bytes held on the heap by this ring (entry slots and bodies).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Stored>()
            + self.entries.iter().map(Stored::heap_bytes).sum::<usize>()
    }

    /// Panic when an invariant is broken (tests, fuzzing).
    #[doc(hidden)]
    pub fn check(&self, cfg: &HistoryConfig) {
        assert!(self.entries.len() <= cfg.keep);
        let bytes: usize = self
            .entries
            .iter()
            .map(|e| Stored::cost(e.nick(), e.text()))
            .sum();
        assert_eq!(bytes, self.bytes, "byte count");
        let mut prev = self.floor;
        for e in &self.entries {
            assert!(e.seq > prev, "increasing, after floor");
            prev = e.seq;
        }
        assert!(self.last >= prev && self.last >= self.floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CFG: HistoryConfig = HistoryConfig {
        keep: 3,
        ttl_ms: 0,
        max_bytes: usize::MAX,
    };

    fn seqs<'a>(it: impl Iterator<Item = &'a Stored>) -> Vec<u64> {
        it.map(|e| e.seq).collect()
    }

    #[test]
    fn stored_message_size() {
        assert_eq!(std::mem::size_of::<Stored>(), 40);
    }

    #[test]
    fn ids_print_and_parse() {
        let id = MsgId {
            epoch: 1_764_496_800_000,
            seq: 42,
        };
        assert_eq!(id.to_string(), "1764496800000-42");
        assert_eq!(MsgId::parse("1764496800000-42"), Some(id));
        let max = MsgId {
            epoch: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(MsgId::parse(&max.to_string()), Some(max));
        for bad in [
            "",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1-+2",
            "99999999999999999999999-1",
        ] {
            assert_eq!(MsgId::parse(bad), None, "{bad}");
        }
        let mut g = IdGen::new(7);
        assert_eq!(g.seq_of(g.id(1)), None, "not handed out yet");
        assert_eq!(g.next_id().to_string(), "7-1");
        assert_eq!(g.seq_of(g.id(1)), Some(1));
        assert_eq!(g.seq_of(MsgId { epoch: 6, seq: 1 }), None, "other process");
    }

    #[test]
    fn ring_keeps_the_last_n_and_knows_what_it_lost() {
        let mut h = RoomHistory::new(10);
        assert_eq!(h.count_after(10), Ok(0));
        assert_eq!(h.count_after(9), Err(Lost), "before the room existed");
        for seq in [11, 13, 14, 20] {
            h.push(&CFG, seq, seq * 100, "ann", "hi", usize::MAX);
            h.check(&CFG);
        }
        assert_eq!(seqs(h.recent(10)), [13, 14, 20]);
        assert_eq!(seqs(h.recent(2)), [14, 20]);
        assert_eq!(seqs(h.after(11, 10).unwrap()), [13, 14, 20]);
        assert_eq!(
            seqs(h.after(12, 10).unwrap()),
            [13, 14, 20],
            "12 was another room's"
        );
        assert_eq!(seqs(h.after(13, 1).unwrap()), [14]);
        assert_eq!(seqs(h.after(20, 10).unwrap()), Vec::<u64>::new());
        assert!(h.after(10, 10).is_err(), "11 was dropped");
        assert_eq!(h.last_seq(), 20);
        let e = h.recent(1).next().unwrap();
        assert_eq!((e.nick(), e.text(), e.time_ms), ("ann", "hi", 2000));
    }

    #[test]
    fn history_off_still_tracks_the_last_message() {
        let off = HistoryConfig { keep: 0, ..CFG };
        let mut h = RoomHistory::new(0);
        h.push(&off, 1, 0, "a", "x", usize::MAX);
        h.push(&off, 2, 0, "a", "x", usize::MAX);
        assert!(h.is_empty());
        assert_eq!(h.count_after(2), Ok(0), "nothing missed");
        assert_eq!(h.count_after(1), Err(Lost));
        assert_eq!(h.heap_bytes(), 0);
    }

    #[test]
    fn ttl_drops_old_messages() {
        let cfg = HistoryConfig {
            keep: 10,
            ttl_ms: 1000,
            ..CFG
        };
        let mut h = RoomHistory::new(0);
        h.push(&cfg, 1, 0, "a", "old", usize::MAX);
        h.push(&cfg, 2, 500, "a", "mid", usize::MAX);
        h.push(&cfg, 3, 1200, "a", "new", usize::MAX);
        assert_eq!(seqs(h.recent(10)), [2, 3]);
        h.expire(&cfg, 2300);
        assert!(h.is_empty());
        assert_eq!(h.count_after(3), Ok(0));
        assert_eq!(h.count_after(2), Err(Lost));
    }

    #[test]
    fn byte_share_bounds_the_ring() {
        let cfg = HistoryConfig { keep: 100, ..CFG };
        let cost = Stored::cost("ann", "0123456789");
        let mut h = RoomHistory::new(0);
        for seq in 1..=10 {
            h.push(&cfg, seq, 0, "ann", "0123456789", 3 * cost);
            h.check(&cfg);
        }
        assert_eq!(seqs(h.recent(100)), [8, 9, 10]);
        assert_eq!(h.bytes(), 3 * cost);
        // A share too small for even one message keeps nothing, and says so.
        h.push(&cfg, 11, 0, "ann", "0123456789", cost - 1);
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.count_after(10), Err(Lost));
        assert_eq!(h.count_after(11), Ok(0));
    }

    proptest! {
        /// Against a model that keeps everything: `after` is either exactly
        /// the model's messages after the id, or `Lost` exactly when one of
        /// them was dropped.
        #[test]
        fn after_matches_a_model(
            gaps in proptest::collection::vec(1u64..4, 0..40),
            keep in 0usize..6,
            probe in 0u64..120,
            n in 0usize..8,
        ) {
            let cfg = HistoryConfig { keep, ..CFG };
            let mut h = RoomHistory::new(0);
            let mut all = Vec::new();
            let mut seq = 0;
            for g in gaps {
                seq += g;
                h.push(&cfg, seq, 0, "n", "t", usize::MAX);
                all.push(seq);
                h.check(&cfg);
            }
            let want: Vec<u64> = all.iter().copied().filter(|&s| s > probe).collect();
            let kept = &all[all.len().saturating_sub(keep)..];
            let complete = want.iter().all(|s| kept.contains(s));
            match h.after(probe, n) {
                Ok(it) => {
                    prop_assert!(complete);
                    let got = seqs(it);
                    prop_assert_eq!(&got[..], &want[..want.len().min(n)]);
                }
                Err(Lost) => prop_assert!(!complete),
            }
            prop_assert_eq!(h.count_after(probe).ok(), complete.then_some(want.len()));
        }
    }
}
