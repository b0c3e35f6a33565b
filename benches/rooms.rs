//! `/rooms` and `/who` against the number of rooms: what one query costs the
//! loop with 1,000, 30,000 and 77,500 rooms (the adversary made
//! 77,501). The answer is capped at 500 rooms either way; what the query
//! costs beyond writing that answer must not grow with the rooms that exist.
//!
//! Rooms are made by connections in 32 rooms each (the default cap), without
//! rate limiting; the timed region is one `/rooms` (or `/who`) and its answer.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use loopchat::chat::{ChatConfig, ConnId, Hub, Sink};

struct Discard(usize);

impl Sink for Discard {
    fn deliver(&mut self, to: &[ConnId], line: &str) {
        self.0 += to.len() * line.len();
    }
    fn close(&mut self, _: ConnId, _: u16, _: &str) {}
}

fn hub_with_rooms(rooms: usize) -> Hub {
    let mut hub = Hub::new(ChatConfig {
        rate_limit: 0,
        ..ChatConfig::default()
    });
    let mut sink = Discard(0);
    let per = 31;
    for c in 0..rooms.div_ceil(per) {
        hub.connect(c + 1, None, None, 0, &mut sink);
        for r in c * per..((c + 1) * per).min(rooms) {
            hub.handle(c + 1, &format!("/join room{r:06}"), 0, &mut sink);
        }
    }
    hub.connect(0, Some("asker"), None, 0, &mut sink);
    hub
}

fn rooms(c: &mut Criterion) {
    let mut g = c.benchmark_group("query");
    g.warm_up_time(std::time::Duration::from_millis(500));
    g.measurement_time(std::time::Duration::from_secs(2));
    for n in [1_000usize, 30_000, 77_500] {
        let mut hub = hub_with_rooms(n);
        let mut sink = Discard(0);
        g.bench_with_input(BenchmarkId::new("rooms", n), &n, |b, _| {
            b.iter(|| hub.handle(0, "/rooms", 0, &mut sink))
        });
        g.bench_with_input(BenchmarkId::new("who", n), &n, |b, _| {
            b.iter(|| hub.handle(0, "/who lobby", 0, &mut sink))
        });
        assert!(sink.0 > 0);
    }
    g.finish();
}

criterion_group!(benches, rooms);
criterion_main!(benches);
