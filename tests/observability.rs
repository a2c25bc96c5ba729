//! Access log, health endpoints and metrics, end to end.

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

#[test]
fn access_log_file_has_one_redacted_json_line_per_request() {
    let (sim, sa) = start_sim(KEY, &[]);
    let dir = temp_dir();
    let log = dir.join("access.log");
    let body = body_for(&[sa], "", "").replace(
        "[access_log]\nmode = \"off\"\n",
        &format!(
            "[access_log]\nmode = \"file\"\npath = \"{}\"\n",
            log.display()
        ),
    );
    let gw = start_gateway(&body);
    gw.post(
        "/billing/api/user_details",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    gw.send(&post_form(
        "/billing/api/users_get?u=admin&p=TopSecretPw&x_password=alsoSecret",
        "pswd=hunter2&hash=0000000000000000000000000000000000000000",
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.lines().count() >= 2 || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ok = &lines[0];
    assert_eq!(ok["api_method"], "user_details_get");
    assert_eq!(ok["alias"], "user_details");
    assert_eq!(ok["verdict"], "forwarded");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["user"], "admin");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["upstream"], sa.to_string());
    assert_eq!(ok["signer"], "admin");
    assert!(ok["latency_us"].as_u64().is_some_and(|l| l > 0));
    assert!(ok["ts"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && t.contains('T')));
    let bad = &lines[1];
    assert_eq!(bad["verdict"], "refused");
    assert_eq!(bad["reason"], "bad_hash");
    for secret in ["TopSecretPw", "alsoSecret", "hunter2", H_123] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(bad["query"].as_str().unwrap_or("").contains("p=[redacted]"));
    drop(sim);
}

#[test]
fn health_and_readiness() {
    let (gw, _sim, _sa) = gw_and_sim("", "");
    let get_m = |g: &Gw, p: &str| send(g.metrics, get(p).as_bytes());
    assert_eq!(get_m(&gw, "/healthz").status, 200);
    assert_eq!(get_m(&gw, "/readyz").status, 200);
    assert_eq!(get_m(&gw, "/nope").status, 404);
    let dead = start_gateway(&body_for(&[addr(free_port())], "", ""));
    assert_eq!(get_m(&dead, "/healthz").status, 200, "process is up");
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let r = get_m(&dead, "/readyz");
        if r.status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never reported the dead upstream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dead
        .metrics_text()
        .contains("mor_gateway_upstream_up{upstream="));
}

#[test]
fn metrics_cover_requests_bytes_and_build() {
    let (gw, _sim, _sa) = gw_and_sim("", "");
    let body = format!("u=admin&user_id=123&hash={H_123}");
    gw.post("/billing/api/user_details_get", &body);
    let m = gw.metrics_text();
    for needle in [
        r#"mor_gateway_requests_total{api_method="user_details_get",http_method="POST",outcome="forwarded",reason=""} 1"#,
        r#"mor_gateway_requests_total{api_method="user_calls_get",http_method="POST",outcome="forwarded",reason=""} 0"#,
        &format!(
            r#"mor_gateway_request_bytes_total{{api_method="user_details_get"}} {}"#,
            body.len()
        ),
        r#"mor_gateway_upstream_duration_seconds_count{api_method="user_details_get"} 1"#,
        "mor_gateway_in_flight_requests 0",
        "mor_gateway_build_info{git_sha=",
        "mor_gateway_config_loaded_timestamp_seconds ",
    ] {
        assert!(m.contains(needle), "missing {needle}\n{m}");
    }
    if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
        assert!(
            !m.contains("git_sha=\"unknown\""),
            "build.rs baked in the git sha"
        );
    }
    assert!(!m.contains("admin"), "no usernames as labels");
}
