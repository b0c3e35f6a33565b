//! The server's logger: one line per record on stderr, as text for people or as
//! one JSON object per line for log shippers (`--log-format json`).
//!
//! A small `log::Log` of our own rather than `simplelog`: both formats need the
//! record's structured fields (`info!(conn = id, peer:% = ip; "...")`, the `log`
//! crate's `kv` feature), which `simplelog` does not print, and a JSON line must be
//! written whole with one `write` so lines from a crash and a normal record never
//! interleave. The clock is formatted here (UTC, RFC 3339, milliseconds) to avoid a
//! date crate for one function.
//!
//! JSON keys: `@timestamp`, `level`, `target`, `message`, then the record's fields
//! under their own names (`conn`, `peer`, `nick`, `code`, ...). Filebeat's `ndjson`
//! parser reads it as is, `@timestamp` becoming the event time.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use log::kv::{Key, Value, VisitSource};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `2026-11-30T11:34:43.123Z INFO  message key=value`.
    Text,
    /// `{"@timestamp":"2026-11-30T11:34:43.123Z","level":"INFO",...}`.
    Json,
}

/// Writes records to stderr in one [`Format`].
pub struct Logger {
    format: Format,
    level: LevelFilter,
    color: bool,
}

impl Logger {
    /// Install as the global logger; false when one was already installed.
    pub fn init(format: Format, level: LevelFilter) -> bool {
        let color = format == Format::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let logger = Logger {
            format,
            level,
            color,
        };
        if log::set_boxed_logger(Box::new(logger)).is_err() {
            return false;
        }
        log::set_max_level(level);
        true
    }

    /// One record as one line, `\n` included.
    pub fn format(&self, record: &Record<'_>, now: SystemTime) -> String {
        let mut out = String::with_capacity(160);
        let ts = rfc3339_millis(now);
        match self.format {
            Format::Text => {
                let level = record.level();
                if self.color {
                    let c = match level {
                        Level::Error => "31",
                        Level::Warn => "33",
                        Level::Info => "32",
                        _ => "2",
                    };
                    let _ = write!(out, "{ts} \x1b[{c}m{level:<5}\x1b[0m ");
                } else {
                    let _ = write!(out, "{ts} {level:<5} ");
                }
                // Messages may quote peer input: no control character reaches
                // the operator's terminal raw.
                for c in record.args().to_string().chars() {
                    if c.is_control() {
                        let _ = write!(out, "{}", c.escape_default());
                    } else {
                        out.push(c);
                    }
                }
                let _ = record.key_values().visit(&mut TextFields(&mut out));
            }
            Format::Json => {
                out.push_str("{\"@timestamp\":\"");
                out.push_str(&ts);
                out.push_str("\",\"level\":\"");
                out.push_str(record.level().as_str());
                out.push_str("\",\"target\":");
                json_str(&mut out, record.target());
                out.push_str(",\"message\":");
                json_str(&mut out, &record.args().to_string());
                let _ = record.key_values().visit(&mut JsonFields(&mut out));
                out.push('}');
            }
        }
        out.push('\n');
        out
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = self.format(record, SystemTime::now());
        // One write per line; a failing stderr has nowhere to report to.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = value.to_string();
        if v.is_empty() || v.contains([' ', '"', '=']) || v.contains(char::is_control) {
            let _ = write!(self.0, " {key}={v:?}");
        } else {
            let _ = write!(self.0, " {key}={v}");
        }
        Ok(())
    }
}

struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let key = key.as_str();
        if matches!(key, "@timestamp" | "level" | "target" | "message") {
            // A field may not shadow the fixed keys (a duplicate key is
            // undefined in JSON, and shippers disagree on which one wins).
            return Ok(());
        }
        self.0.push(',');
        json_str(self.0, key);
        self.0.push(':');
        if let Some(n) = value.to_u64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(n) = value.to_i64() {
            let _ = write!(self.0, "{n}");
        } else if let Some(b) = value.to_bool() {
            let _ = write!(self.0, "{b}");
        } else if let Some(f) = value.to_f64().filter(|f| f.is_finite()) {
            let _ = write!(self.0, "{f}");
        } else {
            json_str(self.0, &value.to_string());
        }
        Ok(())
    }
}

/// Append `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // The rest of C0, DEL and the line separators that break some JSON
            // readers (U+2028/2029 are invalid in JavaScript string literals).
            c if c < ' ' || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// At most one record per interval for an event a peer can repeat at will (a
/// refused Origin): the first is logged, the rest are counted and reported
/// with the next one logged. `now` is passed in, in milliseconds.
#[derive(Debug, Default)]
pub struct Throttle {
    next_ms: u64,
    suppressed: u64,
}

impl Throttle {
    /// Records allowed per second.
    const INTERVAL_MS: u64 = 1000;

    /// `Some(n)` when this event may be logged (`n` were suppressed since the
    /// last one); `None` when it is to be counted only.
    pub fn allow(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms < self.next_ms {
            self.suppressed += 1;
            return None;
        }
        self.next_ms = now_ms + Self::INTERVAL_MS;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `2026-11-30T11:34:43.123Z`: RFC 3339, UTC, milliseconds: the same
/// writer as the chat's `time=` tags.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut s = String::with_capacity(24);
    crate::chat::line::write_time(&mut s, ms);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    #[test]
    fn the_throttle_lets_one_through_per_second_and_counts_the_rest() {
        let mut t = Throttle::default();
        assert_eq!(t.allow(5_000), Some(0));
        assert_eq!(t.allow(5_001), None);
        assert_eq!(t.allow(5_999), None);
        assert_eq!(t.allow(6_000), Some(2));
        assert_eq!(t.allow(60_000), Some(0));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(951_782_400, 7)),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            rfc3339_millis(at(1_798_716_896, 123)),
            "2026-12-31T11:34:56.123Z"
        );
        assert_eq!(
            rfc3339_millis(at(4_107_542_400, 999)),
            "2100-03-01T00:00:00.999Z"
        );
    }

    fn line(format: Format) -> String {
        let logger = Logger {
            format,
            level: LevelFilter::Trace,
            color: false,
        };
        let peer = std::net::IpAddr::from([203, 0, 113, 7]);
        let kvs: [(&str, Value<'_>); 4] = [
            ("conn", Value::from(42u64)),
            ("peer", Value::from_display(&peer)),
            ("nick", Value::from("a \"quoted\"\nnick")),
            ("code", Value::from(1000u16)),
        ];
        let record = Record::builder()
            .level(Level::Info)
            .target("loopchat::server")
            .args(format_args!("closed \u{1b}[2K"))
            .key_values(&kvs)
            .build();
        logger.format(&record, at(1_798_716_896, 123))
    }

    #[test]
    fn json_lines_carry_fields_with_their_types_and_escape_everything() {
        let l = line(Format::Json);
        assert_eq!(
            l,
            "{\"@timestamp\":\"2026-12-31T11:34:56.123Z\",\"level\":\"INFO\",\
             \"target\":\"loopchat::server\",\"message\":\"closed \\u001b[2K\",\
             \"conn\":42,\"peer\":\"203.0.113.7\",\"nick\":\"a \\\"quoted\\\"\\nnick\",\
             \"code\":1000}\n"
        );
    }

    #[test]
    fn text_lines_have_a_date_and_quote_odd_values() {
        let l = line(Format::Text);
        assert_eq!(
            l,
            "2026-12-31T11:34:56.123Z INFO  closed \\u{1b}[2K conn=42 peer=203.0.113.7 \
             nick=\"a \\\"quoted\\\"\\nnick\" code=1000\n"
        );
    }
}
