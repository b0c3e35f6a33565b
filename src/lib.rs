//! loopchat: a single-core WebSocket chat server.
//!
//! Layers (a lower layer never imports a higher one):
//! - [`ws`]: RFC 6455 without I/O — handshake, frame decoder and encoder,
//!   message assembly, close handshake.
//! - [`auth`]: signed identity (HS256 JWT) without I/O.
//! - [`chat`]: nicks, rooms and the text commands of the chat protocol,
//!   without sockets or frames.
//! - [`server`]: the mio event loop that drives both.
//! - [`cluster`]: the Redis pub/sub bridge between processes (`--redis`).
//! - [`client`]: the terminal client (`loopchat client URL`), `ws` in the client role.
//! - [`load`]: the load generator (`loopchat load`), `ws` in the client role.
//! - [`token_tool`]: `loopchat token`, which signs a token with a key file.
//!
//! Beneath them all: [`sys`], the system calls beyond std and mio (the only
//! module allowed `unsafe`), and [`rng`], the one pseudo-random generator and
//! backoff.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod chat;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod load;
pub mod logging;
pub mod rng;
pub mod server;
#[allow(unsafe_code)]
pub mod sys;
pub mod token_tool;
pub mod ws;
