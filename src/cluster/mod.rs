//! The Redis pub/sub bridge that joins many single-core processes into one chat.
//!
//! - [`resp`]: RESP2 encoding and the incremental, bounded reply parser.
pub mod resp;
