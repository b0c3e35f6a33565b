//! Fuzz the handshake parsers.
//!
//! Input layout: byte 0 picks the header-size limit (256 + 8 * b), byte 1 seeds
//! the chunk sizes, the rest is the peer's byte stream. The stream is fed as a
//! growing prefix in pseudo-random chunks, the way a socket delivers it.
//!
//! Checked: no panic; `len` never exceeds the bytes given; once Complete, every
//! longer prefix gives the same Complete (bytes after the head never change it);
//! once an error, always an error; a Complete request's responses parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopchat::ws::handshake::{
    accept_key, choose_protocol, origin_allowed, parse_request, parse_response, write_response,
    write_upgrade_response, HttpError, Request, Status,
};

const CLIENT_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fuzz_target!(|data: &[u8]| {
    let (limit, seed, input) = match data {
        [a, b, rest @ ..] => (256 + 8 * usize::from(*a), *b, rest),
        _ => return,
    };

    let mut rng = u32::from(seed) | 0x100;
    let mut end = 0;
    let mut settled: Option<Result<Request<'_>, HttpError>> = None;
    // Every step consumes at least one byte, so this runs at most input.len() + 1 times.
    loop {
        let got = parse_request(&input[..end], limit);
        match (&settled, got) {
            (None, Ok(Status::Partial)) => {}
            (None, Ok(Status::Complete(req))) => {
                assert!(req.len <= end, "len {} beyond {} bytes", req.len, end);
                assert!(req.len <= limit);
                exercise(&req);
                settled = Some(Ok(req));
            }
            (None, Err(e)) => {
                exercise_error(&e);
                settled = Some(Err(e));
            }
            (Some(Ok(before)), got) => {
                assert_eq!(
                    got,
                    Ok(Status::Complete(*before)),
                    "Complete changed at {end}"
                );
            }
            (Some(Err(_)), got) => assert!(got.is_err(), "error turned into {got:?} at {end}"),
        }
        if end == input.len() {
            break;
        }
        // xorshift: chunk sizes 1..=32 bytes.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        end = (end + 1 + (rng % 32) as usize).min(input.len());
    }
    // Chunking never changes the verdict.
    let whole = parse_request(input, limit);
    match settled {
        None => assert_eq!(whole, Ok(Status::Partial)),
        Some(Ok(req)) => assert_eq!(whole, Ok(Status::Complete(req))),
        Some(Err(_)) => assert!(whole.is_err()),
    }

    // The same bytes as a server's answer.
    if let Ok(Status::Complete((_, len))) = parse_response(input, CLIENT_KEY, limit) {
        assert!(len <= input.len() && len <= limit);
    }
});

fn exercise(req: &Request<'_>) {
    let _ = req.wants_upgrade();
    let _ = req.query_param("nick");
    let _ = req.query_param("room");
    let _ = req.query_param("");
    let allow = [
        "https://chat.example.com".to_string(),
        "localhost:9000".to_string(),
    ];
    let _ = origin_allowed(req.origin, req.host, &[]);
    let _ = origin_allowed(req.origin, req.host, &allow);
    assert!(origin_allowed(req.origin, req.host, &["*".to_string()]));

    let mut out = Vec::new();
    match req.websocket() {
        Ok(up) => {
            let protocol = choose_protocol(up.protocols, &["chat", "superchat"]);
            if let Some(p) = protocol {
                assert!(up.protocols.contains(p));
            }
            write_upgrade_response(&mut out, up.key, protocol);
            // The answer must satisfy a client that sent this key (no protocol
            // offered on the client side, so only check when none was chosen).
            if protocol.is_none() {
                assert_eq!(
                    parse_response(&out, up.key, out.len()),
                    Ok(Status::Complete((101, out.len())))
                );
            }
            assert_eq!(accept_key(up.key).len(), 28);
        }
        Err(e) => exercise_error(&e),
    }
    out.clear();
    write_response(
        &mut out,
        200,
        "text/plain",
        &[("X-Path", req.path)],
        req.query.as_bytes(),
    );
    assert!(matches!(
        parse_response(&out, CLIENT_KEY, out.len()),
        Ok(Status::Complete((200, _)))
    ));
}

fn exercise_error(e: &HttpError) {
    let mut out = Vec::new();
    e.write_response(&mut out);
    let status = e.status();
    assert!((400..600).contains(&status));
    assert!(!e.reason().is_empty());
    match parse_response(&out, CLIENT_KEY, out.len()) {
        Ok(Status::Complete((code, head))) => {
            assert_eq!(code, status);
            assert!(head < out.len(), "an error response has a body");
        }
        other => panic!("error response does not parse: {other:?}"),
    }
}
