//! A coarse timer wheel: connections are filed under the tick at which they next
//! need a look (ping due, idle limit, handshake or close deadline). Firing a slot
//! hands back the entries; the loop re-checks each connection's real state and
//! files it again if needed, so entries are never removed early and a stale entry
//! (a closed connection, a reused slab key, a superseded deadline) costs one compare.

/// Milliseconds per tick: deadlines are accurate to one tick.
pub(super) const TICK_MS: u64 = 100;
const SLOTS: usize = 512;

/// One filed connection: its slab key and the tick it asked for. The connection
/// remembers the tick of its one live entry; an entry whose tick differs is stale
/// (superseded by an earlier deadline, or its key was reused) and is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    /// Slab key of the connection.
    pub key: u32,
    /// The deadline tick requested when filed (before clamping).
    pub tick: u32,
}

/// Timer wheel with `SLOTS` slots of one tick each. Deadlines further than the
/// wheel's span are filed in the farthest slot and re-filed when it fires.
pub(super) struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// The next tick not yet fired.
    next: u64,
    len: usize,
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new()
    }
}

impl Wheel {
    /// An empty wheel starting at tick 0.
    pub(super) fn new() -> Self {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            next: 0,
            len: 0,
        }
    }

    /// File `entry` to fire at `tick` (clamped into the wheel's span).
    pub(super) fn insert(&mut self, tick: u64, entry: Entry) {
        let tick = tick.clamp(self.next, self.next + SLOTS as u64 - 1);
        self.slots[(tick % SLOTS as u64) as usize].push(entry);
        self.len += 1;
    }

    /// True when nothing is filed.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Move every entry due at or before `now` into `out` (which is cleared first).
    pub(super) fn expire(&mut self, now: u64, out: &mut Vec<Entry>) {
        out.clear();
        // Never walk more than one lap: after a long stall every slot is due once.
        let end = now.min(self.next + SLOTS as u64 - 1);
        while self.next <= end {
            let slot = &mut self.slots[(self.next % SLOTS as u64) as usize];
            self.len -= slot.len();
            out.append(slot);
            self.next += 1;
        }
        if now >= self.next {
            self.next = now + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: u32) -> Entry {
        Entry { key, tick: 0 }
    }

    #[test]
    fn fires_at_tick_and_not_before() {
        let mut w = Wheel::new();
        let mut out = Vec::new();
        w.insert(5, e(1));
        w.insert(7, e(2));
        w.expire(4, &mut out);
        assert!(out.is_empty());
        w.expire(5, &mut out);
        assert_eq!(out, vec![e(1)]);
        w.expire(10, &mut out);
        assert_eq!(out, vec![e(2)]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_next() {
        let mut w = Wheel::new();
        let mut out = Vec::new();
        w.expire(100, &mut out);
        w.insert(3, e(9));
        w.expire(101, &mut out);
        assert_eq!(out, vec![e(9)]);
    }

    #[test]
    fn far_deadlines_are_clamped_and_fire_within_a_lap() {
        let mut w = Wheel::new();
        let mut out = Vec::new();
        w.insert(10 * SLOTS as u64, e(1));
        w.expire(SLOTS as u64 - 2, &mut out);
        assert!(out.is_empty());
        w.expire(SLOTS as u64 - 1, &mut out);
        assert_eq!(out, vec![e(1)]);
    }

    #[test]
    fn a_long_stall_fires_everything_once() {
        let mut w = Wheel::new();
        let mut out = Vec::new();
        for k in 0..SLOTS as u32 {
            w.insert(k as u64, e(k));
        }
        w.expire(100 * SLOTS as u64, &mut out);
        assert_eq!(out.len(), SLOTS);
        assert!(w.is_empty());
    }
}
