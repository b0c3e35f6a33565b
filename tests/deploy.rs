//! The dashboard and the alert rules in `deploy/` use only metrics a real
//! server exposes: every `loopchat_*` and `process_*` name in them must be a
//! sample name in `/metrics` (of a server with `--redis`, so the cluster
//! metrics are there too). A renamed metric fails here, not on a dark panel.

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
