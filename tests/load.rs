//! The load generator against the real server: nothing lost, no handshake
//! failure, latency measured. Runs the `loopchat load` binary (as scripts do)
//! and the library entry point (for the modes the binary test does not cover).

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use common::{config, TestServer};
use loopchat::load::{run_plan, LoadArgs, Plan};

/// Longest any generator run in these tests may take (its own timeouts end it sooner).
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn server() -> TestServer {
    let mut cfg = config();
    cfg.chat.rate_limit = 0;
    TestServer::start(cfg)
}

/// A number field of the generator's JSON object.
fn field(json: &str, name: &str) -> Option<f64> {
    let key = format!("\"{name}\":");
    let start = json.find(&key)? + key.len();
    let rest = &json[start..];
    let end = rest
        .find(|c: char| c != '-' && c != '.' && !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The object after `"name":` (up to its closing brace).
fn object<'a>(json: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":{{");
    let start = json.find(&key)? + key.len() - 1;
    let end = json[start..].find('}')? + start + 1;
    Some(&json[start..end])
}

/// Run the `loopchat load` binary with `args`, at most RUN_LIMIT.
fn run_load(args: &[&str]) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_loopchat"))
        .arg("load")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loopchat load");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.expect("wait for loopchat load"),
        Err(_) => {
            // SAFETY: kill(2) on the child we spawned, still unreaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("loopchat load did not finish within {RUN_LIMIT:?}");
        }
    }
}

#[test]
fn broadcast_delivers_every_message_to_every_receiver() {
    let srv = server();
    let url = srv.url("/ws");
    let out = run_load(&[
        "--mode",
        "broadcast",
        "--url",
        &url,
        "-c",
        "50",
        "-s",
        "2",
        "--warmup",
        "500ms",
        "--duration",
        "2s",
        "--timeout",
        "10s",
        "--json",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.trim();
    assert!(json.starts_with('{') && json.ends_with('}'), "{json}");
    let get = |k: &str| field(json, k).unwrap_or_else(|| panic!("no {k} in {json}"));
    assert_eq!(get("opened"), 52.0, "{json}");
    assert_eq!(get("handshake_failures"), 0.0, "{json}");
    assert_eq!(get("connect_errors"), 0.0, "{json}");
    assert_eq!(get("server_errors"), 0.0, "{json}");
    assert_eq!(object(json, "closes"), Some("{}"), "{json}");
    let sent = get("sent");
    assert!(sent > 0.0, "{json}");
    assert_eq!(get("delivered"), sent * 50.0, "nothing lost: {json}");
    assert_eq!(get("lost"), 0.0, "{json}");
    assert_eq!(get("timed_out"), 0.0, "{json}");
    assert!(get("deliveries_per_sec") > 0.0, "{json}");
    let lat = object(json, "latency_us").unwrap_or_else(|| panic!("no latency in {json}"));
    for k in ["count", "p50", "p90", "p99", "p999", "max"] {
        assert!(field(lat, k).is_some_and(|v| v > 0.0), "{k} in {lat}");
    }
    assert!(field(lat, "p50") <= field(lat, "p99"));
}

/// Flags as the command line would give them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    load: LoadArgs,
}

fn plan(args: &[&str]) -> Plan {
    let flags = Flags::try_parse_from(std::iter::once("load").chain(args.iter().copied()))
        .expect("flags parse");
    Plan::new(flags.load).expect("plan")
}

#[test]
fn latency_echo_and_churn_modes_run_in_process() {
    let srv = server();
    let ws = srv.url("/ws");
    let echo = srv.url("/echo");
    let common = ["--warmup", "200ms", "--duration", "1s", "--quiet"];

    let mut args = vec![
        "--mode", "latency", "--url", &ws, "-c", "20", "--rate", "200",
    ];
    args.extend(common);
    let r = run_plan(&plan(&args)).expect("latency run");
    assert_eq!(r.handshake_failures, 0);
    assert!(r.sent > 0);
    assert_eq!(r.delivered, r.sent * 20, "{}", r.to_json());
    assert!(r.latency.is_some_and(|l| l.count > 0 && l.p99 >= l.p50));

    let mut args = vec![
        "--mode", "echo", "--url", &echo, "-n", "2", "--size", "4096",
    ];
    args.extend(common);
    let r = run_plan(&plan(&args)).expect("echo run");
    assert_eq!(r.handshake_failures, 0);
    assert!(r.mb_per_sec > 0.0, "{}", r.to_json());
    assert_eq!(r.delivered, r.sent, "{}", r.to_json());

    let mut args = vec!["--mode", "churn", "--url", &ws, "-n", "4"];
    args.extend(common);
    let r = run_plan(&plan(&args)).expect("churn run");
    assert_eq!(
        r.handshake_failures + r.connect_errors,
        0,
        "{}",
        r.to_json()
    );
    assert!(r.cycles_per_sec > 0.0, "{}", r.to_json());
    assert!(r.closes.is_empty(), "{}", r.to_json());
}

#[test]
fn too_many_connections_are_refused_before_connecting() {
    let err = loopchat::load::check_descriptors(10_000_000).unwrap_err();
    assert!(err.contains("file descriptors"), "{err}");
}

/// A fake server that answers the `n`-th connection with `reply(n, key)` and then
/// holds it open until the client goes.
fn hostile_server(reply: fn(usize, &str) -> Vec<u8>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let key = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let _ = s.write_all(&reply(n, &key));
                while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
            });
        }
    });
    addr
}

fn upgrade(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        loopchat::ws::handshake::accept_key(key)
    )
    .into_bytes()
}

#[test]
fn bad_servers_are_counted_not_fatal() {
    // Connections in turn get: a 403, garbage instead of HTTP, a 101 with a wrong
    // accept key, a 101 then a masked (server-illegal) frame, a 101 then invalid
    // UTF-8 text, a 101 then a ping and lines that are no payload.
    let addr = hostile_server(|n, key| match n % 6 {
        0 => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno".to_vec(),
        1 => vec![0xff; 300],
        2 => upgrade("not-the-key"),
        3 => [upgrade(key), vec![0x81, 0x82, 1, 2, 3, 4, 0, 0]].concat(),
        4 => [upgrade(key), vec![0x81, 0x02, 0xc3, 0x28]].concat(),
        _ => {
            let text = b"JOINED r me\nMSG r n s1 x\nMSG r n";
            [
                upgrade(key),
                vec![0x89, 0x01, b'p'],
                vec![0x81, text.len() as u8],
                text.to_vec(),
            ]
            .concat()
        }
    });
    let url = format!("ws://{addr}/ws");
    let p = plan(&[
        "--mode",
        "idle",
        "--url",
        &url,
        "-n",
        "12",
        "--warmup",
        "0s",
        "--duration",
        "200ms",
        "--timeout",
        "3s",
        "--quiet",
    ]);
    let r = run_plan(&p).expect("run ends");
    assert_eq!(r.handshake_failures, 6, "{}", r.to_json());
    assert_eq!(r.opened, 6, "{}", r.to_json());
    assert_eq!(r.closes.get("protocol-error"), Some(&4), "{}", r.to_json());
    // The last kind stays open, answers the ping and is closed by us at the end.
    assert!(r.measure_secs > 0.0, "{}", r.to_json());
}

#[test]
fn a_rate_limited_run_fails_and_says_how_to_fix_it() {
    // The default server limits each connection to 50 commands/s; a closed-loop
    // sender goes far past that.
    let mut cfg = config();
    cfg.chat.rate_limit = 50;
    let srv = TestServer::start(cfg);
    let url = srv.url("/ws");
    let out = run_load(&[
        "--mode",
        "broadcast",
        "--url",
        &url,
        "-c",
        "2",
        "-s",
        "1",
        "--warmup",
        "0s",
        "--duration",
        "1s",
        "--timeout",
        "2s",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("FAILED"), "{stderr}");
    assert!(stderr.contains("start it with --rate-limit 0"), "{stderr}");
    assert!(stdout.contains("rate-limited"), "{stdout}");
}

#[test]
fn a_wrong_server_pid_is_an_error() {
    // A child that has exited and been reaped: its pid names no process.
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let pid = gone.id().to_string();
    gone.wait().unwrap();
    let out = run_load(&["--mode", "idle", "-n", "1", "--server-pid", &pid]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--server-pid {pid}: no such process")),
        "{stderr}"
    );
}

#[test]
fn a_short_ramp_reports_its_capacity_and_an_offline_html_report() {
    let srv = server();
    let url = srv.url("/ws");
    let dir = std::env::temp_dir().join(format!("loopchat-ramp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let report = dir.join("ramp.html");
    let report_s = report.to_str().unwrap();
    // Three steps of 0.5 s: 50, 100, 150 messages/s to 5 receivers.
    let common = [
        "--mode",
        "latency",
        "--url",
        &url,
        "-c",
        "5",
        "--ramp",
        "rate",
        "--ramp-start",
        "50",
        "--ramp-step",
        "50",
        "--ramp-limit",
        "150",
        "--step-duration",
        "500ms",
        "--warmup",
        "100ms",
        "--quiet",
    ];
    let mut args = common.to_vec();
    args.extend(["--slo", "p99<5s,loss<1%", "--report", report_s]);
    let out = run_load(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("capacity: at least 150 messages/s"),
        "{stdout}"
    );
    let rows = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with(" ok"))
        .count();
    assert_eq!(rows, 3, "{stdout}");
    let html = std::fs::read_to_string(&report).expect("report written");
    assert_eq!(html.matches("<svg").count(), 3, "three plots");
    assert!(!html.contains("<script") && !html.contains("<link"));

    // A threshold nothing can meet: the first step fails, exit 1, JSON says so.
    let mut args = common.to_vec();
    args.extend(["--slo", "p50<1us", "--json"]);
    let out = run_load(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"capacity\":null"), "{stdout}");
    assert_eq!(
        stdout.matches("\"passed\":false").count(),
        1,
        "stops at the first failure: {stdout}"
    );
    assert!(
        stderr.contains("the first step (50 messages/s) already failed"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ramp_flags_are_checked() {
    for (args, want) in [
        (
            &["--ramp", "rate", "--mode", "idle"][..],
            "--ramp needs --mode broadcast or latency",
        ),
        (
            &["--ramp", "rate", "--slo", "p99=1s"][..],
            "bad threshold `p99=1s`",
        ),
        (
            &[
                "--ramp",
                "rate",
                "--ramp-start",
                "500",
                "--ramp-limit",
                "100",
            ][..],
            "below --ramp-start",
        ),
        (&["--report", "/tmp/x.html"][..], "--report needs --ramp"),
    ] {
        let out = run_load(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// A counter of the server's `/metrics`.
fn metric(srv: &TestServer, name: &str) -> f64 {
    let body = common::http(srv.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").1;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

#[test]
fn a_resume_storm_resumes_every_session_each_round() {
    let srv = server();
    let url = srv.url("/ws");
    let pid = std::process::id().to_string();
    // 200 sessions taken, dropped and resumed twice (the second round with
    // the tokens the first handed out).
    let out = run_load(&[
        "--mode",
        "resume",
        "--url",
        &url,
        "-n",
        "200",
        "--rounds",
        "2",
        "--timeout",
        "20s",
        "--server-pid",
        &pid,
        "--json",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.trim();
    let get = |k: &str| field(json, k).unwrap_or_else(|| panic!("no {k} in {json}"));
    assert_eq!(get("rounds"), 2.0, "{json}");
    assert_eq!(get("resume_expected"), 400.0, "{json}");
    assert_eq!(get("resumed"), 400.0, "{json}");
    assert_eq!(get("resume_failures"), 0.0, "{json}");
    assert_eq!(get("no_session"), 0.0, "{json}");
    assert_eq!(get("timed_out"), 0.0, "{json}");
    // 200 to take the sessions, 200 per round to resume them.
    assert_eq!(get("opened"), 600.0, "{json}");
    assert_eq!(get("up_peak"), 200.0, "{json}");
    assert_eq!(get("connect_errors") + get("handshake_failures"), 0.0);
    assert_eq!(object(json, "closes"), Some("{}"), "{json}");
    assert!(get("resumes_per_sec") > 0.0, "{json}");
    let lat = object(json, "latency_us").unwrap_or_else(|| panic!("no latency in {json}"));
    assert_eq!(
        field(lat, "count"),
        Some(400.0),
        "one sample per resume: {lat}"
    );
    assert!(field(lat, "p50") <= field(lat, "p99"), "{lat}");
    let server = object(json, "server").unwrap_or_else(|| panic!("no server in {json}"));
    assert!(field(server, "cpu_secs").is_some(), "{server}");
    // The server agrees: every drop was held as a session and resumed.
    assert_eq!(metric(&srv, "loopchat_sessions_resumed_total"), 400.0);

    // The baseline: the same storm with v1 connections, each reconnecting as new.
    let out = run_load(&[
        "--mode", "resume", "--fresh", "--url", &url, "-n", "100", "--json", "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let json = stdout.trim();
    let get = |k: &str| field(json, k).unwrap_or_else(|| panic!("no {k} in {json}"));
    assert!(json.contains("\"fresh\":true"), "{json}");
    assert_eq!(get("resumed"), 100.0, "{json}");
    assert_eq!(get("opened"), 200.0, "{json}");
    assert_eq!(metric(&srv, "loopchat_sessions_resumed_total"), 400.0);
}

#[test]
fn refused_resumes_fail_the_run_and_say_why() {
    // The server holds at most 10 dropped sessions: a drop beyond that is a
    // plain disconnect, so the other tokens are refused (ERR bad-session).
    let mut cfg = config();
    cfg.chat.rate_limit = 0;
    cfg.chat.max_sessions = 10;
    let srv = TestServer::start(cfg);
    let url = srv.url("/ws");
    let out = run_load(&[
        "--mode",
        "resume",
        "--url",
        &url,
        "-n",
        "50",
        "--timeout",
        "20s",
        "--json",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let json = stdout.trim();
    let get = |k: &str| field(json, k).unwrap_or_else(|| panic!("no {k} in {json}"));
    let refused = get("resume_failures");
    assert!(refused >= 1.0, "{json}");
    // A refused drop's token must not take over another connection (close
    // 1000 "session resumed elsewhere" on one of the new ones).
    assert_eq!(object(json, "closes"), Some("{}"), "{json}");
    assert_eq!(
        get("resumed") + refused,
        50.0,
        "every resume answered: {json}"
    );
    assert_eq!(
        metric(&srv, "loopchat_sessions_resumed_total"),
        get("resumed")
    );
    assert!(
        stderr.contains(&format!(
            "FAILED: {refused} resumes refused (ERR bad-session)"
        )),
        "{stderr}"
    );
}

#[test]
fn resume_mode_checks_its_flags() {
    for (args, want) in [
        (
            &["--mode", "resume", "--rounds", "0"][..],
            "--rounds must be at least 1",
        ),
        (
            &["--mode", "resume", "--url", "ws://127.0.0.1:1/ws?caps=ids"][..],
            "needs the resume capability",
        ),
        (
            &["--mode", "resume", "--protocol", "plain"][..],
            "needs --protocol loopchat",
        ),
    ] {
        let out = run_load(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
