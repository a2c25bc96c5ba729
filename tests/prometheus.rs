//! The observability deliverables against a real Prometheus: the Grafana
//! dashboard (`dashboards/mor-gateway.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`). When each alert fires is proved by
//! promtool's unit tests (`deploy/prometheus/alerts.test.yml`, run by
//! `.ci/run`); nothing here parses YAML or PromQL: Prometheus does.
//!
//! Live: a simulator (whose key for the reseller res1 the gateway does not
//! have: drift for the judge), a gateway in front of it and of a dead upstream, and a
//! gateway whose only upstream is dead, scraped every second by a `prometheus`
//! on loopback that loads alerts.yml. After traffic of every outcome, every
//! dashboard expression and variable query (Grafana variables substituted) is
//! valid and returns data; every rule of alerts.yml is loaded and evaluates
//! without error (the HTTPS certificate's expiry and the `process_*` series
//! included); the failed-reload and dead-upstream alerts are active and
//! MorGatewayDown is not; the metric and label names the unit tests feed
//! promtool are ones the gateway exports. Without a `prometheus` binary this
//! fails when `CI` is set, else it is skipped with a loud note. The
//! dashboard's shape and a unit test per alert are checked without Prometheus.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const DASHBOARD: &str = include_str!("../dashboards/mor-gateway.json");
const ALERTS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
const ALERTS: &str = include_str!("../deploy/prometheus/alerts.yml");
const ALERT_TESTS: &str = include_str!("../deploy/prometheus/alerts.test.yml");
const SCRAPE_CONFIG: &str = include_str!("../deploy/prometheus/prometheus.yml");
/// The scrape job name alerts.yml selects on (`up{job="mor-gateway"}`).
const JOB: &str = "mor-gateway";
/// The whole live test stays within this.
const BUDGET: Duration = Duration::from_secs(60);
/// What [`drive_traffic`] must have produced, as Prometheus sees it (each `> 0`).
const TRAFFIC: &str = r#"
    mor_gateway_requests_total{outcome="forwarded"}
    mor_gateway_requests_total{outcome="refused", reason="get_disabled"}
    mor_gateway_requests_total{outcome="refused", reason="bad_hash"}
    mor_gateway_requests_total{outcome="limited", reason="limited"}
    mor_gateway_requests_total{outcome="limited", reason="locked_out"}
    mor_gateway_requests_total{outcome="upstream_error", reason="upstream_timeout"}
    mor_gateway_requests_total{outcome="upstream_error", reason="upstream_error"}
    mor_gateway_upstream_errors_total{kind="connect"}
    mor_gateway_upstream_errors_total{kind="timeout"}
    mor_gateway_alias_rewrites_total{alias="user_details"}
    mor_gateway_mor_answers_total{gateway="verified", mor="served"}
    mor_gateway_mor_answers_total{gateway="verified", mor="incorrect_hash"}
    mor_gateway_mor_answers_total{gateway="unchecked", mor="incorrect_hash"}
    mor_gateway_mor_answers_total{gateway="would_refuse", mor="incorrect_hash"}
    mor_gateway_would_refuse_total{layer="hash", reason="bad_hash"}
    mor_gateway_mor_disagreements_total{kind="drift", api_method="user_details_get"}
    mor_gateway_mor_disagreements_total{kind="mor_caught", api_method="user_details_raw_get"}
    mor_gateway_ratelimit_decisions_total{layer="user", decision="limited"}
    mor_gateway_ratelimit_decisions_total{layer="method", decision="limited"}
    mor_gateway_lockouts_active
    mor_gateway_shared_limits_up
    mor_gateway_shared_limits_duration_seconds_count
    mor_gateway_config_reloads_total{result="ok"}
    mor_gateway_config_reloads_total{result="failed"}
    mor_gateway_tls_certificate_expiry_timestamp_seconds - time()
    process_resident_memory_bytes{job="mor-gateway"}
    process_open_fds{job="mor-gateway"}
"#;

/// A line straight to stderr, which the test harness does not capture: it is seen.
macro_rules! note {
    ($($fmt:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($fmt)*);
    }};
}

/// The gateway's configuration body (tests/common adds the listen addresses
/// and `[metrics]`).
fn gateway_body(upstreams: &[SocketAddr], redis: SocketAddr) -> String {
    let ups: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        r#"reply_mode = "mor"
[upstream]
servers = [{}]
connect_timeout = "300ms"
read_timeout = "700ms"
pass_headers = ["X-Sim-Delay-Ms"]
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
[limits.shared]
url = "redis://{redis}"
timeout = "100ms"
retry_interval = "500ms"
[[resellers]]
name = "res1"
key_env = "GW_RESELLER_KEY"
users = ["ruser"]
[rollout.methods.tariffs_get]
hash = "report"
"#,
        ups.join(", ")
    )
}

// ------------------------------------------------------------ without Prometheus

/// Alert names of alerts.yml, one per rule, in file order (its `- alert:` lines).
fn alert_names() -> Vec<String> {
    let lines = ALERTS.lines().map(str::trim);
    let names = lines.filter_map(|l| l.strip_prefix("- alert: "));
    names.map(String::from).collect()
}

#[test]
fn every_alert_has_promtool_unit_tests() {
    let names = alert_names();
    assert!(names.len() >= 8, "alerts.yml rules: {names:?}");
    for n in &names {
        let test = format!("alertname: {n}\n");
        assert!(ALERT_TESTS.contains(&test), "{n}: not in alerts.test.yml");
    }
    assert!(
        SCRAPE_CONFIG.contains(&format!("job_name: {JOB}\n")),
        "deploy/prometheus/prometheus.yml must scrape as job {JOB} (alerts.yml selects on it)"
    );
}

/// The dashboard's PromQL: its targets (where, expr), and its template
/// variables (name, the selector of a `label_values(SELECTOR, label)` query).
/// Panics on a shape error.
struct Dashboard {
    targets: Targets,
    vars: Vec<(String, Option<String>)>,
}

fn dashboard() -> Dashboard {
    let d: Value = serde_json::from_str(DASHBOARD).expect("dashboard is valid JSON");
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    assert!(schema >= 36, "schemaVersion {schema} < 36");
    assert_eq!(d["editable"], true, "dashboard not editable");
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let list = d["templating"]["list"].as_array().expect("templating.list");
    let is_ds = |v: &&Value| v["type"] == "datasource";
    let ds_var = list.iter().find(is_ds).expect("a datasource variable");
    assert_eq!(ds_var["name"], "datasource");
    assert_eq!(ds_var["query"], "prometheus");
    let mut vars = Vec::new();
    for v in list.iter().filter(|v| !is_ds(v)) {
        assert_eq!(v["datasource"], ds, "variable {}", v["name"]);
        let q = &v["query"];
        let q = q["query"].as_str().or(q.as_str()).unwrap_or("");
        let sel = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _label)| sel.trim().to_string());
        vars.push((v["name"].as_str().unwrap_or("").to_string(), sel));
    }
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len())); // `$job_x` before `$job`
    let (mut targets, mut ids) = (Vec::new(), BTreeSet::new());
    walk_panels(&d["panels"], &ds, &mut ids, &mut targets);
    assert!(targets.len() >= 10, "only {} targets found", targets.len());
    Dashboard { targets, vars }
}

type Targets = Vec<(String, String)>;

fn walk_panels(panels: &Value, ds: &Value, ids: &mut BTreeSet<u64>, out: &mut Targets) {
    for p in panels.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().expect("every panel has an id");
        let here = format!("panel {id} {}", p["title"]);
        assert!(ids.insert(id), "duplicate {here}");
        if p["type"] != "row" {
            assert_eq!(p["datasource"], *ds, "{here}: datasource");
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            let here = format!("{here} target {}", t["refId"].as_str().unwrap_or("?"));
            assert_eq!(t["datasource"], *ds, "{here}: datasource");
            let expr = t["expr"].as_str().unwrap_or("").to_string();
            assert!(!expr.trim().is_empty(), "{here}: no expr");
            for w in expr.split('[').skip(1) {
                let w = w.split(']').next().unwrap_or(w);
                assert_eq!(w, "$__rate_interval", "{here}: range window\n{expr}");
            }
            out.push((here, expr));
        }
        walk_panels(&p["panels"], ds, ids, out); // rows, collapsed or not
    }
}

#[test]
fn dashboard_shape() {
    let d = dashboard();
    for (here, expr) in &d.targets {
        let q = grafana_to_promql(expr, &d.vars);
        assert!(!q.contains('$'), "{here}: unknown variable left in\n{q}");
    }
}

/// Plain PromQL from a Grafana expression: `$__rate_interval`/`$__interval` →
/// `1m`, `$__range` → `5m`, template variables → `.*` with their `=` matchers
/// made `=~` (and `!=` made `!~`).
fn grafana_to_promql(expr: &str, vars: &[(String, Option<String>)]) -> String {
    let mut e = expr.to_string();
    let builtin = [("__rate_interval", "1m"), ("__interval", "1m")];
    for (from, to) in builtin.into_iter().chain([("__range", "5m")]) {
        e = e.replace(&format!("${{{from}}}"), to);
        e = e.replace(&format!("${from}"), to);
    }
    for (v, _) in vars {
        e = e.replace(&format!("${{{v}}}"), &format!("${v}"));
        e = e.replace(&format!("!=\"${v}"), &format!("!~\"${v}"));
        e = e.replace(&format!("=\"${v}"), &format!("=~\"${v}"));
        e = e.replace(&format!("${v}"), ".*");
    }
    e
}

// ------------------------------------------------------------------ live test

#[test]
fn dashboard_and_alert_rules_against_a_live_gateway() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let Some(prom_bin) = prometheus_binary() else {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        let install = "install it (Debian: apt-get install -y prometheus; .ci/run does)";
        assert!(!ci, "CI is set, but no `prometheus` binary: {install}");
        let bar = "!".repeat(78);
        note!("\n{bar}\n!! SKIPPED: no `prometheus` binary (/usr/bin or PATH): the dashboard");
        note!("!! and alert rules were NOT checked live.\n!! {install}\n{bar}\n");
        return;
    };
    let board = dashboard();
    // MOR has rotated res1's key (to the admin's): the gateway's copy is stale.
    let (_sim, sim_addr) = start_sim(KEY, &["--reseller", "res1=SIM_KEY"]);
    let dead = addr(free_port());
    // Shared limits: a live Redis for one gateway, none for the other.
    let redis_port = free_port();
    let _redis = start_redis(redis_port, &[]);
    let body = gateway_body(&[sim_addr, dead], addr(redis_port));
    let gw = start_gateway(&body);
    // The broken one also mirrors MOR's directory from a database that is
    // not there (deciding with its static config meanwhile): the directory
    // series are exported, the age grows.
    // It also serves HTTPS: its certificate's expiry is exported.
    let cert_dir = temp_dir();
    let (_, cert, key) = certs(&cert_dir, "ca", "gw", "localhost");
    let gw_dead = start_gateway(&format!(
        "{}\n[directory]\nurl = \"mysql://mor-gateway@{dead}/mor\"\npassword_env = \"GW_DB_PASSWORD\"\ntimeout = \"300ms\"\nwithout_snapshot = \"static\"\n[tls]\nlisten = [\"{}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        gateway_body(&[dead], dead),
        addr(free_port()),
        cert.display(),
        key.display()
    ));
    assert!(
        ![gw.addr, gw.metrics, gw_dead.addr, gw_dead.metrics, sim_addr].contains(&dead),
        "the dead upstream's port was reused by a live listener; rerun"
    );
    let prom = Prom::start(&prom_bin, &[gw.metrics, gw_dead.metrics], deadline);

    // Both targets scraped before the traffic (rate() and increase() need a
    // sample from before the change), and twice after it; the alerts the
    // traffic raises.
    let up = format!("up{{job=\"{JOB}\"}}");
    prom.wait("both targets scraped and up", deadline, || {
        prom.count(&format!("{up} == 1")) == Ok(2)
    });
    drive_traffic(&gw, &body, &gw_dead, deadline);
    let scraped_after = format!("min(timestamp({up})) > {:.3}", unix_now() + 2.0);
    println!("traffic done after {:.1?}", started.elapsed());
    let raised = "MorConfigReloadFailed MorUpstreamDown MorAllUpstreamsDown";
    let done = || {
        let rules = prom.rules().unwrap_or_default();
        prom.count(&scraped_after) == Ok(1) && raised.split(' ').all(|n| active(&rules, n))
    };
    prom.wait("scrapes after the traffic, and its alerts", deadline, done);

    let mut failures = Vec::new();
    let mut check = |what: String, expr: &str| match prom.count(expr) {
        Ok(n) if n > 0 => println!("{n:3} series  {what}"),
        Ok(_) => failures.push(format!("{what}: no data\n    {expr}")),
        Err(e) => failures.push(format!("{what}: {e}\n    {expr}")),
    };
    // The traffic produced every outcome (so dashboard data means something).
    for sel in TRAFFIC.lines().map(str::trim).filter(|l| !l.is_empty()) {
        check(format!("traffic {sel}"), &format!("{sel} > 0"));
    }
    let dead_down = format!(r#"mor_gateway_upstream_up{{upstream="{dead}"}} == 0"#);
    check(format!("traffic {dead_down}"), &dead_down);
    // The failed reload is the last one: the gauge says so; both instances
    // show their configuration's digest, and they differ.
    let stale = "mor_gateway_config_last_reload_successful == 0";
    check(format!("traffic {stale}"), stale);
    let digests = "count(count by (digest) (mor_gateway_config_info == 1)) == 2";
    check(format!("traffic {digests}"), digests);
    // Every dashboard expression and variable query: valid, and data.
    for (here, expr) in &board.targets {
        check(here.clone(), &grafana_to_promql(expr, &board.vars));
    }
    for (name, sel) in &board.vars {
        if let Some(sel) = sel {
            let q = grafana_to_promql(sel, &board.vars);
            check(format!("variable ${name}"), &q);
        }
    }

    // Every rule of alerts.yml loaded, in order, and evaluated without error.
    let rules = prom.rules().expect("/api/v1/rules");
    let loaded = json!(rules.iter().map(|r| &r["name"]).collect::<Vec<_>>());
    let names = json!(alert_names());
    if loaded != names {
        failures.push(format!("Prometheus has {loaded}, alerts.yml {names}"));
    }
    for r in &rules {
        let (name, health, state) = (&r["name"], &r["health"], &r["state"]);
        println!("rule {name} {}: {health} {state}", r["labels"]["severity"]);
        let (kind, error) = (&r["type"], &r["lastError"]);
        if health != "ok" || kind != "alerting" {
            failures.push(format!("rule {name}: {kind} {health} {error}"));
        }
    }
    if active(&rules, "MorGatewayDown") {
        failures.push("MorGatewayDown is active, yet both targets are up".into());
    }

    // The metric and label names promtool's unit tests use are real ones.
    let exported = |what: &str| prom.api(&format!("/api/v1/{what}")).unwrap_or_default();
    let (metrics, labels) = (exported("label/__name__/values"), exported("labels"));
    let has = |set: &Value, n: &str| set.as_array().is_some_and(|a| a.iter().any(|x| x == n));
    for m in metric_names(ALERTS).union(&metric_names(ALERT_TESTS)) {
        if !has(&metrics, m) && !has(&metrics, &format!("{m}_bucket")) {
            failures.push(format!("{m} (alerts.yml, alerts.test.yml): not exported"));
        }
    }
    for l in series_label_names(ALERT_TESTS) {
        if !has(&labels, &l) {
            failures.push(format!("label {l} (alerts.test.yml series): not exported"));
        }
    }

    // Soft: every exported metric appears on the dashboard.
    let text = gw.metrics_text();
    let types = text.lines().filter_map(|l| l.strip_prefix("# TYPE "));
    let shown = |m: &&str| board.targets.iter().any(|(_, e)| e.contains(m));
    let names = types.filter_map(|l| l.split(' ').next());
    let missing: Vec<&str> = names.filter(|m| !shown(m)).collect();
    if !missing.is_empty() {
        note!("note: metrics exported but on no dashboard panel: {missing:?}");
    }

    let took = started.elapsed();
    println!("checked in {took:.1?}");
    assert!(
        failures.is_empty(),
        "{} checks failed (Prometheus log: {}):\n\n{}\n",
        failures.len(),
        prom.dir.join("prometheus.log").display(),
        failures.join("\n\n")
    );
    drop(prom); // passed: stop Prometheus, drop its TSDB (a failure keeps it)
    assert!(took < BUDGET, "took {took:?}");
}

/// Traffic of every outcome, a few calls each, all to 127.0.0.1.
fn drive_traffic(gw: &Gw, body: &str, gw_dead: &Gw, deadline: Instant) {
    const API: &str = "/billing/api/user_details_get";
    let says = |r: Resp, msg: &str| assert_eq!(r.text(), mor_error(msg), "HTTP {}", r.status);
    let forwarded = |r: Resp| assert!(r.text().contains("client123"), "{}", r.text());
    // Forwarded, and a legacy alias.
    for _ in 0..3 {
        forwarded(gw.post(API, &details("admin")));
    }
    forwarded(gw.post("/billing/api/user_details", &details("admin")));

    // Refused at the edge: GET, bad hash, a foreign HTTP method, an ambiguous
    // request, a path outside the API.
    let query = format!("{API}?{}", details("admin"));
    says(gw.send(&get(&query)), "GET Requests are disabled");
    let bad_hash = format!("u=admin&user_id=123&hash={}", "0".repeat(40));
    says(gw.post(API, &bad_hash), "Incorrect hash");
    gw.send(&get(API).replacen("GET", "DELETE", 1));
    let twice = format!("u=admin&user_id=123&user_id=999&hash={H_123}");
    let r = gw.post(API, &twice);
    assert!(r.text().contains("Bad request"), "{}", r.text());
    says(gw.post("/billing/callc/main", ""), "Not found");

    // MOR as the judge: a call verified with res1's key, which MOR has
    // rotated (drift); an action whose hash list is undetermined, forwarded
    // unchecked with a wrong hash, which MOR refuses (mor_caught).
    let stale = format!("u=ruser&user_id=5&hash={}", sha1_hex("5resellerkey"));
    says(gw.post(API, &stale), "Incorrect hash");
    let raw = format!("u=john&user_id=2&hash={}", "0".repeat(40));
    says(
        gw.post("/billing/api/user_details_raw_get", &raw),
        "Incorrect hash",
    );

    // A layer set to report (the hash of tariffs_get): a bad hash is
    // forwarded and MOR refuses it itself.
    let r = gw.post(
        "/billing/api/tariffs_get",
        &format!("u=admin&hash={}", "0".repeat(40)),
    );
    assert!(
        r.text().contains("Incorrect hash"),
        "MOR's own answer: {}",
        r.text()
    );

    // Lockout: three bad hashes for (127.0.0.1, mallory), then even a good one is refused.
    let bad_hash = "u=mallory&user_id=123&hash=00";
    for _ in 0..3 {
        says(gw.post(API, bad_hash), "Incorrect hash");
    }
    let r = gw.post(API, &details("mallory"));
    says(r, "Too many failed attempts, try later");

    // Rate limits: a user burst (8), and a method burst (2).
    let too_many = mor_error("Too many requests");
    let limited = |path: &str, body: &str, n| {
        let texts = (0..n).map(|_| gw.post(path, body).text());
        texts.filter(|t| *t == too_many).count()
    };
    let n = limited(API, &details("alice"), 12);
    assert!(n >= 3, "per-user limit: {n} of 12 limited");
    let calls = format!("u=bob&s_user=123&hash={H_123}");
    let n = limited("/billing/api/user_calls_get", &calls, 4);
    assert!(n >= 1, "per-method limit: {n} of 4 limited");

    // Upstream failures: MOR too slow (504), and no MOR at all (502).
    let slow = post_form(API, &details("admin"));
    let slow = slow.replacen("Host: mor\r\n", "Host: mor\r\nX-Sim-Delay-Ms: 3000\r\n", 1);
    let r = gw.send(&slow);
    assert_eq!(r.status, 504);
    says(r, "MOR server timed out");
    let r = gw_dead.post(API, &details("admin"));
    assert_eq!(r.status, 502);
    says(r, "MOR server unavailable");

    // Config reloads: the same config (ok), then a broken file (failed; the
    // running configuration stays). One SIGHUP at a time: signals coalesce.
    gw.reload(body);
    wait_reloads(gw, "ok", deadline);
    gw.reload("[upstream\nservers = not toml");
    wait_reloads(gw, "failed", deadline);
    forwarded(gw.post(API, &details("admin")));
}

/// Waits for the gateway's first reload with `result`.
fn wait_reloads(gw: &Gw, result: &str, deadline: Instant) {
    let line = format!("mor_gateway_config_reloads_total{{result=\"{result}\"}} 1");
    let until = deadline.min(Instant::now() + Duration::from_secs(10));
    while Instant::now() < until {
        if gw.metrics_text().lines().any(|l| l == line) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = gw.metrics_text();
    panic!("gateway metrics never showed `{line}`:\n{text}");
}

/// `mor_gateway_*` words of a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    let ours = words.filter(|w| w.len() > 12 && w.starts_with("mor_gateway_"));
    ours.map(String::from).collect()
}

/// Label names of the `- series: 'name{a="x", b="y"}'` lines of a promtool test file.
fn series_label_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let lines = text.lines().map(str::trim_start);
    for l in lines.filter(|l| l.starts_with("- series:")) {
        let labels = l.split_once('{').and_then(|(_, r)| r.split_once('}'));
        for kv in labels.map_or("", |(ls, _)| ls).split(',') {
            out.extend(kv.split_once('=').map(|(k, _)| k.trim().to_string()));
        }
    }
    out
}

/// Whether a rule named `name` is pending or firing.
fn active(rules: &[Value], name: &str) -> bool {
    let mut named = rules.iter().filter(|r| r["name"] == name);
    named.any(|r| r["state"] != "inactive")
}

fn unix_now() -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    now.map_or(0.0, |d| d.as_secs_f64())
}

// ------------------------------------------------------------------ prometheus

/// `/usr/bin/prometheus`, else `prometheus` on PATH.
fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(PathBuf::from("/usr/bin")).chain(std::env::split_paths(&path));
    dirs.map(|d| d.join("prometheus")).find(|c| c.is_file())
}

/// A Prometheus server on loopback with temporary storage, stopped (by pid) when dropped.
struct Prom {
    proc: Proc,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prom {
    fn start(bin: &Path, targets: &[SocketAddr], deadline: Instant) -> Prom {
        let dir = temp_dir();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = dir.join("prometheus.yml");
        let yml = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - \"{ALERTS_PATH}\"\n\
             scrape_configs:\n  - job_name: \"{JOB}\"\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(&config, yml).expect("write prometheus.yml");
        let addr = addr(free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let data = dir.join("data");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let name = "prometheus".to_string();
        let proc = Proc { child, name };
        let mut prom = Prom { proc, addr, dir };
        let until = deadline.min(Instant::now() + Duration::from_secs(30));
        while Instant::now() < until {
            if let Ok(Some(status)) = prom.proc.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            if std::net::TcpStream::connect(addr).is_ok() && prom.get("/-/ready").status == 200 {
                return prom;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus not ready on {addr}:\n{}", prom.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn get(&self, path_and_query: &str) -> Resp {
        send(self.addr, get(path_and_query).as_bytes())
    }

    /// The `data` of a successful API answer.
    fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let r = self.get(path_and_query);
        let v: Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("HTTP {}: not JSON ({e}): {}", r.status, r.text()))?;
        if v["status"] != "success" {
            let (kind, error) = (&v["errorType"], &v["error"]);
            return Err(format!("HTTP {} {kind}: {error}", r.status));
        }
        Ok(v["data"].clone())
    }

    /// An instant query now: the number of series (1 for a scalar).
    fn count(&self, expr: &str) -> Result<usize, String> {
        let d = self.api(&format!("/api/v1/query?query={}", percent_encode(expr)))?;
        Ok(match d["resultType"].as_str() {
            Some("scalar" | "string") => 1,
            _ => d["result"].as_array().map_or(0, Vec::len),
        })
    }

    /// Every loaded rule, in file order.
    fn rules(&self) -> Result<Vec<Value>, String> {
        let d = self.api("/api/v1/rules")?;
        let groups = d["groups"].as_array().cloned().unwrap_or_default();
        Ok(groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect())
    }

    fn wait(&self, what: &str, deadline: Instant, mut done: impl FnMut() -> bool) {
        while Instant::now() < deadline {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let rules = self.rules().unwrap_or_default();
        let state = |r: &Value| format!("{} {} {}", r["name"], r["health"], r["state"]);
        let states: Vec<String> = rules.iter().map(state).collect();
        let log = self.log();
        panic!("timed out waiting for {what}; rules: {states:?}\n{log}");
    }
}

/// Percent-encodes every byte (valid for any query string).
fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}
