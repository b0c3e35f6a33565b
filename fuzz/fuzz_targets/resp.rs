//! Fuzz the RESP2 parser and what the cluster does with Redis input.
//!
//! Input: byte 0 picks a chunk size; the rest is Redis output fed to the
//! incremental parser in chunks, as a socket would deliver it. Checks:
//! - no panic, and "need more bytes" for every proper prefix of a value;
//! - chunked parsing yields the same values as parsing the whole input;
//! - every parsed value re-encodes to bytes that parse back to it;
//! - every value, fed to a cluster node as subscriber input, leaves the
//!   hub consistent and produces only single bounded lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopchat::chat::remote::Claim;
use loopchat::chat::{ChatConfig, ConnId, Hub, Sink};
use loopchat::cluster::resp::{encode_value, parse, Limits, Value};
use loopchat::cluster::{Cluster, ClusterConfig};

struct Checker;

impl Sink for Checker {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        assert!(!to.is_empty());
        assert!(!line.contains('\n'), "{line:?}");
    }
    fn close(&mut self, _: ConnId, _: u16, _: &str) {}
}

fn limits() -> Limits {
    Limits {
        max_bulk: 4096,
        max_array: 64,
        max_depth: 4,
        max_line: 256,
    }
}

/// Values parsed from `data` at once, and whether it ended in an error.
fn whole(data: &[u8]) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        match parse(&data[pos..], &limits()) {
            Ok(Some((v, used))) => {
                assert!(used > 0 && pos + used <= data.len());
                pos += used;
                out.push(v);
            }
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, data)) = input.split_first() else {
        return;
    };
    let chunk = (chunk as usize % 17) + 1;
    let (all, failed) = whole(data);

    // The same bytes, arriving `chunk` bytes at a time.
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut err = false;
    'feed: for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match parse(&buf, &limits()) {
                Ok(Some((v, used))) => {
                    buf.drain(..used);
                    got.push(v);
                }
                Ok(None) => break,
                Err(_) => {
                    err = true;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, all, "chunking changed the values");
    assert_eq!(err, failed, "chunking changed the outcome");

    let mut hub = Hub::new(ChatConfig {
        rate_limit: 0,
        ..ChatConfig::default()
    });
    let mut sink = Checker;
    hub.enable_cluster("fz");
    // Clustered, a requested nick waits for the registry: grant it.
    hub.connect(0, Some("a"), Some("r"), 0, &mut sink);
    hub.nick_reserved(0, "a", Claim::Granted, &mut sink);
    hub.connect(1, Some("b"), Some("s"), 0, &mut sink);
    hub.nick_reserved(1, "b", Claim::Granted, &mut sink);
    let addr = "127.0.0.1:9".parse().unwrap();
    let mut node = Cluster::new(ClusterConfig::new(addr), std::time::Instant::now());
    for v in all {
        let mut enc = Vec::new();
        encode_value(&mut enc, &v);
        let again = parse(&enc, &limits()).expect("re-encoded value parses");
        assert_eq!(again, Some((v.clone(), enc.len())));
        node.feed_subscriber(v, &mut hub, &mut sink);
        hub.check_invariants();
    }
});
