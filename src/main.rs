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

/// Server flags (the default command).
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address for HTTP and WebSocket clients.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,

    /// Also accept plain-TCP chat clients (one command per line, e.g. `nc`) on ADDR.
    #[arg(long, value_name = "ADDR")]
    line_listen: Option<SocketAddr>,

    /// Set SO_REUSEPORT so several processes share the port (one per core).
    #[arg(long)]
    reuse_port: bool,

    /// Browser origin accepted besides same-origin (repeatable, or comma-separated); `*` accepts all.
    #[arg(long, value_name = "ORIGIN", value_delimiter = ',')]
    allow_origin: Vec<String>,

    /// Most connections held at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_connections: usize,

    /// Most connections from one IP address (0 = no limit); more are answered 429.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_per_ip: usize,

    /// Proxies (addresses or blocks like 10.0.0.0/8, repeatable or comma-separated) whose
    /// X-Forwarded-For names the client for per-IP limits and logs.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    trust_proxy: Vec<loopchat::server::IpNet>,

    /// Largest HTTP request head in bytes (431 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 8192)]
    max_header_bytes: usize,

    /// Largest WebSocket message on /echo, in bytes (close 1009 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message: usize,

    /// Largest WebSocket message on /ws, in bytes (close 1009 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    max_chat_message: usize,

    /// Longest chat command line in bytes (`ERR too-long` beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    max_line: usize,

    /// Outbox bytes beyond which chat lines to a slow reader are dropped (and counted).
    #[arg(long, value_name = "BYTES", default_value_t = 512 * 1024)]
    outbox_soft: usize,

    /// Queued plus dropped bytes at which a slow reader is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    outbox_hard: usize,

    /// Bytes read from one connection per loop turn (fairness against flooders).
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    read_budget: usize,

    /// Chat commands per second per connection (0 = no limit); bursts of the same size pass.
    #[arg(long, value_name = "N", default_value_t = 50)]
    rate_limit: u32,

    /// Rooms with more members than this send JOINED/LEFT only to the subject.
    #[arg(long, value_name = "N", default_value_t = 100)]
    presence_limit: usize,

    /// Rooms one connection may be in at once (`ERR bad-room` beyond).
    #[arg(long, value_name = "N", default_value_t = 32)]
    max_rooms: usize,

    /// Rooms that may exist at once; a join that would create one more gets `ERR bad-room`.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_rooms_total: usize,

    /// Rate-limit tokens one /rooms or /who takes (of the --rate-limit burst).
    #[arg(long, value_name = "N", default_value_t = 10)]
    query_cost: u32,

    /// Interval between WebSocket pings (0 = no pings).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = loopchat::cli::parse_duration)]
    ping_interval: Duration,

    /// Close connections that sent nothing for this long (0 = never).
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = loopchat::cli::parse_duration)]
    idle_timeout: Duration,

    /// Time allowed from accept to a complete request head.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = loopchat::cli::parse_duration)]
    handshake_timeout: Duration,

    /// Time allowed for a peer to answer our close frame.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = loopchat::cli::parse_duration)]
    close_timeout: Duration,

    /// Longest wait for clients at shutdown (SIGINT/SIGTERM; a second signal exits at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = loopchat::cli::parse_duration)]
    shutdown_timeout: Duration,

    /// Join a cluster through Redis: redis://[[user]:password@]host[:port][/db]
    /// (the host is resolved once, at start).
    #[arg(long, value_name = "URL")]
    redis: Option<loopchat::cluster::RedisUrl>,

    /// Lifetime of a cluster nick registration in Redis; each node refreshes its
    /// nicks every third of it, so a crashed node's nicks are free after it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = loopchat::cli::parse_duration)]
    redis_nick_ttl: Duration,

    /// Bytes queued toward Redis per connection; beyond, messages are dropped and counted.
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    redis_buffer: usize,

    /// Longest wait for the other nodes' answers to /who and /rooms.
    #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = loopchat::cli::parse_duration)]
    redis_query_timeout: Duration,

    #[command(flatten)]
    auth: loopchat::server::AuthArgs,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: LevelFilter,
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

/// Byte limits past this are refused at start: outbox offsets are 32-bit to keep
/// the connection entry small, and no chat needs a message that large.
const MAX_BYTES_FLAG: usize = 1 << 30;

fn serve(cli: ServeArgs) -> ExitCode {
    for (flag, v) in [
        ("--max-message", cli.max_message),
        ("--max-chat-message", cli.max_chat_message),
        ("--outbox-soft", cli.outbox_soft),
        ("--outbox-hard", cli.outbox_hard),
        ("--max-header-bytes", cli.max_header_bytes),
        ("--max-line", cli.max_line),
        ("--read-budget", cli.read_budget),
    ] {
        if v > MAX_BYTES_FLAG {
            eprintln!("loopchat: {flag} {v} is over the limit of {MAX_BYTES_FLAG} bytes (1 GiB)");
            return ExitCode::from(2);
        }
    }
    let _ = simplelog::TermLogger::init(
        cli.log_level,
        simplelog::ConfigBuilder::new()
            .set_target_level(LevelFilter::Off)
            .set_thread_level(LevelFilter::Off)
            .build(),
        simplelog::TerminalMode::Stderr,
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            simplelog::ColorChoice::Auto
        } else {
            simplelog::ColorChoice::Never
        },
    );
    match raise_nofile_limit() {
        Ok((old, new)) if old != new => info!("open-file limit raised from {old} to {new}"),
        Ok((_, n)) => info!("open-file limit {n}"),
        Err(e) => error!("could not read the open-file limit: {e}"),
    }
    let redis = match &cli.redis {
        None => None,
        Some(url) => {
            // Resolved here, before the loop, so the loop never blocks on DNS.
            let addr = match (url.host.as_str(), url.port).to_socket_addrs() {
                Ok(mut a) => a.next(),
                Err(e) => {
                    error!("cannot resolve the Redis host in {url}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let Some(addr) = addr else {
                error!("the Redis host in {url} has no address");
                return ExitCode::FAILURE;
            };
            Some(ClusterConfig {
                username: url.username.clone(),
                password: url.password.clone(),
                db: url.db,
                nick_ttl: cli.redis_nick_ttl.max(Duration::from_millis(300)),
                max_buffer: cli.redis_buffer.max(64 * 1024),
                query_timeout: cli.redis_query_timeout,
                ..ClusterConfig::new(addr)
            })
        }
    };
    let mut cfg = Config {
        listen: cli.listen,
        line_listen: cli.line_listen,
        reuse_port: cli.reuse_port,
        allow_origin: cli.allow_origin,
        max_connections: cli.max_connections,
        max_per_ip: cli.max_per_ip,
        trust_proxy: cli.trust_proxy,
        max_header_bytes: cli.max_header_bytes,
        max_message: cli.max_message,
        max_chat_message: cli.max_chat_message,
        outbox_soft: cli.outbox_soft,
        outbox_hard: cli.outbox_hard.max(cli.outbox_soft),
        read_budget: cli.read_budget.max(1),
        ping_interval: cli.ping_interval,
        idle_timeout: cli.idle_timeout,
        handshake_timeout: cli.handshake_timeout,
        close_timeout: cli.close_timeout,
        shutdown_timeout: cli.shutdown_timeout,
        handle_signals: true,
        chat: ChatConfig {
            presence_limit: cli.presence_limit,
            max_rooms: cli.max_rooms.max(1),
            max_rooms_total: cli.max_rooms_total.max(1),
            query_cost: cli.query_cost,
            rate_limit: cli.rate_limit,
            max_line: cli.max_line,
            ..ChatConfig::default()
        },
        redis,
        auth: None,
    };
    if let Err(e) = cli.auth.apply(&mut cfg) {
        eprintln!("loopchat: {e}");
        return ExitCode::from(2);
    }
    let server = match Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    // Tests and scripts read this line (stdout) to learn the bound port.
    println!("listening on {}", server.local_addr());
    if let Some(a) = server.line_addr() {
        println!("line protocol on {a}");
    }
    info!(
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
