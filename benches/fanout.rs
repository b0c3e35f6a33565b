//! Broadcast fan-out: one `MSG` in a room of 10,000 connections.
//!
//! The sink does what the server does: encode the line once into a WebSocket
//! text frame, then append those bytes to every recipient's outbox. Outboxes
//! are cleared (capacity kept) between messages, outside the timed region, as
//! the server's flush would drain them.
//!
//! Before the timed run, a counting global allocator checks that a steady-state
//! broadcast allocates nothing: neither per message nor per recipient.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loopchat::chat::{ChatConfig, ConnId, Hub, Sink};
use loopchat::ws::deflate::Deflater;
use loopchat::ws::frame::OpCode;

/// Counts allocations and reallocations; frees are not interesting here.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MEMBERS: usize = 10_000;
/// 32 bytes of text.
const TEXT: &str = "0123456789abcdef0123456789abcdef";

/// The server's side of delivery: one frame encode, N appends.
struct OutboxSink {
    frame: Vec<u8>,
    outboxes: Vec<Vec<u8>>,
    /// permessage-deflate for every member: the line is deflated once and
    /// the compressed frame appended to every outbox, as the server does.
    deflater: Option<Deflater>,
}

impl OutboxSink {
    fn clear(&mut self) {
        for outbox in &mut self.outboxes {
            outbox.clear();
        }
    }
}

impl Sink for OutboxSink {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        self.frame.clear();
        if let Some(z) = &mut self.deflater {
            z.encode_frame(&mut self.frame, OpCode::Text, line.as_bytes(), None);
            for &id in to {
                if let Some(outbox) = self.outboxes.get_mut(id) {
                    outbox.extend_from_slice(&self.frame);
                }
            }
            return;
        }
        // An unmasked, final text frame (RFC 6455 5.2), written by hand.
        self.frame.push(0x81);
        let len = line.len();
        if len < 126 {
            self.frame.push(len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.frame.push(126);
            self.frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.frame.push(127);
            self.frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.frame.extend_from_slice(line.as_bytes());
        for &id in to {
            if let Some(outbox) = self.outboxes.get_mut(id) {
                outbox.extend_from_slice(&self.frame);
            }
        }
    }
    fn close(&mut self, _id: ConnId, _code: u16, _reason: &str) {}
}

/// A hub with `MEMBERS` connections in one room, warmed up by one message.
fn setup() -> (Hub, OutboxSink) {
    setup_with(None)
}

fn setup_with(deflater: Option<Deflater>) -> (Hub, OutboxSink) {
    let config = ChatConfig {
        // Joins stay O(1): presence notices go only to the joiner.
        presence_limit: 8,
        rate_limit: 0,
        ..ChatConfig::default()
    };
    let mut hub = Hub::new(config);
    let mut sink = OutboxSink {
        frame: Vec::new(),
        outboxes: (0..MEMBERS).map(|_| Vec::new()).collect(),
        deflater,
    };
    for id in 0..MEMBERS {
        hub.connect(id, Some(&format!("u{id}")), Some("bench"), 0, &mut sink);
    }
    sink.clear();
    hub.handle(0, TEXT, 0, &mut sink);
    sink.clear();
    (hub, sink)
}

/// Steady state allocates nothing per message, let alone per recipient.
fn check_no_allocation() {
    let (mut hub, mut sink) = setup();
    const MESSAGES: u64 = 1_000;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..MESSAGES {
        hub.handle(0, TEXT, 0, &mut sink);
        sink.clear();
    }
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    let deliveries = MESSAGES * MEMBERS as u64;
    println!(
        "fanout: {allocs} allocations in {MESSAGES} messages / {deliveries} deliveries \
         ({:.4} per message)",
        allocs as f64 / MESSAGES as f64
    );
    assert!(
        allocs <= MESSAGES,
        "allocation per recipient: {allocs} allocations for {MESSAGES} messages"
    );
}

fn fanout(c: &mut Criterion) {
    check_no_allocation();
    let (mut hub, mut sink) = setup();
    let mut group = c.benchmark_group("fanout");
    group.throughput(Throughput::Elements(MEMBERS as u64));
    group.bench_function("say_32B_to_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                sink.clear();
                let start = Instant::now();
                hub.handle(0, TEXT, 0, &mut sink);
                total += start.elapsed();
            }
            total
        })
    });
    // A 200-byte chat line to 10k members, plain against deflated once.
    let line = "anyone around for the release review at three? the build is green again, \
                thanks to whoever fixed the flaky websocket test. lunch is at noon in the \
                big room, bring questions";
    for (name, z) in [("plain", None), ("deflate", Some(Deflater::new()))] {
        let (mut hub, mut sink) = setup_with(z);
        group.bench_function(format!("say_200B_to_10k/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    sink.clear();
                    let start = Instant::now();
                    hub.handle(0, line, 0, &mut sink);
                    total += start.elapsed();
                }
                total
            })
        });
        println!(
            "fanout {name}: {} bytes per delivery",
            sink.outboxes[1].len()
        );
    }
    group.finish();
    assert_eq!(
        sink.outboxes[MEMBERS - 1].len(),
        2 + "MSG bench u0 ".len() + TEXT.len()
    );
}

criterion_group!(benches, fanout);
criterion_main!(benches);
