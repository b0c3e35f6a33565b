//! The Redis pub/sub bridge that joins many single-core processes into one chat.
//!
//! - [`resp`]: RESP2 encoding and the incremental, bounded reply parser;
//! - [`link`]: one Redis connection's state and buffers, without its socket;
//! - [`node`]: the node: channels, keys, reconnects, requests and answers,
//!   sans-I/O (`now` passed in, [`Cluster::poll_timeout`], socket work asked
//!   of the caller with [`Cluster::poll_action`]);
//! - [`query`]: cluster `/who` and `/rooms`, one question out at a time, cached;
//! - [`url`]: `redis://` URLs;
//! - [`wire`]: the payloads nodes exchange, signed with `--cluster-secret-file`.
pub mod link;
pub mod node;
pub mod query;
pub mod resp;
pub mod url;
pub mod wire;

pub use node::{Action, Cluster, ClusterConfig, ClusterStats, Which};
pub use url::RedisUrl;
