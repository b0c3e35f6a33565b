//! The chat of PROTOCOL.md without sockets or frames.
