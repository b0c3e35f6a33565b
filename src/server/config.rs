//! Server settings. Every limit the server enforces lives here, with its default;
//! `main.rs` maps each field to a command-line flag.

use std::net::SocketAddr;
use std::time::Duration;

use crate::chat::ChatConfig;

/// Everything the server needs to run. `Config::default()` is what
/// `loopchat` with no flags uses.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP + WebSocket listener.
    pub listen: SocketAddr,
    /// Optional plain-TCP line-protocol listener.
    pub line_listen: Option<SocketAddr>,
    /// Set SO_REUSEPORT on the listeners so several processes share one port.
    pub reuse_port: bool,
    /// Extra origins accepted besides same-origin; `*` accepts every origin.
    pub allow_origin: Vec<String>,
    /// Connections held at once (all listeners); excess is answered 503 and closed.
    pub max_connections: usize,
    /// Connections per client IP; 0 means no limit. Excess is answered 429.
    pub max_per_ip: usize,
    /// Bytes of an HTTP request head.
    pub max_header_bytes: usize,
    /// Largest WebSocket message (and frame) on `/echo`.
    pub max_message: usize,
    /// Largest WebSocket message (and frame) on `/ws`.
    pub max_chat_message: usize,
    /// Outbox bytes beyond which broadcast chat lines to a connection are dropped.
    pub outbox_soft: usize,
    /// Outbox bytes (queued plus dropped since it last drained) that close a slow consumer.
    pub outbox_hard: usize,
    /// Bytes read from one connection per loop turn, so one flooder cannot starve the rest.
    pub read_budget: usize,
    /// How often an open WebSocket connection is pinged; zero turns pings off.
    pub ping_interval: Duration,
    /// Close a connection that sent nothing for this long; zero turns it off.
    pub idle_timeout: Duration,
    /// Time allowed from accept to a complete request head (slowloris guard).
    pub handshake_timeout: Duration,
    /// Time allowed for the peer to answer our close frame.
    pub close_timeout: Duration,
    /// Longest wait for clients to finish the close handshake at shutdown.
    pub shutdown_timeout: Duration,
    /// Install SIGINT/SIGTERM handlers (the binary does; embedded servers and tests do not).
    pub handle_signals: bool,
    /// Chat settings (presence limit, rate limit, line length).
    pub chat: ChatConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            line_listen: None,
            reuse_port: false,
            allow_origin: Vec::new(),
            max_connections: 100_000,
            max_per_ip: 0,
            max_header_bytes: 8 * 1024,
            max_message: 16 * 1024 * 1024,
            max_chat_message: 64 * 1024,
            outbox_soft: 512 * 1024,
            outbox_hard: 4 * 1024 * 1024,
            read_budget: 256 * 1024,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            handle_signals: false,
            chat: ChatConfig::default(),
        }
    }
}
