//! The one pseudo-random generator, and the one backoff.
//!
//! Most random numbers in loopchat only have to differ, not be secret:
//! WebSocket masks (RFC 6455 10.3 asks for unpredictability against proxies,
//! not cryptographic strength), `Sec-WebSocket-Key`s, reconnect jitter, cluster
//! node ids. One small generator (xorshift64*) seeded from the OS serves them
//! all, and one backoff formula ("equal jitter": half the delay fixed, half
//! random) spreads reconnecting clients and nodes alike. Secrets (resume
//! tokens) take their bytes straight from the OS ([`crate::sys::os_random`]).

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// xorshift64* (Vigna): 64 bits of state, never zero.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed (0 is replaced: the state must not be zero).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// A generator seeded from [`random_u64`].
    pub fn from_entropy() -> Rng {
        Rng::new(random_u64())
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A WebSocket masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        ((self.next_u64() >> 32) as u32).to_ne_bytes()
    }

    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

thread_local! {
    static THREAD_RNG: std::cell::RefCell<Rng> = std::cell::RefCell::new(Rng::from_entropy());
}

/// Use this thread's generator (seeded from [`random_u64`] on first use), for
/// callers without a generator of their own: one OS read per thread, not per call.
pub fn with_thread_rng<R>(f: impl FnOnce(&mut Rng) -> R) -> R {
    THREAD_RNG.with(|r| f(&mut r.borrow_mut()))
}

/// 64 fresh bits: from the OS ([`crate::sys::os_random`]) where possible, mixed with
/// std's randomly keyed SipHash, the process id and the time, so two calls
/// (or two processes) never agree even without the OS source.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let _ = crate::sys::os_random(&mut buf);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from_le_bytes(buf));
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// `d` with equal jitter: a time in `[d/2, d]`, `rand` picking where.
pub fn jitter(d: Duration, rand: u64) -> Duration {
    let half = d / 2;
    let span = (d - half).as_nanos() as u64;
    half + Duration::from_nanos(if span == 0 { 0 } else { rand % (span + 1) })
}

/// Exponential backoff with equal jitter: attempt `n` (from 1) waits a time in
/// `[d/2, d]` where `d = min(max, base * 2^(n-1))`, so many clients dropped at
/// once do not come back in lockstep.
pub fn backoff(base: Duration, max: Duration, attempt: u32, rand: u64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    jitter(base.saturating_mul(1u32 << exp).min(max), rand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_not_stuck_and_spreads_bits() {
        let mut r = Rng::new(0);
        let mut seen = std::collections::HashSet::new();
        let mut ones = 0u32;
        for _ in 0..10_000 {
            let v = r.next_u64();
            assert!(seen.insert(v));
            ones += v.count_ones();
        }
        // 320,000 expected; a stuck or biased generator is far off.
        assert!((310_000..330_000).contains(&ones), "{ones}");
        let mut buf = [0u8; 13];
        r.fill(&mut buf);
        assert!(buf.iter().any(|&b| b != 0));
        assert_ne!(random_u64(), random_u64());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_equal_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut r = Rng::new(7);
        for attempt in 1..40 {
            let d = base.saturating_mul(1 << (attempt - 1).min(30)).min(max);
            for _ in 0..50 {
                let w = backoff(base, max, attempt, r.next_u64());
                assert!(
                    w >= d / 2 && w <= d,
                    "attempt {attempt}: {w:?} outside [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
        assert_eq!(backoff(base, max, 1, 0), base / 2);
        assert_eq!(
            backoff(base, max, 1, u64::MAX - 1),
            base / 2 + Duration::from_nanos((u64::MAX - 1) % 50_000_001)
        );
        assert_eq!(jitter(Duration::ZERO, 123), Duration::ZERO);
    }
}
