//! The write path: flush every dirty connection once at the end of the turn,
//! give drained buffers back, remove the dead.

use std::io::{self, Write};

use log::debug;

use super::conn::{Phase, Then, COUNTED, DIRTY, IN_CHAT, PAUSED, RELEASE, WRITABLE};
use super::out::kill;
use super::{Server, KEEP_OUTBOX};

impl Server {
    /// Flush dirty connections, remove dead ones; repeat while closing one
    /// produces output for others (LEFT notices).
    ///
    /// Connections that end this turn are flushed and removed first, and the
    /// others only then: the notices their removal queues (LEFT to a whole
    /// room) ride in the same write as the rest of the turn's output for each
    /// member, not in a second write per member. In a room with churn that is
    /// one `sendto` per member per turn instead of two.
    pub(super) fn finish_turn(&mut self) {
        // Bounded: each pass removes the dead it found, and a connection dies once.
        loop {
            let mut dirty = std::mem::take(&mut self.ctx.dirty);
            if !self.ctx.dead.is_empty() || dirty.iter().any(|&id| self.ends_at_flush(id)) {
                dirty.retain(|&id| {
                    if self.ends_at_flush(id) {
                        self.flush(id);
                        false
                    } else {
                        true
                    }
                });
                self.remove_dead();
            }
            for &id in &dirty {
                self.flush(id);
            }
            dirty.clear();
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty;
            }
            if self.ctx.dead.is_empty() && self.ctx.dirty.is_empty() {
                return;
            }
            self.remove_dead();
        }
    }

    /// True when flushing `id` may end it: its last bytes are queued
    /// (`Flushing { then: Close }`), or it is already dead.
    fn ends_at_flush(&self, id: usize) -> bool {
        self.conns.get(id).is_some_and(|c| {
            matches!(
                c.phase(),
                Phase::Flushing { then: Then::Close } | Phase::Dead
            )
        })
    }

    fn remove_dead(&mut self) {
        let mut dead = std::mem::take(&mut self.ctx.dead);
        for &id in &dead {
            self.remove(id);
        }
        dead.clear();
        if self.ctx.dead.is_empty() {
            self.ctx.dead = dead;
        }
    }

    pub(super) fn flush(&mut self, id: usize) {
        self.write_out(id);
        let left = self
            .conns
            .get(id)
            .filter(|c| !c.is_dead())
            .map_or(0, |c| c.pending());
        self.ctx.queued.set(id, left);
    }

    fn write_out(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.clear(DIRTY);
        if c.is_dead() {
            return;
        }
        // Its last bytes: the socket is closed as soon as they are written.
        let last = c.phase() == Phase::Flushing { then: Then::Close };
        while c.has(WRITABLE) && c.pending() > 0 {
            let rest = &c.outbox[c.out_pos as usize..];
            let written = match self.capture.as_mut() {
                Some(v) => {
                    v.extend_from_slice(rest);
                    Ok(rest.len())
                }
                None if last => crate::sys::send_last(&mut c.sock, rest),
                None => c.sock.write(rest),
            };
            match written {
                Ok(0) => {
                    kill(&mut self.ctx, id, c);
                    return;
                }
                Ok(n) => {
                    c.out_pos += n as u32;
                    self.ctx.metrics.bytes_out += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.clear(WRITABLE),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(conn = id, peer:% = c.ip; "write: {e}");
                    kill(&mut self.ctx, id, c);
                    return;
                }
            }
        }
        let mut refile = false;
        if c.pending() == 0 {
            if c.has(RELEASE) {
                c.clear(RELEASE);
                c.outbox_written(&mut self.ctx.outbox_bytes, 0);
            } else {
                c.outbox_written(&mut self.ctx.outbox_bytes, KEEP_OUTBOX);
            }
            match c.phase() {
                Phase::Flushing { then: Then::Close } => {
                    kill(&mut self.ctx, id, c);
                    return;
                }
                Phase::Flushing { then: Then::Drain } => {
                    // Half-close and wait for the peer's end (see `Then::Drain`).
                    if self.capture.is_none() && c.sock.shutdown(std::net::Shutdown::Write).is_err()
                    {
                        kill(&mut self.ctx, id, c);
                        return;
                    }
                    c.draining(self.ctx.tick);
                }
                _ => refile = c.outbox_emptied(self.ctx.tick, &self.ctx.timeouts),
            }
        } else if c.out_pos as usize > c.outbox.len() / 2 {
            // Compact so the written prefix does not pin memory; a buffer far
            // larger than what is left gives the difference back.
            c.outbox.drain(..c.out_pos as usize);
            c.out_pos = 0;
            if c.outbox.capacity() > 4 * c.outbox.len().max(KEEP_OUTBOX) {
                let before = c.outbox.capacity();
                c.outbox.shrink_to(2 * c.outbox.len());
                self.ctx.outbox_bytes = self
                    .ctx
                    .outbox_bytes
                    .saturating_sub(before - c.outbox.capacity());
            }
        }
        let under_budget = self.ctx.outbox_bytes < self.ctx.cfg.outbox_total;
        if c.has(PAUSED)
            && c.pending() <= self.ctx.cfg.outbox_soft / 2
            && (c.pending() == 0 || under_budget)
        {
            c.clear(PAUSED);
            self.ctx.read_again.push(id);
        }
        if refile || c.phase() != Phase::Open {
            self.schedule(id);
        }
    }

    /// Flush now and, when everything was written, free the outbox: for output
    /// that is not part of a stream (a handshake answer, a ping to an idle
    /// connection), whose buffer would otherwise sit idle until the timer.
    pub(super) fn flush_and_release(&mut self, id: usize) {
        self.flush(id);
        if let Some(c) = self.conns.get_mut(id) {
            if c.pending() == 0 && !c.is_dead() {
                c.release_outbox(&mut self.ctx.outbox_bytes);
            }
        }
    }

    pub(super) fn remove(&mut self, id: usize) {
        if !self.conns.contains(id) {
            return;
        }
        #[cfg_attr(target_os = "linux", allow(unused_mut))]
        let mut c = self.conns.remove(id);
        self.ctx.outbox_bytes = self.ctx.outbox_bytes.saturating_sub(c.outbox.capacity());
        debug_assert!(
            !self.conns.is_empty() || self.ctx.outbox_bytes == 0,
            "outbox accounting drifted by {} bytes",
            self.ctx.outbox_bytes
        );
        // Closing the socket (dropping `c` below) takes it out of the epoll
        // set: nothing duplicates these descriptors, so an EPOLL_CTL_DEL first
        // is one syscall per connection for nothing.
        #[cfg(not(target_os = "linux"))]
        let _ = self.poll.registry().deregister(&mut c.sock);
        self.ctx.metrics.closed(c.kind);
        self.ctx.queued.set(id, 0);
        match self.hub.nick(id) {
            Some(nick) => debug!(conn = id, peer:% = c.ip, kind:? = c.kind, nick = nick; "closed"),
            None => debug!(conn = id, peer:% = c.ip, kind:? = c.kind; "closed"),
        }
        if c.has(COUNTED) {
            self.forget_ip(c.ip);
        }
        if c.has(IN_CHAT) {
            let (hub, mut out) = self.chat();
            hub.disconnect(id, &mut out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::conn::{Conn, Kind, IN_CHAT};
    use super::super::out::kill;
    use super::super::{fuzzing, Server};

    /// Three line clients in one room, output captured instead of written.
    fn room_of_three() -> (Server, Vec<usize>, std::net::TcpStream) {
        let mut s = Server::bind(fuzzing::config()).unwrap();
        s.capture = Some(Vec::new());
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (peer, _) = l.accept().unwrap();
        let ip = local.local_addr().unwrap().ip();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let sock = mio::net::TcpStream::from_std(local.try_clone().unwrap());
            let mut c = Conn::new(sock, ip, Kind::Line, 0);
            c.set(IN_CHAT);
            let id = s.conns.insert(c);
            let (hub, mut out) = s.chat();
            hub.connect(id, None, None, 0, &mut out);
            ids.push(id);
        }
        s.finish_turn();
        s.capture.as_mut().unwrap().clear();
        (s, ids, peer)
    }

    /// The capture is the concatenation of every write in order: one write
    /// per connection shows as each member's lines together.
    #[test]
    fn a_turns_left_notices_go_in_the_same_write_as_its_other_output() {
        let (mut s, ids, _peer) = room_of_three();
        // One turn: the first says something, the third's connection ends.
        s.line(ids[0], b"hello");
        kill(&mut s.ctx, ids[2], &mut s.conns[ids[2]]);
        s.finish_turn();
        let out = String::from_utf8(s.capture.take().unwrap()).unwrap();
        let kinds: Vec<&str> = out.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(kinds, ["MSG", "LEFT", "MSG", "LEFT"], "{out}");
        assert!(!s.conns.contains(ids[2]));
    }
}
