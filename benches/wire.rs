//! The cost of signing inter-node payloads (`--cluster-secret-file`): encode
//! and open of a typical chat line, unsigned (the baseline, today's format)
//! against HMAC-SHA256 signed, in the same run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loopchat::cluster::wire::{Body, Envelope, Signer};

const CHANNEL: &[u8] = b"lc:room:dev";

fn bench(c: &mut Criterion) {
    let text = "x".repeat(64);
    let line = format!("MSG dev alice {text}");
    let env = Envelope {
        node: "0123456789abcdef",
        seq: 123_456,
        body: Body::Room { line: &line },
    };
    let mut g = c.benchmark_group("wire/64B-line");
    g.throughput(Throughput::Elements(1));
    for (name, signer) in [
        ("unsigned", Signer::new(None)),
        (
            "signed",
            Signer::new(Some(b"a cluster secret of 32 bytes....")),
        ),
    ] {
        let mut out = Vec::new();
        g.bench_function(format!("{name}/encode"), |b| {
            b.iter(|| {
                signer.encode(CHANNEL, black_box(&env), &mut out);
                black_box(out.len())
            })
        });
        signer.encode(CHANNEL, &env, &mut out);
        g.bench_function(format!("{name}/open"), |b| {
            b.iter(|| black_box(signer.open(CHANNEL, black_box(&out)).is_ok()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
