//! `--metrics-listen ADDR`: `/metrics` and `/healthz` on a listener of their own,
//! for a scraper on a private address (and, with `--reuse-port`, one port per
//! process, so every scrape reaches the process it names).
//!
//! Kept apart from the public connections on purpose: scrapers are not counted
//! in `--max-connections` (the server is most worth watching when it is full),
//! do not appear in the connection metrics, and cannot be starved by clients.
//! Each scraper sends one request and gets one answer, then the connection is
//! closed. At most [`MAX_SCRAPERS`] at once; each is dropped after
//! [`SCRAPE_TIMEOUT`], and its request head is capped at [`MAX_REQUEST`] bytes.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::debug;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::Server;
use crate::ws::handshake::write_response;

/// The metrics listener's token.
pub(super) const METRICS_LISTENER: Token = Token(usize::MAX - 7);
/// Scraper `i` has token `SCRAPER_BASE + i`: far above any connection id.
pub(super) const SCRAPER_BASE: usize = usize::MAX / 2;
/// Scrapers served at once; more are closed at accept.
pub(super) const MAX_SCRAPERS: usize = 16;
/// Longest a scraper may take to send its request and read the answer.
pub(super) const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head a scraper may send.
pub(super) const MAX_REQUEST: usize = 4096;

struct Scraper {
    sock: TcpStream,
    /// The request head so far, then the answer.
    buf: Vec<u8>,
    /// Bytes of the answer written; `None` while reading the request.
    written: Option<usize>,
    since: Instant,
}

/// What a complete request asks for.
pub(super) enum Ask {
    Metrics,
    Health,
    NotFound,
    BadMethod,
}

/// The listener and its scrapers.
pub(super) struct MetricsPort {
    listener: TcpListener,
    scrapers: Slab<Scraper>,
    /// The accept budget ran out with connections possibly left in the
    /// backlog (edge-triggered: no new event will say so).
    more: bool,
}

/// Connections taken from the backlog per call, so a flood of connects on
/// this port cannot hold the loop.
const ACCEPT_BUDGET: usize = 4 * MAX_SCRAPERS;

/// Whether `token` belongs to a scraper, and which.
pub(super) fn scraper_of(token: Token) -> Option<usize> {
    token
        .0
        .checked_sub(SCRAPER_BASE)
        .filter(|i| *i < MAX_SCRAPERS)
}

impl MetricsPort {
    pub(super) fn new(listener: TcpListener) -> Self {
        MetricsPort {
            listener,
            scrapers: Slab::with_capacity(MAX_SCRAPERS),
            more: false,
        }
    }

    pub(super) fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// True while a scraper is open (the loop then wakes for its timeout).
    pub(super) fn busy(&self) -> bool {
        !self.scrapers.is_empty()
    }

    /// True when the last accept left connections in the backlog: call
    /// [`accept`](Self::accept) again next turn without waiting for an event.
    pub(super) fn accept_pending(&self) -> bool {
        self.more
    }

    /// Accept every pending scraper (closing those beyond the cap).
    pub(super) fn accept(&mut self, registry: &Registry, now: Instant) {
        self.more = true;
        for _ in 0..ACCEPT_BUDGET {
            let (mut sock, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.more = false;
                    return;
                }
                Err(e) => {
                    // Out of descriptors, most likely: the main listener's
                    // back-off applies; retry on the next event.
                    debug!("metrics accept: {e}");
                    self.more = false;
                    return;
                }
            };
            if self.scrapers.len() >= MAX_SCRAPERS {
                debug!(peer:% = peer; "metrics listener full: closing a scraper");
                continue;
            }
            let entry = self.scrapers.vacant_entry();
            let token = Token(SCRAPER_BASE + entry.key());
            if registry
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                .is_ok()
            {
                entry.insert(Scraper {
                    sock,
                    buf: Vec::new(),
                    written: None,
                    since: now,
                });
            }
        }
    }

    /// Read scraper `i`'s request; `Some` once it is complete.
    pub(super) fn read(&mut self, registry: &Registry, i: usize) -> Option<Ask> {
        let s = self.scrapers.get_mut(i)?;
        if s.written.is_some() {
            return None;
        }
        let mut chunk = [0u8; 1024];
        // Bounded: each pass grows `buf`, which is capped below.
        loop {
            match s.sock.read(&mut chunk) {
                Ok(0) => {
                    self.drop_scraper(registry, i);
                    return None;
                }
                Ok(n) => {
                    s.buf.extend_from_slice(&chunk[..n]);
                    if s.buf.len() > MAX_REQUEST {
                        self.drop_scraper(registry, i);
                        return None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_scraper(registry, i);
                    return None;
                }
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&s.buf) {
            Ok(httparse::Status::Partial) => None,
            Err(_) => {
                self.drop_scraper(registry, i);
                None
            }
            Ok(httparse::Status::Complete(_)) => {
                let head = req.method == Some("HEAD");
                if req.method != Some("GET") && !head {
                    return Some(Ask::BadMethod);
                }
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                Some(match path {
                    "/metrics" => Ask::Metrics,
                    "/healthz" => Ask::Health,
                    _ => Ask::NotFound,
                })
            }
        }
    }

    /// True when scraper `i` asked with `HEAD` (answer without a body).
    pub(super) fn is_head(&self, i: usize) -> bool {
        self.scrapers
            .get(i)
            .is_some_and(|s| s.buf.starts_with(b"HEAD "))
    }

    /// Queue the answer for scraper `i` and start writing it.
    pub(super) fn answer(
        &mut self,
        registry: &Registry,
        i: usize,
        status: u16,
        headers: &[(&str, &str)],
        ctype: &str,
        body: &[u8],
    ) {
        let head = self.is_head(i);
        let Some(s) = self.scrapers.get_mut(i) else {
            return;
        };
        s.buf.clear();
        write_response(&mut s.buf, status, ctype, headers, body);
        if head {
            // Same headers (Content-Length included), no body: RFC 9110 9.3.2.
            s.buf.truncate(s.buf.len() - body.len());
        }
        s.written = Some(0);
        self.write(registry, i);
    }

    /// Write what scraper `i` can take; close it once the answer is out.
    pub(super) fn write(&mut self, registry: &Registry, i: usize) {
        let Some(s) = self.scrapers.get_mut(i) else {
            return;
        };
        let Some(mut done) = s.written else {
            return;
        };
        // Bounded: each pass writes at least one byte or stops.
        while done < s.buf.len() {
            match s.sock.write(&s.buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.written = Some(done);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.drop_scraper(registry, i);
    }

    /// Drop scrapers older than [`SCRAPE_TIMEOUT`].
    pub(super) fn expire(&mut self, registry: &Registry, now: Instant) {
        let old: Vec<usize> = self
            .scrapers
            .iter()
            .filter(|(_, s)| now.duration_since(s.since) >= SCRAPE_TIMEOUT)
            .map(|(i, _)| i)
            .collect();
        for i in old {
            self.drop_scraper(registry, i);
        }
    }

    fn drop_scraper(&mut self, registry: &Registry, i: usize) {
        if let Some(mut s) = self.scrapers.try_remove(i) {
            let _ = registry.deregister(&mut s.sock);
        }
    }
}

impl Server {
    /// A scraper on the `--metrics-listen` port is readable or writable.
    pub(super) fn scraper_event(&mut self, i: usize, event: &mio::event::Event) {
        let Some(mut port) = self.metrics_port.take() else {
            return;
        };
        let registry = self.poll.registry();
        if event.is_writable() {
            port.write(registry, i);
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            match port.read(registry, i) {
                Some(Ask::Metrics) => {
                    let body = self.render_metrics();
                    let ctype = "text/plain; version=0.0.4";
                    port.answer(registry, i, 200, &[], ctype, body.as_bytes());
                }
                Some(Ask::Health) => port.answer(registry, i, 200, &[], "text/plain", b"ok\n"),
                Some(Ask::NotFound) => {
                    let body = b"not found: this port serves /metrics and /healthz\n";
                    port.answer(registry, i, 404, &[], "text/plain", body)
                }
                Some(Ask::BadMethod) => port.answer(
                    registry,
                    i,
                    405,
                    &[("Allow", "GET, HEAD")],
                    "text/plain",
                    b"method not allowed\n",
                ),
                None => {}
            }
        }
        self.metrics_port = Some(port);
    }
}
