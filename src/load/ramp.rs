//! `loopchat load --ramp`: step the load up (connections or message rate), run
//! one measurement per step, judge each against thresholds (`--slo`), and report
//! the last step that met them: the capacity under those thresholds.
//!
//! Every step is a separate run of the engine with fresh connections, so a step
//! is never measured on connections a failing previous step left behind.

use std::fmt::Write as _;
use std::time::Duration;

use super::report::LoadResult;
use super::{engine, Mode, Plan};

/// What a ramp steps up.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RampWhat {
    /// Receivers in the room (`-c`).
    Connections,
    /// Messages per second in total (`--rate`, open loop).
    Rate,
}

/// A quantity a threshold limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A latency quantile (0.99 for `p99`).
    Quantile(f64),
    /// The largest latency.
    Max,
    /// Lost deliveries over expected ones (a fraction).
    Loss,
}

/// One threshold: `metric < limit` (latency in µs, loss as a fraction).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// As written, e.g. `p99<800ms`.
    pub text: String,
    /// What is limited.
    pub metric: Metric,
    /// The limit, exclusive.
    pub limit: f64,
}

/// Thresholds a step must meet, e.g. `p99<800ms,loss<1%`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// Every term must hold.
    pub terms: Vec<Term>,
}

fn parse_latency_us(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("us").or_else(|| v.strip_suffix("µs")) {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    let x: f64 = num.trim().parse().ok()?;
    (x.is_finite() && x > 0.0).then_some(x * scale)
}

impl Slo {
    /// Parse `TERM,TERM,...` with TERM one of `pNN<DURATION` (`p50`, `p90`,
    /// `p99`, `p99.9`, any quantile), `max<DURATION` or `loss<PERCENT%`;
    /// durations in `us`, `ms` or `s`.
    pub fn parse(spec: &str) -> Result<Slo, String> {
        let mut terms = Vec::new();
        for raw in spec.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let bad = || {
                format!(
                    "bad threshold `{raw}` in --slo: use pNN<DURATION, max<DURATION or \
                     loss<PERCENT%, e.g. 'p99<800ms,loss<1%'"
                )
            };
            let (name, value) = raw.split_once('<').ok_or_else(bad)?;
            let name = name.trim().to_ascii_lowercase();
            let (metric, limit) = if name == "loss" {
                let v = value.trim();
                let pct: f64 = v
                    .strip_suffix('%')
                    .ok_or_else(bad)?
                    .trim()
                    .parse()
                    .map_err(|_| bad())?;
                if !(pct.is_finite() && pct > 0.0 && pct <= 100.0) {
                    return Err(bad());
                }
                (Metric::Loss, pct / 100.0)
            } else if name == "max" {
                (Metric::Max, parse_latency_us(value).ok_or_else(bad)?)
            } else if let Some(q) = name.strip_prefix('p') {
                let q: f64 = q.parse().map_err(|_| bad())?;
                if !(q > 0.0 && q < 100.0) {
                    return Err(bad());
                }
                (
                    Metric::Quantile(q / 100.0),
                    parse_latency_us(value).ok_or_else(bad)?,
                )
            } else {
                return Err(bad());
            };
            terms.push(Term {
                text: raw.to_string(),
                metric,
                limit,
            });
        }
        if terms.is_empty() {
            return Err("--slo has no threshold (e.g. 'p99<800ms,loss<1%')".into());
        }
        Ok(Slo { terms })
    }

    /// Whether a loss threshold is given (then lost deliveries are judged by it).
    pub fn judges_loss(&self) -> bool {
        self.terms.iter().any(|t| t.metric == Metric::Loss)
    }

    /// The terms `r` breaks, each with the measured value.
    pub fn broken(&self, r: &LoadResult) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.terms {
            let measured = match t.metric {
                Metric::Loss => r.lost().max(0) as f64 / r.expected.max(1) as f64,
                Metric::Max => match &r.hist {
                    Some(h) if !h.is_empty() => h.max() as f64,
                    _ => f64::INFINITY,
                },
                Metric::Quantile(q) => match &r.hist {
                    Some(h) if !h.is_empty() => h.value_at_quantile(q) as f64,
                    _ => f64::INFINITY,
                },
            };
            if measured >= t.limit {
                let shown = match t.metric {
                    Metric::Loss => format!("{:.2}%", measured * 100.0),
                    _ if measured.is_infinite() => "no samples".into(),
                    _ => format_us(measured),
                };
                out.push(format!("{} (measured {shown})", t.text));
            }
        }
        out
    }
}

/// A latency in µs the way people read it: `850us`, `12.3ms`, `1.20s`.
pub fn format_us(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0}us")
    } else if us < 1e6 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// The flags of a ramp, checked.
#[derive(Debug, Clone)]
pub struct RampPlan {
    /// What is stepped.
    pub what: RampWhat,
    /// First value.
    pub start: f64,
    /// Increment per step.
    pub step: f64,
    /// Last value tried (inclusive).
    pub limit: f64,
    /// Measuring time of each step.
    pub step_duration: Duration,
    /// The thresholds.
    pub slo: Slo,
}

impl RampPlan {
    /// The values stepped through, in order.
    pub fn values(&self) -> Vec<f64> {
        let n = ((self.limit - self.start) / self.step).floor() as usize + 1;
        (0..n)
            .map(|i| self.start + self.step * i as f64)
            .filter(|v| *v <= self.limit + 1e-9)
            .collect()
    }

    /// The unit of a step value, for text.
    pub fn unit(&self) -> &'static str {
        match self.what {
            RampWhat::Connections => "connections",
            RampWhat::Rate => "messages/s",
        }
    }
}

/// One step's outcome.
#[derive(Debug, Clone)]
pub struct Step {
    /// The stepped value (connections or messages/s).
    pub value: f64,
    /// The run.
    pub result: LoadResult,
    /// Why it failed (broken thresholds, then other problems); empty: it passed.
    pub failures: Vec<String>,
    /// Seconds from the start of the ramp to the start of this step.
    pub offset: f64,
}

impl Step {
    /// Met every threshold and had no other problem.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// A finished ramp.
#[derive(Debug, Clone)]
pub struct RampResult {
    /// The plan it ran.
    pub plan: RampPlan,
    /// Steps run, in order; the last failed unless the limit was reached.
    pub steps: Vec<Step>,
}

impl RampResult {
    /// The last step that met the thresholds before the first that did not.
    pub fn capacity(&self) -> Option<&Step> {
        self.steps.iter().take_while(|s| s.passed()).last()
    }
}

/// Check the ramp flags against the base plan.
pub fn plan_ramp(base: &Plan, what: RampWhat) -> Result<RampPlan, String> {
    let a = &base.args;
    if !matches!(base.mode, Mode::Broadcast | Mode::Latency) {
        return Err("--ramp needs --mode broadcast or latency".into());
    }
    let start = a.ramp_start;
    let step = a.ramp_step;
    let limit = a.ramp_limit;
    for (flag, v) in [
        ("--ramp-start", start),
        ("--ramp-step", step),
        ("--ramp-limit", limit),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("{flag} must be positive, not {v}"));
        }
    }
    if limit < start {
        return Err(format!(
            "--ramp-limit {limit} is below --ramp-start {start}"
        ));
    }
    if (limit - start) / step > 1000.0 {
        return Err("a ramp of more than 1000 steps: raise --ramp-step".into());
    }
    if what == RampWhat::Connections && (start.fract() != 0.0 || step.fract() != 0.0) {
        return Err("a connections ramp steps by whole connections".into());
    }
    if a.step_duration.is_zero() {
        return Err("--step-duration must be positive".into());
    }
    Ok(RampPlan {
        what,
        start,
        step,
        limit,
        step_duration: a.step_duration,
        slo: Slo::parse(&a.slo)?,
    })
}

/// Run every step until one fails or the limit is reached. `progress` is told
/// about each finished step.
pub fn run_ramp(
    base: &Plan,
    ramp: &RampPlan,
    mut progress: impl FnMut(&Step),
) -> Result<RampResult, String> {
    let mut steps: Vec<Step> = Vec::new();
    let mut offset = 0.0;
    for value in ramp.values() {
        let mut args = base.args.clone();
        args.ramp = None;
        args.duration = ramp.step_duration;
        match ramp.what {
            RampWhat::Connections => args.receivers = value as usize,
            RampWhat::Rate => args.rate = Some(value),
        }
        let plan = Plan::new(args)?;
        super::check_descriptors(plan.max_open())?;
        let result = engine::run(&plan).map_err(|e| e.to_string())?;
        let mut failures = ramp.slo.broken(&result);
        failures.extend(result.problems_judging_loss(!ramp.slo.judges_loss()));
        let elapsed = result.timeline.last().map_or(0.0, |s| s.t);
        let step = Step {
            value,
            result,
            failures,
            offset,
        };
        offset += elapsed.max(ramp.step_duration.as_secs_f64());
        progress(&step);
        let failed = !step.passed();
        steps.push(step);
        if failed {
            break;
        }
    }
    Ok(RampResult {
        plan: ramp.clone(),
        steps,
    })
}

impl RampResult {
    /// The step table and the verdict, as text.
    pub fn to_text(&self) -> String {
        let p = &self.plan;
        let mut s = String::new();
        let slo: Vec<&str> = p.slo.terms.iter().map(|t| t.text.as_str()).collect();
        let _ = writeln!(
            s,
            "ramp of {} from {} by {} to {}, {:?} per step, thresholds {}",
            p.unit(),
            p.start,
            p.step,
            p.limit,
            p.step_duration,
            slo.join(",")
        );
        let _ = writeln!(
            s,
            "{:>10}  {:>9} {:>9} {:>9} {:>9}  {:>9} {:>12} {:>7}  verdict",
            "value", "p50", "p90", "p99", "max", "msgs/s", "deliveries/s", "loss"
        );
        for st in &self.steps {
            let r = &st.result;
            let l = r.latency.unwrap_or_default();
            let _ = writeln!(
                s,
                "{:>10}  {:>9} {:>9} {:>9} {:>9}  {:>9.0} {:>12.0} {:>6.2}%  {}",
                st.value,
                format_us(l.p50 as f64),
                format_us(l.p90 as f64),
                format_us(l.p99 as f64),
                format_us(l.max as f64),
                r.msgs_per_sec,
                r.deliveries_per_sec,
                r.lost().max(0) as f64 * 100.0 / r.expected.max(1) as f64,
                if st.passed() {
                    "ok".to_string()
                } else {
                    format!("FAILED: {}", st.failures.join("; "))
                }
            );
        }
        let _ = writeln!(s, "{}", self.verdict());
        s
    }

    /// One sentence: the capacity, or that even the first step failed.
    pub fn verdict(&self) -> String {
        let slo: Vec<&str> = self
            .plan
            .slo
            .terms
            .iter()
            .map(|t| t.text.as_str())
            .collect();
        let slo = slo.join(",");
        match (self.capacity(), self.steps.last()) {
            (None, _) => format!(
                "capacity: none: the first step ({} {}) already failed {slo}",
                self.plan.start,
                self.plan.unit()
            ),
            (Some(c), Some(last)) if last.passed() => format!(
                "capacity: at least {} {} (every step up to --ramp-limit met {slo})",
                c.value,
                self.plan.unit()
            ),
            (Some(c), _) => format!(
                "capacity: {} {} (the last step that met {slo}; the next failed)",
                c.value,
                self.plan.unit()
            ),
        }
    }

    /// One JSON object: the plan, the capacity and every step's result.
    pub fn to_json(&self) -> String {
        let p = &self.plan;
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"ramp\":\"{}\",\"start\":{},\"step\":{},\"limit\":{},\"step_secs\":{},\"slo\":[",
            p.unit(),
            p.start,
            p.step,
            p.limit,
            p.step_duration.as_secs_f64()
        );
        for (i, t) in p.slo.terms.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&super::report::json_str(&t.text));
        }
        s.push_str("],\"capacity\":");
        match self.capacity() {
            Some(c) => {
                let _ = write!(s, "{}", c.value);
            }
            None => s.push_str("null"),
        }
        s.push_str(",\"steps\":[");
        for (i, st) in self.steps.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"value\":{},\"passed\":{},\"failures\":[",
                st.value,
                st.passed()
            );
            for (j, f) in st.failures.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                s.push_str(&super::report::json_str(f));
            }
            let _ = write!(s, "],\"result\":{}}}", st.result.to_json());
        }
        s.push_str("]}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    #[test]
    fn thresholds_parse() {
        let slo = Slo::parse("p99<800ms, loss<1%,max<2s,p99.9<1500us").unwrap();
        assert_eq!(slo.terms.len(), 4);
        assert_eq!(slo.terms[0].metric, Metric::Quantile(0.99));
        assert_eq!(slo.terms[0].limit, 800_000.0);
        assert_eq!(slo.terms[1].metric, Metric::Loss);
        assert!((slo.terms[1].limit - 0.01).abs() < 1e-12);
        assert_eq!(
            slo.terms[2],
            Term {
                text: "max<2s".into(),
                metric: Metric::Max,
                limit: 2e6
            }
        );
        assert!(matches!(slo.terms[3].metric, Metric::Quantile(q) if (q - 0.999).abs() < 1e-12));
        assert_eq!(slo.terms[3].limit, 1500.0);
        for bad in [
            "", "p99", "p99<800", "p100<1s", "loss<1", "loss<0%", "lag<1s", "p99>1s", "p99<-1ms",
        ] {
            assert!(Slo::parse(bad).is_err(), "{bad}");
        }
    }

    fn result(latencies_us: &[u64], expected: u64, delivered: u64) -> LoadResult {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
        for &l in latencies_us {
            h.record(l).unwrap();
        }
        LoadResult {
            hist: Some(h),
            expected,
            delivered,
            ..LoadResult::default()
        }
    }

    #[test]
    fn steps_are_judged_by_every_term() {
        let slo = Slo::parse("p99<800ms,loss<1%").unwrap();
        let fast: Vec<u64> = (1..=1000).map(|i| i * 100).collect(); // up to 100 ms
        assert!(slo.broken(&result(&fast, 1000, 1000)).is_empty());
        assert!(
            slo.broken(&result(&fast, 1000, 995)).is_empty(),
            "0.5% loss is under 1%"
        );
        let lossy = slo.broken(&result(&fast, 1000, 980));
        assert_eq!(lossy, vec!["loss<1% (measured 2.00%)".to_string()]);
        let mut slow = fast.clone();
        slow.extend(std::iter::repeat(900_000).take(20)); // 2% at 900 ms
        let broken = slo.broken(&result(&slow, 1020, 1020));
        assert_eq!(broken.len(), 1, "{broken:?}");
        assert!(
            broken[0].starts_with("p99<800ms (measured 900"),
            "{broken:?}"
        );
        // No samples at all cannot meet a latency threshold.
        assert!(slo.broken(&result(&[], 0, 0))[0].contains("no samples"));
    }

    #[test]
    fn capacity_is_the_last_step_before_the_first_failure() {
        let plan = RampPlan {
            what: RampWhat::Rate,
            start: 100.0,
            step: 100.0,
            limit: 350.0,
            step_duration: Duration::from_secs(1),
            slo: Slo::parse("p99<1s").unwrap(),
        };
        assert_eq!(plan.values(), vec![100.0, 200.0, 300.0]);
        let step = |value: f64, ok: bool| Step {
            value,
            result: LoadResult::default(),
            failures: if ok { vec![] } else { vec!["x".into()] },
            offset: 0.0,
        };
        let mut r = RampResult {
            plan,
            steps: vec![step(100.0, true), step(200.0, true), step(300.0, false)],
        };
        assert_eq!(r.capacity().map(|s| s.value), Some(200.0));
        assert!(
            r.verdict().starts_with("capacity: 200 messages/s"),
            "{}",
            r.verdict()
        );
        assert!(r.to_json().contains("\"capacity\":200"));
        r.steps = vec![step(100.0, false)];
        assert!(r.capacity().is_none());
        assert!(r.verdict().contains("first step"), "{}", r.verdict());
        assert!(r.to_json().contains("\"capacity\":null"));
        r.steps = vec![step(100.0, true), step(200.0, true), step(300.0, true)];
        assert!(r.verdict().contains("at least 300"), "{}", r.verdict());
    }
}
