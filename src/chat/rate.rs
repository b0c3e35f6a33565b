//! Per-connection rate limiting: a token bucket in integer milli-tokens.
//!
//! `rate` commands per second refill the bucket, which holds a burst of `rate`
//! commands. A command over the rate is refused (`ERR rate-limited`) **and still
//! drains the bucket**, into debt: a client that keeps sending while refused
//! digs deeper instead of getting a fresh token every `1/rate` seconds. When the
//! debt exceeds one full burst — more than `rate` refused commands that the
//! refill did not cover — the connection is abusive and the hub closes it with
//! 1008. A client that slows down to the rate pays the debt back and recovers.
//!
//! Commands are charged by when they arrived, not when the server got to them:
//! the caller passes the earliest time a command can have arrived (when the
//! server's loop was stalled, the moment the stall began) and the limiter's
//! clock walks from there at the allowed rate, so a backlog that built up
//! while the server was busy or stopped is charged as it was sent.
//!
//! The rate lives in the config, not here, so each connection stores 16 bytes.

/// Milli-tokens per command: the refill is `rate` milli-tokens per millisecond,
/// which keeps the arithmetic exact in integers.
const COST: i64 = 1000;

/// The outcome of [`RateLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    /// Execute the command.
    Allow,
    /// Refuse the command with `ERR rate-limited`.
    Limited,
    /// Refuse it and close the connection (1008): sustained abuse.
    Abuse,
}

/// A token bucket; see the module docs for the abuse rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimiter {
    /// Milli-tokens; negative while in debt.
    tokens: i64,
    /// The time of the last refill.
    last_ms: u64,
}

impl RateLimiter {
    /// A full bucket at `now_ms`.
    pub fn new(rate: u32, now_ms: u64) -> Self {
        RateLimiter {
            tokens: capacity(rate),
            last_ms: now_ms,
        }
    }

    /// Account for one command costing `cost` tokens (clamped to 1..=`rate`,
    /// so any command fits a full bucket) at `now_ms` under `rate` commands
    /// per second (0 = unlimited). An allowed command takes `cost` tokens; a
    /// refused one takes one, whatever it would have cost: refusing is cheap,
    /// and the debt measures how often the client ignores refusals. A clock
    /// that goes backwards refills nothing.
    pub fn check(&mut self, rate: u32, cost: u32, now_ms: u64) -> RateDecision {
        self.check_arrived(rate, cost, now_ms, now_ms)
    }

    /// [`check`](Self::check) for a command that arrived no earlier than
    /// `earliest_ms` and is handled at `now_ms`. It is charged at the later of
    /// `earliest_ms` and the previous charge plus its cost's worth of the rate,
    /// never after `now_ms`: commands read together after a stall are spread
    /// over the stall at the rate a client may send, and only what exceeds
    /// that rate is refused.
    pub fn check_arrived(
        &mut self,
        rate: u32,
        cost: u32,
        earliest_ms: u64,
        now_ms: u64,
    ) -> RateDecision {
        if rate == 0 {
            return RateDecision::Allow;
        }
        let cap = capacity(rate);
        let cost = cost.clamp(1, rate);
        let step = u64::from(cost) * 1000 / u64::from(rate);
        let at = self
            .last_ms
            .saturating_add(step)
            .max(earliest_ms)
            .min(now_ms);
        // A second of refill already fills any bucket, so clamping the elapsed
        // time first keeps the product far from overflow.
        let elapsed = at.saturating_sub(self.last_ms).min(1000) as i64;
        self.last_ms = self.last_ms.max(at);
        self.tokens = (self.tokens + elapsed * i64::from(rate)).min(cap);
        let price = i64::from(cost) * COST;
        let allowed = self.tokens >= price;
        let charge = if allowed { price } else { COST };
        // The floor only bounds the value; the connection is closed long before.
        self.tokens = (self.tokens - charge).max(-cap - COST);
        if allowed {
            RateDecision::Allow
        } else if self.tokens < -cap {
            RateDecision::Abuse
        } else {
            RateDecision::Limited
        }
    }
}

fn capacity(rate: u32) -> i64 {
    i64::from(rate) * COST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_when_zero() {
        let mut r = RateLimiter::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(r.check(0, 1, 0), RateDecision::Allow);
        }
    }

    #[test]
    fn burst_then_limited_then_abuse() {
        let mut r = RateLimiter::new(5, 1000);
        for _ in 0..5 {
            assert_eq!(r.check(5, 1, 1000), RateDecision::Allow);
        }
        for _ in 0..5 {
            assert_eq!(r.check(5, 1, 1000), RateDecision::Limited);
        }
        assert_eq!(r.check(5, 1, 1000), RateDecision::Abuse);
    }

    #[test]
    fn refill_is_exact_and_capped() {
        let mut r = RateLimiter::new(5, 0);
        for _ in 0..5 {
            assert_eq!(r.check(5, 1, 0), RateDecision::Allow);
        }
        // 5 per second = one token per 200 ms.
        assert_eq!(r.check(5, 1, 199), RateDecision::Limited);
        // 995 milli-tokens were short and are now owed; 401 ms later 2005 came in.
        assert_eq!(r.check(5, 1, 600), RateDecision::Allow);
        // A long pause refills exactly one burst, not more.
        let mut r = RateLimiter::new(5, 0);
        for t in 0..5 {
            assert_eq!(r.check(5, 1, 1_000_000 + t), RateDecision::Allow);
        }
        assert_eq!(r.check(5, 1, 1_000_004), RateDecision::Limited);
    }

    #[test]
    fn steady_at_rate_is_never_limited() {
        let mut r = RateLimiter::new(10, 0);
        for i in 0..10_000u64 {
            assert_eq!(r.check(10, 1, i * 100), RateDecision::Allow);
        }
    }

    #[test]
    fn sustained_excess_is_abuse_eventually() {
        let mut r = RateLimiter::new(10, 0);
        let mut closed_at = None;
        // 20 per second against a limit of 10.
        for i in 0..1000u64 {
            if r.check(10, 1, i * 50) == RateDecision::Abuse {
                closed_at = Some(i);
                break;
            }
        }
        assert!(closed_at.is_some());
    }

    #[test]
    fn expensive_commands_take_their_cost_and_refusals_take_one() {
        let mut r = RateLimiter::new(10, 0);
        assert_eq!(r.check(10, 4, 0), RateDecision::Allow);
        assert_eq!(r.check(10, 4, 0), RateDecision::Allow);
        // Two tokens left: a third costs four and is refused, taking one.
        assert_eq!(r.check(10, 4, 0), RateDecision::Limited);
        assert_eq!(r.check(10, 1, 0), RateDecision::Allow);
        assert_eq!(r.check(10, 1, 0), RateDecision::Limited);
        // A cost over the burst is clamped to it: a full bucket always pays.
        let mut r = RateLimiter::new(3, 0);
        assert_eq!(r.check(3, 100, 0), RateDecision::Allow);
        assert_eq!(r.check(3, 1, 0), RateDecision::Limited);
    }

    #[test]
    fn a_backlog_from_a_stall_is_charged_as_it_was_sent() {
        // 25 a second for 4.5 s while the server was stopped, read at once.
        let mut r = RateLimiter::new(50, 0);
        for _ in 0..112 {
            assert_eq!(r.check_arrived(50, 1, 0, 4500), RateDecision::Allow);
        }
        // The same backlog without the stall allowance overruns the bucket.
        let mut r = RateLimiter::new(50, 0);
        let refused = (0..112)
            .filter(|_| r.check(50, 1, 4500) != RateDecision::Allow)
            .count();
        assert_eq!(refused, 62);
        // A stall is no licence to exceed the rate: 200 in a one-second stall
        // get the burst plus one second's worth.
        let mut r = RateLimiter::new(50, 0);
        let allowed = (0..200)
            .filter(|_| r.check_arrived(50, 1, 1000, 2000) == RateDecision::Allow)
            .count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn clock_going_backwards_does_not_refill() {
        let mut r = RateLimiter::new(1, 10_000);
        assert_eq!(r.check(1, 1, 10_000), RateDecision::Allow);
        assert_eq!(r.check(1, 1, 0), RateDecision::Limited);
    }
}
