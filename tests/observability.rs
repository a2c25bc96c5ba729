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

/// The request id: the client's when sane, else one made by the gateway;
/// in the client's answer, MOR's request, the access line and the refusal's
/// log line.
#[test]
fn the_request_id_follows_the_call() {
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway_env(
        &body_with_log(&[sa], "", ""),
        &[("MOR_GATEWAY_LOG", "mor_gateway=debug")],
    );
    let with_id = |id: &str, body: &str| {
        post_form("/billing/api/user_details_get", body).replacen(
            "Host: mor\r\n",
            &format!("Host: mor\r\nX-Request-Id: {id}\r\n"),
            1,
        )
    };
    let good = format!("u=admin&user_id=123&hash={H_123}");
    // A sane id is kept, end to end.
    let r = gw.send(&with_id("lb-7f3a:42", &good));
    assert!(r.text().contains("client123"), "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("lb-7f3a:42"));
    let seen = sim_seen(sa);
    let headers = seen[0]["headers"].as_array().unwrap();
    let to_mor: Vec<&str> = headers
        .iter()
        .filter(|h| h[0] == "x-request-id")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(to_mor, ["lb-7f3a:42"], "MOR gets the id once");
    // An id that is not sane (here with a space) is replaced; so is none.
    let bad = gw.send(&with_id("a b", "u=admin&user_id=123&hash=00"));
    let made = bad.header("x-request-id").unwrap().to_string();
    assert!(
        made.len() == 32 && made.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    let none = gw.post("/billing/api/user_details_get", &good);
    let made2 = none.header("x-request-id").unwrap().to_string();
    assert_ne!(made, made2);
    // The access lines and the refusal's log line carry them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(gw.dir.join("access.log")).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["lb-7f3a:42", made.as_str(), made2.as_str()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let err = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap_or_default();
        if let Some(line) = err
            .lines()
            .find(|l| l.contains(&format!("refused (request id {made})")))
        {
            assert!(
                line.contains("bad_hash") && line.contains("user_details_get"),
                "{line}"
            );
            // How the hash was compared: the rule, how many values, whose key.
            assert!(
                line.contains("(hash: global order over 1 parameter(s), key(s) of admin tried)"),
                "{line}"
            );
            assert!(secrets_in(line).is_empty(), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal line with the id in:\n{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
