//! Fuzz the inter-node payloads (`cluster::wire`).
//!
//! Input: byte 0 picks the channel and whether the receiver has a secret;
//! the rest is a payload as it would arrive from Redis. Checks:
//! - opening never panics, with or without a secret, nor does splitting the
//!   `!ID TIME ` prefix of a numbered room message;
//! - whatever a node without a secret accepts (unsigned) re-encodes to the
//!   same bytes, and signed by a node with a secret it opens to the same
//!   envelope there, while a node with another secret refuses it;
//! - a node with a secret accepts nothing it did not sign (the fuzzer
//!   cannot forge a tag): everything accepted with the secret was produced
//!   by `encode` with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopchat::cluster::wire::{split_numbered, Signer};

const CHANNELS: [&[u8]; 4] = [b"lc:all", b"lc:room:dev", b"lc:node:0123abcd", b""];

fuzz_target!(|input: &[u8]| {
    let Some((&sel, payload)) = input.split_first() else {
        return;
    };
    let channel = CHANNELS[(sel & 3) as usize];
    // A numbered room message: the prefix parses or not, without panicking,
    // and what follows it is the tail of the input.
    if let Some((id, _, rest)) = split_numbered(payload) {
        assert!(rest.len() < payload.len() && payload.ends_with(rest));
        assert!(id.to_string().len() <= 41);
    }
    let plain = Signer::new(None);
    let keyed = Signer::new(Some(b"fuzz secret, sixteen+"));
    let other = Signer::new(Some(b"another secret, 16+"));

    if let Ok(env) = keyed.open(channel, payload) {
        // Only possible for our own encoding.
        let mut again = Vec::new();
        keyed.encode(channel, &env, &mut again);
        assert_eq!(again, payload, "accepted bytes the key did not produce");
    }
    if sel & 4 != 0 {
        let _ = other.open(channel, payload);
    }
    if let Ok(env) = plain.open(channel, payload) {
        if payload.first() != Some(&b'#') {
            let mut again = Vec::new();
            plain.encode(channel, &env, &mut again);
            assert_eq!(again, payload, "unsigned round trip");
        }
        let mut signed = Vec::new();
        keyed.encode(channel, &env, &mut signed);
        assert_eq!(keyed.open(channel, &signed), Ok(env));
        assert!(other.open(channel, &signed).is_err());
        assert!(!signed.contains(&b'\n'));
    }
});
