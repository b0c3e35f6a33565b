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
            reuse_port: false,
            allow_origin: Vec::new(),
            max_connections: 100_000,
            max_per_ip: 0,
            trust_proxy: Vec::new(),
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
            redis: None,
            auth: None,
        }
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
