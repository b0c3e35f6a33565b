//! Every HTTP answer of PROTOCOL.md, through real sockets.

mod common;
use common::*;
use std::io::Write;
use std::time::Duration;

#[test]
fn plain_endpoints() {
    let s = TestServer::start(config());
    let (st, resp) = http(s.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(resp.ends_with("ok\n"), "{resp}");

    let (st, resp) = http(s.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(resp.contains("text/html"), "{resp}");
    assert!(resp.contains("Content-Security-Policy"), "{resp}");
    assert!(resp.contains("<html"), "{resp}");
    assert!(resp.contains("script-src 'self'"), "{resp}");
    let (st, resp) = http(s.addr, "GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(resp.contains("text/javascript"), "{resp}");

    let (st, resp) = http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(resp.contains("# TYPE loopchat_connections gauge"), "{resp}");
    assert!(
        resp.contains("loopchat_connections_accepted_total"),
        "{resp}"
    );

    assert_eq!(http(s.addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").0, 404);
    let (st, resp) = http(
        s.addr,
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(st, 405);
    assert!(resp.contains("Allow: GET"), "{resp}");
}

#[test]
fn bad_upgrades_get_their_status() {
    let s = TestServer::start(config());
    let base =
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    // Wrong version: 426 naming the one we speak.
    let (st, resp) = http(
        s.addr,
        &format!(
            "{base}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
        ),
    );
    assert_eq!(st, 426);
    assert!(resp.contains("Sec-WebSocket-Version: 13"), "{resp}");
    // Key that is not 16 bytes of base64.
    let (st, _) = http(
        s.addr,
        &format!("{base}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"),
    );
    assert_eq!(st, 400);
    // Missing key.
    let (st, _) = http(s.addr, &format!("{base}Sec-WebSocket-Version: 13\r\n\r\n"));
    assert_eq!(st, 400);
    // Not an upgrade at all on /ws.
    let (st, _) = http(s.addr, "GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(st, 400);
    // Upgrade by POST.
    let (st, _) = http(s.addr, &upgrade_request("/ws").replacen("GET", "POST", 1));
    assert_eq!(st, 405);
    // Garbage.
    let (st, _) = http(s.addr, "\x16\x03\x01 hello\r\n\r\n");
    assert_eq!(st, 400);
    // Oversized head.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let mut c = raw(s.addr);
    let _ = c.write_all(big.as_bytes());
    let resp = String::from_utf8_lossy(&read_to_close(&mut c)).to_string();
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
}

#[test]
fn origin_policy() {
    let mut cfg = config();
    cfg.allow_origin = vec!["https://chat.example.com".into()];
    let s = TestServer::start(cfg);
    let with_origin =
        |o: &str| upgrade_request("/ws").replace("\r\n\r\n", &format!("\r\nOrigin: {o}\r\n\r\n"));
    // Foreign origin: 403.
    let (st, _) = http(s.addr, &with_origin("https://evil.example.net"));
    assert_eq!(st, 403);
    // Same origin (Origin host matches Host) and listed origin: upgraded.
    for o in ["http://localhost", "https://chat.example.com"] {
        let mut c = raw(s.addr);
        c.write_all(with_origin(o).as_bytes()).unwrap();
        let (head, _) = read_head(&mut c);
        assert!(head.starts_with("HTTP/1.1 101"), "{o}: {head}");
    }
    // No Origin (non-browser): upgraded.
    let mut c = raw(s.addr);
    c.write_all(upgrade_request("/ws").as_bytes()).unwrap();
    let (head, _) = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[test]
fn upgrade_answers_the_rfc_sample_accept_key() {
    let s = TestServer::start(config());
    let mut c = raw(s.addr);
    c.write_all(upgrade_request("/echo").as_bytes()).unwrap();
    let (head, _) = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
}

#[test]
fn frames_pipelined_behind_the_request_are_kept() {
    let s = TestServer::start(config());
    let mut c = raw(s.addr);
    let mut bytes = upgrade_request("/echo").into_bytes();
    bytes.extend(client_frame(1, true, b"first"));
    bytes.extend(client_frame(2, true, b"second"));
    bytes.extend(client_frame(8, true, &1000u16.to_be_bytes()));
    c.write_all(&bytes).unwrap();
    let (head, rest) = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frames = read_frames_until_close(&mut c, rest);
    assert_eq!(frames[0], (1, b"first".to_vec()));
    assert_eq!(frames[1], (2, b"second".to_vec()));
    assert_eq!(close_code(&frames), 1000);
}

#[test]
fn request_head_split_over_many_writes() {
    let s = TestServer::start(config());
    let mut c = raw(s.addr);
    c.set_nodelay(true).unwrap();
    let mut bytes = upgrade_request("/echo").into_bytes();
    bytes.extend(client_frame(1, true, b"hi"));
    for b in &bytes {
        c.write_all(std::slice::from_ref(b)).unwrap();
    }
    let (head, rest) = read_head(&mut c);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut pending = rest;
    let mut buf = [0u8; 64];
    for _ in 0..100 {
        let (frames, _) = server_frames(&pending);
        if let Some(f) = frames.first() {
            assert_eq!(f, &(1, b"hi".to_vec()));
            return;
        }
        let n = std::io::Read::read(&mut c, &mut buf).unwrap();
        assert!(n > 0);
        pending.extend_from_slice(&buf[..n]);
    }
    panic!("no echo");
}

#[test]
fn a_client_that_half_closes_still_gets_its_answers() {
    let mut cfg = config();
    cfg.line_listen = Some("127.0.0.1:0".parse().unwrap());
    let s = TestServer::start(cfg);
    // HTTP: request, then shutdown(SHUT_WR), as `nc -N` does.
    let mut c = raw(s.addr);
    c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let resp = String::from_utf8_lossy(&read_to_close(&mut c)).to_string();
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok\n"),
        "{resp:?}"
    );
    // Line protocol: the answers to the commands before the half-close.
    let mut l = raw(s.line_addr.unwrap());
    l.write_all(b"/ping one\n/ping two\n").unwrap();
    l.shutdown(std::net::Shutdown::Write).unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut l)).to_string();
    assert!(text.contains("PONG one\nPONG two\n"), "{text:?}");
    // WebSocket: ping and close, then half-close: pong and close still come back.
    let mut w = raw(s.addr);
    let mut bytes = upgrade_request("/echo").into_bytes();
    bytes.extend(client_frame(9, true, b"still there?"));
    bytes.extend(client_frame(8, true, &1000u16.to_be_bytes()));
    w.write_all(&bytes).unwrap();
    w.shutdown(std::net::Shutdown::Write).unwrap();
    let (head, rest) = read_head(&mut w);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frames = read_frames_until_close(&mut w, rest);
    assert_eq!(frames[0], (10, b"still there?".to_vec()));
    assert_eq!(close_code(&frames), 1000);
}

/// RFC 9110 9.3.2: HEAD wherever GET works, with GET's head (Content-Length
/// included) and no body.
#[test]
fn head_answers_like_get_without_the_body() {
    let s = TestServer::start(config());
    for path in [
        "/",
        "/app.js",
        "/app.css",
        "/favicon.ico",
        "/healthz",
        "/metrics",
        "/nope",
    ] {
        let (st_get, get) = http(s.addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        let (st_head, head) = http(s.addr, &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_eq!(st_head, st_get, "{path}");
        let (get_head, get_body) = get.split_once("\r\n\r\n").unwrap();
        assert!(
            head.ends_with("\r\n\r\n"),
            "{path}: a body after HEAD: {head:?}"
        );
        let length = |h: &str| {
            h.lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse::<usize>().unwrap())
        };
        if path != "/metrics" {
            // /metrics changes between two scrapes; every other head is equal.
            assert_eq!(head.trim_end(), get_head, "{path}");
        }
        assert_eq!(length(get_head), Some(get_body.len()), "{path}");
        assert!(length(&head).unwrap() > 0, "{path}");
    }
    let (st, resp) = http(
        s.addr,
        "DELETE /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(st, 405);
    assert!(resp.contains("Allow: GET, HEAD"), "{resp}");
}

/// The page's tab icon is served, so browsers log no error on every load.
#[test]
fn favicon_is_served() {
    let s = TestServer::start(config());
    let (st, resp) = http(s.addr, "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(resp.contains("Content-Type: image/svg+xml"), "{resp}");
    assert!(resp.contains("Cache-Control: public"), "{resp}");
    let body = resp.split_once("\r\n\r\n").unwrap().1;
    assert!(
        body.starts_with("<svg") && body.trim_end().ends_with("</svg>"),
        "{body}"
    );
}

/// Out of descriptors, the server says so once per episode with a count,
/// not every 100 ms while it lasts.
#[test]
fn emfile_is_logged_once_per_episode() {
    use std::io::BufReader;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopchat"));
    cmd.args(["--listen", "127.0.0.1:0", "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 48,
                rlim_max: 48,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn loopchat");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let addr = common::listening_addr(&mut out);
    // More connections than descriptors, held for a second: ten retries.
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(std::net::TcpStream::connect(addr).unwrap());
    }
    // The server answers again once connections go: a request gets through.
    std::thread::sleep(Duration::from_secs(1));
    drop(held);
    let (st, _) = http(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let starts = err.matches("pausing accepts").count();
    let ends = err.matches("descriptors available again after").count();
    assert_eq!((starts, ends), (1, 1), "{err}");
    let failures: u64 = err
        .split("descriptors available again after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(
        failures >= 5,
        "{failures} failures in a second of retries: {err}"
    );
}
