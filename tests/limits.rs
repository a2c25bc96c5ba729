//! Rate limits and the failed-hash lockout, end to end over real HTTP.

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

fn is_limited(r: &Resp) -> bool {
    r.text() == mor_error("Too many requests")
}

#[test]
fn user_burst_limited_with_retry_after_other_users_unaffected() {
    let (gw, _sim, _sa) = gw_and_sim(
        "",
        "[limits]\nheaders = true\nper_user = { per_second = 0.5, burst = 3 }\n",
    );
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = gw.post("/billing/api/user_details_get", &details("alice"));
        assert!(r.text().contains("client123"), "{}", r.text());
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        remaining.push(r.header("ratelimit-remaining").unwrap_or("").to_string());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = gw.post("/billing/api/user_details_get", &details("alice"));
    assert!(is_limited(&r), "{}", r.text());
    assert_eq!(r.status, 200, "MOR reply mode");
    // 0.5/s: the next cell is due in at most 2 s.
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&ra), "Retry-After {ra}");
    // Another user is unaffected.
    let r = gw.post("/billing/api/user_details_get", &details("bob"));
    assert!(r.text().contains("client123"));
    // After Retry-After, alice may call again.
    std::thread::sleep(Duration::from_secs(ra));
    let r = gw.post("/billing/api/user_details_get", &details("alice"));
    assert!(r.text().contains("client123"), "{}", r.text());
    let m = gw.metrics_text();
    assert!(
        m.contains(r#"mor_gateway_ratelimit_decisions_total{api_method="user_details_get",decision="limited",layer="user"} 1"#),
        "{m}"
    );
}

#[test]
fn http_mode_answers_429() {
    let (gw, _sim, _sa) = gw_and_sim(
        "reply_mode = \"http\"",
        "[limits]\nper_user = { per_second = 0.2, burst = 1 }\n",
    );
    assert_eq!(
        gw.post("/billing/api/user_details_get", &details("carol"))
            .status,
        200
    );
    let r = gw.post("/billing/api/user_details_get", &details("carol"));
    assert_eq!(r.status, 429);
    assert!(is_limited(&r));
    let ra: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((1..=5).contains(&ra), "{ra}");
}

#[test]
fn unsigned_flood_never_consumes_a_users_quota() {
    let (gw, _sim, sa) = gw_and_sim("", "[limits]\nper_user = { per_second = 0.1, burst = 3 }\n");
    for _ in 0..30 {
        let r = gw.post(
            "/billing/api/user_details_get",
            "u=alice&user_id=123&hash=0000000000000000000000000000000000000000",
        );
        assert_eq!(r.text(), mor_error("Incorrect hash"));
    }
    for _ in 0..3 {
        let r = gw.post("/billing/api/user_details_get", &details("alice"));
        assert!(r.text().contains("client123"), "quota intact: {}", r.text());
    }
    assert_eq!(sim_seen(sa).len(), 3);
}

#[test]
fn per_method_quota_is_tighter_for_call_listings() {
    let (gw, _sim, _sa) = gw_and_sim(
        "",
        "[limits.per_method]\nuser_calls = { per_second = 0.1, burst = 2 }\n",
    );
    let calls = format!("u=admin&s_user=123&hash={H_123}");
    assert!(!is_limited(&gw.post("/billing/api/user_calls_get", &calls)));
    // the alias shares the canonical method's bucket
    assert!(!is_limited(&gw.post("/billing/api/user_calls", &calls)));
    assert!(is_limited(&gw.post("/billing/api/user_calls_get", &calls)));
    for _ in 0..5 {
        assert!(!is_limited(
            &gw.post("/billing/api/user_details_get", &details("admin"))
        ));
    }
}

#[test]
fn lockout_trips_expires_and_is_per_ip_and_user() {
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[limits.lockout]\nfailures = 3\nwindow = \"60s\"\ncooloff = \"2s\"\n",
    );
    let bad = "u=mallory&user_id=123&hash=0000000000000000000000000000000000000000";
    // A success resets the count.
    gw.post("/billing/api/user_details_get", bad);
    gw.post("/billing/api/user_details_get", bad);
    assert!(gw
        .post("/billing/api/user_details_get", &details("mallory"))
        .text()
        .contains("client123"));
    gw.post("/billing/api/user_details_get", bad);
    gw.post("/billing/api/user_details_get", bad);
    assert!(gw
        .post("/billing/api/user_details_get", &details("mallory"))
        .text()
        .contains("client123"));
    // Three failures in a row lock (127.0.0.1, mallory) out, even with a good hash.
    for _ in 0..3 {
        gw.post("/billing/api/user_details_get", bad);
    }
    let t = Instant::now();
    let r = gw.post("/billing/api/user_details_get", &details("mallory"));
    assert_eq!(r.text(), mor_error("Too many failed attempts, try later"));
    assert!(r.header("retry-after").is_some());
    sim_reset(sa);
    // Not the same user from here, nor the same user from elsewhere.
    assert!(gw
        .post("/billing/api/user_details_get", &details("alice"))
        .text()
        .contains("client123"));
    let r = send_from(
        "127.0.0.2",
        gw.addr,
        post_form("/billing/api/user_details_get", &details("mallory")).as_bytes(),
    );
    assert!(r.text().contains("client123"), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), 2, "the locked pair never reached MOR");
    assert!(gw.metrics_text().contains("mor_gateway_lockouts_active 1"));
    // The cool-off expires.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(t.elapsed()));
    let r = gw.post("/billing/api/user_details_get", &details("mallory"));
    assert!(r.text().contains("client123"), "{}", r.text());
}

#[test]
fn exempt_cidr_is_never_limited() {
    let (gw, _sim, _sa) = gw_and_sim(
        "",
        "[limits]\nexempt = [\"127.0.0.2/32\"]\nper_ip = { per_second = 0.1, burst = 2 }\nper_user = { per_second = 0.1, burst = 2 }\n",
    );
    for _ in 0..10 {
        let r = send_from(
            "127.0.0.2",
            gw.addr,
            post_form("/billing/api/user_details_get", &details("admin")).as_bytes(),
        );
        assert!(r.text().contains("client123"), "{}", r.text());
    }
    let mut limited = 0;
    for _ in 0..4 {
        if is_limited(&gw.post("/billing/api/user_details_get", &details("dave"))) {
            limited += 1;
        }
    }
    assert_eq!(limited, 2, "127.0.0.1 is not exempt");
}

#[test]
fn per_ip_limit_applies_before_the_hash() {
    let (gw, _sim, _sa) = gw_and_sim("", "[limits]\nper_ip = { per_second = 0.1, burst = 3 }\n");
    for _ in 0..3 {
        assert_eq!(
            gw.post("/billing/api/user_details_get", "user_id=1&hash=00")
                .text(),
            mor_error("Incorrect hash")
        );
    }
    // The verifier is not even reached now.
    assert!(is_limited(
        &gw.post("/billing/api/user_details_get", "user_id=1&hash=00")
    ));
    let r = send_from(
        "127.0.0.3",
        gw.addr,
        post_form("/billing/api/user_details_get", &details("john")).as_bytes(),
    );
    assert!(r.text().contains("client123"), "other IPs unaffected");
}

#[test]
fn reload_changes_limits_without_resetting_unrelated_buckets() {
    let (sim, sa) = start_sim(KEY, &[]);
    let tables = |per_user: &str, per_method: &str| {
        format!("[limits]\nper_user = {per_user}\n[limits.per_method]\n{per_method}\n")
    };
    let gw = start_gateway(&body_for(
        &[sa],
        "",
        &tables("{ per_second = 0.01, burst = 2 }", ""),
    ));
    for _ in 0..2 {
        assert!(!is_limited(
            &gw.post("/billing/api/user_details_get", &details("erin"))
        ));
    }
    assert!(is_limited(
        &gw.post("/billing/api/user_details_get", &details("erin"))
    ));
    let reloads = |g: &Gw, result: &str| -> u64 {
        let m = g.metrics_text();
        let needle = format!("mor_gateway_config_reloads_total{{result=\"{result}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let wait_reloads = |g: &Gw, result: &str, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while reloads(g, result) < n {
            assert!(Instant::now() < deadline, "reload {result} #{n} not seen");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Change only the per-method table: erin's per-user bucket is kept.
    gw.reload(&body_for(
        &[sa],
        "",
        &tables(
            "{ per_second = 0.01, burst = 2 }",
            "user_calls_get = { per_second = 1, burst = 1 }",
        ),
    ));
    wait_reloads(&gw, "ok", 1);
    assert!(
        is_limited(&gw.post("/billing/api/user_details_get", &details("erin"))),
        "bucket kept"
    );
    let calls = format!("u=admin&s_user=123&hash={H_123}");
    assert!(!is_limited(&gw.post("/billing/api/user_calls_get", &calls)));
    assert!(
        is_limited(&gw.post("/billing/api/user_calls_get", &calls)),
        "new per-method limit live"
    );
    // A broken file is refused; the running limits stay.
    std::fs::write(&gw.config, "listen = [").unwrap();
    gw.proc.signal("HUP");
    wait_reloads(&gw, "failed", 1);
    assert!(is_limited(
        &gw.post("/billing/api/user_details_get", &details("erin"))
    ));
    // Change the per-user quota: that layer starts fresh.
    gw.reload(&body_for(
        &[sa],
        "",
        &tables("{ per_second = 0.01, burst = 5 }", ""),
    ));
    wait_reloads(&gw, "ok", 2);
    assert!(!is_limited(
        &gw.post("/billing/api/user_details_get", &details("erin"))
    ));
    drop(sim);
}
