//! Accepting connections: the listeners' budget per turn, the pause when the
//! process runs out of descriptors, the total and per-IP limits.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::conn::{Conn, Kind, COUNTED, PROXIED};
use super::{Server, Starved, ACCEPT_BACKOFF, ACCEPT_BUDGET};
use crate::chat::line::Line;
use crate::chat::ErrorCode;

impl Server {
    pub(super) fn accept(&mut self, line: bool) {
        if self.accept_paused_until.is_some() {
            return;
        }
        for _ in 0..ACCEPT_BUDGET {
            let l = if line {
                self.line_listener.as_ref()
            } else {
                self.listener.as_ref()
            };
            let Some(l) = l else { return };
            match l.accept() {
                Ok((sock, addr)) => {
                    self.end_starved_episode();
                    self.admit(sock, addr, line);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.end_starved_episode();
                    return;
                }
                Err(e) => {
                    self.ctx.metrics.accept_errors += 1;
                    match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            // Once per episode, not every retry: it can last
                            // as long as the connections that fill the table.
                            match self.starved.as_mut() {
                                Some(ep) => ep.failures += 1,
                                None => {
                                    warn!(
                                        "accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} at a time \
                                         until descriptors free up ({} connections open)",
                                        self.conns.len()
                                    );
                                    self.starved = Some(Starved {
                                        since: Instant::now(),
                                        failures: 1,
                                    });
                                }
                            }
                            self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                            return;
                        }
                        // A connection that died in the backlog: try the next one.
                        _ => debug!("accept: {e}"),
                    }
                }
            }
        }
        self.accept_again = true;
    }

    pub(super) fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr, line: bool) {
        let ip = addr.ip();
        if self.conns.len() >= self.ctx.cfg.max_connections {
            self.ctx.metrics.refused("max_connections");
            refuse(&mut sock, line, 503, "server full");
            return;
        }
        // A trusted proxy's connections are counted once its request names the client.
        let proxied = !line && self.ctx.cfg.trust_proxy.iter().any(|n| n.contains(ip));
        if !proxied && !self.count_ip(ip) {
            refuse(
                &mut sock,
                line,
                429,
                "too many connections from your address",
            );
            return;
        }
        // Linux copies TCP_NODELAY from the listener (`sys::listener`).
        #[cfg(not(target_os = "linux"))]
        let _ = sock.set_nodelay(true);
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(id),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            warn!("register: {e}");
            if !proxied {
                self.forget_ip(ip);
            }
            return;
        }
        let kind = if line { Kind::Line } else { Kind::Http };
        let mut c = Conn::new(sock, ip, kind, self.ctx.tick);
        c.set(if proxied { PROXIED } else { COUNTED });
        entry.insert(c);
        self.ctx.metrics.connections_total += 1;
        self.ctx.metrics.opened(kind);
        debug!(conn = id, peer:% = addr.ip(), kind:? = kind; "accepted");
        self.schedule(id);
        if line {
            self.admit_line(id);
        }
    }

    /// Accepting works again: say once how long it did not.
    fn end_starved_episode(&mut self) {
        if let Some(ep) = self.starved.take() {
            warn!(
                "accept: descriptors available again after {} failed accepts over {:.1?} \
                 ({} connections open)",
                ep.failures,
                ep.since.elapsed(),
                self.conns.len()
            );
        }
    }

    /// Count a connection from `ip`; false (and counted as refused) over `--max-per-ip`.
    pub(super) fn count_ip(&mut self, ip: IpAddr) -> bool {
        let max = self.ctx.cfg.max_per_ip;
        if max == 0 {
            return true;
        }
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n as usize >= max {
            self.ctx.metrics.refused("max_per_ip");
            return false;
        }
        *n += 1;
        true
    }

    pub(super) fn forget_ip(&mut self, ip: IpAddr) {
        if self.ctx.cfg.max_per_ip > 0 {
            if let Some(n) = self.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Best effort refusal at accept: one non-blocking write, then close.
fn refuse(sock: &mut TcpStream, line: bool, status: u16, text: &str) {
    let mut buf = Vec::new();
    if line {
        let code = ErrorCode::ServerFull;
        Line::Err { code, text }.write_to(&mut buf, None);
        buf.push(b'\n');
    } else {
        crate::ws::handshake::write_response(&mut buf, status, "text/plain", &[], text.as_bytes());
    }
    let _ = sock.write(&buf);
}
