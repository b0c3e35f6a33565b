//! RFC 6455 without I/O: everything here is driven by byte slices, so it is
//! tested, fuzzed and benched without sockets.

pub mod close;
pub mod deflate;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
