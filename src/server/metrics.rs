//! Counters the loop bumps as plain integers (one thread, no atomics), rendered
//! in the Prometheus text exposition format for `GET /metrics`.

use std::fmt::Write;

/// Upper bounds (seconds) of the event-loop turn histogram.
const TURN_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];

/// All counters; each field is documented in the HELP text of `render`.
#[derive(Default, Debug)]
pub struct Metrics {
    pub connections_total: u64,
    pub ws_upgrades_total: u64,
    pub http_requests_total: u64,
    pub handshake_failures: Vec<(&'static str, u64)>,
    pub refused_total: Vec<(&'static str, u64)>,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub deliveries: u64,
    pub slow_drops: u64,
    pub slow_disconnects: u64,
    pub close_codes_sent: Vec<(u16, u64)>,
    pub close_codes_received: Vec<(u16, u64)>,
    pub timeouts: Vec<(&'static str, u64)>,
    pub accept_errors: u64,
    turn_counts: [u64; TURN_BUCKETS.len() + 1],
    turn_sum: f64,
}

fn bump<K: PartialEq + Copy>(v: &mut Vec<(K, u64)>, k: K) {
    match v.iter_mut().find(|(x, _)| *x == k) {
        Some((_, n)) => *n += 1,
        None => v.push((k, 1)),
    }
}

/// Gauges sampled at render time.
pub struct Gauges {
    pub connections: usize,
    pub ws_connections: usize,
    pub line_connections: usize,
    pub chat_users: usize,
    pub rooms: usize,
    pub outbox_bytes: usize,
    pub rss_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub uptime_seconds: f64,
}

impl Metrics {
    /// Count a failed handshake by its reason label.
    pub fn handshake_failed(&mut self, reason: &'static str) {
        bump(&mut self.handshake_failures, reason);
    }
    /// Count a connection refused at accept (`max_connections`, `max_per_ip`).
    pub fn refused(&mut self, reason: &'static str) {
        bump(&mut self.refused_total, reason);
    }
    /// Count a close frame we sent.
    pub fn close_sent(&mut self, code: u16) {
        bump(&mut self.close_codes_sent, code);
    }
    /// Count a close frame we received.
    pub fn close_received(&mut self, code: u16) {
        bump(&mut self.close_codes_received, code);
    }
    /// Count a connection closed by a timer.
    pub fn timeout(&mut self, kind: &'static str) {
        bump(&mut self.timeouts, kind);
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

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges, out: &mut String) {
        fn head(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        }
        fn one(out: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
            head(out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        fn labelled<K: std::fmt::Display>(
            out: &mut String,
            name: &str,
            help: &str,
            label: &str,
            v: &[(K, u64)],
        ) {
            head(out, name, "counter", help);
            for (k, n) in v {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {n}");
            }
        }
        let c = "counter";
        let gg = "gauge";
        one(
            out,
            "loopchat_connections",
            gg,
            "Connections open now (all kinds).",
            g.connections,
        );
        head(
            out,
            "loopchat_connections_by_kind",
            gg,
            "Open connections by kind.",
        );
        let _ = writeln!(
            out,
            "loopchat_connections_by_kind{{kind=\"websocket\"}} {}",
            g.ws_connections
        );
        let _ = writeln!(
            out,
            "loopchat_connections_by_kind{{kind=\"line\"}} {}",
            g.line_connections
        );
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
            "Connections closed for exceeding the outbox hard cap.",
            self.slow_disconnects,
        );
        labelled(
            out,
            "loopchat_close_codes_sent_total",
            "Close frames sent by code.",
            "code",
            &self.close_codes_sent,
        );
        labelled(
            out,
            "loopchat_close_codes_received_total",
            "Close frames received by code.",
            "code",
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
        one(
            out,
            "loopchat_outbox_bytes",
            gg,
            "Bytes queued in outboxes.",
            g.outbox_bytes,
        );
        if let Some(rss) = g.rss_bytes {
            one(
                out,
                "process_resident_memory_bytes",
                gg,
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Some(fds) = g.open_fds {
            one(
                out,
                "process_open_fds",
                gg,
                "Number of open file descriptors.",
                fds,
            );
        }
        one(
            out,
            "loopchat_uptime_seconds",
            gg,
            "Seconds since the server started.",
            format_args!("{:.3}", g.uptime_seconds),
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
pub fn render_cluster(node: &str, s: &crate::cluster::ClusterStats, out: &mut String) {
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
    let _ = writeln!(out, "# HELP loopchat_redis_node This process's cluster node id.\n# TYPE loopchat_redis_node gauge\nloopchat_redis_node{{node=\"{node}\"}} 1");
    for &(name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
}
