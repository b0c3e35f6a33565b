//! The cost of checking a token (`loopchat::auth::token::verify`), the work a
//! `/ws?token=` upgrade or an `/auth` line adds: base64url, the header, one
//! HMAC-SHA256 with the pre-keyed state, the claims. Baselines in the same
//! run: the opening handshake alone (parse + accept key + 101), and a token
//! with a bad signature (refused before the claims are parsed).
//!
//! Run: `cargo bench --bench token -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use loopchat::auth::token::{sign, verify, Claims, Key, KeySet, Policy};
use loopchat::chat::access::Role;
use loopchat::ws::handshake::{parse_request, write_upgrade_response, Status};

const NOW: u64 = 1_800_000_000;

fn tokens() -> (KeySet, String, String) {
    let key = Key::new(b"bench-key-bench-key-bench-key-bench-key!").unwrap();
    // A realistic token: ~260 bytes with role, rooms, aud, iss, iat.
    let mut c = Claims::new("alice.example", NOW + 3600);
    c.role = Role::Mod;
    c.rooms = Some(vec!["dev".into(), "ops-*".into()]);
    c.aud = vec!["chat".into()];
    c.iss = Some("app.example.com".into());
    c.iat = Some(NOW);
    let good = sign(&c, &key);
    let bad = sign(&c, &Key::new(&[9u8; 32]).unwrap());
    (KeySet::new(key), good, bad)
}

/// This thread's CPU time: unlike wall time it leaves out the time other
/// processes ran, which on a shared machine is most of a criterion sample.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU nanoseconds per call of `f`, over `n` calls.
fn cpu_ns(n: u32, mut f: impl FnMut() -> bool) -> f64 {
    let t0 = thread_cpu();
    let mut ok = 0u32;
    for _ in 0..n {
        ok += u32::from(black_box(f()));
    }
    assert_eq!(ok, n);
    (thread_cpu() - t0).as_nanos() as f64 / f64::from(n)
}

fn bench(c: &mut Criterion) {
    let (keys, good, bad) = tokens();
    let policy = Policy {
        audience: Some("chat".into()),
        issuer: Some("app.example.com".into()),
        ..Policy::default()
    };
    assert!(verify(good.as_bytes(), &keys, &policy, NOW).is_ok());
    println!("token length {} bytes", good.len());
    for _ in 0..3 {
        let valid = cpu_ns(200_000, || {
            verify(black_box(good.as_bytes()), &keys, &policy, NOW).is_ok()
        });
        let bad_sig = cpu_ns(200_000, || {
            verify(black_box(bad.as_bytes()), &keys, &policy, NOW).is_err()
        });
        println!("thread CPU per check: valid {valid:.0} ns, bad signature {bad_sig:.0} ns");
    }
    let mut g = c.benchmark_group("token");
    g.bench_function("verify valid", |b| {
        b.iter(|| verify(black_box(good.as_bytes()), &keys, &policy, NOW).is_ok())
    });
    g.bench_function("verify bad signature", |b| {
        b.iter(|| verify(black_box(bad.as_bytes()), &keys, &policy, NOW).is_err())
    });
    let request = format!(
        "GET /ws?token={good} HTTP/1.1\r\nHost: chat.example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut out = Vec::with_capacity(256);
    {
        let mut out = Vec::with_capacity(256);
        let mut handshake = |check: bool| {
            out.clear();
            let Ok(Status::Complete(req)) = parse_request(black_box(request.as_bytes()), 8192)
            else {
                return false;
            };
            let Ok(up) = req.websocket() else {
                return false;
            };
            if check
                && !req
                    .query_param("token")
                    .is_some_and(|t| verify(t.as_bytes(), &keys, &policy, NOW).is_ok())
            {
                return false;
            }
            write_upgrade_response(&mut out, up.key, None);
            true
        };
        for _ in 0..3 {
            let plain = cpu_ns(200_000, || handshake(false));
            let signed = cpu_ns(200_000, || handshake(true));
            println!(
                "thread CPU per handshake: {plain:.0} ns without, {signed:.0} ns with the token check ({:.2}x)",
                signed / plain
            );
        }
    }
    g.bench_function("handshake without the token check", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(Status::Complete(req)) = parse_request(black_box(request.as_bytes()), 8192) {
                if let Ok(up) = req.websocket() {
                    write_upgrade_response(&mut out, up.key, None);
                }
            }
            out.len()
        })
    });
    g.bench_function("handshake with the token check", |b| {
        b.iter(|| {
            out.clear();
            if let Ok(Status::Complete(req)) = parse_request(black_box(request.as_bytes()), 8192) {
                if let Ok(up) = req.websocket() {
                    let ok = req
                        .query_param("token")
                        .is_some_and(|t| verify(t.as_bytes(), &keys, &policy, NOW).is_ok());
                    if ok {
                        write_upgrade_response(&mut out, up.key, None);
                    }
                }
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
