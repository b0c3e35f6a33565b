//! The write path: flush every dirty connection once at the end of the turn,
//! give drained buffers back, remove the dead.

use std::io::{self, Write};

use log::debug;

use super::conn::{Phase, Then, COUNTED, DIRTY, IN_CHAT, PAUSED, WRITABLE};
use super::out::kill;
use super::{Server, KEEP_OUTBOX};

impl Server {
    /// Flush dirty connections, remove dead ones; repeat while closing one
    /// produces output for others (LEFT notices).
    pub(super) fn finish_turn(&mut self) {
        // Bounded: each pass removes the dead it found, and a connection dies once.
        loop {
            let dirty = std::mem::take(&mut self.ctx.dirty);
            for &id in &dirty {
                self.flush(id);
            }
            let mut dirty = dirty;
            dirty.clear();
            if self.ctx.dirty.is_empty() {
                self.ctx.dirty = dirty;
            }
            let dead = std::mem::take(&mut self.ctx.dead);
            if dead.is_empty() && self.ctx.dirty.is_empty() {
                self.ctx.dead = dead;
                return;
            }
            for &id in &dead {
                self.remove(id);
            }
        }
    }

    pub(super) fn flush(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.clear(DIRTY);
        if c.is_dead() {
            return;
        }
        while c.has(WRITABLE) && c.pending() > 0 {
            match c.sock.write(&c.outbox[c.out_pos as usize..]) {
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
                    debug!("{}: write: {e} (id {id})", c.ip);
                    kill(&mut self.ctx, id, c);
                    return;
                }
            }
        }
        if c.pending() == 0 {
            c.out_pos = 0;
            c.dropped = 0;
            if c.outbox.capacity() > KEEP_OUTBOX {
                c.outbox = Vec::new();
            } else {
                c.outbox.clear();
            }
            match c.phase() {
                Phase::Flushing { then: Then::Close } => {
                    kill(&mut self.ctx, id, c);
                    return;
                }
                Phase::Flushing { then: Then::Drain } => {
                    // Half-close and wait for the peer's end (see `Then::Drain`).
                    if c.sock.shutdown(std::net::Shutdown::Write).is_err() {
                        kill(&mut self.ctx, id, c);
                        return;
                    }
                    c.draining(self.ctx.tick);
                }
                _ => c.outbox_emptied(self.ctx.tick),
            }
        } else if c.out_pos as usize > c.outbox.len() / 2 {
            // Compact so the written prefix does not pin memory.
            c.outbox.drain(..c.out_pos as usize);
            c.out_pos = 0;
        }
        if c.has(PAUSED) && c.pending() <= self.ctx.cfg.outbox_soft / 2 {
            c.clear(PAUSED);
            self.ctx.read_again.push(id);
        }
        if c.phase() != Phase::Open {
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
                c.outbox = Vec::new();
                c.out_pos = 0;
            }
        }
    }

    pub(super) fn remove(&mut self, id: usize) {
        if !self.conns.contains(id) {
            return;
        }
        let mut c = self.conns.remove(id);
        let _ = self.poll.registry().deregister(&mut c.sock);
        debug!("{}: closed (id {id}, {:?})", c.ip, c.kind);
        if c.has(COUNTED) {
            self.forget_ip(c.ip);
        }
        if c.has(IN_CHAT) {
            let (hub, mut out) = self.chat();
            hub.disconnect(id, &mut out);
        }
    }
}
