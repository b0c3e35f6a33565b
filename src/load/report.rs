//! The result of a load run, printed as text or as one hand-written JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Summarise a histogram of microseconds; None when it is empty.
    pub fn from_hist(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        Some(Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        })
    }
}

/// What `--server-pid` observed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerStats {
    /// Server CPU seconds during the measurement (idle: during connecting).
    pub cpu_secs: f64,
    /// `cpu_secs` over the measured wall time, in percent of one core.
    pub cpu_pct: f64,
    /// RSS before the first connection.
    pub rss_start: u64,
    /// RSS once every connection was up.
    pub rss_up: u64,
    /// RSS at the end.
    pub rss_end: u64,
    /// (rss_up - rss_start) / connections up, in bytes.
    pub rss_per_conn: f64,
    /// Deliveries per second of server CPU (broadcast, latency); echoes for
    /// echo, connect-message-close cycles for churn, resumes for resume.
    pub deliveries_per_cpu_sec: f64,
    /// Resume: server CPU seconds while the sessions were first taken (the
    /// same run's baseline: fresh connections, each a new guest joining its
    /// room and getting a session).
    pub connect_cpu_secs: f64,
    /// Resume: connections taken per second of server CPU (the baseline).
    pub connects_per_cpu_sec: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Mode name.
    pub mode: String,
    /// Protocol name.
    pub protocol: String,
    /// Target URL.
    pub url: String,
    /// Connections planned (at once).
    pub target_connections: usize,
    /// Handshakes completed over the run.
    pub opened: u64,
    /// Connections open at once at the peak.
    pub up_peak: u64,
    /// Seconds from the first connect to the last planned connection up.
    pub connect_secs: f64,
    /// Handshakes completed per second while connecting.
    pub connect_rate: f64,
    /// Failed connects (refused, reset, timed out before the 101).
    pub connect_errors: u64,
    /// Handshakes answered with something other than a valid 101.
    pub handshake_failures: u64,
    /// Connections the server ended, by close code (`eof`: no close frame; `error`: reset).
    pub closes: BTreeMap<String, u64>,
    /// `ERR` lines from a loopchat server (e.g. `rate-limited`).
    pub server_errors: u64,
    /// Of those, `ERR rate-limited`.
    pub rate_limited: u64,
    /// Messages sent (whole run).
    pub sent: u64,
    /// Deliveries at receivers (whole run).
    pub delivered: u64,
    /// sent × receivers (broadcast, latency).
    pub expected: u64,
    /// Closed-loop messages given up on after `--timeout`; resume: resumes
    /// not answered when a round stalled for `--timeout`.
    pub timed_out: u64,
    /// Resume: rounds of drop and resume run.
    pub rounds: u32,
    /// Resume with `--fresh`: the baseline (new v1 connections, not resumes).
    pub fresh: bool,
    /// Resume: sessions dropped, summed over the rounds (each should come back).
    pub resume_expected: u64,
    /// Resume: resumes answered with `RESUMED` (and the missed messages).
    pub resumed: u64,
    /// Resume: connections that got no `SESSION` (the server did not offer `resume`).
    pub no_session: u64,
    /// Resume: tokens refused with `ERR bad-session`.
    pub resume_failures: u64,
    /// Resume: resumes per second of wall time, from each round's drop to
    /// its last answer.
    pub resumes_per_sec: f64,
    /// Length of the measurement in seconds.
    pub measure_secs: f64,
    /// Messages sent per second while measuring.
    pub msgs_per_sec: f64,
    /// Deliveries per second while measuring.
    pub deliveries_per_sec: f64,
    /// Payload MB/s received back (echo).
    pub mb_per_sec: f64,
    /// Completed connect-message-close cycles per second (churn).
    pub cycles_per_sec: f64,
    /// Latency (delivery, echo round trip, or churn cycle), microseconds.
    pub latency: Option<Latency>,
    /// The generator's CPU use while measuring, percent of one core.
    pub gen_cpu_pct: f64,
    /// The server process, when `--server-pid` was given.
    pub server: Option<ServerStats>,
    /// Every latency sample of the measurement (what `latency` summarises).
    pub hist: Option<Histogram<u64>>,
    /// One sample per second of the whole run (connecting and draining too).
    pub timeline: Vec<Sample>,
}

/// One second of a run, as the progress line shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the generator started.
    pub t: f64,
    /// Connections open.
    pub open: u64,
    /// Messages sent in this second.
    pub sent: u64,
    /// Deliveries (echoes, cycles) in this second.
    pub delivered: u64,
    /// Latency of this second's deliveries, when there were any.
    pub latency: Option<Latency>,
}

impl LoadResult {
    /// Deliveries missing at the end (broadcast, latency).
    pub fn lost(&self) -> i64 {
        self.expected as i64 - self.delivered as i64
    }

    /// What makes this run a failure, one sentence each (empty: it passed):
    /// nothing opened, connections that failed to open or were ended early,
    /// deliveries lost or given up on, `ERR` lines; with a hint when the server
    /// was rate limiting.
    pub fn problems(&self) -> Vec<String> {
        self.problems_judging_loss(true)
    }

    /// [`Self::problems`], leaving out lost and timed-out deliveries when
    /// `loss` is false (a ramp judges those by its `loss<X%` threshold).
    pub fn problems_judging_loss(&self, loss: bool) -> Vec<String> {
        let mut p = Vec::new();
        if self.opened == 0 {
            p.push("no connection could be opened (is the server running at that URL?)".into());
        }
        let failed = self.connect_errors + self.handshake_failures;
        if failed > 0 {
            p.push(format!(
                "{failed} connections failed to open ({} connect errors, {} handshake failures)",
                self.connect_errors, self.handshake_failures
            ));
        }
        let lost = if loss { self.lost() } else { 0 };
        if lost > 0 {
            p.push(format!(
                "{lost} of {} deliveries lost ({:.2}%)",
                self.expected,
                lost as f64 * 100.0 / self.expected.max(1) as f64
            ));
        }
        if loss && self.timed_out > 0 && self.mode != "resume" {
            p.push(format!(
                "{} messages not delivered everywhere within --timeout",
                self.timed_out
            ));
        }
        if self.resume_failures > 0 {
            p.push(format!(
                "{} resumes refused (ERR bad-session)",
                self.resume_failures
            ));
        }
        if self.mode == "resume" && self.resumed < self.resume_expected {
            p.push(format!(
                "{} of {} dropped sessions not resumed",
                self.resume_expected - self.resumed,
                self.resume_expected
            ));
        }
        if self.no_session > 0 {
            p.push(format!(
                "{} connections got no session: the server does not offer resume \
                 (--session-ttl 0, or a cluster node)",
                self.no_session
            ));
        }
        let ended: u64 = self.closes.values().sum();
        if ended > 0 {
            p.push(format!(
                "{ended} connections ended early ({})",
                self.closes_text()
            ));
        }
        if self.server_errors > 0 {
            p.push(format!(
                "{} ERR lines from the server ({} rate-limited)",
                self.server_errors, self.rate_limited
            ));
        }
        if self.rate_limited > 0 || self.closes.contains_key("1008") {
            p.push(
                "the server limits each connection's message rate (ERR rate-limited, close \
                 1008): start it with --rate-limit 0 for load tests"
                    .into(),
            );
        }
        p
    }

    fn closes_text(&self) -> String {
        let closes: Vec<String> = self
            .closes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if closes.is_empty() {
            "none".into()
        } else {
            closes.join(" ")
        }
    }

    /// One JSON object (no trailing newline). Every field is always present,
    /// so scripts need not know which apply to the mode.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        let mut first = true;
        let mut field = |s: &mut String, k: &str, v: String| {
            if !first {
                s.push(',');
            }
            first = false;
            let _ = write!(s, "\"{k}\":{v}");
        };
        field(&mut s, "mode", json_str(&self.mode));
        field(&mut s, "protocol", json_str(&self.protocol));
        field(&mut s, "url", json_str(&self.url));
        field(
            &mut s,
            "target_connections",
            self.target_connections.to_string(),
        );
        field(&mut s, "opened", self.opened.to_string());
        field(&mut s, "up_peak", self.up_peak.to_string());
        field(&mut s, "connect_secs", num(self.connect_secs));
        field(&mut s, "connect_rate", num(self.connect_rate));
        field(&mut s, "connect_errors", self.connect_errors.to_string());
        field(
            &mut s,
            "handshake_failures",
            self.handshake_failures.to_string(),
        );
        let closes: Vec<String> = self
            .closes
            .iter()
            .map(|(k, v)| format!("{}:{v}", json_str(k)))
            .collect();
        field(&mut s, "closes", format!("{{{}}}", closes.join(",")));
        field(&mut s, "server_errors", self.server_errors.to_string());
        field(&mut s, "rate_limited", self.rate_limited.to_string());
        field(&mut s, "sent", self.sent.to_string());
        field(&mut s, "delivered", self.delivered.to_string());
        field(&mut s, "expected", self.expected.to_string());
        field(&mut s, "lost", self.lost().to_string());
        field(&mut s, "timed_out", self.timed_out.to_string());
        field(&mut s, "measure_secs", num(self.measure_secs));
        field(&mut s, "msgs_per_sec", num(self.msgs_per_sec));
        field(&mut s, "deliveries_per_sec", num(self.deliveries_per_sec));
        field(&mut s, "mb_per_sec", num(self.mb_per_sec));
        field(&mut s, "cycles_per_sec", num(self.cycles_per_sec));
        field(&mut s, "rounds", self.rounds.to_string());
        field(&mut s, "fresh", self.fresh.to_string());
        field(&mut s, "resume_expected", self.resume_expected.to_string());
        field(&mut s, "resumed", self.resumed.to_string());
        field(&mut s, "resume_failures", self.resume_failures.to_string());
        field(&mut s, "no_session", self.no_session.to_string());
        field(&mut s, "resumes_per_sec", num(self.resumes_per_sec));
        let lat = match &self.latency {
            Some(l) => format!(
                "{{\"count\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{},\"mean\":{}}}",
                l.count,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                num(l.mean)
            ),
            None => "null".into(),
        };
        field(&mut s, "latency_us", lat);
        field(&mut s, "gen_cpu_pct", num(self.gen_cpu_pct));
        let server = match &self.server {
            Some(v) => format!(
                "{{\"cpu_secs\":{},\"cpu_pct\":{},\"rss_start\":{},\"rss_up\":{},\"rss_end\":{},\"rss_per_conn\":{},\"deliveries_per_cpu_sec\":{},\"connect_cpu_secs\":{},\"connects_per_cpu_sec\":{}}}",
                num(v.cpu_secs),
                num(v.cpu_pct),
                v.rss_start,
                v.rss_up,
                v.rss_end,
                num(v.rss_per_conn),
                num(v.deliveries_per_cpu_sec),
                num(v.connect_cpu_secs),
                num(v.connects_per_cpu_sec)
            ),
            None => "null".into(),
        };
        field(&mut s, "server", server);
        s.push('}');
        s
    }

    /// A human-readable summary, one fact per line, with only the figures that
    /// mean something in this mode (no `0 MB/s` for a chat run).
    pub fn to_text(&self) -> String {
        let mode = self.mode.as_str();
        let chat = matches!(mode, "broadcast" | "latency");
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mode {} ({}) against {}",
            self.mode, self.protocol, self.url
        );
        if mode == "churn" {
            let _ = writeln!(
                s,
                "connections: {} slots, {} handshakes",
                self.target_connections, self.opened
            );
        } else {
            let _ = writeln!(
                s,
                "connections: {} planned, {} handshakes, peak {} open, up in {:.2}s ({:.0}/s)",
                self.target_connections,
                self.opened,
                self.up_peak,
                self.connect_secs,
                self.connect_rate
            );
        }
        let mut failures = Vec::new();
        if self.connect_errors > 0 {
            failures.push(format!("{} connect errors", self.connect_errors));
        }
        if self.handshake_failures > 0 {
            failures.push(format!("{} handshake failures", self.handshake_failures));
        }
        if !self.closes.is_empty() {
            failures.push(format!("ended early: {}", self.closes_text()));
        }
        if self.server_errors > 0 {
            failures.push(format!(
                "ERR lines: {} ({} rate-limited)",
                self.server_errors, self.rate_limited
            ));
        }
        let _ = writeln!(
            s,
            "failures: {}",
            if failures.is_empty() {
                "none".into()
            } else {
                failures.join(", ")
            }
        );
        if mode == "resume" {
            if self.fresh {
                let _ = writeln!(
                    s,
                    "baseline (--fresh): {} v1 connections dropped over {} rounds, {} reconnected",
                    self.resume_expected, self.rounds, self.resumed
                );
            } else {
                let _ = writeln!(
                    s,
                    "sessions: {} dropped over {} rounds, {} resumed, {} refused (ERR bad-session)",
                    self.resume_expected, self.rounds, self.resumed, self.resume_failures
                );
            }
        }
        if chat || mode == "echo" {
            let _ = write!(
                s,
                "messages: {} sent, {} {} of {} expected ({} lost",
                self.sent,
                self.delivered,
                if mode == "echo" {
                    "echoed"
                } else {
                    "delivered"
                },
                self.expected,
                self.lost(),
            );
            if self.timed_out > 0 {
                let _ = write!(s, ", {} timed out", self.timed_out);
            }
            let _ = writeln!(s, ")");
        }
        let rates = match mode {
            "broadcast" | "latency" => format!(
                ": {:.0} msgs/s, {:.0} deliveries/s",
                self.msgs_per_sec, self.deliveries_per_sec
            ),
            "echo" => format!(
                ": {:.0} msgs/s, {:.1} MB/s",
                self.msgs_per_sec, self.mb_per_sec
            ),
            "churn" => format!(": {:.0} cycles/s", self.cycles_per_sec),
            "resume" => format!(
                ": {:.0} {}/s (wall, drop to last answer)",
                self.resumes_per_sec,
                if self.fresh { "reconnects" } else { "resumes" }
            ),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{} {:.2}s{rates}",
            if mode == "idle" { "held" } else { "measured" },
            self.measure_secs
        );
        if let Some(l) = &self.latency {
            let what = match mode {
                "echo" => "round trip",
                "churn" => "cycle",
                "resume" if self.fresh => "reconnect (connect to JOINED)",
                "resume" => "resume (connect to RESUMED)",
                _ => "delivery",
            };
            let _ = writeln!(
                s,
                "{what} latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.0}, {} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
            );
        }
        if mode != "idle" {
            let _ = writeln!(
                s,
                "generator CPU: {:.0}% of one core{}",
                self.gen_cpu_pct,
                if self.gen_cpu_pct > 95.0 {
                    " (saturated: the generator, not the server, may be the limit)"
                } else {
                    ""
                }
            );
        }
        if let Some(v) = &self.server {
            let _ = write!(
                s,
                "server: RSS {} -> {} -> {} KiB",
                v.rss_start / 1024,
                v.rss_up / 1024,
                v.rss_end / 1024
            );
            match mode {
                "idle" => {
                    let _ = write!(s, ", {:.0} B/connection", v.rss_per_conn);
                }
                _ => {
                    let per = match mode {
                        "echo" => "echoes",
                        "churn" => "cycles",
                        "resume" if self.fresh => "reconnects",
                        "resume" => "resumes",
                        _ => "deliveries",
                    };
                    let _ = write!(
                        s,
                        ", {:.2} CPU s ({:.0}%), {:.0} {per} per CPU s",
                        v.cpu_secs, v.cpu_pct, v.deliveries_per_cpu_sec
                    );
                    if mode == "resume" {
                        let _ = write!(
                            s,
                            "; taking them: {:.2} CPU s, {:.0} connects per CPU s",
                            v.connect_cpu_secs, v.connects_per_cpu_sec
                        );
                    }
                }
            }
            let _ = writeln!(s);
        }
        s
    }
}

/// A finite number in JSON (NaN and infinities become 0).
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{:.3}", v)
    } else {
        "0".into()
    }
}

/// A JSON string literal.
pub(crate) fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_object_with_escapes() {
        let mut r = LoadResult {
            mode: "broadcast".into(),
            url: "ws://x/\"q\\".into(),
            sent: 3,
            delivered: 6,
            expected: 6,
            measure_secs: f64::NAN,
            ..LoadResult::default()
        };
        r.closes.insert("1008".into(), 2);
        let j = r.to_json();
        assert!(j.starts_with('{') && j.ends_with('}'));
        assert!(j.contains("\"url\":\"ws://x/\\\"q\\\\\""));
        assert!(j.contains("\"closes\":{\"1008\":2}"));
        assert!(j.contains("\"lost\":0"));
        assert!(j.contains("\"measure_secs\":0,"));
        assert!(j.contains("\"latency_us\":null"));
        assert!(r.to_text().contains("1008=2"));
        assert!(r.to_json().contains("\"rate_limited\":0"));
    }

    #[test]
    fn text_shows_only_what_the_mode_measures() {
        let idle = LoadResult {
            mode: "idle".into(),
            opened: 10,
            ..LoadResult::default()
        };
        let t = idle.to_text();
        for absent in ["msgs/s", "MB/s", "cycles/s", "messages:", "generator CPU"] {
            assert!(!t.contains(absent), "{absent} in {t}");
        }
        assert!(t.contains("failures: none"), "{t}");
        let churn = LoadResult {
            mode: "churn".into(),
            opened: 10,
            cycles_per_sec: 5.0,
            ..LoadResult::default()
        };
        let t = churn.to_text();
        assert!(
            t.contains("5 cycles/s") && !t.contains("deliveries/s"),
            "{t}"
        );
        let echo = LoadResult {
            mode: "echo".into(),
            opened: 1,
            mb_per_sec: 2.5,
            ..LoadResult::default()
        };
        let t = echo.to_text();
        assert!(t.contains("2.5 MB/s") && !t.contains("cycles/s"), "{t}");
    }

    #[test]
    fn a_run_that_lost_or_was_rate_limited_fails_and_says_why() {
        let good = LoadResult {
            mode: "broadcast".into(),
            opened: 3,
            sent: 10,
            delivered: 20,
            expected: 20,
            ..LoadResult::default()
        };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        let mut bad = LoadResult {
            delivered: 15,
            server_errors: 4,
            rate_limited: 4,
            ..good.clone()
        };
        bad.closes.insert("1008".into(), 1);
        let p = bad.problems().join("\n");
        assert!(p.contains("5 of 20 deliveries lost (25.00%)"), "{p}");
        assert!(p.contains("1008=1"), "{p}");
        assert!(p.contains("--rate-limit 0"), "{p}");
        let none = LoadResult {
            mode: "idle".into(),
            ..LoadResult::default()
        };
        assert!(none.problems()[0].contains("no connection"));
    }
}
