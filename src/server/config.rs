//! Server settings. Every limit the server enforces lives here, with its default;
//! `main.rs` maps each field to a command-line flag.

use std::net::{IpAddr, SocketAddr};
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
    /// Optional listener for `/metrics` and `/healthz` only; when set, the public
    /// listener answers 404 for `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// Set SO_REUSEPORT on the listeners so several processes share one port.
    pub reuse_port: bool,
    /// Extra origins accepted besides same-origin; `*` accepts every origin.
    pub allow_origin: Vec<String>,
    /// Connections held at once (all listeners); excess is answered 503 and closed.
    pub max_connections: usize,
    /// Connections per client IP; 0 means no limit. Excess is answered 429.
    pub max_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed: for connections from them, the
    /// client address (for per-IP limits and logs) comes from that header.
    pub trust_proxy: Vec<IpNet>,
    /// Bytes of an HTTP request head.
    pub max_header_bytes: usize,
    /// Largest WebSocket message (and frame) on `/echo`.
    pub max_message: usize,
    /// Largest WebSocket message (and frame) on `/ws`.
    pub max_chat_message: usize,
    /// Accept permessage-deflate (RFC 7692) offers on `/ws` and `/echo`.
    pub compression: bool,
    /// Messages shorter than this go uncompressed even to a peer that
    /// negotiated compression (deflating a few bytes rarely saves any).
    pub compression_threshold: usize,
    /// Outbox bytes beyond which broadcast chat lines to a connection are dropped.
    pub outbox_soft: usize,
    /// Outbox bytes (queued plus dropped since it last drained) that close a slow consumer.
    pub outbox_hard: usize,
    /// A reader that has been losing lines this long without its outbox draining
    /// once is closed.
    pub outbox_grace: Duration,
    /// Bytes all outboxes together may hold (allocated, not only queued); past
    /// it, lines to the readers furthest behind are dropped first.
    pub outbox_total: usize,
    /// SO_SNDBUF of accepted sockets (0 = the kernel's default, which grows to
    /// megabytes per connection): what a slow reader may hold in the kernel
    /// besides its outbox.
    pub send_buffer: usize,
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
    /// Join a cluster through this Redis server (`--redis`); `None` runs alone.
    pub redis: Option<crate::cluster::ClusterConfig>,
    /// Require signed tokens (`--auth-key`); `None` admits everyone as a guest.
    pub auth: Option<super::AuthConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            line_listen: None,
            metrics_listen: None,
            reuse_port: false,
            allow_origin: Vec::new(),
            max_connections: 100_000,
            max_per_ip: 0,
            trust_proxy: Vec::new(),
            max_header_bytes: 8 * 1024,
            max_message: 16 * 1024 * 1024,
            max_chat_message: 64 * 1024,
            compression: true,
            compression_threshold: 64,
            outbox_soft: 512 * 1024,
            outbox_hard: 4 * 1024 * 1024,
            outbox_grace: Duration::from_secs(10),
            outbox_total: 256 * 1024 * 1024,
            send_buffer: 0,
            read_budget: 256 * 1024,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            handle_signals: false,
            chat: ChatConfig::default(),
            redis: None,
            auth: None,
        }
    }
}

/// Byte limits past this are refused: outbox offsets are 32-bit to keep the
/// connection entry small, and no chat needs a message that large.
pub(super) const MAX_BYTES: usize = 1 << 30;

impl Config {
    /// Refuse settings that cannot work, naming the flag and what is valid. The
    /// binary calls this before binding (and exits 2); embedders may too.
    pub fn validate(&self) -> Result<(), String> {
        let bytes = [
            ("--max-header-bytes", self.max_header_bytes, 512),
            ("--max-message", self.max_message, 1),
            ("--max-chat-message", self.max_chat_message, 64),
            ("--max-line", self.chat.max_line, 64),
            ("--outbox-soft", self.outbox_soft, 1),
            ("--outbox-hard", self.outbox_hard, 1),
            ("--read-budget", self.read_budget, 1),
        ];
        for (flag, v, min) in bytes {
            if v < min {
                return Err(format!(
                    "{flag} {v} is too small: it must be at least {min} byte{}",
                    if min == 1 { "" } else { "s" }
                ));
            }
            if v > MAX_BYTES {
                return Err(format!(
                    "{flag} {v} is over the limit of {MAX_BYTES} bytes (1 GiB)"
                ));
            }
        }
        if self.outbox_hard < self.outbox_soft {
            return Err(format!(
                "--outbox-hard ({}) is below --outbox-soft ({}): the hard cap (disconnect) \
                 must be at least the soft cap (drop lines)",
                self.outbox_hard, self.outbox_soft
            ));
        }
        if self.chat.max_rooms == 0 || self.chat.max_rooms_total == 0 {
            return Err(format!(
                "--max-rooms {} / --max-rooms-total {}: both must be at least 1 \
                 (every connection starts in a room)",
                self.chat.max_rooms, self.chat.max_rooms_total
            ));
        }
        if self.outbox_total == 0 {
            return Err(
                "--outbox-total 0 would drop every line to a reader whose socket \
                        is full: use a size such as 256MiB"
                    .into(),
            );
        }
        if self.outbox_grace.is_zero() {
            return Err(
                "--outbox-grace 0 would close a reader at its first dropped line: \
                        use a duration such as 10s"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return Err("--max-connections 0 would refuse every client: use at least 1".into());
        }
        for (flag, d) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--close-timeout", self.close_timeout),
        ] {
            if d.is_zero() {
                return Err(format!(
                    "{flag} 0 would close every connection at once: use a duration such as 5s"
                ));
            }
        }
        if !self.ping_interval.is_zero()
            && !self.idle_timeout.is_zero()
            && self.ping_interval >= self.idle_timeout
        {
            return Err(format!(
                "--ping-interval ({:?}) must be shorter than --idle-timeout ({:?}), or quiet \
                 clients are closed before they are pinged (0 turns either off)",
                self.ping_interval, self.idle_timeout
            ));
        }
        let mut addrs = vec![("--listen", Some(self.listen))];
        addrs.push(("--line-listen", self.line_listen));
        addrs.push(("--metrics-listen", self.metrics_listen));
        for (i, (fa, a)) in addrs.iter().enumerate() {
            for (fb, b) in &addrs[i + 1..] {
                if let (Some(a), Some(b)) = (a, b) {
                    if a == b && a.port() != 0 {
                        return Err(format!("{fa} and {fb} are both {a}: use two ports"));
                    }
                }
            }
        }
        if let Some(r) = &self.redis {
            if r.nick_ttl < Duration::from_millis(300) {
                return Err(format!(
                    "--redis-nick-ttl {:?} is too short: use at least 300ms",
                    r.nick_ttl
                ));
            }
            if r.max_buffer < 64 * 1024 {
                return Err(format!(
                    "--redis-buffer {} is too small: use at least 64KiB",
                    r.max_buffer
                ));
            }
            if r.query_timeout.is_zero() {
                return Err("--redis-query-timeout 0 would answer /who and /rooms \
                            without the other nodes: use a duration such as 500ms"
                    .into());
            }
        }
        Ok(())
    }
}

/// An address block such as `10.0.0.0/8`, `::1/128` or a bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// True when `ip` lies in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or block (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("bad prefix length in `{s}`"))?,
        };
        Ok(IpNet { addr, prefix })
    }
}

/// The client address behind trusted proxies: the right-most `X-Forwarded-For`
/// entry that is not itself a trusted proxy (entries further left can be forged
/// by the client). None when the header holds no usable address.
pub fn client_ip(forwarded_for: &str, trusted: &[IpNet]) -> Option<IpAddr> {
    for part in forwarded_for.rsplit(',') {
        let ip: IpAddr = part.trim().parse().ok()?;
        if !trusted.iter().any(|n| n.contains(ip)) {
            return Some(ip);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_nonsense_is_not() {
        assert_eq!(Config::default().validate(), Ok(()));
        let bad = |f: fn(&mut Config), want: &str| {
            let mut c = Config::default();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        bad(|c| c.chat.max_line = 0, "--max-line");
        bad(|c| c.max_connections = 0, "--max-connections");
        bad(|c| c.chat.max_rooms = 0, "--max-rooms");
        bad(
            |c| {
                c.outbox_soft = 8;
                c.outbox_hard = 4
            },
            "--outbox-hard",
        );
        bad(|c| c.max_message = 2 << 30, "1 GiB");
        bad(
            |c| c.handshake_timeout = Duration::ZERO,
            "--handshake-timeout",
        );
        bad(
            |c| c.ping_interval = Duration::from_secs(100),
            "--ping-interval",
        );
        bad(
            |c| c.metrics_listen = Some(c.listen),
            "--listen and --metrics-listen",
        );
        let c = Config {
            idle_timeout: Duration::ZERO,
            ping_interval: Duration::from_secs(100),
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }

    #[test]
    fn client_ip_skips_trusted_hops_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(client_ip("203.0.113.7", &trusted), ip("203.0.113.7"));
        assert_eq!(
            client_ip("1.1.1.1, 203.0.113.7, 10.0.0.2", &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(client_ip("10.0.0.3, 10.0.0.2", &trusted), None);
        assert_eq!(client_ip("garbage", &trusted), None);
    }
}
