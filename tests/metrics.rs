//! `/metrics`: the counters move as traffic flows, and the whole exposition
//! parses with a real Prometheus parser (`promtool check metrics`, or the
//! Python `prometheus_client` parser).
//!
//! Without either tool the parser check is skipped loudly (written straight to
//! the process's stderr, which the test harness does not capture), unless
//! `LOOPCHAT_REQUIRE_TOOLS=1` (set in CI), which turns the skip into a failure.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

/// `GET /metrics`: the body of a 200 answer.
fn scrape(s: &TestServer) -> String {
    scrape_at(s.addr)
}

fn scrape_at(addr: SocketAddr) -> String {
    let (status, resp) = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{resp}");
    assert!(
        resp.contains("Content-Type: text/plain; version=0.0.4"),
        "{resp}"
    );
    let (_, body) = resp.split_once("\r\n\r\n").expect("a response body");
    body.to_string()
}

/// Samples by their full name with labels (`name{label="v"}`), for comparisons.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value in {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (name.to_string(), value)
        })
        .collect()
}

/// `loopchat_connections` summed over its kinds.
fn connections(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("loopchat_connections{kind="))
        .map(|(_, v)| v)
        .sum()
}

fn get(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// How much a sample grew between two scrapes (absent counts as 0).
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> f64 {
    get(after, name) - get(before, name)
}

#[test]
fn counters_move_with_traffic() {
    let s = TestServer::start(config());
    let before = samples(&scrape(&s));

    // Chat: two members of one room, three messages, each seen by both.
    let (mut a, _) = Client::chat(&s, "?nick=m_alice&room=metrics");
    let (mut b, _) = Client::chat(&s, "?nick=m_bob&room=metrics");
    a.recv_until_eq("JOINED metrics m_bob");
    for i in 0..3 {
        a.send(&format!("hello {i}"));
        b.recv_until_eq(&format!("MSG metrics m_alice hello {i}"));
    }
    a.sync("a");
    b.sync("b");

    // Echo: one round trip.
    let mut e = Client::connect(&s, "/echo");
    e.send("echo me");
    assert_eq!(e.recv_text(), "echo me");

    // Bad requests: a wrong WebSocket version, a bad key, a refused Origin.
    let (st, _) = http(
        s.addr,
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n",
    );
    assert_eq!(st, 426);
    let (st, _) = http(
        s.addr,
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(st, 400);
    let (st, _) = http(
        s.addr,
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Origin: http://elsewhere.example\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(st, 403);

    // Closes: /quit gets 1000; an unmasked client frame gets 1002.
    a.send("/quit bye");
    assert_eq!(u16::from(a.expect_close()), 1000);
    let mut r = raw(s.addr);
    r.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let (head, rest) = read_head(&mut r);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    r.write_all(&[0x81, 0x02, b'h', b'i']).unwrap(); // text frame without a mask
    let frames = read_frames_until_close(&mut r, rest);
    assert_eq!(close_code(&frames), 1002);

    let text = scrape(&s);
    let after = samples(&text);
    let d = |name: &str| delta(&before, &after, name);

    // 3 chat lines + 2 pings from the chat clients, 1 echo message, 1 /quit,
    // and the bad frame may or may not count: at least 7.
    assert!(
        d("loopchat_messages_in_total") >= 7.0,
        "messages_in grew by {}",
        d("loopchat_messages_in_total")
    );
    // Every chat line reaches both members.
    assert!(
        d("loopchat_deliveries_total") >= 6.0,
        "deliveries grew by {}",
        d("loopchat_deliveries_total")
    );
    assert!(d("loopchat_messages_out_total") >= 7.0);
    assert!(d("loopchat_bytes_in_total") > 0.0);
    assert!(d("loopchat_bytes_out_total") > 0.0);
    // Four upgrades: two chat clients, the echo client, the raw one.
    assert_eq!(d("loopchat_websocket_upgrades_total"), 4.0);
    // Connections: those four, three refused upgrades, and the first scrape.
    assert!(d("loopchat_connections_accepted_total") >= 8.0);
    assert!(d("loopchat_http_requests_total") >= 1.0);
    assert_eq!(
        d("loopchat_handshake_failures_total{reason=\"bad_ws_version\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        d("loopchat_handshake_failures_total{reason=\"bad_key\"}"),
        1.0,
        "{text}"
    );
    // The refused Origin is counted under one reason label.
    assert_eq!(
        d("loopchat_handshake_failures_total{reason=\"origin\"}")
            + d("loopchat_handshake_failures_total{reason=\"origin_forbidden\"}"),
        1.0,
        "{text}"
    );
    assert!(
        d("loopchat_close_codes_sent_total{code=\"1000\"}") >= 1.0,
        "{text}"
    );
    assert_eq!(
        d("loopchat_close_codes_sent_total{code=\"1002\"}"),
        1.0,
        "{text}"
    );
    // Gauges: m_bob and the echo client are still connected, m_bob in one room.
    assert!(get(&after, "loopchat_chat_users") >= 1.0, "{text}");
    assert!(get(&after, "loopchat_rooms") >= 1.0, "{text}");
    assert!(connections(&after) >= 2.0, "{text}");
    // The loop-turn histogram counts turns, and its buckets are cumulative.
    let count = get(&after, "loopchat_loop_turn_seconds_count");
    assert!(count > get(&before, "loopchat_loop_turn_seconds_count"));
    assert_eq!(
        get(&after, "loopchat_loop_turn_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("loopchat_loop_turn_seconds_bucket{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");

    // Every metric has HELP and TYPE lines before its samples.
    let mut typed = std::collections::HashSet::new();
    let mut helped = std::collections::HashSet::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if let Some(rest) = l.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
        } else if !l.is_empty() {
            let name = l.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "no TYPE before {l:?}");
            assert!(helped.contains(family), "no HELP before {l:?}");
        }
    }

    b.send("/quit");
    assert_eq!(u16::from(b.expect_close()), 1000);

    check_with_real_parser(&scrape(&s));
    check_with_real_parser(&text);
}

/// Which real parser is available.
enum Parser {
    Promtool,
    Python(String),
}

/// `LOOPCHAT_METRICS_PARSER=promtool|python|none` picks one (to try each path);
/// by default the first available of promtool, then python3.
fn find_parser() -> Option<Parser> {
    let choice = std::env::var("LOOPCHAT_METRICS_PARSER").unwrap_or_default();
    let (try_promtool, try_python) = match choice.as_str() {
        "promtool" => (true, false),
        "python" => (false, true),
        "none" => (false, false),
        _ => (true, true),
    };
    if try_promtool && promtool_works() {
        return Some(Parser::Promtool);
    }
    if !try_python {
        return None;
    }
    for py in ["python3", "python"] {
        let ok = Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if matches!(ok, Ok(s) if s.success()) {
            return Some(Parser::Python(py.to_string()));
        }
    }
    None
}

fn promtool_works() -> bool {
    let promtool = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(promtool, Ok(s) if s.success())
}

/// Strict parse with `prometheus_client`: every family typed and documented.
const PY_CHECK: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = sys.stdin.read()
n = 0
for fam in text_string_to_metric_families(text):
    if fam.type == "unknown":
        sys.exit("no TYPE for " + fam.name)
    if not fam.documentation:
        sys.exit("no HELP for " + fam.name)
    for s in fam.samples:
        if s.value != s.value:
            sys.exit("NaN in " + s.name)
        n += 1
print("prometheus_client parsed %d samples" % n)
"#;

fn run_with_stdin(mut cmd: Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("parser output")
}

fn check_with_real_parser(text: &str) {
    let required = std::env::var("LOOPCHAT_REQUIRE_TOOLS").is_ok_and(|v| v == "1");
    let Some(parser) = find_parser() else {
        assert!(
            !required,
            "LOOPCHAT_REQUIRE_TOOLS=1 but neither `promtool` nor python3's `prometheus_client` \
             is available: install prometheus (apt) or prometheus_client (pip)"
        );
        // Straight to fd 2: `eprintln!` would be captured by the test harness
        // and shown only on failure, hiding the skip.
        let _ = writeln!(
            std::io::stderr(),
            "\n******** SKIPPED: the /metrics parser check: install prometheus (apt) or \
             prometheus_client (pip) ********\n"
        );
        return;
    };
    let (what, out) = match parser {
        Parser::Promtool => {
            let mut c = Command::new("promtool");
            c.args(["check", "metrics"]);
            ("promtool check metrics", run_with_stdin(c, text))
        }
        Parser::Python(py) => {
            let mut c = Command::new(py);
            c.args(["-c", PY_CHECK]);
            ("prometheus_client", run_with_stdin(c, text))
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} rejected /metrics:\n{stdout}{stderr}\n--- the exposition ---\n{text}"
    );
    eprintln!("{what}: ok {}{}", stdout.trim(), stderr.trim());
}

/// A server with `--metrics-listen` on a port of its own.
struct WithMetricsPort {
    addr: SocketAddr,
    metrics: SocketAddr,
    handle: loopchat::server::Handle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl WithMetricsPort {
    fn start() -> Self {
        let mut cfg = config();
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        let server = loopchat::server::Server::bind(cfg).expect("bind");
        let addr = server.local_addr();
        let metrics = server.metrics_addr().expect("a metrics address");
        let handle = server.handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        WithMetricsPort {
            addr,
            metrics,
            handle,
            thread,
        }
    }
}

impl Drop for WithMetricsPort {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_metrics_port_serves_metrics_and_health_and_the_public_port_stops() {
    let s = WithMetricsPort::start();
    let (status, _) = http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404, "the public port must not serve /metrics");
    let (status, body) = http(s.metrics, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(body.ends_with("ok\n"), "{body}");
    let (status, _) = http(s.metrics, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 404);
    let (status, head) = http(s.metrics, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.ends_with("\r\n\r\n"), "HEAD carries no body: {head}");
    let (status, _) = http(s.metrics, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 405);

    // Scrapes through the metrics port are not connections: the sum of
    // `loopchat_connections` is exactly the clients open.
    let first = samples(&scrape_at(s.metrics));
    assert_eq!(connections(&first), 0.0, "{first:?}");
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            let url = format!("ws://{}/ws?nick=mp{i}&room=mp", s.addr);
            let (mut ws, _) = tungstenite::connect(url).expect("connect");
            // WELCOME: the upgrade is complete on the server's side.
            ws.read().expect("WELCOME");
            ws
        })
        .collect();
    let echo_url = format!("ws://{}/echo", s.addr);
    let (mut echo, _) = tungstenite::connect(echo_url).expect("connect");
    echo.send(tungstenite::Message::text("x")).unwrap();
    echo.read().expect("the echo");
    let m = samples(&scrape_at(s.metrics));
    assert_eq!(get(&m, "loopchat_connections{kind=\"chat\"}"), 3.0, "{m:?}");
    assert_eq!(get(&m, "loopchat_connections{kind=\"echo\"}"), 1.0, "{m:?}");
    assert_eq!(connections(&m), 4.0, "{m:?}");
    assert_eq!(get(&m, "loopchat_chat_users"), 3.0);
    for ws in &mut clients {
        ws.close(None).unwrap();
    }
}

#[test]
fn standard_process_metrics_and_build_info_are_there() {
    let s = TestServer::start(config());
    let text = scrape(&s);
    let m = samples(&text);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(get(&m, name) > 0.0, "{name} missing or zero:\n{text}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        get(&m, &format!("loopchat_build_info{{version=\"{version}\"}}")),
        1.0,
        "{text}"
    );
    assert!(!text.contains("_by_kind"), "{text}");
    // Labelled counters have every series before the first event.
    for series in [
        "loopchat_timeouts_total{kind=\"idle\"}",
        "loopchat_connections_refused_total{reason=\"max_per_ip\"}",
        "loopchat_handshake_failures_total{reason=\"bad_key\"}",
        "loopchat_close_codes_received_total{code=\"other\"}",
        "loopchat_close_codes_sent_total{code=\"1000\"}",
    ] {
        assert_eq!(m.get(series), Some(&0.0), "{series}:\n{text}");
    }
    check_with_real_parser(&text);
}

#[test]
fn close_codes_chosen_by_peers_do_not_grow_the_exposition() {
    let s = TestServer::start(config());
    let before = scrape(&s);
    // 3000–4999 are valid on the wire (registered and private use): sample them.
    let codes: Vec<u16> = (3000..5000).step_by(20).collect();
    for &code in &codes {
        let mut r = raw(s.addr);
        r.write_all(upgrade_request("/echo").as_bytes()).unwrap();
        let (head, rest) = read_head(&mut r);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        r.write_all(&client_frame(8, true, &code.to_be_bytes()))
            .unwrap();
        let frames = read_frames_until_close(&mut r, rest);
        assert_eq!(close_code(&frames), code, "the close is echoed");
    }
    let after = scrape(&s);
    assert_eq!(
        before.lines().count(),
        after.lines().count(),
        "new series appeared:\n{after}"
    );
    let (b, a) = (samples(&before), samples(&after));
    let n = codes.len() as f64;
    assert_eq!(
        delta(
            &b,
            &a,
            "loopchat_close_codes_received_total{code=\"other\"}"
        ),
        n
    );
    assert_eq!(
        delta(&b, &a, "loopchat_close_codes_sent_total{code=\"other\"}"),
        n
    );
}

#[test]
fn the_metrics_port_holds_a_bounded_number_of_scrapers() {
    use std::io::Read;
    let s = WithMetricsPort::start();
    // Sixteen idle scrapers (no request yet) fill it...
    let idle: Vec<_> = (0..16).map(|_| raw(s.metrics)).collect();
    // ...so a seventeenth is closed at once; the server reads a scraper's
    // request before answering, so wait for the close, not for an answer.
    let mut extra = raw(s.metrics);
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the 17th scraper was not closed: {other:?}"),
    }
    // Scrapers that leave free their places. Their FINs are on the server's
    // sockets before our next request is sent, so once a public round trip
    // completes, the loop has seen them.
    drop(idle);
    let (status, _) = http(s.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let (status, _) = http(s.metrics, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        status, 200,
        "the metrics port stayed full after its scrapers left"
    );
}
