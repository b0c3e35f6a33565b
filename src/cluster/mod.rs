//! The Redis pub/sub bridge that joins many single-core processes into one chat.
//!
//! - [`resp`]: RESP2 encoding and the incremental, bounded reply parser;
//! - [`conn`]: one non-blocking Redis connection in the server's `mio::Poll`;
//! - [`node`]: the node: channels, keys, reconnects, requests and answers;
//! - [`url`]: `redis://` URLs;
//! - [`wire`]: the payloads nodes exchange, signed with `--cluster-secret-file`.
pub mod conn;
pub mod node;
pub mod resp;
pub mod url;
pub mod wire;

pub use node::{Cluster, ClusterConfig, ClusterStats};
pub use url::RedisUrl;
