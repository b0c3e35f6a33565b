//! The binary's flags: bad values are refused at start with a clear message and
//! exit status 2; sizes take units; every server flag also comes from the
//! environment as `LOOPCHAT_<FLAG>`.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn loopchat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loopchat"));
    // The test's own environment must not leak settings into the server.
    for (k, _) in std::env::vars() {
        if k.starts_with("LOOPCHAT_") {
            c.env_remove(k);
        }
    }
    c
}

fn refused_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = loopchat()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run loopchat");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} {env:?} should be refused with exit 2; stderr: {stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "a refused start must not print `listening on`"
    );
    stderr
}

fn refused(args: &[&str]) -> String {
    refused_with(args, &[])
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    let e = refused(&["--max-message", "5000000000"]);
    assert!(e.contains("--max-message") && e.contains("1 GiB"), "{e}");
    let e = refused(&["--max-message", "2GiB"]);
    assert!(e.contains("1 GiB"), "{e}");
    let e = refused(&["--idle-timeout", "soon"]);
    assert!(e.contains("not a duration"), "{e}");
    let e = refused(&["--listen", "not-an-address"]);
    assert!(
        e.contains("--listen") && e.contains("127.0.0.1:9000"),
        "{e}"
    );
    let e = refused(&["--trust-proxy", "10.0.0.0/99"]);
    assert!(e.contains("prefix"), "{e}");
    let e = refused(&["client", "http://example.invalid/"]);
    assert!(e.contains("not a ws:// URL"), "{e}");
}

#[test]
fn nonsense_settings_are_refused_and_say_what_is_valid() {
    let e = refused(&["--max-line", "0"]);
    assert!(e.contains("--max-line") && e.contains("at least"), "{e}");
    let e = refused(&["--max-connections", "0"]);
    assert!(
        e.contains("--max-connections") && e.contains("at least 1"),
        "{e}"
    );
    let e = refused(&["--outbox-soft", "8", "--outbox-hard", "4"]);
    assert!(
        e.contains("--outbox-hard") && e.contains("--outbox-soft"),
        "{e}"
    );
    let e = refused(&["--read-budget", "0"]);
    assert!(e.contains("--read-budget"), "{e}");
    let e = refused(&["--handshake-timeout", "0"]);
    assert!(e.contains("--handshake-timeout"), "{e}");
    let e = refused(&["--ping-interval", "2m", "--idle-timeout", "1m"]);
    assert!(e.contains("shorter than --idle-timeout"), "{e}");
    // A bare port: the message shows the form that works.
    let e = refused(&["--listen", "9000"]);
    assert!(e.contains("127.0.0.1:9000") && e.contains("IP:PORT"), "{e}");
    // A misspelt level lists the valid ones.
    let e = refused(&["--log-level", "verbose"]);
    assert!(
        e.contains("verbose") && e.contains("error, warn, info, debug, trace"),
        "{e}"
    );
    let e = refused(&["--max-message", "16 parsecs"]);
    assert!(e.contains("unknown unit") && e.contains("16MiB"), "{e}");
}

#[test]
fn the_environment_is_read_and_checked_like_flags() {
    let e = refused_with(&[], &[("LOOPCHAT_MAX_CONNECTIONS", "0")]);
    assert!(e.contains("--max-connections"), "{e}");
    let e = refused_with(&[], &[("LOOPCHAT_LISTEN", "9000")]);
    assert!(e.contains("127.0.0.1:9000"), "{e}");
    let e = refused_with(&[], &[("LOOPCHAT_LOG_LEVEL", "loud")]);
    assert!(e.contains("possible values"), "{e}");
}

/// A server child process, killed on drop.
struct Running(Child, SocketAddr);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = loopchat()
        .args(args)
        .envs(env.iter().copied())
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn loopchat");
    let addr = common::listening_addr(&mut BufReader::new(child.stdout.take().unwrap()));
    Running(child, addr)
}

/// Status code of a request whose head is padded to `size` bytes.
fn status_of_head(addr: SocketAddr, size: usize) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let base = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n";
    let pad = "a".repeat(size.saturating_sub(base.len()));
    let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf);
    head[9..12].parse().unwrap_or_else(|_| panic!("{head:?}"))
}

#[test]
fn sizes_take_units_on_the_command_line_and_in_the_environment() {
    // 1KiB from a flag: a 900-byte head passes, a 2000-byte one is refused (431).
    let s = start(
        &["--listen", "127.0.0.1:0", "--max-header-bytes", "1KiB"],
        &[],
    );
    assert_eq!(status_of_head(s.1, 900), 200);
    assert_eq!(status_of_head(s.1, 2000), 431);
    drop(s);
    // The same through the environment, lower-case unit; the listen address too.
    let s = start(
        &[],
        &[
            ("LOOPCHAT_LISTEN", "127.0.0.1:0"),
            ("LOOPCHAT_MAX_HEADER_BYTES", "1k"),
        ],
    );
    assert_eq!(status_of_head(s.1, 900), 200);
    assert_eq!(status_of_head(s.1, 2000), 431);
    drop(s);
    // The command line wins over the environment.
    let s = start(
        &["--listen", "127.0.0.1:0", "--max-header-bytes", "4k"],
        &[("LOOPCHAT_MAX_HEADER_BYTES", "1k")],
    );
    assert_eq!(status_of_head(s.1, 2000), 200);
}

#[test]
fn every_server_flag_has_a_variable_and_a_row_in_the_readme() {
    let out = loopchat()
        .arg("--help")
        .output()
        .expect("run loopchat --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // One line or two per flag: no flag pushes `--help` into the long form.
    assert!(!help.contains("see a summary with '-h'"), "{help}");
    // Wrapped help puts `[env: ...]` on a later line: check against the whole text.
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .filter_map(|l| l.split([' ', '<']).next())
        .filter(|f| !matches!(*f, "help" | "version"))
        .collect();
    assert!(flags.len() >= 30, "{flags:?}");
    for f in flags {
        let var = format!("LOOPCHAT_{}", f.to_uppercase().replace('-', "_"));
        assert!(
            flat.contains(&format!("[env: {var}=]")),
            "--{f} has no {var}"
        );
        assert!(
            readme.contains(&format!("| `--{f}")),
            "--{f} is missing from the README's flag table"
        );
    }
}
