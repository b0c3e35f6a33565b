//! What the load generator pays per delivered line to classify it: the
//! protocol's own parser (`chat::line::parse`, through `load::payload::classify`)
//! against the prefix matching it replaced (copied here as the baseline), in
//! the same run, on `MSG` lines of 64 B, 256 B and 4 KiB as the generator
//! receives them.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loopchat::load::payload::{classify, parse_payload, write_payload, Line};

/// The hand-written matcher `classify` used before (MSG, JOINED, ERR only:
/// what a delivery needs).
fn by_prefix(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("MSG ")?;
    rest.splitn(3, ' ').nth(2)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    for size in [64usize, 256, 4096] {
        let mut payload = String::new();
        write_payload(&mut payload, 17, 123_456, 9_876_543_210, size);
        let line = format!("MSG load guest-4711 {payload}");
        g.throughput(Throughput::Bytes(line.len() as u64));
        g.bench_with_input(BenchmarkId::new("prefix", size), &line, |b, l| {
            b.iter(|| black_box(by_prefix(black_box(l)).and_then(parse_payload)))
        });
        g.bench_with_input(BenchmarkId::new("line-parse", size), &line, |b, l| {
            b.iter(|| match classify(black_box(l), false) {
                Line::Payload(p) => black_box(parse_payload(p)),
                _ => None,
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
