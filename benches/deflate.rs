//! permessage-deflate backends: the shared compressor and inflater on a chat
//! line (~80 B), a 2 KiB text and 64 KiB of text, per message (each message
//! starts from an empty window, as with `no_context_takeover`).
//!
//! Run once per backend and compare (BENCHMARKS.md):
//!   cargo bench --bench deflate                                        # zlib-rs (default)
//!   cargo bench --bench deflate --no-default-features --features miniz # miniz_oxide

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use loopchat::ws::deflate::{Deflater, Inflater, LEVEL};

fn text(len: usize) -> Vec<u8> {
    let words = [
        "hello", "room", "anyone", "around", "tonight", "the", "build", "is", "green", "again",
        "thanks", "for", "fixing", "flaky", "test", "lunch", "?", "42", "deploy", "ok",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut x: u32 = 12345;
    while out.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        out.extend_from_slice(words[(x >> 16) as usize % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn bench(c: &mut Criterion) {
    let backend = if cfg!(feature = "zlib-rs") && !cfg!(feature = "miniz") {
        "zlib-rs"
    } else {
        "miniz_oxide"
    };
    let line =
        b"MSG lobby alice 1733000000123 anyone around for the release review at three?".to_vec();
    let inputs = [("line", line), ("2k", text(2048)), ("64k", text(64 << 10))];
    let mut group = c.benchmark_group(format!("deflate/{backend}"));
    for (name, data) in &inputs {
        group.throughput(Throughput::Bytes(data.len() as u64));
        for level in [1, LEVEL] {
            let mut z = Deflater::with_level(level);
            let ratio = data.len() as f64 / z.compress(data).len() as f64;
            println!("{backend} level {level} {name}: ratio {ratio:.2}");
            group.bench_function(format!("compress/l{level}/{name}"), |b| {
                b.iter(|| black_box(z.compress(black_box(data)).len()))
            });
        }
        let compressed = Deflater::new().compress(data).to_vec();
        let mut inf = Inflater::new();
        group.bench_function(format!("inflate/{name}"), |b| {
            b.iter(|| {
                black_box(
                    inf.inflate(&[black_box(&compressed)], 1 << 20)
                        .map(<[u8]>::len),
                )
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
