//! The server's side of `--redis`: the node's two connections live in the same
//! `Poll` under their own tokens, and the chat output the cluster produces
//! goes through the same [`Out`](super::out::Out) sink as local output (encoded once, appended
//! to every recipient's outbox).

use std::time::{Duration, Instant};

use mio::event::Event;
use mio::Token;

use super::out::Out;
use super::Server;
use crate::cluster::Cluster;

/// The command/publish connection to Redis.
pub(super) const REDIS_CMD: Token = Token(usize::MAX - 5);
/// The subscriber connection to Redis.
pub(super) const REDIS_SUB: Token = Token(usize::MAX - 6);

impl Server {
    /// Join the cluster when `--redis` is set: a node id, guest nicks tagged
    /// with it, and connections opened on the first turn.
    pub(super) fn start_cluster(&mut self) {
        let Some(cfg) = self.ctx.cfg.redis.clone() else {
            return;
        };
        let cluster = Cluster::new(cfg, REDIS_CMD, REDIS_SUB);
        self.hub.enable_cluster(&cluster.node_id()[..4]);
        log::info!(
            "cluster node {} (redis {})",
            cluster.node_id(),
            self.ctx
                .cfg
                .redis
                .as_ref()
                .map_or_else(String::new, |c| c.addr.to_string())
        );
        self.cluster = Some(Box::new(cluster));
    }

    /// A poll event for a Redis connection.
    pub(super) fn cluster_event(&mut self, event: &Event) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        cluster.on_event(
            event.token(),
            event.is_readable() || event.is_read_closed() || event.is_error(),
            event.is_writable() || event.is_error(),
            self.poll.registry(),
            &mut self.hub,
            &mut out,
            Instant::now(),
        );
    }

    /// Once per turn: the hub's requests to Redis, timers, one flush. True
    /// when it queued output for local connections (flush again).
    pub(super) fn cluster_turn(&mut self) -> bool {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return false;
        };
        let mut out = Out {
            conns: &mut self.conns,
            ctx: &mut self.ctx,
        };
        cluster.turn(
            self.poll.registry(),
            &mut self.hub,
            &mut out,
            Instant::now(),
        );
        !self.ctx.dirty.is_empty() || !self.ctx.dead.is_empty()
    }

    /// `timeout`, shortened to the cluster's next deadline.
    pub(super) fn cluster_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        let Some(at) = self.cluster.as_deref().and_then(Cluster::next_deadline) else {
            return timeout;
        };
        let d = at.saturating_duration_since(Instant::now());
        Some(timeout.map_or(d, |t| t.min(d)))
    }

    /// The cluster's lines of `/metrics` (none without `--redis`).
    pub(super) fn cluster_metrics(&self, out: &mut String) {
        if let Some(c) = self.cluster.as_deref() {
            super::metrics::render_cluster(c.node_id(), c.stats(), out);
        }
    }
}
