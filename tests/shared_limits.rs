//! Limits shared through Redis (`[limits.shared]`): two gateway processes
//! and one real redis-server (started here on a free port, stopped by its
//! pid), end to end over HTTP.

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

const BAD: &str = "0000000000000000000000000000000000000000";

fn bad_details(user: &str) -> String {
    format!("u={user}&user_id=123&hash={BAD}")
}

fn ok(r: &Resp) -> bool {
    r.status == 200 && r.text().contains("client123")
}

fn limited(r: &Resp) -> bool {
    r.text() == mor_error("Too many requests")
}

fn locked(r: &Resp) -> bool {
    r.text() == mor_error("Too many failed attempts, try later")
}

fn shared_table(port: u16, extra: &str) -> String {
    format!(
        "[limits.shared]\nurl = \"redis://127.0.0.1:{port}\"\nkey_prefix = \"t:\"\ntimeout = \"200ms\"\nretry_interval = \"300ms\"\n{extra}\n"
    )
}

fn metric(gw: &Gw, line_start: &str) -> Option<f64> {
    gw.metrics_text()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn two_gateways_enforce_one_quota_and_one_lockout() {
    let rp = free_port();
    let _redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[limits]\nheaders = true\nper_user = {{ per_second = 0.01, burst = 4 }}\n\n[limits.lockout]\nfailures = 3\nwindow = \"60s\"\ncooloff = \"30s\"\n\n{}",
        shared_table(rp, "")
    );
    let body = body_for(&[sa], "", &tables);
    let (a, b) = (start_gateway(&body), start_gateway(&body));

    // One quota of 4 for alice, whichever gateway she calls.
    let mut verdicts = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = gw.post("/billing/api/user_details_get", &details("alice"));
        assert!(ok(&r) || limited(&r), "{}", r.text());
        verdicts.push(ok(&r));
        if ok(&r) {
            assert_eq!(r.header("ratelimit-limit"), Some("4"));
        }
    }
    assert_eq!(
        verdicts,
        [true, true, true, true, false, false, false, false]
    );
    // Another user has her own quota.
    assert!(ok(&b.post("/billing/api/user_details_get", &details("bob"))));

    // One lockout: three bad hashes for carol spread over both gateways
    // lock the pair on both, even with a good hash.
    for gw in [&a, &b, &a] {
        let r = gw.post("/billing/api/user_details_get", &bad_details("carol"));
        assert_eq!(r.text(), mor_error("Incorrect hash"));
    }
    for gw in [&a, &b] {
        let r = gw.post("/billing/api/user_details_get", &details("carol"));
        assert!(locked(&r), "{}", r.text());
        let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((28..=30).contains(&ra), "Retry-After {ra}");
    }

    // Every key the gateways wrote expires by itself.
    let keys = redis_cli(rp, &["--scan", "--pattern", "t:*"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.contains(&"t:q:user|alice"), "{keys:?}");
    assert!(keys.contains(&"t:lo:l|127.0.0.1|carol"), "{keys:?}");
    for k in &keys {
        let ttl: i64 = redis_cli(rp, &["PTTL", k]).parse().unwrap();
        assert!(ttl > 0, "{k} has no expiry ({ttl})");
    }
    for gw in [&a, &b] {
        assert_eq!(metric(gw, "mor_gateway_shared_limits_up "), Some(1.0));
        assert_eq!(
            metric(gw, "mor_gateway_lockouts_active "),
            Some(1.0),
            "cluster-wide"
        );
        let m = gw.metrics_text();
        assert!(
            m.contains(r#"mor_gateway_shared_limits_fallbacks_total{reason="timeout"} 0"#)
                && m.contains(r#"mor_gateway_shared_limits_fallbacks_total{reason="error"} 0"#),
            "{m}"
        );
    }
}

#[test]
fn redis_down_falls_back_to_local_limits_and_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let rp = free_port();
    let redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    // The lockout makes every verified call a Redis decision; the quota
    // (user_details_get per user) is what the checks below count.
    let tables = format!(
        "[limits.per_method_user]\nuser_details_get = {{ per_second = 0.01, burst = 3 }}\n\n[limits.lockout]\nfailures = 3\nwindow = \"60s\"\ncooloff = \"60s\"\n\n{}",
        shared_table(rp, "")
    );
    let gw = Arc::new(start_gateway(&body_for(&[sa], "", &tables)));
    assert!(ok(
        &gw.post("/billing/api/user_details_get", &details("alice"))
    ));
    assert_eq!(
        redis_cli(rp, &["EXISTS", "t:q:mu|user_details_get|alice"]),
        "1"
    );

    // Continuous load (no quota on it) across the outage and the recovery.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (gw, stop) = (gw.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut n, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let r = gw.post(
                    "/billing/api/user_calls_get",
                    &format!("u=john&s_user=123&hash={H_123}"),
                );
                n += 1;
                if !(r.status == 200 && r.text().contains("<calls_stat>")) {
                    failed.push(format!("{} {}", r.status, r.text()));
                }
            }
            (n, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // Redis gone: the local limiters decide, nothing fails beyond the quota.
    drop(redis);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = gw.post("/billing/api/user_details_get", &details("dave"));
        assert!(
            ok(&r) || limited(&r),
            "a failed call: {} {}",
            r.status,
            r.text()
        );
        seen.push(ok(&r));
    }
    assert_eq!(
        seen,
        [true, true, true, false, false],
        "the local quota of 3"
    );
    wait_for("shared_limits_up 0", || {
        metric(&gw, "mor_gateway_shared_limits_up ") == Some(0.0)
    });
    let fallbacks: f64 = ["error", "timeout", "down"]
        .iter()
        .filter_map(|r| {
            metric(
                &gw,
                &format!("mor_gateway_shared_limits_fallbacks_total{{reason=\"{r}\"}}"),
            )
        })
        .sum();
    assert!(fallbacks >= 5.0, "fallbacks counted: {fallbacks}");

    // Redis back (empty): shared again, without a restart or a reload.
    let _redis = start_redis(rp, &[]);
    wait_for("shared_limits_up 1", || {
        metric(&gw, "mor_gateway_shared_limits_up ") == Some(1.0)
    });
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = gw.post("/billing/api/user_details_get", &details("erin"));
        seen.push(ok(&r));
    }
    assert_eq!(seen, [true, true, true, false]);
    assert_eq!(
        redis_cli(rp, &["EXISTS", "t:q:mu|user_details_get|erin"]),
        "1",
        "decided in Redis"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (n, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {n} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(n >= 20, "the load ran: {n} calls");
}

#[test]
fn per_ip_layer_is_local_unless_shared_and_a_password_is_used() {
    let rp = free_port();
    let _redis = start_redis(rp, &["--requirepass", "s3cret-redis"]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let per_ip = "[limits]\nper_ip = { per_second = 0.01, burst = 2 }\n\n";
    // Local per-IP layer (the default): each gateway has its own burst of 2.
    let local = body_for(
        &[sa],
        "",
        &format!(
            "{per_ip}{}",
            shared_table(rp, "password_env = \"REDIS_PW\"\n")
        ),
    );
    let env = [("REDIS_PW", "s3cret-redis")];
    let (a, b) = (
        start_gateway_env(&local, &env),
        start_gateway_env(&local, &env),
    );
    let n = |gw: &Gw| {
        (0..3)
            .filter(|_| ok(&gw.post("/billing/api/user_details_get", &details("alice"))))
            .count()
    };
    assert_eq!((n(&a), n(&b)), (2, 2));
    assert_eq!(
        redis_cli(
            rp,
            &[
                "-a",
                "s3cret-redis",
                "--no-auth-warning",
                "EXISTS",
                "t:q:ip|127.0.0.1"
            ]
        ),
        "0"
    );
    drop((a, b));

    // per_ip = true: one burst of 2 for 127.0.0.1 across both.
    let shared = body_for(
        &[sa],
        "",
        &format!(
            "{per_ip}{}",
            shared_table(rp, "password_env = \"REDIS_PW\"\nper_ip = true\n")
        ),
    );
    let (a, b) = (
        start_gateway_env(&shared, &env),
        start_gateway_env(&shared, &env),
    );
    assert_eq!(n(&a) + n(&b), 2);
    assert_eq!(metric(&a, "mor_gateway_shared_limits_up "), Some(1.0));

    // A wrong password: Redis refuses, the local limiters decide, counted.
    let wrong = start_gateway_env(&shared, &[("REDIS_PW", "not-the-pw-77")]);
    assert_eq!(n(&wrong), 2, "local burst");
    assert_eq!(metric(&wrong, "mor_gateway_shared_limits_up "), Some(0.0));
    for gw in [&a, &b, &wrong] {
        let log = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap();
        assert!(
            !log.contains("s3cret-redis") && !log.contains("not-the-pw-77"),
            "{log}"
        );
    }
}

#[test]
fn shared_bucket_refills_at_the_quota_rate() {
    let rp = free_port();
    let _redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[limits.per_method_user]\nuser_details_get = {{ per_second = 4, burst = 1 }}\n\n{}",
        shared_table(rp, "")
    );
    let body = body_for(&[sa], "", &tables);
    let (a, b) = (start_gateway(&body), start_gateway(&body));
    assert!(ok(
        &a.post("/billing/api/user_details_get", &details("alice"))
    ));
    let r = b.post("/billing/api/user_details_get", &details("alice"));
    assert!(limited(&r), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"), "0.25 s, rounded up");
    let ttl: i64 = redis_cli(rp, &["PTTL", "t:q:mu|user_details_get|alice"])
        .parse()
        .unwrap();
    assert!(
        (1..=250).contains(&ttl),
        "the bucket lives until it is full: {ttl} ms"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(ok(
        &b.post("/billing/api/user_details_get", &details("alice"))
    ));
    assert!(limited(
        &a.post("/billing/api/user_details_get", &details("alice"))
    ));
}

/// A Redis that hangs (stopped with SIGSTOP, by its pid): each decision
/// waits at most `timeout`, then the local limiters decide; counted as
/// timeouts; shared again after SIGCONT.
#[test]
fn hung_redis_costs_at_most_the_timeout_per_call() {
    let rp = free_port();
    let redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[limits.per_method_user]\nuser_details_get = {{ per_second = 0.01, burst = 3 }}\n\n{}",
        shared_table(rp, "").replace("timeout = \"200ms\"", "timeout = \"100ms\"")
    );
    let gw = start_gateway(&body_for(&[sa], "", &tables));
    assert!(ok(
        &gw.post("/billing/api/user_details_get", &details("alice"))
    ));
    redis.signal("STOP");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        let r = gw.post("/billing/api/user_details_get", &details("bob"));
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "a call waited {took:?} for a hung Redis"
        );
        seen.push(ok(&r));
    }
    assert_eq!(
        seen,
        [true, true, true, false],
        "the local quota while Redis hangs"
    );
    let timeouts = metric(
        &gw,
        "mor_gateway_shared_limits_fallbacks_total{reason=\"timeout\"}",
    );
    assert!(timeouts.is_some_and(|n| n >= 1.0), "{timeouts:?}");
    assert_eq!(metric(&gw, "mor_gateway_shared_limits_up "), Some(0.0));
    redis.signal("CONT");
    wait_for("shared_limits_up 1", || {
        metric(&gw, "mor_gateway_shared_limits_up ") == Some(1.0)
    });
    // alice's bucket is still in Redis (1 of 3 used): two more, then limited.
    let seen: Vec<bool> = (0..3)
        .map(|_| ok(&gw.post("/billing/api/user_details_get", &details("alice"))))
        .collect();
    assert_eq!(seen, [true, true, false]);
}

/// Script runs that reached the script (EVALSHA and EVAL calls that did
/// not fail, e.g. with NOSCRIPT before the script is loaded), from
/// `INFO commandstats`.
fn script_runs(port: u16) -> u64 {
    let field = |l: &str, name: &str| -> u64 {
        l.split(&format!("{name}="))
            .nth(1)
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    redis_cli(port, &["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .map(|l| field(l, "calls") - field(l, "failed_calls"))
        .sum()
}

/// The per-IP layer is asked after routing in shared mode too: a path the
/// gateway does not serve ("Not found", the 404 of the route) spends no Redis round trip and no per-IP
/// token, so a scanner cannot load Redis nor use up its network's burst
/// with unknown paths; the calls after it are still counted in Redis.
#[test]
fn a_404_spends_no_redis_round_trip_and_no_per_ip_token() {
    let rp = free_port();
    let _redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[limits]\nper_ip = {{ per_second = 0.01, burst = 2 }}\nper_user = {{ per_second = 0.01, burst = 50 }}\n\n{}",
        shared_table(rp, "per_ip = true\n")
    );
    let gw = start_gateway(&body_for(&[sa], "", &tables));
    redis_cli(rp, &["CONFIG", "RESETSTAT"]);
    assert_eq!(script_runs(rp), 0);
    for path in [
        "/billing/callc/login",
        "/billing/api/v2/calls",
        "/billing/api/a/b/c/d/e",
        "/nothing/here",
    ] {
        for _ in 0..5 {
            let r = gw.post(path, "u=admin");
            // MOR's "not found" (in MOR's shape and status).
            assert!(
                r.text().contains("<error>Not found"),
                "{path}: {}",
                r.text()
            );
        }
    }
    assert_eq!(script_runs(rp), 0, "an unknown path asked Redis");
    assert_eq!(
        redis_cli(rp, &["EXISTS", "t:q:ip|127.0.0.1"]),
        "0",
        "an unknown path spent a per-IP token"
    );
    // The burst of 2 is whole; the third call is refused, each decided in
    // Redis (one round trip for the per-IP layer, one for the call's).
    let served: Vec<bool> = (0..3)
        .map(|_| ok(&gw.post("/billing/api/user_details_get", &details("alice"))))
        .collect();
    assert_eq!(served, [true, true, false]);
    assert_eq!(script_runs(rp), 5, "2 × (per-IP + call) + 1 refused per-IP");
    assert_eq!(redis_cli(rp, &["EXISTS", "t:q:ip|127.0.0.1"]), "1");
}

#[test]
fn in_redis_a_reporting_quota_and_lockout_let_calls_through_and_the_enforcing_quota_still_refuses()
{
    let rp = free_port();
    let _redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[limits]\nheaders = true\nper_user = {{ per_second = 0.001, burst = 1 }}\n\
         [limits.per_method_user]\nuser_details_get = {{ per_second = 0.001, burst = 3 }}\n\
         [limits.lockout]\nfailures = 2\nwindow = \"60s\"\ncooloff = \"30s\"\n\
         [rollout.layers]\nuser = \"report\"\nlockout = \"report\"\n\n{}",
        shared_table(rp, "")
    );
    let gw = start_gateway(&body_for(&[sa], "", &tables));
    let runs = script_runs(rp);
    // Over the user's quota (reported): served; no RateLimit headers.
    for i in 0..3 {
        let r = gw.post("/billing/api/user_details_get", &details("alice"));
        assert!(ok(&r), "call {i}: {}", r.text());
        assert_eq!(r.header("ratelimit-limit").is_some(), i == 0, "call {i}");
    }
    assert!(script_runs(rp) >= runs + 3, "decided in Redis");
    // The method+user quota (3) enforces: refused, not forwarded.
    assert!(limited(
        &gw.post("/billing/api/user_details_get", &details("alice"))
    ));
    assert_eq!(sim_seen(sa).len(), 3);
    // Two bad hashes lock carol's pair (the hash layer enforces: answered
    // at the edge); the lockout reports: her good call is served.
    for _ in 0..2 {
        let r = gw.post("/billing/api/user_details_get", &bad_details("carol"));
        assert_eq!(r.text(), mor_error("Incorrect hash"));
    }
    assert_eq!(
        redis_cli(rp, &["EXISTS", "t:lo:l|127.0.0.1|carol"]).trim(),
        "1",
        "the pair is locked in Redis"
    );
    let r = gw.post("/billing/api/user_details_get", &details("carol"));
    assert!(ok(&r), "a reporting lockout does not refuse: {}", r.text());
    assert_eq!(sim_seen(sa).len(), 4);
    let m = gw.metrics_text();
    for series in [
        r#"mor_gateway_would_refuse_total{layer="user",reason="limited"} 2"#,
        r#"mor_gateway_would_refuse_total{layer="lockout",reason="locked_out"} 1"#,
        r#"mor_gateway_shared_limits_fallbacks_total{reason="error"} 0"#,
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
}
