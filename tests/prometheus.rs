//! The observability deliverables, proved against a real Prometheus: the
//! Grafana dashboard (`dashboards/mor-gateway.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`).
//!
//! A simulator, a gateway in front of it (plus a dead upstream) and a gateway
//! whose only upstream is dead are scraped every second by a `prometheus`
//! process on loopback that also loads the repository's alerts.yml. Traffic of
//! every outcome is driven (forwarded, refused, limited, locked out, upstream
//! errors and timeouts, an alias, config reloads ok and failed); then EVERY
//! PromQL expression of both files, read from the files at test time, is
//! evaluated through Prometheus' HTTP API:
//!
//! - dashboard expressions (panel targets, nested rows included, and the
//!   PromQL inside query variables) must be valid and return data, after the
//!   Grafana variables are substituted (`$__rate_interval` and `$__interval`
//!   → `1m`, `$__range` → `5m`, template variables → `.*` with their `=`
//!   matchers turned into `=~`);
//! - alert rule expressions must be valid; as a rule is normally empty while it
//!   does not fire, what must return data is the expression with its final
//!   top-level threshold removed. Precisely ([`data_parts`]): `A or B` checks
//!   A and B; `A and B` checks A and B; `A unless B` checks A; a comparison
//!   `A > B` (any of `== != > < >= <=`, with `bool`/`on`/`ignoring`/`group_*`
//!   modifiers) checks each side that is not a number literal (so `X > 0.05`
//!   checks `X`); `absent(X)` checks `X`; parentheses around the whole are
//!   dropped; anything else is checked as it is.
//!
//! It also checks that the traffic really produced every outcome, that
//! Prometheus loaded the same rules as were extracted here and evaluates them
//! without error, that the rules for the failed reload and the dead upstream
//! become pending or firing, and the dashboard's shape (schemaVersion ≥ 36,
//! editable, every panel and target on `${datasource}`, rate windows on
//! `$__rate_interval`). Metrics the gateway exports but no panel shows are
//! reported as a note, not a failure.
//!
//! Without a `prometheus` binary the test fails when `CI` is set, and is
//! skipped with a loud note otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const H_123: &str = "f7c3bc1d808e04732adf679965ccc34ca7ae3441"; // SHA1("123" + "456789")
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/mor-gateway.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
/// The scrape job name alerts.yml selects on (`up{job="mor-gateway"}`).
const JOB: &str = "mor-gateway";
/// The whole test, start to end, should stay within this.
const BUDGET: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------ main test

#[test]
fn dashboard_and_alert_queries_return_data_from_a_live_gateway() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let Some(prom_bin) = prometheus_binary() else {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        assert!(
            !ci,
            "CI is set but no `prometheus` binary was found (looked at /usr/bin/prometheus and on PATH): \
             install it (Debian: apt-get install -y prometheus) so tests/prometheus.rs can check the \
             dashboard and alert rules"
        );
        eprintln!(
            "\n{bar}\n!! SKIPPED tests/prometheus.rs: no `prometheus` binary (/usr/bin/prometheus or PATH).\n\
             !! The dashboard and alert-rule queries were NOT checked. Install it to run this test:\n\
             !!     apt-get install -y prometheus\n{bar}\n",
            bar = "!".repeat(78)
        );
        return;
    };

    // Read and check both files before starting anything.
    let dash_text = std::fs::read_to_string(DASHBOARD).expect("read dashboards/mor-gateway.json");
    let dash: Value = serde_json::from_str(&dash_text).expect("dashboard is valid JSON");
    let board = Dashboard::from_json(&dash).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    let alerts_text = std::fs::read_to_string(ALERTS).expect("read deploy/prometheus/alerts.yml");
    let rules = parse_rules(&alerts_text).unwrap_or_else(|e| panic!("{ALERTS}: {e}"));
    check_rule_metadata(&rules);

    // A simulator; a gateway in front of it and of a dead address; a gateway
    // in front of the dead address only.
    let (_sim, sim_addr) = start_sim(KEY, &[]);
    let dead = addr(free_port());
    let body = gateway_body(&[sim_addr, dead]);
    let gw = start_gateway(&body);
    let gw_dead = start_gateway(&gateway_body(&[dead]));
    assert!(
        ![gw.addr, gw.metrics, gw_dead.addr, gw_dead.metrics, sim_addr].contains(&dead),
        "the dead upstream's port was reused by a live listener; rerun"
    );

    let prom = Prom::start(&prom_bin, &[gw.metrics, gw_dead.metrics], deadline);

    // A first scrape before the traffic records the counters' starting values
    // (increase() and rate() need a sample from before the change).
    prom.wait_for_scrapes(2, 1, 0.0, deadline);
    println!("prometheus scraping after {:.1?}", started.elapsed());
    drive_traffic(&gw, &body, &gw_dead, deadline);
    println!("traffic done after {:.1?}", started.elapsed());
    let traffic_done = unix_now();
    let metrics_text = gw.metrics_text();

    // At least 3 scrapes of every target after the traffic, and the rule
    // evaluations that follow from them.
    prom.wait_for_scrapes(2, 3, traffic_done, deadline);
    prom.wait_for_alerts(
        &[
            "MorConfigReloadFailed",
            "MorAllUpstreamsDown",
            "MorUpstreamDown",
        ],
        deadline,
    );

    let mut failures = Vec::new();
    let mut checked = 0;

    // The traffic really produced every outcome and kind (so a dashboard
    // query returning data means something).
    for (what, expr) in [
        (
            "forwarded calls",
            r#"mor_gateway_requests_total{outcome="forwarded"} > 0"#,
        ),
        (
            "refusals (GET)",
            r#"mor_gateway_requests_total{outcome="refused", reason="get_disabled"} > 0"#,
        ),
        (
            "refusals (hash)",
            r#"mor_gateway_requests_total{outcome="refused", reason="bad_hash"} > 0"#,
        ),
        (
            "rate limiting",
            r#"mor_gateway_requests_total{outcome="limited", reason="limited"} > 0"#,
        ),
        (
            "a lockout",
            r#"mor_gateway_requests_total{outcome="limited", reason="locked_out"} > 0"#,
        ),
        (
            "an upstream timeout",
            r#"mor_gateway_requests_total{outcome="upstream_error", reason="upstream_timeout"} > 0"#,
        ),
        (
            "an unreachable upstream",
            r#"mor_gateway_requests_total{outcome="upstream_error", reason="upstream_error"} > 0"#,
        ),
        (
            "connect errors",
            r#"mor_gateway_upstream_errors_total{kind="connect"} > 0"#,
        ),
        (
            "timeout errors",
            r#"mor_gateway_upstream_errors_total{kind="timeout"} > 0"#,
        ),
        (
            "the dead upstream down",
            &format!(r#"mor_gateway_upstream_up{{upstream="{dead}"}} == 0"#),
        ),
        (
            "an alias rewrite",
            r#"mor_gateway_alias_rewrites_total{alias="user_details"} > 0"#,
        ),
        (
            "user-layer limiting",
            r#"mor_gateway_ratelimit_decisions_total{layer="user", decision="limited"} > 0"#,
        ),
        (
            "method-layer limiting",
            r#"mor_gateway_ratelimit_decisions_total{layer="method", decision="limited"} > 0"#,
        ),
        ("an active lockout", "mor_gateway_lockouts_active > 0"),
        (
            "a good reload",
            r#"mor_gateway_config_reloads_total{result="ok"} > 0"#,
        ),
        (
            "a failed reload",
            r#"mor_gateway_config_reloads_total{result="failed"} > 0"#,
        ),
        (
            "both targets up",
            &format!(r#"count(up{{job="{JOB}"}} == 1) == 2"#),
        ),
    ] {
        checked += 1;
        match prom.query(expr) {
            Ok(d) if result_len(&d) > 0 => {}
            Ok(_) => failures.push(format!(
                "traffic check: no {what} seen by Prometheus\n    {expr}"
            )),
            Err(e) => failures.push(format!("traffic check ({what}): {e}\n    {expr}")),
        }
    }

    // Every dashboard expression: valid and non-empty.
    for q in &board.queries {
        checked += 1;
        let promql = match grafana_to_promql(&q.expr, &board.variables) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: {e}\n    {}", q.origin, q.expr));
                continue;
            }
        };
        match prom.query(&promql) {
            Ok(d) => {
                let n = result_len(&d);
                println!("{n:4} series  {}", q.origin);
                if n == 0 {
                    failures.push(format!("{}: returned no data\n    {promql}", q.origin));
                }
            }
            Err(e) => failures.push(format!("{}: {e}\n    {promql}", q.origin)),
        }
    }

    // Every alert rule: valid as a whole; each data part non-empty.
    for r in &rules {
        checked += 1;
        let origin = format!("alerts.yml:{} {} {}", r.line, r.kind, r.name);
        match prom.query(&r.expr) {
            Ok(d) => println!("{:4} series  {origin} (whole expression)", result_len(&d)),
            Err(e) => failures.push(format!("{origin}: invalid\n    {e}\n    {}", r.expr)),
        }
        for part in data_parts(&r.expr) {
            checked += 1;
            match prom.query(&part) {
                Ok(d) => {
                    let n = result_len(&d);
                    println!("{n:4} series  {origin} part: {}", one_line(&part));
                    if n == 0 {
                        failures.push(format!(
                            "{origin}: this part of the expression returned no data\n    {}",
                            one_line(&part)
                        ));
                    }
                }
                Err(e) => failures.push(format!("{origin} part: {e}\n    {}", one_line(&part))),
            }
        }
    }

    // Prometheus loaded the same rules as we extracted, and evaluates them
    // without error.
    match prom.rules() {
        Ok(loaded) => {
            let ours: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
            let theirs: Vec<&str> = loaded.iter().map(|(n, _, _)| n.as_str()).collect();
            if ours != theirs {
                failures.push(format!(
                    "the rules extracted from alerts.yml ({ours:?}) differ from those Prometheus loaded ({theirs:?})"
                ));
            }
            for (name, health, err) in &loaded {
                if health != "ok" {
                    failures.push(format!("rule {name}: health {health:?} {err}"));
                }
            }
        }
        Err(e) => failures.push(format!("/api/v1/rules: {e}")),
    }

    // Soft check: every metric the gateway exports appears on the dashboard.
    let missing: Vec<String> = exported_metric_names(&metrics_text)
        .into_iter()
        .filter(|m| !board.queries.iter().any(|q| q.expr.contains(m.as_str())))
        .collect();
    if !missing.is_empty() {
        eprintln!("note: metrics exported but on no dashboard panel: {missing:?}");
    }

    let took = started.elapsed();
    println!(
        "checked {checked} queries ({} dashboard, {} alert rules) in {took:.1?}",
        board.queries.len(),
        rules.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed (Prometheus log: {}):\n\n{}\n",
        failures.len(),
        prom.log.display(),
        failures.join("\n\n")
    );
    // Passed: stop Prometheus and drop its TSDB (a failure keeps it, with the log).
    let dir = prom.dir.clone();
    drop(prom);
    let _ = std::fs::remove_dir_all(dir);
    assert!(took < BUDGET + Duration::from_secs(20), "took {took:?}");
}

fn gateway_body(upstreams: &[SocketAddr]) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"reply_mode = "mor"

[upstream]
servers = [{}]
connect_timeout = "300ms"
read_timeout = "700ms"

[secrets]
admin_key_env = "GW_KEY"

[access_log]
mode = "off"

[limits]
per_ip = {{ per_second = 1000, burst = 1000 }}
per_user = {{ per_second = 0.05, burst = 8 }}

[limits.per_method]
user_calls_get = {{ per_second = 0.05, burst = 2 }}

[limits.per_method_user]
user_details_get = {{ per_second = 1000, burst = 1000 }}

[limits.lockout]
failures = 3
window = "60s"
cooloff = "300s"
"#,
        ups.join(", ")
    )
}

fn details(user: &str) -> String {
    format!("u={user}&user_id=123&hash={H_123}")
}

/// Traffic of every outcome, a few calls each, all to 127.0.0.1.
fn drive_traffic(gw: &Gw, gw_body: &str, gw_dead: &Gw, deadline: Instant) {
    const API: &str = "/billing/api/user_details_get";
    // Forwarded, and a legacy alias.
    for _ in 0..3 {
        let r = gw.post(API, &details("admin"));
        assert!(r.text().contains("client123"), "forwarded: {}", r.text());
    }
    let r = gw.post("/billing/api/user_details", &details("admin"));
    assert!(r.text().contains("client123"), "alias: {}", r.text());

    // Refused at the edge: GET, bad hash, a foreign HTTP method, an
    // ambiguous request, a path outside the API.
    let r = gw.send(&get(&format!("{API}?user_id=123&hash={H_123}")));
    assert_eq!(r.text(), mor_error("GET Requests are disabled"));
    let r = gw.post(
        API,
        "u=admin&user_id=123&hash=0000000000000000000000000000000000000000",
    );
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    gw.send(&format!(
        "DELETE {API} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
    ));
    let r = gw.post(API, &format!("user_id=123&user_id=999&hash={H_123}"));
    assert!(r.text().contains("Bad request"), "{}", r.text());
    let r = gw.post("/billing/callc/main", "");
    assert_eq!(r.text(), mor_error("Not found"));

    // Lockout: three bad hashes for (127.0.0.1, mallory), then even a good one is refused.
    for _ in 0..3 {
        let r = gw.post(API, "u=mallory&user_id=123&hash=00");
        assert_eq!(r.text(), mor_error("Incorrect hash"));
    }
    let r = gw.post(API, &details("mallory"));
    assert_eq!(r.text(), mor_error("Too many failed attempts, try later"));

    // Rate limits: a user burst (burst 8), and a method burst (burst 2).
    let limited = (0..12)
        .filter(|_| gw.post(API, &details("burst")).text() == mor_error("Too many requests"))
        .count();
    assert!(limited >= 3, "per-user limit: {limited} of 12 limited");
    let limited = (0..4)
        .filter(|_| {
            gw.post(
                "/billing/api/user_calls_get",
                &format!("u=caller&s_user=123&hash={H_123}"),
            )
            .text()
                == mor_error("Too many requests")
        })
        .count();
    assert!(limited >= 1, "per-method limit: {limited} of 4 limited");

    // Upstream failures: MOR too slow (504), and no MOR at all (502).
    let body = details("admin");
    let r = gw.send(&format!(
        "POST {API} HTTP/1.1\r\nHost: m\r\nX-Sim-Delay-Ms: 3000\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(
        (r.status, r.text()),
        (504, mor_error("MOR server timed out"))
    );
    let r = gw_dead.post(API, &details("admin"));
    assert_eq!(
        (r.status, r.text()),
        (502, mor_error("MOR server unavailable"))
    );

    // Config reloads: the same file (ok), then a broken one (failed; the
    // running configuration stays). One SIGHUP at a time: signals coalesce.
    gw.reload(gw_body);
    wait_metric(
        gw,
        r#"mor_gateway_config_reloads_total{result="ok"} 1"#,
        deadline,
    );
    let good = std::fs::read_to_string(&gw.config).expect("read config");
    std::fs::write(&gw.config, "listen = [\"not an address\"\n[broken").expect("write config");
    gw.proc.signal("HUP");
    wait_metric(
        gw,
        r#"mor_gateway_config_reloads_total{result="failed"} 1"#,
        deadline,
    );
    std::fs::write(&gw.config, good).expect("restore config");
    let r = gw.post(API, &details("admin"));
    assert!(
        r.text().contains("client123"),
        "after a failed reload: {}",
        r.text()
    );
}

fn wait_metric(gw: &Gw, line: &str, deadline: Instant) {
    let until = deadline.min(Instant::now() + Duration::from_secs(10));
    while Instant::now() < until {
        if gw.metrics_text().lines().any(|l| l == line) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "gateway metrics never showed `{line}`:\n{}",
        gw.metrics_text()
    );
}

fn exported_metric_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ------------------------------------------------------------------ prometheus

/// `/usr/bin/prometheus`, else `prometheus` on PATH.
fn prometheus_binary() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/prometheus");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|c| c.is_file())
}

/// A Prometheus server on loopback, killed when dropped.
struct Prom {
    proc: Proc,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Prom {
    fn start(bin: &Path, targets: &[SocketAddr], deadline: Instant) -> Prom {
        let dir = temp_dir();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - \"{ALERTS}\"\n\
                 scrape_configs:\n  - job_name: \"{JOB}\"\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let addr = addr(free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).expect("log file")))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log)
                    .expect("log file"),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut prom = Prom {
            proc: Proc {
                child,
                name: "prometheus".into(),
            },
            addr,
            dir,
            log,
        };
        let until = deadline.min(Instant::now() + Duration::from_secs(30));
        loop {
            if let Ok(Some(status)) = prom.proc.child.try_wait() {
                panic!(
                    "prometheus exited ({status}) while starting:\n{}",
                    prom.log_text()
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && prom.get("/-/ready").status == 200
            {
                return prom;
            }
            assert!(
                Instant::now() < until,
                "prometheus not ready on {addr}:\n{}",
                prom.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path_and_query: &str) -> Resp {
        send(
            self.addr,
            format!(
                "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            )
            .as_bytes(),
        )
    }

    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let r = self.get(path_and_query);
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("HTTP {}: not JSON ({e}): {}", r.status, r.text()))?;
        if v["status"] != "success" {
            return Err(format!(
                "HTTP {} {}: {}",
                r.status,
                v["errorType"].as_str().unwrap_or("?"),
                v["error"].as_str().unwrap_or("?")
            ));
        }
        Ok(v["data"].clone())
    }

    /// An instant query at the current time; the API's `data` on success.
    fn query(&self, expr: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))
    }

    /// Waits until each of `targets` targets of the job has `n` samples of
    /// `up` stamped after `since` (unix seconds).
    fn wait_for_scrapes(&self, targets: usize, n: usize, since: f64, deadline: Instant) {
        let q = format!("up{{job=\"{JOB}\"}}[30s]");
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(d) = self.query(&q) {
                let counts: Vec<usize> = d["result"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|s| {
                                s["values"].as_array().map_or(0, |v| {
                                    v.iter()
                                        .filter(|p| p[0].as_f64().is_some_and(|t| t > since))
                                        .count()
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                last = format!("{counts:?}");
                if counts.len() == targets && counts.iter().all(|&c| c >= n) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "prometheus did not scrape {targets} targets {n} times each after the traffic (scrapes per target: {last}):\n{}",
            self.log_text()
        );
    }

    /// Waits until each named alert is pending or firing.
    fn wait_for_alerts(&self, names: &[&str], deadline: Instant) {
        let mut active = BTreeSet::new();
        while Instant::now() < deadline {
            if let Ok(d) = self.api("/api/v1/alerts") {
                active = d["alerts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x["labels"]["alertname"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if names.iter().all(|n| active.contains(*n)) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("expected alerts {names:?} to be pending or firing; active: {active:?}");
    }

    /// The loaded rules: (name, health, last error).
    fn rules(&self) -> Result<Vec<(String, String, String)>, String> {
        let d = self.api("/api/v1/rules")?;
        let mut out = Vec::new();
        for g in d["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push((
                    r["name"].as_str().unwrap_or("?").to_string(),
                    r["health"].as_str().unwrap_or("?").to_string(),
                    r["lastError"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        Ok(out)
    }
}

/// Number of series (vector, matrix) or 1 for a scalar/string result.
fn result_len(data: &Value) -> usize {
    match data["resultType"].as_str() {
        Some("vector" | "matrix") => data["result"].as_array().map_or(0, Vec::len),
        Some("scalar" | "string") => 1,
        _ => 0,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ dashboard

/// One PromQL expression found in the dashboard.
#[derive(Debug, Clone)]
struct Query {
    origin: String,
    expr: String,
}

/// What the test needs from the dashboard JSON.
#[derive(Debug)]
struct Dashboard {
    queries: Vec<Query>,
    /// Template variables (name → value substituted for tests).
    variables: BTreeMap<String, String>,
}

const DATASOURCE: &str = r#"{"type":"prometheus","uid":"${datasource}"}"#;

impl Dashboard {
    /// Collects every PromQL expression and checks the dashboard's shape:
    /// schemaVersion ≥ 36, editable, a `datasource` variable, every panel and
    /// target on `${datasource}`, unique panel ids, rate windows on Grafana's
    /// interval variables.
    fn from_json(d: &Value) -> Result<Dashboard, String> {
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        if schema < 36 {
            return Err(format!("schemaVersion {schema} < 36"));
        }
        if d["editable"] != Value::Bool(true) {
            return Err("not editable".into());
        }
        let ds: Value = serde_json::from_str(DATASOURCE).expect("static JSON");
        let mut queries = Vec::new();
        let mut variables = BTreeMap::new();
        let mut has_ds_var = false;
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let name = v["name"]
                .as_str()
                .ok_or("variable without a name")?
                .to_string();
            match v["type"].as_str() {
                Some("datasource") => {
                    has_ds_var |= name == "datasource" && v["query"] == "prometheus";
                    continue;
                }
                Some("interval") => variables.insert(name.clone(), "1m".to_string()),
                _ => variables.insert(name.clone(), ".*".to_string()),
            };
            if v["type"] == "query" {
                if v["datasource"] != ds {
                    return Err(format!(
                        "variable {name}: datasource is {} not {DATASOURCE}",
                        v["datasource"]
                    ));
                }
                let q = match &v["query"] {
                    Value::String(s) => s.clone(),
                    o => o["query"].as_str().unwrap_or("").to_string(),
                };
                if let Some(expr) = variable_promql(&q) {
                    queries.push(Query {
                        origin: format!("dashboard variable ${name} ({q})"),
                        expr,
                    });
                }
            }
        }
        if !has_ds_var {
            return Err(
                r#"no variable {"type":"datasource","name":"datasource","query":"prometheus"}"#
                    .into(),
            );
        }
        let mut ids = BTreeSet::new();
        walk_panels(&d["panels"], &ds, &mut ids, &mut queries)?;
        if queries.is_empty() {
            return Err("no PromQL expression found".into());
        }
        for q in &queries {
            check_windows(&q.expr).map_err(|e| format!("{}: {e}", q.origin))?;
        }
        Ok(Dashboard { queries, variables })
    }
}

fn walk_panels(
    panels: &Value,
    ds: &Value,
    ids: &mut BTreeSet<u64>,
    out: &mut Vec<Query>,
) -> Result<(), String> {
    for p in panels.as_array().into_iter().flatten() {
        let title = p["title"].as_str().unwrap_or("");
        let id = p["id"]
            .as_u64()
            .ok_or_else(|| format!("panel {title:?} has no id"))?;
        if !ids.insert(id) {
            return Err(format!("duplicate panel id {id} ({title:?})"));
        }
        let targets = p["targets"].as_array();
        if p["type"] != "row" && targets.is_some() && p["datasource"] != *ds {
            return Err(format!(
                "panel {id} {title:?}: datasource is {} not {DATASOURCE}",
                p["datasource"]
            ));
        }
        for t in targets.into_iter().flatten() {
            let r = t["refId"].as_str().unwrap_or("?");
            if t["datasource"] != *ds {
                return Err(format!(
                    "panel {id} {title:?} target {r}: datasource is {} not {DATASOURCE}",
                    t["datasource"]
                ));
            }
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() {
                return Err(format!("panel {id} {title:?} target {r}: no expr"));
            }
            out.push(Query {
                origin: format!("dashboard panel {id} {title:?} target {r}"),
                expr: expr.to_string(),
            });
        }
        // Rows (collapsed or not) and library-style nesting.
        walk_panels(&p["panels"], ds, ids, out)?;
    }
    Ok(())
}

/// The PromQL inside a Grafana Prometheus variable query, if any:
/// `label_values(SELECTOR, label)` → SELECTOR, `query_result(EXPR)` → EXPR;
/// `label_values(label)`, `label_names()`, `metrics(re)` are not PromQL.
fn variable_promql(q: &str) -> Option<String> {
    let q = q.trim();
    if let Some(inner) = call_arg(q, "label_values") {
        let (sel, _label) = inner.rsplit_once(',')?;
        return Some(sel.trim().to_string());
    }
    if let Some(inner) = call_arg(q, "query_result") {
        return Some(inner.trim().to_string());
    }
    if q.is_empty() || call_arg(q, "label_names").is_some() || call_arg(q, "metrics").is_some() {
        return None;
    }
    Some(q.to_string())
}

/// Range windows (`[...]`) must be Grafana's interval variables, so the
/// dashboard adapts to the scrape interval and the time range.
fn check_windows(expr: &str) -> Result<(), String> {
    let mut rest = expr;
    let mut in_str: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        match (in_str, c) {
            (Some(_), '\\') => rest = rest.get(1..).unwrap_or(""),
            (Some(q), c) if c == q => in_str = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => in_str = Some(c),
            (None, '[') => {
                let end = rest.find(']').ok_or("unclosed [")?;
                let w = &rest[..end];
                let window = w.split(':').next().unwrap_or("").trim();
                if !matches!(
                    window,
                    "$__rate_interval"
                        | "${__rate_interval}"
                        | "$__interval"
                        | "${__interval}"
                        | "$__range"
                        | "${__range}"
                ) {
                    return Err(format!(
                        "range window [{w}]: use $__rate_interval (or $__interval, $__range)"
                    ));
                }
                rest = &rest[end + 1..];
            }
            _ => {}
        }
    }
    Ok(())
}

/// Substitutes Grafana's variables so the expression is plain PromQL:
/// `$__rate_interval`/`$__interval` → `1m`, `$__range` → `5m` (`_s`/`_ms`
/// forms in seconds/milliseconds), template variables (`$v`, `${v}`,
/// `${v:fmt}`, `[[v]]`) → their test value (`.*`), turning a label matcher
/// `="$v"` into `=~` and `!="$v"` into `!~`.
fn grafana_to_promql(expr: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let builtin = |n: &str| -> Option<&'static str> {
        Some(match n {
            "__rate_interval" | "__interval" => "1m",
            "__rate_interval_ms" | "__interval_ms" => "60000",
            "__range" => "5m",
            "__range_s" => "300",
            "__range_ms" => "300000",
            _ => return None,
        })
    };
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    let mut open_quote: Option<(u8, usize)> = None; // quote char, its index in `out`
    while i < b.len() {
        let c = b[i];
        if let Some((q, _)) = open_quote {
            if c == b'\\' && q != b'`' && i + 1 < b.len() {
                out.push_str(&expr[i..i + 2]);
                i += 2;
                continue;
            }
            if c == q {
                open_quote = None;
            }
        } else if matches!(c, b'"' | b'\'' | b'`') {
            open_quote = Some((c, out.len()));
            out.push(c as char);
            i += 1;
            continue;
        }
        // A variable reference?
        let (name, len) = if c == b'$' && b.get(i + 1) == Some(&b'{') {
            let end = expr[i..]
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ at {i}"))?;
            let inner = &expr[i + 2..i + end];
            (inner.split(':').next().unwrap_or("").to_string(), end + 1)
        } else if c == b'$' {
            let n: String = expr[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let l = n.len() + 1;
            (n, l)
        } else if expr[i..].starts_with("[[") {
            let end = expr[i..]
                .find("]]")
                .ok_or_else(|| format!("unclosed [[ at {i}"))?;
            (
                expr[i + 2..i + end]
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_string(),
                end + 2,
            )
        } else {
            out.push(c as char);
            i += 1;
            continue;
        };
        if name.is_empty() {
            return Err(format!("a `$` that is no variable at byte {i}"));
        }
        if let Some(v) = builtin(&name) {
            out.push_str(v);
        } else if let Some(v) = vars.get(&name) {
            let Some((_, q)) = open_quote else {
                return Err(format!(
                    "template variable ${name} outside a label matcher string"
                ));
            };
            // Make the matcher before the opening quote a regex matcher.
            let head = out[..q].trim_end();
            if head.ends_with("!=") {
                let at = head.len() - 1;
                out.replace_range(at..at + 1, "~");
            } else if head.ends_with('=') && !head.ends_with("==") {
                let at = head.len();
                out.insert(at, '~');
            }
            out.push_str(v);
        } else {
            return Err(format!("unknown Grafana variable ${name}"));
        }
        i += len;
    }
    Ok(out)
}

// ------------------------------------------------------------------ alert rules

/// One rule of alerts.yml.
#[derive(Debug, Clone, Default, PartialEq)]
struct Rule {
    kind: String, // "alert" or "record"
    name: String,
    line: usize,
    expr: String,
    severity: bool,
    summary: bool,
    description: bool,
}

/// Extracts the rules of a Prometheus rule file by hand (no YAML crate): a
/// rule starts at `alert:`/`record:`; its `expr:` may be plain (continued on
/// more-indented lines), single- or double-quoted on one line, or a block
/// scalar (`|`, `|-`, `>`, ...).
fn parse_rules(yaml: &str) -> Result<Vec<Rule>, String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            i += 1;
            continue;
        }
        let key_text = trimmed.strip_prefix("- ").map_or(trimmed, str::trim_start);
        let indent = line.len() - key_text.len();
        let Some((key, value)) = key_text.split_once(':') else {
            i += 1;
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "alert" | "record" => rules.push(Rule {
                kind: key.to_string(),
                name: unquote(strip_comment(value))?,
                line: i + 1,
                ..Rule::default()
            }),
            "expr" | "severity" | "summary" | "description" => {
                let (text, next) = scalar_value(&lines, i, indent, value)?;
                let Some(r) = rules.last_mut() else {
                    return Err(format!("line {}: {key} before any alert/record", i + 1));
                };
                let has = !text.trim().is_empty();
                match key {
                    "expr" if !r.expr.is_empty() => {
                        return Err(format!("line {}: second expr in rule {}", i + 1, r.name));
                    }
                    "expr" => r.expr = text,
                    "severity" => r.severity = has,
                    "summary" => r.summary = has,
                    _ => r.description = has,
                }
                i = next;
                continue;
            }
            // Any other block scalar: skip its text (it may hold `key:` lookalikes).
            _ if value.starts_with('|') || value.starts_with('>') => {
                i = scalar_value(&lines, i, indent, value)?.1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if rules.is_empty() {
        return Err("no rule found".into());
    }
    if let Some(r) = rules.iter().find(|r| r.expr.trim().is_empty()) {
        return Err(format!("line {}: rule {} has no expr", r.line, r.name));
    }
    Ok(rules)
}

/// The scalar value of the key on line `i` (key at column `indent`) and the
/// index of the first line after it.
fn scalar_value(
    lines: &[&str],
    i: usize,
    indent: usize,
    value: &str,
) -> Result<(String, usize), String> {
    let col = |l: &str| l.len() - l.trim_start().len();
    let mut j = i + 1;
    if value.starts_with('|') || value.starts_with('>') {
        // Block scalar: every following line that is blank or indented deeper.
        let mut body = Vec::new();
        while j < lines.len() && (lines[j].trim().is_empty() || col(lines[j]) > indent) {
            body.push(lines[j]);
            j += 1;
        }
        while body.last().is_some_and(|l| l.trim().is_empty()) {
            body.pop();
        }
        let strip = body
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| col(l))
            .min()
            .unwrap_or(0);
        let text: Vec<&str> = body.iter().map(|l| l.get(strip..).unwrap_or("")).collect();
        return Ok((text.join("\n"), j));
    }
    if value.starts_with('"') || value.starts_with('\'') {
        return Ok((unquote(value)?, j));
    }
    // Plain scalar, possibly folded over more-indented lines.
    let mut text = strip_comment(value).to_string();
    while j < lines.len() && !lines[j].trim().is_empty() && col(lines[j]) > indent {
        text.push(' ');
        text.push_str(strip_comment(lines[j].trim()));
        j += 1;
    }
    Ok((text.trim().to_string(), j))
}

/// A plain scalar's ` # comment` removed.
fn strip_comment(v: &str) -> &str {
    if v.starts_with('"') || v.starts_with('\'') {
        return v;
    }
    v.find(" #").map_or(v, |p| &v[..p]).trim()
}

fn unquote(v: &str) -> Result<String, String> {
    let v = v.trim();
    if let Some(inner) = v.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("unsupported multi-line quoted scalar: {v}"))?;
        return Ok(inner.replace("''", "'"));
    }
    if let Some(inner) = v.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unsupported multi-line quoted scalar: {v}"))?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(o) => out.push(o),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        return Ok(out);
    }
    Ok(v.to_string())
}

/// Every alert has a severity label and summary and description
/// annotations, and the alerts the project promises exist.
fn check_rule_metadata(rules: &[Rule]) {
    for r in rules.iter().filter(|r| r.kind == "alert") {
        assert!(
            r.severity && r.summary && r.description,
            "alerts.yml:{} {}: needs labels.severity and annotations summary + description",
            r.line,
            r.name
        );
    }
    for name in [
        "MorGatewayDown",
        "MorUpstreamDown",
        "MorHashFailureSpike",
        "MorLatencySLOBurn",
        "MorGateway5xxRate",
        "MorConfigReloadFailed",
    ] {
        assert!(
            rules.iter().any(|r| r.name == name),
            "alerts.yml has no alert {name}"
        );
    }
}

// ------------------------------------------------------------------ PromQL splitting

/// A binary operator at the top level of an expression: byte span and text.
#[derive(Debug)]
struct Op {
    start: usize,
    end: usize,
    op: &'static str,
}

const COMPARISONS: [&str; 6] = ["==", "!=", ">=", "<=", ">", "<"];

/// The set, logical and comparison operators outside any parentheses,
/// brackets, braces, strings and comments.
fn top_level_ops(e: &str) -> Vec<Op> {
    let b = e.as_bytes();
    let mut ops = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' && c != b'`' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ if depth != 0 => {}
            b'0'..=b'9' | b'.' => {
                // A number or duration (1e3, 5m, 0x1f): one token.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                continue;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let s = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let op = match &e[s..i] {
                    "and" => Some("and"),
                    "or" => Some("or"),
                    "unless" => Some("unless"),
                    _ => None,
                };
                if let Some(op) = op {
                    ops.push(Op {
                        start: s,
                        end: i,
                        op,
                    });
                }
                continue;
            }
            _ => {
                if let Some(op) = COMPARISONS.iter().find(|op| e[i..].starts_with(**op)) {
                    ops.push(Op {
                        start: i,
                        end: i + op.len(),
                        op,
                    });
                    i += op.len();
                    continue;
                }
            }
        }
        i += 1;
    }
    ops
}

/// `name(ARG)` spanning the whole of `e` → ARG.
fn call_arg<'a>(e: &'a str, name: &str) -> Option<&'a str> {
    let rest = e.trim().strip_prefix(name)?.trim_start();
    let inner = rest.strip_prefix('(')?;
    let close = matching_paren(rest)?;
    (close == rest.len() - 1).then(|| &inner[..close - 1])
}

/// Index of the `)` matching the `(` at the start of `s`.
fn matching_paren(s: &str) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `e` without parentheses around the whole of it.
fn unwrap_parens(mut e: &str) -> &str {
    loop {
        e = e.trim();
        match matching_paren(e) {
            Some(close) if e.starts_with('(') && close == e.len() - 1 => e = &e[1..close],
            _ => return e,
        }
    }
}

/// The right operand of a binary operator without its leading modifiers
/// (`bool`, `on(...)`, `ignoring(...)`, `group_left(...)`, `group_right(...)`).
fn strip_modifiers(mut s: &str) -> &str {
    loop {
        s = s.trim_start();
        let word: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        match word.as_str() {
            "bool" => s = &s[4..],
            "on" | "ignoring" | "group_left" | "group_right" => {
                let after = s[word.len()..].trim_start();
                if after.starts_with('(') {
                    match matching_paren(after) {
                        Some(close) => s = &after[close + 1..],
                        None => return s,
                    }
                } else if word.starts_with("group_") {
                    s = after;
                } else {
                    return s;
                }
            }
            _ => return s,
        }
    }
}

/// A number literal or arithmetic on number literals (`0.05`, `(14.4 * 0.01)`,
/// `1e-3`, `Inf`).
fn is_scalar_literal(s: &str) -> bool {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        let exponent_sign = matches!(c, '+' | '-')
            && cur.ends_with(['e', 'E'])
            && cur.starts_with(|d: char| d.is_ascii_digit() || d == '.');
        if !exponent_sign && (c.is_whitespace() || "+-*/%^()".contains(c)) {
            tokens.extend((!cur.is_empty()).then(|| std::mem::take(&mut cur)));
        } else {
            cur.push(c);
        }
    }
    tokens.extend((!cur.is_empty()).then_some(cur));
    !tokens.is_empty() && tokens.iter().all(|t| t.parse::<f64>().is_ok())
}

/// `e` without its `# comments`.
fn strip_promql_comments(e: &str) -> String {
    let mut out = String::with_capacity(e.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    for c in e.chars() {
        if comment {
            if c == '\n' {
                comment = false;
                out.push(c);
            }
            continue;
        }
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
        } else if matches!(c, '"' | '\'' | '`') {
            quote = Some(c);
        } else if c == '#' {
            comment = true;
            continue;
        }
        out.push(c);
    }
    out
}

/// The parts of an alert expression that must return data even while the
/// alert does not fire (see the module docs for the rule).
fn data_parts(e: &str) -> Vec<String> {
    let e = strip_promql_comments(e);
    let e = unwrap_parens(&e);
    let ops = top_level_ops(e);
    let operands = |split: &[&Op]| -> Vec<(Option<&'static str>, String)> {
        let mut out = Vec::new();
        let mut from = 0;
        let mut prev = None;
        for op in split {
            out.push((prev, e[from..op.start].to_string()));
            prev = Some(op.op);
            from = op.end;
        }
        out.push((prev, e[from..].to_string()));
        out
    };
    let ors: Vec<&Op> = ops.iter().filter(|o| o.op == "or").collect();
    if !ors.is_empty() {
        return operands(&ors)
            .into_iter()
            .flat_map(|(_, x)| data_parts(strip_modifiers(&x)))
            .collect();
    }
    let ands: Vec<&Op> = ops
        .iter()
        .filter(|o| o.op == "and" || o.op == "unless")
        .collect();
    if !ands.is_empty() {
        return operands(&ands)
            .into_iter()
            .filter(|(op, _)| *op != Some("unless"))
            .flat_map(|(_, x)| data_parts(strip_modifiers(&x)))
            .collect();
    }
    if let Some(cmp) = ops.iter().rev().find(|o| COMPARISONS.contains(&o.op)) {
        let (lhs, rhs) = (&e[..cmp.start], strip_modifiers(&e[cmp.end..]));
        return [lhs, rhs]
            .into_iter()
            .filter(|side| !is_scalar_literal(side))
            .flat_map(data_parts)
            .collect();
    }
    for f in ["absent", "absent_over_time"] {
        if let Some(inner) = call_arg(e, f) {
            return data_parts(inner);
        }
    }
    vec![e.trim().to_string()]
}

// ------------------------------------------------------------------ helper tests (no Prometheus needed)

#[test]
fn data_parts_drop_thresholds() {
    assert_eq!(
        data_parts(r#"up{job="mor-gateway"} == 0"#),
        [r#"up{job="mor-gateway"}"#]
    );
    assert_eq!(
        data_parts("sum(rate(x[5m])) / sum(rate(y[5m])) > 0.05"),
        ["sum(rate(x[5m])) / sum(rate(y[5m]))"]
    );
    assert_eq!(data_parts("0.05 < bool rate(x[5m])"), ["rate(x[5m])"]);
    assert_eq!(
        data_parts("(1 - a / b) > (14.4 * 0.01)\nand\n(1 - c / d) > (14.4 * 0.01)"),
        ["1 - a / b", "1 - c / d"]
    );
    assert_eq!(data_parts("a > on(instance) group_left b"), ["a", "b"]);
    assert_eq!(data_parts("a > 1 unless on() b"), ["a"]);
    assert_eq!(
        data_parts(r#"x == 0 or absent(up{job="j"})"#),
        ["x", r#"up{job="j"}"#]
    );
    assert_eq!(
        data_parts(r#"count(x{a!="b", c=~"d>e"} offset 5m) >= 2e3"#),
        [r#"count(x{a!="b", c=~"d>e"} offset 5m)"#]
    );
    assert_eq!(
        data_parts("brand_or_metric > 1 # comment with or and >"),
        ["brand_or_metric"]
    );
    assert_eq!(data_parts("increase(m[15m])"), ["increase(m[15m])"]);
    assert_eq!(data_parts("1 - a / b > 1e-3"), ["1 - a / b"]);
    assert_eq!(data_parts("a > b"), ["a", "b"]);
    assert_eq!(data_parts("-Inf < a"), ["a"]);
}

#[test]
fn rule_file_expressions_in_every_yaml_form() {
    let yaml = r#"
groups:
  - name: g
    rules:
      - alert: Plain
        expr: up == 0 # trailing comment
        labels: {severity: page}
      - alert: Folded
        expr: sum(rate(a[5m]))
          > 1
        for: 5m
      - record: "job:x:rate5m"
        expr: "sum(rate(x{a=\"b\"}[5m]))"
      - alert: 'Single'
        expr: 'x{a=''b''} > 1'
      - expr: |
          (
            a
          )
          > 1

        alert: KeyOrder
      - alert: Block
        labels:
          severity: warning
        annotations:
          summary: s
          description: >-
            d
        expr: >-
          a
          and b
"#;
    let rules = parse_rules(yaml);
    // `expr` before `alert` in one item is not supported: reported, not skipped.
    assert!(rules.is_err(), "{rules:?}");
    let yaml = yaml
        .replace("      - expr: |", "      - alert: Two\n        expr: |")
        .replace("        alert: KeyOrder\n", "");
    let rules = parse_rules(&yaml).expect("parse");
    let got: Vec<(&str, &str)> = rules
        .iter()
        .map(|r| (r.name.as_str(), r.expr.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("Plain", "up == 0"),
            ("Folded", "sum(rate(a[5m])) > 1"),
            ("job:x:rate5m", r#"sum(rate(x{a="b"}[5m]))"#),
            ("Single", "x{a='b'} > 1"),
            ("Two", "(\n  a\n)\n> 1"),
            ("Block", "a\nand b"),
        ]
    );
    assert!(rules[5].severity && rules[5].summary && rules[5].description);
    assert!(!rules[1].severity);
}

#[test]
fn grafana_variables_substituted() {
    let vars: BTreeMap<String, String> = [("api_method", ".*"), ("job", ".*"), ("step", "1m")]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let p = |e: &str| grafana_to_promql(e, &vars);
    assert_eq!(
        p(r#"sum(rate(m{api_method="$api_method", job!="${job}"}[$__rate_interval]))"#).unwrap(),
        r#"sum(rate(m{api_method=~".*", job!~".*"}[1m]))"#
    );
    assert_eq!(
        p(r#"m{a=~"[[job]]|all", b="x$y"}"#).unwrap_err(),
        "unknown Grafana variable $y"
    );
    assert_eq!(
        p(r#"m{a=~"[[job]]|all"}[${__range}]"#).unwrap(),
        r#"m{a=~".*|all"}[5m]"#
    );
    assert_eq!(
        p(r#"m{a=~"${api_method:regex}"}"#).unwrap(),
        r#"m{a=~".*"}"#
    );
    assert!(p("topk($job, m)").is_err(), "a variable outside a string");
    assert_eq!(
        variable_promql("label_values(m{a=~\"$job\"}, b)").as_deref(),
        Some("m{a=~\"$job\"}")
    );
    assert_eq!(
        variable_promql("query_result(topk(3, m))").as_deref(),
        Some("topk(3, m)")
    );
    assert_eq!(variable_promql("label_values(job)"), None);
    assert!(check_windows(r#"rate(m{a="[5m]"}[$__rate_interval])"#).is_ok());
    assert!(check_windows("rate(m[5m])").is_err());
}

#[test]
fn dashboard_walk_finds_nested_panels() {
    let d: Value = serde_json::from_str(
        r#"{"schemaVersion": 39, "editable": true,
            "templating": {"list": [
              {"type": "datasource", "name": "datasource", "query": "prometheus"},
              {"type": "query", "name": "job", "datasource": {"type":"prometheus","uid":"${datasource}"},
               "query": {"query": "label_values(up, job)", "refId": "V"}}]},
            "panels": [
              {"id": 1, "type": "row", "collapsed": true, "title": "r", "panels": [
                {"id": 2, "type": "timeseries", "title": "inner",
                 "datasource": {"type":"prometheus","uid":"${datasource}"},
                 "targets": [{"refId": "A", "expr": "up{job=~\"$job\"}",
                              "datasource": {"type":"prometheus","uid":"${datasource}"}}]}]},
              {"id": 3, "type": "text", "title": "notes"}]}"#,
    )
    .unwrap();
    let b = Dashboard::from_json(&d).unwrap();
    let exprs: Vec<&str> = b.queries.iter().map(|q| q.expr.as_str()).collect();
    assert_eq!(exprs, ["up", "up{job=~\"$job\"}"]);
    assert_eq!(b.variables.get("job").map(String::as_str), Some(".*"));
    let mut bad = d.clone();
    bad["panels"][0]["panels"][0]["targets"][0]["datasource"]["uid"] = "prom".into();
    assert!(Dashboard::from_json(&bad).is_err());
}
