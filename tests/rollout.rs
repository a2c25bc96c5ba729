//! Report-only layers end to end: a call a reporting layer would refuse
//! reaches MOR (the rebuilt request) and is recorded; an enforcing layer
//! still refuses and forwards nothing; a reload switches a layer.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;
use std::time::{Duration, Instant};

const BAD: &str = "u=admin&user_id=123&hash=0000000000000000000000000000000000000000";

fn counter(gw: &Gw, series: &str) -> u64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Waits (a few seconds at most: the judge counts once an answer is relayed
/// whole) until each series has its value, then asserts them.
fn expect_counters(gw: &Gw, want: &[(&str, u64)]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while want.iter().any(|(s, n)| counter(gw, s) != *n) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (s, n) in want {
        assert_eq!(counter(gw, s), *n, "{s}");
    }
}

fn wait_reloads(gw: &Gw, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(gw, r#"mor_gateway_config_reloads_total{result="ok"}"#) < n {
        assert!(Instant::now() < deadline, "reload #{n} not seen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The access-log lines written so far (the writer thread may lag a little).
fn log_lines(gw: &Gw, at_least: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(gw.dir.join("access.log")).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect();
        if lines.len() >= at_least || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reporting_hash_layer_forwards_mor_judges_and_a_reload_enforces_it() {
    let (sim, sa) = start_sim(KEY, &[]);
    let report = "[rollout.layers]\nhash = \"report\"\n";
    let gw = start_gateway(&body_with_log(&[sa], "", report));

    // A wrong hash through the legacy alias: forwarded, rewritten, and MOR
    // itself answers "Incorrect hash".
    let r = gw.post("/billing/api/user_details", BAD);
    assert_eq!(r.text(), mor_error("Incorrect hash"), "MOR's own answer");
    let seen = sim_seen(sa);
    assert_eq!(seen.len(), 1, "the call reached MOR");
    assert_eq!(seen[0]["path"], "/billing/api/user_details_get");
    assert!(seen[0]["body"].as_str().unwrap().contains("hash=0000"));
    assert!(r.header("retry-after").is_none());
    assert_eq!(
        counter(
            &gw,
            r#"mor_gateway_would_refuse_total{layer="hash",reason="bad_hash"}"#
        ),
        1
    );
    // MOR judged it as the gateway would have: they agree, no disagreement.
    assert_eq!(
        counter(
            &gw,
            r#"mor_gateway_mor_answers_total{gateway="would_refuse",mor="incorrect_hash"}"#
        ),
        1
    );
    assert_eq!(
        counter(
            &gw,
            r#"mor_gateway_mor_disagreements_total{api_method="user_details_get",kind="would_break"}"#
        ),
        0
    );
    // A good call notes nothing and is served.
    let r = gw.post("/billing/api/user_details_get", &details("admin"));
    assert!(r.text().contains("client123"), "{}", r.text());
    let lines = log_lines(&gw, 2);
    assert_eq!(lines[0]["would_refuse"], "hash:bad_hash", "{:?}", lines[0]);
    assert_eq!(lines[0]["verdict"], "forwarded");
    assert_eq!(lines[0]["signer"], "unchecked");
    assert!(lines[1]["would_refuse"].is_null(), "{:?}", lines[1]);

    // Reload: the hash layer enforces; nothing more reaches MOR.
    gw.reload(&body_with_log(&[sa], "", ""));
    wait_reloads(&gw, 1);
    sim_reset(sa);
    let r = gw.post("/billing/api/user_details", BAD);
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    assert!(
        sim_seen(sa).is_empty(),
        "refused at the edge after the reload"
    );
    assert_eq!(
        counter(
            &gw,
            r#"mor_gateway_would_refuse_total{layer="hash",reason="bad_hash"}"#
        ),
        1,
        "an enforced refusal is not a report"
    );
    drop(sim);
}

#[test]
fn a_reporting_quota_consumes_nothing_and_the_enforcing_one_after_it_still_refuses() {
    let (sim, sa) = start_sim(KEY, &[]);
    let tables = "[limits]\nheaders = true\nper_user = { per_second = 0.001, burst = 1 }\n\
                  [limits.per_method]\nuser_details_get = { per_second = 0.001, burst = 3 }\n\
                  [rollout.layers]\nuser = \"report\"\n";
    let gw = start_gateway(&body_for(&[sa], "", tables));
    let mut headers = Vec::new();
    for i in 0..3 {
        let r = gw.post("/billing/api/user_details_get", &details("alice"));
        assert!(r.text().contains("client123"), "call {i}: {}", r.text());
        headers.push(r.header("ratelimit-remaining").map(str::to_string));
    }
    // The first call was within both quotas; the next two were over the
    // user's (reported: no RateLimit headers for them).
    assert!(headers[0].is_some());
    assert_eq!(headers[1..], [None, None]);
    assert_eq!(
        counter(
            &gw,
            r#"mor_gateway_would_refuse_total{layer="user",reason="limited"}"#
        ),
        2
    );
    // The method's quota (3) enforces: the fourth call is refused and not
    // forwarded.
    let r = gw.post("/billing/api/user_details_get", &details("bob"));
    assert_eq!(r.text(), mor_error("Too many requests"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(sim_seen(sa).len(), 3, "the refused call never reached MOR");
    drop(sim);
}

#[test]
fn check_lists_what_reports_and_warns_about_an_unknown_owner() {
    let dir = temp_dir();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n\
         [rollout.layers]\nall = \"report\"\n[rollout.owners.nobody]\nhash = \"enforce\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mor-gateway"))
        .args(["check", "-c"])
        .arg(&cfg)
        .env("GW_KEY", "k")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("global: ip=report"), "{text}");
    assert!(text.contains("rollout.owners.nobody"), "{text}");
    // A layer that does not exist is refused, naming the table.
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n\
         [rollout.methods.user_details_get]\nhsah = \"report\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mor-gateway"))
        .args(["check", "-c"])
        .arg(&cfg)
        .env("GW_KEY", "k")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("rollout.methods.user_details_get") && text.contains("hsah"),
        "{text}"
    );
}

#[test]
fn would_refuse_and_mor_served_is_counted_once_per_call_that_enforcing_would_break() {
    // The gateway believes GET is off; MOR serves GET: every GET call is one
    // that enforcing allow_get would break.
    let (sim, sa) = start_sim(KEY, &[]);
    let tables = "[api]\nallow_get = false\n[rollout.layers]\nallow_get = \"report\"\n";
    let gw = start_gateway(&body_with_log(&[sa], "", tables));
    let get = format!(
        "GET /billing/api/user_details_get?{} HTTP/1.1\r\nHost: mor\r\nConnection: close\r\n\r\n",
        details("admin")
    );
    for _ in 0..2 {
        let r = gw.send(&get);
        assert!(
            r.text().contains("client123"),
            "MOR served it: {}",
            r.text()
        );
    }
    // A POST is not affected by allow_get.
    let r = gw.post("/billing/api/user_details_get", &details("admin"));
    assert!(r.text().contains("client123"));
    let series = [
        (
            r#"mor_gateway_mor_disagreements_total{api_method="user_details_get",kind="would_break"}"#,
            2,
        ),
        (
            r#"mor_gateway_mor_answers_total{gateway="would_refuse",mor="served"}"#,
            2,
        ),
        (
            r#"mor_gateway_mor_answers_total{gateway="verified",mor="served"}"#,
            1,
        ),
        (
            r#"mor_gateway_would_refuse_total{layer="allow_get",reason="get_disabled"}"#,
            2,
        ),
    ];
    expect_counters(&gw, &series);
    let lines = log_lines(&gw, 3);
    assert_eq!(
        lines[0]["would_refuse"], "allow_get:get_disabled",
        "{:?}",
        lines[0]
    );
    assert_eq!(lines[0]["mor_answer"], "served");
    assert_eq!(lines[0]["disagreement"], "would_break");
    assert!(lines[2]["disagreement"].is_null(), "{:?}", lines[2]);
    drop(sim);
}

/// The mixed traffic of the rollout: (request id, raw request).
fn mixed() -> Vec<(&'static str, String)> {
    let form = |id: &str, path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: mor\r\nX-Request-Id: {id}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let api = "/billing/api/user_details_get";
    // ruser (res1's user) signed with the admin key: SHA1("5" + KEY).
    let admin_signed = format!("u=ruser&user_id=5&hash={}", sha1_hex(&format!("5{KEY}")));
    vec![
        ("good", form("good", api, &details("alice"))),
        ("bad-hash", form("bad-hash", api, "u=bob&user_id=123&hash=0000000000000000000000000000000000000000")),
        ("reseller-user-admin-key", form("reseller-user-admin-key", api, &admin_signed)),
        ("get-off", format!(
            "GET {api}?{} HTTP/1.1\r\nHost: mor\r\nX-Request-Id: get-off\r\nConnection: close\r\n\r\n",
            details("carol")
        )),
        ("quota-1", form("quota-1", api, &details("quser"))),
        ("quota-2", form("quota-2", api, &details("quser"))),
        ("username-only", form("username-only", "/billing/api/user_devices", "u=dave")),
        ("unknown", form("unknown", "/billing/api/no_such_action", "u=erin&hash=00")),
    ]
}

/// Runs the mixed traffic and a framing attack through a fresh gateway;
/// returns the ids that reached MOR, the ids the gateway refused and the
/// ids with a would-be refusal (from the access log).
fn run_mixed(rollout: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let tables = format!(
        "[api]\nallow_get = false\nunknown_methods = \"refuse\"\n\
         [limits]\nper_user = {{ per_second = 0.001, burst = 1 }}\n\
         [[resellers]]\nname = \"res1\"\nkey_env = \"GW_RESELLER_KEY\"\nusers = [\"ruser\"]\n{rollout}"
    );
    let gw = start_gateway(&body_with_log(&[sa], "", &tables));
    let calls = mixed();
    for (_, raw) in &calls {
        gw.send(raw);
    }
    // A request smuggling attempt: refused, closed, never forwarded.
    let body = details("mallory");
    let smuggle = format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nX-Request-Id: framing\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let r = gw.send(&smuggle);
    assert!(
        r.status == 400 || r.text().contains("Bad request"),
        "framing refused: {} {}",
        r.status,
        r.text()
    );
    let seen: Vec<String> = sim_seen(sa)
        .iter()
        .filter_map(|s| {
            s["headers"].as_array()?.iter().find_map(|h| {
                (h[0] == "x-request-id").then(|| h[1].as_str().unwrap_or("").to_string())
            })
        })
        .collect();
    let lines = log_lines(&gw, calls.len() + 1);
    let ids = |pick: &dyn Fn(&serde_json::Value) -> bool| -> Vec<String> {
        let mut v: Vec<String> = lines
            .iter()
            .filter(|l| pick(l))
            .filter_map(|l| l["request_id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let refused = ids(&|l| l["verdict"] != "forwarded");
    let reported = ids(&|l| !l["would_refuse"].is_null());
    drop(sim);
    let mut seen = seen;
    seen.sort();
    (seen, refused, reported)
}

#[test]
fn report_mode_marks_exactly_the_calls_enforce_mode_refuses_and_all_reach_mor() {
    let all: Vec<String> = {
        let mut v: Vec<String> = mixed().iter().map(|(id, _)| id.to_string()).collect();
        v.sort();
        v
    };
    let (seen_r, refused_r, reported) = run_mixed("[rollout.layers]\nall = \"report\"\n");
    let (seen_e, refused_e, reported_e) = run_mixed("");
    // Report mode: every call of the traffic reaches MOR; only the framing
    // attack is refused.
    assert_eq!(seen_r, all, "report mode forwards every call");
    assert_eq!(refused_r, ["framing"]);
    // Enforce mode refuses what report mode marked, call for call.
    let mut expected_refused = reported.clone();
    expected_refused.push("framing".to_string());
    expected_refused.sort();
    assert_eq!(refused_e, expected_refused, "would-refuse == refused");
    assert!(reported_e.is_empty());
    assert_eq!(
        reported,
        [
            "bad-hash",
            "get-off",
            "quota-2",
            "reseller-user-admin-key",
            "unknown",
            "username-only"
        ]
    );
    // And what enforce mode forwarded is the rest.
    assert_eq!(seen_e, ["good", "quota-1"]);
}

#[test]
fn a_wrong_gateway_key_against_a_mor_without_hash_checks_counts_each_would_break() {
    // MOR does not check hashes; the gateway's key is not MOR's: every
    // hash-checked call is one enforcing would break.
    let (sim, sa) = start_sim(KEY, &["--no-hash-check"]);
    let gw = start_gateway_env(
        &body_with_log(&[sa], "", "[rollout.layers]\nhash = \"report\"\n"),
        &[("GW_KEY", "not-mors-key")],
    );
    for _ in 0..3 {
        let r = gw.post("/billing/api/user_details_get", &details("admin"));
        assert!(
            r.text().contains("client123"),
            "MOR served it: {}",
            r.text()
        );
    }
    // A call without a hash is not affected.
    let r = gw.post("/billing/api/invoice_xlsx_generate", "u=admin");
    assert_ne!(r.status, 0);
    let want = [
        (
            r#"mor_gateway_mor_disagreements_total{api_method="user_details_get",kind="would_break"}"#,
            3,
        ),
        (
            r#"mor_gateway_mor_answers_total{gateway="would_refuse",mor="served"}"#,
            3,
        ),
        (
            r#"mor_gateway_would_refuse_total{layer="hash",reason="bad_hash"}"#,
            3,
        ),
    ];
    expect_counters(&gw, &want);
    let m = gw.metrics_text();
    let total: u64 = m
        .lines()
        .filter(|l| {
            l.starts_with("mor_gateway_mor_disagreements_total{") && l.contains("would_break")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 3, "exactly the affected calls");
    drop(sim);
}
