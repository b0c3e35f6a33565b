//! Fuzz the HS256 token checks (`loopchat::auth`).
//!
//! Two halves per input: the bytes verbatim as a token (exercises the length
//! cap, base64url, the header parser and the signature check; the fuzzer
//! cannot forge a MAC), and the bytes split at the first NUL into a header and
//! a payload that are then correctly signed (exercises the JSON parser and
//! every claim check). Any accepted token must satisfy the policy, and must
//! verify again after re-signing its claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopchat::auth::token::{sign, sign_raw, verify, Key, KeySet, Policy};
use loopchat::chat::access::valid_pattern;
use loopchat::chat::names::valid_nick;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let key = Key::new(b"fuzz-key-fuzz-key-fuzz-key-fuzz-key").unwrap();
    let mut keys = KeySet::new(Key::new(b"previous-previous-previous-previous").unwrap());
    keys.rotate(key.clone(), NOW);
    let policies = [
        Policy::default(),
        Policy {
            audience: Some("chat".into()),
            issuer: Some("app".into()),
            leeway: 0,
            max_len: 256,
            max_ttl: 60,
        },
    ];
    for policy in &policies {
        let _ = verify(data, &keys, policy, NOW);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, payload) = text.split_once('\0').unwrap_or((r#"{"alg":"HS256"}"#, text));
    let token = sign_raw(header, payload, &key);
    for policy in &policies {
        if let Ok(c) = verify(token.as_bytes(), &keys, policy, NOW) {
            assert!(valid_nick(&c.sub));
            assert!(c.exp + policy.leeway > NOW);
            assert!(c.exp <= NOW + policy.max_ttl);
            assert!(c.rooms.iter().flatten().all(|p| valid_pattern(p)));
            if let Some(aud) = &policy.audience {
                assert!(c.aud.contains(aud));
            }
            let again = sign(&c, &key);
            assert_eq!(verify(again.as_bytes(), &keys, policy, NOW).as_ref(), Ok(&c));
        }
    }
});
