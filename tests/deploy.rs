//! The dashboard and the alert rules in `deploy/` use only metrics a real
//! server exposes: every `loopchat_*` and `process_*` name in them must be a
//! sample name in `/metrics` (of a server with `--redis`, so the cluster
//! metrics are there too). A renamed metric fails here, not on a dark panel.
//! And the server starts with the systemd unit's command line and with the
//! Kubernetes Deployment's environment: a renamed flag fails here, not at boot.

mod common;
use common::*;

use std::collections::BTreeSet;

/// Sample names (`name` of `name{labels} value`) in an exposition.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `loopchat_*` / `process_*` identifier in `text`.
fn metric_names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < b.len() {
        if (i == 0 || !ident(b[i - 1]))
            && (b[i..].starts_with(b"loopchat_") || b[i..].starts_with(b"process_"))
        {
            let end = (i..b.len()).find(|&j| !ident(b[j])).unwrap_or(b.len());
            out.insert(text[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn read(path: &str) -> String {
    let p = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn every_metric_in_the_dashboard_and_the_alerts_exists() {
    let mut cfg = config();
    // A Redis nobody listens on: the cluster metrics are rendered (link down).
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = nowhere.local_addr().unwrap();
    drop(nowhere);
    cfg.redis = Some(loopchat::cluster::ClusterConfig::new(addr));
    let s = TestServer::start(cfg);
    let (status, resp) = http(s.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let exposed = sample_names(resp.split_once("\r\n\r\n").unwrap().1);
    assert!(exposed.contains("loopchat_redis_up"), "{exposed:?}");

    let dashboard = read("deploy/grafana/loopchat.json");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = json["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("an expr");
            assert!(!metric_names_used(expr).is_empty(), "{expr}");
        }
    }

    let mut checked = 0;
    for file in [
        "deploy/grafana/loopchat.json",
        "deploy/prometheus/alerts.yml",
        "deploy/prometheus/alerts_test.yml",
    ] {
        let used = metric_names_used(&read(file));
        assert!(!used.is_empty(), "{file} uses no metric?");
        for name in &used {
            assert!(
                exposed.contains(name),
                "{file} uses {name}, which /metrics does not have:\n{exposed:#?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} names checked");
}

#[test]
fn the_name_scanner_finds_names_and_only_names() {
    let used = metric_names_used(
        "rate(loopchat_deliveries_total[5m]) / process_cpu_seconds_total{job=\"loopchat\"} \
         LoopchatDown myloopchat_x",
    );
    let want: BTreeSet<String> = ["loopchat_deliveries_total", "process_cpu_seconds_total"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(used, want);
}

/// Start the binary with `args` and `env` (nothing inherited from `LOOPCHAT_*`),
/// expect it to come up (`listening on`, then `metrics on`), then stop it.
fn starts_with(args: &[String], env: &[(String, String)]) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopchat"));
    for (k, _) in std::env::vars() {
        if k.starts_with("LOOPCHAT_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loopchat");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        lines.push(l);
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        lines[0].starts_with("listening on ") && lines[1].starts_with("metrics on "),
        "did not start with {args:?} {env:?}: {lines:?} {status:?}\n{err}"
    );
}

#[test]
fn the_systemd_unit_command_line_is_accepted() {
    let unit = read("deploy/loopchat@.service");
    // ExecStart with its continuation lines, as systemd joins them.
    let start = unit.find("ExecStart=").expect("ExecStart") + "ExecStart=".len();
    let mut line = String::new();
    for l in unit[start..].lines() {
        let (text, more) = match l.trim_end().strip_suffix('\\') {
            Some(t) => (t, true),
            None => (l, false),
        };
        line.push_str(text);
        line.push(' ');
        if !more {
            break;
        }
    }
    let mut words = line.split_whitespace().map(|w| w.replace("%i", "1"));
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/loopchat"));
    let mut args: Vec<String> = words.collect();
    // Same flags, free ports (9000 and 9500 may be taken on this machine).
    for i in 0..args.len().saturating_sub(1) {
        match args[i].as_str() {
            "--listen" => args[i + 1] = "127.0.0.1:0".into(),
            "--metrics-listen" => {
                assert_eq!(args[i + 1], "127.0.1.1:9500", "{line}");
                args[i + 1] = "127.0.1.1:0".into();
            }
            _ => {}
        }
    }
    assert!(args.iter().any(|a| a == "--reuse-port"), "{line}");
    starts_with(&args, &[]);
}

#[test]
fn the_kubernetes_environment_is_accepted() {
    let yaml = read("deploy/k8s/loopchat.yaml");
    // `- name: LOOPCHAT_X` followed by `value: ...` (comments skipped).
    let mut env = Vec::new();
    let mut lines = yaml.lines().map(str::trim).filter(|l| !l.starts_with('#'));
    while let Some(l) = lines.next() {
        if let Some(name) = l.strip_prefix("- name: LOOPCHAT_") {
            let v = lines
                .next()
                .and_then(|v| v.strip_prefix("value: "))
                .expect("a value");
            env.push((format!("LOOPCHAT_{name}"), v.trim_matches('"').to_string()));
        }
    }
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for want in [
        "LOOPCHAT_LISTEN",
        "LOOPCHAT_METRICS_LISTEN",
        "LOOPCHAT_REDIS",
        "LOOPCHAT_SHUTDOWN_TIMEOUT",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for (k, v) in &mut env {
        match k.as_str() {
            "LOOPCHAT_LISTEN" | "LOOPCHAT_METRICS_LISTEN" => *v = "127.0.0.1:0".into(),
            // The Service name resolves only in the cluster; any address will do.
            "LOOPCHAT_REDIS" => *v = "redis://127.0.0.1:1".into(),
            "LOOPCHAT_SHUTDOWN_TIMEOUT" => {
                // Graceful termination: preStop plus the shutdown timeout fit
                // in the grace period.
                let secs: u64 = v.trim_end_matches('s').parse().expect("seconds");
                let grace: u64 = yaml
                    .lines()
                    .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds: "))
                    .expect("terminationGracePeriodSeconds")
                    .parse()
                    .unwrap();
                assert!(secs + 5 < grace, "{secs}s + preStop 5s >= {grace}s");
            }
            _ => {}
        }
    }
    starts_with(&[], &env);
}
