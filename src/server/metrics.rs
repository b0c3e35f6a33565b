//! Counters the loop bumps as plain integers (one thread, no atomics), rendered
//! in the Prometheus text exposition format for `GET /metrics`.
//!
//! Two rules keep a scrape cheap and its size fixed, whatever the clients do:
//! - Everything is kept incrementally (connections by kind are counted as they
//!   open, upgrade and close), so rendering never walks the connections; the
//!   process figures come from a few bounded reads (`getrusage`, `getrlimit`,
//!   `/proc/self/statm`, and `stat` of `/proc/self/fd`, whose size is the count
//!   of open descriptors on Linux 6.2 and later).
//! - Label values come from fixed sets. Every series exists (at 0) from the
//!   start, and a value from the peer (a close code) outside the set counts
//!   under `other`, so a client cannot mint series.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::conn::Kind;

/// Upper bounds (seconds) of the event-loop turn histogram. Fine below a
/// millisecond, where turns live; 0.8 s is the alert threshold of
/// `deploy/prometheus/alerts.yml` (p99 over 800 ms), and bounds past it let a
/// quantile read above it at all.
const TURN_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8,
    1.0, 2.5, 5.0,
];

/// Close codes with their own series (RFC 6455 7.4.1 and the IANA registry's
/// 1012–1015); any other code counts under `other`.
pub(super) const CLOSE_CODES: [u16; 15] = [
    1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015,
];

/// Failed-handshake reasons (`HttpError::reason`), present at 0 from the start.
pub(super) const HANDSHAKE_REASONS: [&str; 11] = [
    "header_too_large",
    "too_many_headers",
    "malformed",
    "method_not_allowed",
    "bad_http_version",
    "no_host",
    "bad_upgrade",
    "bad_connection",
    "bad_ws_version",
    "bad_key",
    "origin_forbidden",
];

/// Reasons a connection is refused at accept.
pub(super) const REFUSE_REASONS: [&str; 2] = ["max_connections", "max_per_ip"];

/// Timers that close connections.
pub(super) const TIMEOUT_KINDS: [&str; 3] = ["handshake", "idle", "close"];

/// `kind` label values of `loopchat_connections`, indexed by [`kind_index`].
const KINDS: [&str; 4] = ["http", "chat", "echo", "line"];

fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Http => 0,
        Kind::Chat => 1,
        Kind::Echo => 2,
        Kind::Line => 3,
    }
}

/// Counters by a label from a fixed set. A label outside the set (a reason a
/// newer caller added without listing it) still counts, under its own series:
/// `&'static str` labels come from the program text, so they stay bounded.
#[derive(Debug)]
pub struct Labelled(Vec<(&'static str, u64)>);

impl Labelled {
    fn new(labels: &[&'static str]) -> Self {
        Labelled(labels.iter().map(|l| (*l, 0)).collect())
    }

    fn bump(&mut self, label: &'static str) {
        match self.0.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => self.0.push((label, 1)),
        }
    }

    /// The count under `label` (0 if never seen).
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| *n)
    }
}

/// Close frames by code: one slot per [`CLOSE_CODES`] entry, then `other`.
#[derive(Debug)]
pub struct CloseCodes([u64; CLOSE_CODES.len() + 1]);

impl CloseCodes {
    fn bump(&mut self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.0[i] += 1;
    }

    /// The count for `code` (the `other` count for a code outside the set).
    pub fn get(&self, code: u16) -> u64 {
        let i = CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(CLOSE_CODES.len());
        self.0[i]
    }
}

/// All counters; each is documented in the HELP text of `render`.
#[derive(Debug)]
pub struct Metrics {
    /// Connections accepted (`loopchat_connections_accepted_total`).
    pub connections_total: u64,
    /// WebSocket upgrades completed.
    pub ws_upgrades_total: u64,
    /// WebSocket handshakes that negotiated permessage-deflate.
    pub ws_deflate_total: u64,
    /// Messages compressed (a broadcast counts once, however many get it).
    pub deflated_messages: u64,
    /// Plain HTTP requests answered.
    pub http_requests_total: u64,
    /// Failed handshakes by reason.
    pub handshake_failures: Labelled,
    /// Connections refused at accept, by reason.
    pub refused_total: Labelled,
    /// WebSocket messages and chat lines received.
    pub messages_in: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Messages queued, one per recipient.
    pub messages_out: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Chat lines delivered to recipients.
    pub deliveries: u64,
    /// Chat lines dropped for slow readers.
    pub slow_drops: u64,
    /// Slow readers disconnected (hard cap or `--outbox-grace`).
    pub slow_disconnects: u64,
    /// Close frames sent, by code.
    pub close_codes_sent: CloseCodes,
    /// Close frames received, by code.
    pub close_codes_received: CloseCodes,
    /// Connections closed by a timer, by kind.
    pub timeouts: Labelled,
    /// `accept()` failures.
    pub accept_errors: u64,
    /// Open connections by kind (index: [`kind_index`]).
    open: [u64; KINDS.len()],
    turn_counts: [u64; TURN_BUCKETS.len() + 1],
    turn_sum: f64,
    /// When the server was created, in seconds since the Unix epoch.
    start_time: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections_total: 0,
            ws_upgrades_total: 0,
            ws_deflate_total: 0,
            deflated_messages: 0,
            http_requests_total: 0,
            handshake_failures: Labelled::new(&HANDSHAKE_REASONS),
            refused_total: Labelled::new(&REFUSE_REASONS),
            messages_in: 0,
            bytes_in: 0,
            messages_out: 0,
            bytes_out: 0,
            deliveries: 0,
            slow_drops: 0,
            slow_disconnects: 0,
            close_codes_sent: CloseCodes([0; CLOSE_CODES.len() + 1]),
            close_codes_received: CloseCodes([0; CLOSE_CODES.len() + 1]),
            timeouts: Labelled::new(&TIMEOUT_KINDS),
            accept_errors: 0,
            open: [0; KINDS.len()],
            turn_counts: [0; TURN_BUCKETS.len() + 1],
            turn_sum: 0.0,
            start_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }
}

/// Bytes left in each connection's outbox after its last flush, and their sum,
/// so `/metrics` reports the total without walking the connections. Every
/// write to an outbox marks the connection for a flush in the same loop turn,
/// so recording at each flush (and 0 at removal) keeps the sum exact at turn
/// ends. Kept beside the slab rather than in the connection entry: 4 bytes per
/// slot, and the entry's size stays guarded.
#[derive(Default, Debug)]
pub(super) struct Queued {
    by_id: Vec<u32>,
    total: u64,
}

impl Queued {
    /// Record that connection `id` has `bytes` queued now.
    pub(super) fn set(&mut self, id: usize, bytes: usize) {
        if id >= self.by_id.len() {
            if bytes == 0 {
                return;
            }
            // Amortised growth, bounded by the slab's own size.
            self.by_id.resize((id + 1).next_power_of_two(), 0);
        }
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let old = std::mem::replace(&mut self.by_id[id], bytes);
        self.total = self.total - u64::from(old) + u64::from(bytes);
    }

    /// Bytes queued in all outboxes.
    pub(super) fn total(&self) -> usize {
        self.total as usize
    }
}

/// Gauges the server samples at render time, each O(1).
pub struct Gauges {
    pub chat_users: usize,
    pub rooms: usize,
    /// Dropped `resume` sessions waiting (`--session-ttl`).
    pub sessions_detached: usize,
    /// Sessions resumed since start.
    pub sessions_resumed: u64,
    /// Bytes queued in outboxes, when the server keeps that total (it is never
    /// computed by walking the connections).
    pub outbox_bytes: Option<usize>,
    /// Bytes allocated by all outboxes (what `--outbox-total` limits).
    pub outbox_allocated: usize,
    /// `--outbox-total`.
    pub outbox_budget: usize,
}

/// Process figures in the names every Prometheus client library uses.
struct Process {
    cpu_seconds: Option<f64>,
    rss_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl Metrics {
    /// Count a connection entering the slab as `kind`.
    pub(crate) fn opened(&mut self, kind: Kind) {
        self.open[kind_index(kind)] += 1;
    }
    /// Count a connection that changed kind (an HTTP request upgraded).
    pub(crate) fn changed(&mut self, from: Kind, to: Kind) {
        let f = &mut self.open[kind_index(from)];
        *f = f.saturating_sub(1);
        self.open[kind_index(to)] += 1;
    }
    /// Count a connection leaving the slab.
    pub(crate) fn closed(&mut self, kind: Kind) {
        let n = &mut self.open[kind_index(kind)];
        *n = n.saturating_sub(1);
    }
    /// Open connections of `kind` now.
    #[cfg(test)]
    fn open(&self, kind: Kind) -> u64 {
        self.open[kind_index(kind)]
    }
    /// Count a failed handshake by its reason label.
    pub fn handshake_failed(&mut self, reason: &'static str) {
        self.handshake_failures.bump(reason);
    }
    /// Count a connection refused at accept (`max_connections`, `max_per_ip`).
    pub fn refused(&mut self, reason: &'static str) {
        self.refused_total.bump(reason);
    }
    /// Count a close frame we sent.
    pub fn close_sent(&mut self, code: u16) {
        self.close_codes_sent.bump(code);
    }
    /// Count a close frame we received.
    pub fn close_received(&mut self, code: u16) {
        self.close_codes_received.bump(code);
    }
    /// Count a connection closed by a timer.
    pub fn timeout(&mut self, kind: &'static str) {
        self.timeouts.bump(kind);
    }
    /// Record one event-loop turn's busy time.
    pub fn observe_turn(&mut self, secs: f64) {
        let i = TURN_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(TURN_BUCKETS.len());
        self.turn_counts[i] += 1;
        self.turn_sum += secs;
    }

    /// The Prometheus text exposition, process figures read now.
    pub fn render(&self, g: &Gauges, out: &mut String) {
        let p = Process {
            cpu_seconds: crate::sys::cpu_seconds(),
            rss_bytes: crate::sys::rss_bytes(),
            open_fds: crate::sys::open_fds(),
            max_fds: crate::sys::max_fds(),
        };
        self.render_with(g, &p, out);
    }

    fn render_with(&self, g: &Gauges, p: &Process, out: &mut String) {
        fn head(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        fn one(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
            head(out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        fn labelled(out: &mut String, name: &str, help: &str, label: &str, v: &Labelled) {
            head(out, name, "counter", help);
            for (k, n) in &v.0 {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {n}");
            }
        }
        fn codes(out: &mut String, name: &str, help: &str, v: &CloseCodes) {
            head(out, name, "counter", help);
            for (code, n) in CLOSE_CODES.iter().zip(v.0.iter()) {
                let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
            }
            let _ = writeln!(out, "{name}{{code=\"other\"}} {}", v.0[CLOSE_CODES.len()]);
        }
        let c = "counter";
        let gg = "gauge";
        head(
            out,
            "loopchat_connections",
            gg,
            "Connections open now by kind (http: before an upgrade or answering a request); \
             sum() is the total.",
        );
        for (k, n) in KINDS.iter().zip(self.open.iter()) {
            let _ = writeln!(out, "loopchat_connections{{kind=\"{k}\"}} {n}");
        }
        one(
            out,
            "loopchat_connections_accepted_total",
            c,
            "Connections accepted.",
            self.connections_total,
        );
        one(
            out,
            "loopchat_websocket_upgrades_total",
            c,
            "Successful WebSocket handshakes.",
            self.ws_upgrades_total,
        );
        one(
            out,
            "loopchat_websocket_deflate_total",
            c,
            "WebSocket handshakes that negotiated permessage-deflate.",
            self.ws_deflate_total,
        );
        one(
            out,
            "loopchat_deflated_messages_total",
            c,
            "Messages compressed (a broadcast counts once, however many get it).",
            self.deflated_messages,
        );
        one(
            out,
            "loopchat_http_requests_total",
            c,
            "Plain HTTP requests answered.",
            self.http_requests_total,
        );
        labelled(
            out,
            "loopchat_handshake_failures_total",
            "Failed handshakes by reason.",
            "reason",
            &self.handshake_failures,
        );
        labelled(
            out,
            "loopchat_connections_refused_total",
            "Connections refused at accept by reason.",
            "reason",
            &self.refused_total,
        );
        one(
            out,
            "loopchat_messages_in_total",
            c,
            "WebSocket messages and chat lines received.",
            self.messages_in,
        );
        one(
            out,
            "loopchat_bytes_in_total",
            c,
            "Bytes read from sockets.",
            self.bytes_in,
        );
        one(
            out,
            "loopchat_messages_out_total",
            c,
            "Messages queued to connections (one per recipient).",
            self.messages_out,
        );
        one(
            out,
            "loopchat_bytes_out_total",
            c,
            "Bytes written to sockets.",
            self.bytes_out,
        );
        one(
            out,
            "loopchat_deliveries_total",
            c,
            "Chat lines delivered to recipients.",
            self.deliveries,
        );
        one(
            out,
            "loopchat_slow_consumer_drops_total",
            c,
            "Chat lines dropped for recipients over the outbox soft cap.",
            self.slow_drops,
        );
        one(
            out,
            "loopchat_slow_consumer_disconnects_total",
            c,
            "Connections closed as slow readers: over the outbox hard cap, or behind for --outbox-grace (losing lines, or an echo not read).",
            self.slow_disconnects,
        );
        codes(
            out,
            "loopchat_close_codes_sent_total",
            "Close frames sent by code (codes outside RFC 6455's set: other).",
            &self.close_codes_sent,
        );
        codes(
            out,
            "loopchat_close_codes_received_total",
            "Close frames received by code (codes outside RFC 6455's set: other).",
            &self.close_codes_received,
        );
        labelled(
            out,
            "loopchat_timeouts_total",
            "Connections closed by a timer, by kind.",
            "kind",
            &self.timeouts,
        );
        one(
            out,
            "loopchat_accept_errors_total",
            c,
            "accept() failures (e.g. out of file descriptors).",
            self.accept_errors,
        );
        one(
            out,
            "loopchat_chat_users",
            gg,
            "Connections in the chat.",
            g.chat_users,
        );
        one(
            out,
            "loopchat_rooms",
            gg,
            "Rooms with at least one member.",
            g.rooms,
        );
        if let Some(b) = g.outbox_bytes {
            one(
                out,
                "loopchat_outbox_bytes",
                gg,
                "Bytes queued in outboxes.",
                b,
            );
        }
        one(
            out,
            "loopchat_sessions_detached",
            gg,
            "Dropped resume sessions holding their nick and rooms.",
            g.sessions_detached,
        );
        one(
            out,
            "loopchat_sessions_resumed_total",
            c,
            "Sessions resumed by a new connection.",
            g.sessions_resumed,
        );
        one(
            out,
            "loopchat_outbox_allocated_bytes",
            gg,
            "Bytes allocated by all outboxes (capacity, what --outbox-total limits).",
            g.outbox_allocated,
        );
        one(
            out,
            "loopchat_outbox_budget_bytes",
            gg,
            "--outbox-total: the most all outboxes may allocate before lines are dropped.",
            g.outbox_budget,
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        one(
            out,
            "loopchat_uptime_seconds",
            gg,
            "Seconds since the server started.",
            format_args!("{:.3}", (now - self.start_time).max(0.0)),
        );
        head(
            out,
            "loopchat_build_info",
            gg,
            "The running build (always 1; the version is the label).",
        );
        let _ = writeln!(
            out,
            "loopchat_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        if let Some(v) = p.cpu_seconds {
            one(
                out,
                "process_cpu_seconds_total",
                c,
                "Total user and system CPU time spent in seconds.",
                format_args!("{v:.3}"),
            );
        }
        if let Some(v) = p.rss_bytes {
            one(
                out,
                "process_resident_memory_bytes",
                gg,
                "Resident memory size in bytes.",
                v,
            );
        }
        if let Some(v) = p.open_fds {
            one(
                out,
                "process_open_fds",
                gg,
                "Number of open file descriptors.",
                v,
            );
        }
        if let Some(v) = p.max_fds {
            one(
                out,
                "process_max_fds",
                gg,
                "Maximum number of open file descriptors.",
                v,
            );
        }
        one(
            out,
            "process_start_time_seconds",
            gg,
            "Start time of the process since unix epoch in seconds.",
            format_args!("{:.3}", self.start_time),
        );
        let name = "loopchat_loop_turn_seconds";
        head(out, name, "histogram", "Busy time of one event-loop turn.");
        let mut cum = 0;
        for (i, b) in TURN_BUCKETS.iter().enumerate() {
            cum += self.turn_counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.turn_counts[TURN_BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(out, "{name}_sum {}", self.turn_sum);
        let _ = writeln!(out, "{name}_count {cum}");
    }
}

/// The `--redis` lines of `/metrics`.
pub(super) fn render_cluster(node: &str, s: &crate::cluster::ClusterStats, out: &mut String) {
    let rows: &[(&str, &str, &str, u64)] = &[
        (
            "loopchat_redis_up",
            "gauge",
            "1 when both Redis connections are up and subscribed.",
            s.up as u64,
        ),
        (
            "loopchat_redis_subscriptions",
            "gauge",
            "Channels the subscriber connection has confirmed.",
            s.subscriptions,
        ),
        (
            "loopchat_redis_published_total",
            "counter",
            "Messages published to Redis.",
            s.published,
        ),
        (
            "loopchat_redis_dropped_total",
            "counter",
            "Messages and commands not sent because Redis was down or slow (remote delivery lost).",
            s.dropped,
        ),
        (
            "loopchat_redis_received_total",
            "counter",
            "Messages received from other nodes.",
            s.received,
        ),
        (
            "loopchat_redis_duplicates_total",
            "counter",
            "Messages from other nodes dropped as duplicates (sequence numbers).",
            s.duplicates,
        ),
        (
            "loopchat_redis_remote_deliveries_total",
            "counter",
            "Lines from other nodes delivered to local connections, per recipient.",
            s.remote_deliveries,
        ),
        (
            "loopchat_redis_connects_total",
            "counter",
            "Successful (re)connections of the two Redis links.",
            s.connects,
        ),
        (
            "loopchat_redis_query_timeouts_total",
            "counter",
            "/who and /rooms answered without every node's answer.",
            s.query_timeouts,
        ),
        (
            "loopchat_redis_queries_total",
            "counter",
            "/who and /rooms questions asked of the other nodes (one at a time; repeats within 1 s answered from a cache).",
            s.queries,
        ),
        (
            "loopchat_redis_nick_conflicts_total",
            "counter",
            "Nicks lost to another node and renamed.",
            s.nick_conflicts,
        ),
        (
            "loopchat_redis_nick_unconfirmed_total",
            "counter",
            "Nick reservations the registry could not confirm (Redis down, buffer full, or --redis-query-timeout); a connection asking gets a guest nick.",
            s.nick_unconfirmed,
        ),
        (
            "loopchat_redis_dead_nodes_total",
            "counter",
            "Other nodes declared dead (silent for the nick TTL): their members left, their nicks freed.",
            s.dead_nodes,
        ),
        (
            "loopchat_redis_backlog_bytes",
            "gauge",
            "Bytes published while the Redis link was down or full, waiting to be sent (at most --redis-buffer).",
            s.backlog_bytes,
        ),
        (
            "loopchat_redis_rejected_total",
            "counter",
            "Payloads from Redis dropped as unsigned or badly signed (--cluster-secret-file).",
            s.rejected,
        ),
        (
            "loopchat_redis_malformed_total",
            "counter",
            "Payloads from Redis dropped as not well-formed.",
            s.malformed,
        ),
    ];
    let _ = writeln!(
        out,
        "# HELP loopchat_redis_node_info This process's cluster node id (always 1).\n\
         # TYPE loopchat_redis_node_info gauge\nloopchat_redis_node_info{{node=\"{node}\"}} 1"
    );
    for &(name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        let g = Gauges {
            chat_users: 0,
            rooms: 0,
            sessions_detached: 0,
            sessions_resumed: 0,
            outbox_bytes: None,
            outbox_allocated: 0,
            outbox_budget: 0,
        };
        let p = Process {
            cpu_seconds: Some(1.5),
            rss_bytes: Some(1),
            open_fds: Some(1),
            max_fds: Some(1),
        };
        let mut s = String::new();
        m.render_with(&g, &p, &mut s);
        s
    }

    #[test]
    fn queued_bytes_sum_what_each_connection_holds() {
        let mut q = Queued::default();
        q.set(3, 100);
        q.set(70, 50);
        q.set(3, 40);
        q.set(9, 0);
        assert_eq!(q.total(), 90);
        q.set(70, 0);
        q.set(3, 0);
        assert_eq!(q.total(), 0);
    }

    #[test]
    fn peer_chosen_close_codes_cannot_mint_series() {
        let mut m = Metrics::default();
        let before = render(&m);
        for code in 3000..5000 {
            m.close_received(code);
            m.close_sent(code);
        }
        m.close_received(1000);
        let after = render(&m);
        assert_eq!(before.lines().count(), after.lines().count());
        assert_eq!(m.close_codes_received.get(4321), 2000);
        assert!(after.contains("loopchat_close_codes_received_total{code=\"other\"} 2000"));
        assert!(after.contains("loopchat_close_codes_received_total{code=\"1000\"} 1"));
    }

    #[test]
    fn labelled_series_exist_before_their_first_event() {
        let s = render(&Metrics::default());
        for r in HANDSHAKE_REASONS {
            assert!(
                s.contains(&format!(
                    "loopchat_handshake_failures_total{{reason=\"{r}\"}} 0"
                )),
                "{r}"
            );
        }
        for r in REFUSE_REASONS {
            assert!(s.contains(&format!(
                "loopchat_connections_refused_total{{reason=\"{r}\"}} 0"
            )));
        }
        for k in TIMEOUT_KINDS {
            assert!(s.contains(&format!("loopchat_timeouts_total{{kind=\"{k}\"}} 0")));
        }
        assert!(s.contains("loopchat_close_codes_sent_total{code=\"1001\"} 0"));
        assert!(s.contains("loopchat_connections{kind=\"line\"} 0"));
        assert!(!s.contains("_by_kind"));
    }

    #[test]
    fn connections_by_kind_follow_opens_upgrades_and_closes() {
        let mut m = Metrics::default();
        m.opened(Kind::Http);
        m.opened(Kind::Http);
        m.opened(Kind::Line);
        m.changed(Kind::Http, Kind::Chat);
        assert_eq!(
            (m.open(Kind::Http), m.open(Kind::Chat), m.open(Kind::Line)),
            (1, 1, 1)
        );
        m.closed(Kind::Chat);
        m.closed(Kind::Http);
        let s = render(&m);
        let total: u64 = s
            .lines()
            .filter(|l| l.starts_with("loopchat_connections{"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 1);
        assert!(s.contains("process_cpu_seconds_total 1.500"));
        assert!(s.contains("loopchat_build_info{version=\""));
    }
}
