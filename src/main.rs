//! `loopchat`: parse flags, set up logging, run the server.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use log::{error, info, LevelFilter};

use loopchat::chat::ChatConfig;
use loopchat::cluster::ClusterConfig;
use loopchat::server::{raise_nofile_limit, Config, Server};

/// A single-core WebSocket chat server.
///
/// Serves HTTP and WebSocket on one port: `/` (web chat page), `/ws?nick=NAME&room=ROOM`
/// (the chat), `/echo` (RFC 6455 echo), `/metrics` (Prometheus), `/healthz`.
/// Durations take a unit: `500ms`, `30s`, `5m` (a bare number means seconds); 0 turns
/// a timer off where noted.
#[derive(Parser, Debug)]
#[command(name = "loopchat", version, about, long_about = None, max_term_width = 100)]
#[command(after_help = AFTER_HELP)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,

    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Chat from a terminal or a script: stdin lines are sent, arriving lines printed.
    ///
    /// Example: printf '/join dev\nhello\n' | loopchat client 'ws://127.0.0.1:9000/ws?nick=bot'
    Client(loopchat::client::ClientArgs),
    /// Load-test a server: idle, broadcast, latency, churn or echo (start loopchat with --rate-limit 0).
    ///
    /// Example: loopchat load --mode broadcast -c 1000 -s 10 --duration 10s --json
    Load(loopchat::load::LoadArgs),
    /// Print an HS256 token for `--auth-key` servers, signed with a key file.
    ///
    /// Example: loopchat token --key chat.key --sub alice --ttl 1h --role mod --rooms 'dev,ops-*'
    Token(loopchat::token_tool::TokenArgs),
}

/// Server flags (the default command). Every flag can also be set through the
/// environment as `LOOPCHAT_<FLAG>` (upper case, `-` as `_`); a flag on the command
/// line wins over the environment.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address for HTTP and WebSocket clients (IP:PORT).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000", env = "LOOPCHAT_LISTEN",
          value_parser = loopchat::cli::parse_listen, help_heading = "Listeners")]
    listen: SocketAddr,

    /// Also accept plain-TCP chat clients (one command per line, e.g. `nc`) on ADDR.
    #[arg(long, value_name = "ADDR", env = "LOOPCHAT_LINE_LISTEN",
          value_parser = loopchat::cli::parse_listen, help_heading = "Listeners")]
    line_listen: Option<SocketAddr>,

    /// Serve /metrics and /healthz on this address too (a private one); the public
    /// listener then answers 404 for /metrics.
    #[arg(long, value_name = "ADDR", env = "LOOPCHAT_METRICS_LISTEN",
          value_parser = loopchat::cli::parse_listen, help_heading = "Listeners")]
    metrics_listen: Option<SocketAddr>,

    /// Set SO_REUSEPORT so several processes share the port (one per core).
    #[arg(long, env = "LOOPCHAT_REUSE_PORT", help_heading = "Listeners",
          value_parser = clap::builder::BoolishValueParser::new())]
    reuse_port: bool,

    /// Browser origin accepted besides same-origin (repeatable, or comma-separated); `*` accepts all.
    #[arg(
        long,
        value_name = "ORIGIN",
        value_delimiter = ',',
        env = "LOOPCHAT_ALLOW_ORIGIN",
        help_heading = "Listeners"
    )]
    allow_origin: Vec<String>,

    /// Proxies (addresses or blocks like 10.0.0.0/8, repeatable or comma-separated) whose
    /// X-Forwarded-For names the client for per-IP limits and logs.
    #[arg(
        long,
        value_name = "ADDR",
        value_delimiter = ',',
        env = "LOOPCHAT_TRUST_PROXY",
        help_heading = "Listeners"
    )]
    trust_proxy: Vec<loopchat::server::IpNet>,

    /// Most connections held at once; more are answered 503 and closed.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        env = "LOOPCHAT_MAX_CONNECTIONS",
        help_heading = "Limits"
    )]
    max_connections: usize,

    /// Most connections from one IP address (0 = no limit); more are answered 429.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        env = "LOOPCHAT_MAX_PER_IP",
        help_heading = "Limits"
    )]
    max_per_ip: usize,

    /// Largest HTTP request head (431 beyond).
    #[arg(long, value_name = "BYTES", default_value = "8KiB", env = "LOOPCHAT_MAX_HEADER_BYTES",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    max_header_bytes: usize,

    /// Largest WebSocket message on /echo (close 1009 beyond).
    #[arg(long, value_name = "BYTES", default_value = "16MiB", env = "LOOPCHAT_MAX_MESSAGE",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    max_message: usize,

    /// Largest WebSocket message on /ws (close 1009 beyond).
    #[arg(long, value_name = "BYTES", default_value = "64KiB", env = "LOOPCHAT_MAX_CHAT_MESSAGE",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    max_chat_message: usize,

    /// permessage-deflate (RFC 7692) on /ws and /echo: on accepts browsers' offers,
    /// off answers every handshake without the extension.
    #[arg(long, value_name = "on|off", default_value = "on", env = "LOOPCHAT_COMPRESSION",
          value_parser = parse_on_off, action = clap::ArgAction::Set, help_heading = "Limits")]
    compression: bool,

    /// Messages shorter than this go uncompressed even when compression was negotiated.
    #[arg(long, value_name = "BYTES", default_value = "64", env = "LOOPCHAT_COMPRESSION_THRESHOLD",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    compression_threshold: usize,

    /// Longest chat command line (`ERR too-long` beyond).
    #[arg(long, value_name = "BYTES", default_value = "4KiB", env = "LOOPCHAT_MAX_LINE",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    max_line: usize,

    /// Outbox size beyond which chat lines to a slow reader are dropped (and counted).
    #[arg(long, value_name = "BYTES", default_value = "512KiB", env = "LOOPCHAT_OUTBOX_SOFT",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    outbox_soft: usize,

    /// Queued plus dropped bytes at which a slow reader is disconnected (at least --outbox-soft).
    #[arg(long, value_name = "BYTES", default_value = "4MiB", env = "LOOPCHAT_OUTBOX_HARD",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    outbox_hard: usize,

    /// A reader losing lines this long without its outbox draining once is disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "LOOPCHAT_OUTBOX_GRACE",
          value_parser = loopchat::cli::parse_duration, help_heading = "Limits")]
    outbox_grace: Duration,

    /// Bytes all outboxes together may hold; past it, lines to the readers furthest behind are dropped first.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", env = "LOOPCHAT_OUTBOX_TOTAL",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    outbox_total: usize,

    /// SO_SNDBUF of accepted sockets (0 = the kernel's self-tuning default).
    #[arg(long, value_name = "BYTES", default_value = "0", env = "LOOPCHAT_SEND_BUFFER",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    send_buffer: usize,

    /// Bytes read from one connection per loop turn (fairness against flooders).
    #[arg(long, value_name = "BYTES", default_value = "256KiB", env = "LOOPCHAT_READ_BUDGET",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Limits")]
    read_budget: usize,

    /// Chat commands per second per connection (0 = no limit); bursts of the same size pass.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50,
        env = "LOOPCHAT_RATE_LIMIT",
        help_heading = "Limits"
    )]
    rate_limit: u32,

    /// Rooms with more members than this send JOINED/LEFT only to the subject.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        env = "LOOPCHAT_PRESENCE_LIMIT",
        help_heading = "Limits"
    )]
    presence_limit: usize,

    /// Messages kept per room for /history and resume (0 = no history; at most 100000).
    #[arg(long, value_name = "N", default_value_t = 100, env = "LOOPCHAT_HISTORY",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000),
          help_heading = "History and sessions")]
    history: usize,

    /// Kept messages older than this are dropped (0 = kept until pushed out).
    #[arg(long, value_name = "DURATION", default_value = "0s", env = "LOOPCHAT_HISTORY_TTL",
          value_parser = loopchat::cli::parse_duration, help_heading = "History and sessions")]
    history_ttl: Duration,

    /// Bytes all rooms' history may hold together; a room over it drops its own oldest first.
    #[arg(long, value_name = "BYTES", default_value = "64MiB", env = "LOOPCHAT_HISTORY_BYTES",
          value_parser = loopchat::cli::parse_bytes, help_heading = "History and sessions")]
    history_bytes: usize,

    /// How long a dropped `resume` session keeps its nick and rooms (0 = no resume); with
    /// `--redis` it can be resumed on any node.
    #[arg(long, value_name = "DURATION", default_value = "2m", env = "LOOPCHAT_SESSION_TTL",
          value_parser = loopchat::cli::parse_duration, help_heading = "History and sessions")]
    session_ttl: Duration,

    /// Dropped sessions kept at once; beyond it a drop ends the session at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        env = "LOOPCHAT_MAX_SESSIONS",
        help_heading = "History and sessions"
    )]
    max_sessions: usize,

    /// Rooms one connection may be in at once (`ERR bad-room` beyond).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 32,
        env = "LOOPCHAT_MAX_ROOMS",
        help_heading = "Limits"
    )]
    max_rooms: usize,

    /// Rooms that may exist at once; a join that would create one more gets `ERR bad-room`.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        env = "LOOPCHAT_MAX_ROOMS_TOTAL",
        help_heading = "Limits"
    )]
    max_rooms_total: usize,

    /// Rate-limit tokens one /rooms or /who takes (of the --rate-limit burst).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        env = "LOOPCHAT_QUERY_COST",
        help_heading = "Limits"
    )]
    query_cost: u32,

    /// Interval between WebSocket pings (0 = no pings); shorter than --idle-timeout.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "LOOPCHAT_PING_INTERVAL",
          value_parser = loopchat::cli::parse_duration, help_heading = "Timers")]
    ping_interval: Duration,

    /// Close connections that sent nothing for this long (0 = never).
    #[arg(long, value_name = "DURATION", default_value = "90s", env = "LOOPCHAT_IDLE_TIMEOUT",
          value_parser = loopchat::cli::parse_duration, help_heading = "Timers")]
    idle_timeout: Duration,

    /// Time allowed from accept to a complete request head.
    #[arg(long, value_name = "DURATION", default_value = "10s", env = "LOOPCHAT_HANDSHAKE_TIMEOUT",
          value_parser = loopchat::cli::parse_duration, help_heading = "Timers")]
    handshake_timeout: Duration,

    /// Time allowed for a peer to answer our close frame.
    #[arg(long, value_name = "DURATION", default_value = "5s", env = "LOOPCHAT_CLOSE_TIMEOUT",
          value_parser = loopchat::cli::parse_duration, help_heading = "Timers")]
    close_timeout: Duration,

    /// Longest wait for clients at shutdown (SIGINT/SIGTERM; a second signal exits at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", env = "LOOPCHAT_SHUTDOWN_TIMEOUT",
          value_parser = loopchat::cli::parse_duration, help_heading = "Timers")]
    shutdown_timeout: Duration,

    /// Join a cluster through Redis: redis://[[user]:password@]host[:port][/db]
    /// (the host is resolved once, at start).
    #[arg(
        long,
        value_name = "URL",
        env = "LOOPCHAT_REDIS",
        help_heading = "Cluster"
    )]
    redis: Option<loopchat::cluster::RedisUrl>,

    /// Lifetime of a cluster nick registration in Redis (at least 300ms); each node
    /// refreshes its nicks every third of it, so a crashed node's nicks are free after it.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "LOOPCHAT_REDIS_NICK_TTL",
          value_parser = loopchat::cli::parse_duration, help_heading = "Cluster")]
    redis_nick_ttl: Duration,

    /// Bytes queued toward Redis (at least 64KiB); beyond, messages are dropped and counted.
    #[arg(long, value_name = "BYTES", default_value = "8MiB", env = "LOOPCHAT_REDIS_BUFFER",
          value_parser = loopchat::cli::parse_bytes, help_heading = "Cluster")]
    redis_buffer: usize,

    /// Longest wait for the other nodes' answers to /who and /rooms, and for the
    /// registry to confirm a requested nick (then: a guest nick, fail closed).
    #[arg(long, value_name = "DURATION", default_value = "500ms",
          env = "LOOPCHAT_REDIS_QUERY_TIMEOUT", value_parser = loopchat::cli::parse_duration,
          help_heading = "Cluster")]
    redis_query_timeout: Duration,

    #[command(flatten)]
    auth: loopchat::server::AuthArgs,

    /// A file holding the cluster's shared secret (at least 16 bytes; one
    /// trailing newline is ignored): every payload between nodes is signed with
    /// HMAC-SHA256, unsigned or badly signed ones are dropped and counted.
    #[arg(
        long,
        value_name = "FILE",
        env = "LOOPCHAT_CLUSTER_SECRET_FILE",
        help_heading = "Cluster"
    )]
    cluster_secret_file: Option<std::path::PathBuf>,

    /// Least severe log level written to stderr.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        env = "LOOPCHAT_LOG_LEVEL",
        ignore_case = true,
        help_heading = "Logging"
    )]
    log_level: LogLevel,

    /// Log line format: `text` (dated lines for people) or `json` (one object per
    /// line for log shippers such as Filebeat).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "text",
        env = "LOOPCHAT_LOG_FORMAT",
        ignore_case = true,
        help_heading = "Logging",
        hide_possible_values = true
    )]
    log_format: loopchat::logging::Format,
}

/// `--log-level` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> LevelFilter {
        match l {
            LogLevel::Off => LevelFilter::Off,
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

const AFTER_HELP: &str = "\
Sizes (BYTES) take a unit, case-insensitive: 4096, 512k, 64KiB, 16MiB, 1GiB (k, m, g are
1024-based; KB, MB, GB are 1000-based). Durations take a unit: 500ms, 30s, 5m, 1h (a bare
number is seconds). Every server flag can be set in the environment as LOOPCHAT_<FLAG>,
e.g. LOOPCHAT_MAX_CONNECTIONS=50000 or LOOPCHAT_REUSE_PORT=true; the command line wins.
Settings that cannot work (--max-connections 0, --outbox-hard below --outbox-soft, ...)
are refused at start with exit status 2.";

/// The cluster secret: the file's bytes without one trailing line ending.
fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut s = std::fs::read(path).map_err(|e| e.to_string())?;
    if s.last() == Some(&b'\n') {
        s.pop();
        if s.last() == Some(&b'\r') {
            s.pop();
        }
    }
    if s.len() < 16 {
        return Err(format!(
            "the secret is {} bytes; at least 16 are needed",
            s.len()
        ));
    }
    Ok(s)
}

/// `on` or `off` (also `true`/`false`, `1`/`0`).
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Client(args)) => loopchat::client::run(args),
        Some(Cmd::Load(args)) => loopchat::load::run(args),
        Some(Cmd::Token(args)) => loopchat::token_tool::run(args),
        None => serve(cli.serve),
    }
}

/// Refuse a setting the way clap refuses a malformed one: message on stderr, exit 2.
fn refuse(msg: String) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .exit()
}

fn serve(cli: ServeArgs) -> ExitCode {
    let redis = match &cli.redis {
        None => None,
        Some(url) => {
            // Resolved here, before the loop, so the loop never blocks on DNS.
            let addr = match (url.host.as_str(), url.port).to_socket_addrs() {
                Ok(mut a) => a.next(),
                Err(e) => refuse(format!("cannot resolve the Redis host in {url}: {e}")),
            };
            let Some(addr) = addr else {
                refuse(format!("the Redis host in {url} has no address"));
            };
            let secret = match &cli.cluster_secret_file {
                None => None,
                Some(path) => match read_secret(path) {
                    Ok(s) => Some(s),
                    // Before the logger exists: refused like a bad flag.
                    Err(e) => refuse(format!("--cluster-secret-file {}: {e}", path.display())),
                },
            };
            Some(ClusterConfig {
                secret,
                username: url.username.clone(),
                password: url.password.clone(),
                db: url.db,
                nick_ttl: cli.redis_nick_ttl,
                max_buffer: cli.redis_buffer,
                query_timeout: cli.redis_query_timeout,
                ..ClusterConfig::new(addr)
            })
        }
    };
    let mut cfg = Config {
        listen: cli.listen,
        line_listen: cli.line_listen,
        metrics_listen: cli.metrics_listen,
        reuse_port: cli.reuse_port,
        allow_origin: cli.allow_origin,
        max_connections: cli.max_connections,
        max_per_ip: cli.max_per_ip,
        trust_proxy: cli.trust_proxy,
        max_header_bytes: cli.max_header_bytes,
        max_message: cli.max_message,
        max_chat_message: cli.max_chat_message,
        compression: cli.compression,
        compression_threshold: cli.compression_threshold,
        outbox_soft: cli.outbox_soft,
        outbox_hard: cli.outbox_hard,
        outbox_grace: cli.outbox_grace,
        outbox_total: cli.outbox_total,
        send_buffer: cli.send_buffer,
        read_budget: cli.read_budget,
        ping_interval: cli.ping_interval,
        idle_timeout: cli.idle_timeout,
        handshake_timeout: cli.handshake_timeout,
        close_timeout: cli.close_timeout,
        shutdown_timeout: cli.shutdown_timeout,
        handle_signals: true,
        chat: ChatConfig {
            presence_limit: cli.presence_limit,
            max_rooms: cli.max_rooms,
            max_rooms_total: cli.max_rooms_total,
            query_cost: cli.query_cost,
            rate_limit: cli.rate_limit,
            history: loopchat::chat::history::HistoryConfig {
                keep: cli.history,
                ttl_ms: cli.history_ttl.as_millis() as u64,
                max_bytes: cli.history_bytes,
            },
            session_ttl_ms: cli.session_ttl.as_millis() as u64,
            max_sessions: cli.max_sessions,
            max_line: cli.max_line,
            ..ChatConfig::default()
        },
        redis,
        auth: None,
    };
    if let Err(e) = cli.auth.apply(&mut cfg) {
        refuse(e);
    }
    if let Err(e) = cfg.validate() {
        refuse(e);
    }
    loopchat::logging::Logger::init(cli.log_format, cli.log_level.into());
    match raise_nofile_limit() {
        Ok((old, new)) if old != new => info!("open-file limit raised from {old} to {new}"),
        Ok((_, n)) => info!("open-file limit {n}"),
        Err(e) => error!("could not read the open-file limit: {e}"),
    }
    let server = match Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Tests and scripts read this line (stdout) to learn the bound port.
    println!("listening on {}", server.local_addr());
    if let Some(a) = server.line_addr() {
        println!("line protocol on {a}");
    }
    if let Some(a) = server.metrics_addr() {
        println!("metrics on {a}");
    }
    info!(
        version = env!("CARGO_PKG_VERSION"), listen:% = server.local_addr();
        "loopchat {} serving http://{}/ (chat at /ws, echo at /echo)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
