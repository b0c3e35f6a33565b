//! The binary's flags: bad values are refused at start with a clear message.

use std::process::Command;

fn refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .args(args)
        .output()
        .expect("run loopchat");
    assert_eq!(out.status.code(), Some(2), "{args:?} should be refused");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    let e = refused(&["--max-message", "5000000000"]);
    assert!(e.contains("--max-message") && e.contains("1 GiB"), "{e}");
    let e = refused(&["--idle-timeout", "soon"]);
    assert!(e.contains("not a duration"), "{e}");
    let e = refused(&["--listen", "not-an-address"]);
    assert!(e.contains("--listen"), "{e}");
    let e = refused(&["--trust-proxy", "10.0.0.0/99"]);
    assert!(e.contains("prefix"), "{e}");
    let e = refused(&["client", "http://example.invalid/"]);
    assert!(e.contains("not a ws:// URL"), "{e}");
}
