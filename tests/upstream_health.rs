//! MOR's health at the application level, over real simulators: a MOR
//! whose TCP port is up but whose every API call answers 500 is taken out
//! of rotation by the HTTP probe within the configured probes, `/readyz`
//! and `upstream_up` follow, calls go to the healthy server, and it comes
//! back once it passes its probes; a server whose real calls keep failing
//! is ejected at once (passive ejection), never the last one in rotation;
//! each change is one readable log line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn metric(gw: &Gw, series: &str) -> f64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(-1.0)
}

fn up(gw: &Gw, s: SocketAddr) -> f64 {
    metric(gw, &format!("mor_gateway_upstream_up{{upstream=\"{s}\"}}"))
}

/// `/_sim/sick?status=N` on the simulator at `s` (0: well again).
fn sick(s: SocketAddr, status: u16) {
    let r = send(
        s,
        format!("POST /_sim/sick?status={status} HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

fn readyz(gw: &Gw) -> u16 {
    send(gw.metrics, get("/readyz").as_bytes()).status
}

/// Waits until `cond` holds (at most `secs`), returning how long it took.
fn until(secs: u64, what: &str, cond: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "{what} not within {secs}s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// How many API calls the simulator at `s` received.
fn calls(s: SocketAddr) -> usize {
    sim_seen(s).len()
}

fn log(gw: &Gw) -> String {
    std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap_or_default()
}

fn gateway(servers: &[SocketAddr], upstream_keys: &str) -> Gw {
    let body = body_for(servers, "", "")
        .replace("[upstream]\n", &format!("[upstream]\n{upstream_keys}\n"));
    start_gateway(&body)
}

fn sims() -> ((Proc, SocketAddr), (Proc, SocketAddr)) {
    (start_sim(KEY, &[]), start_sim(KEY, &[]))
}

#[test]
fn a_mor_that_answers_tcp_but_500s_every_call_is_taken_out_by_the_probe() {
    let ((_pa, a), (_pb, b)) = sims();
    let gw = gateway(
        &[a, b],
        "health_check_interval = \"300ms\"\nhealth_check_timeout = \"250ms\"\nhealth_check_fails = 2\nhealth_check_passes = 2\neject_after_failures = 0",
    );
    assert_eq!((up(&gw, a), up(&gw, b), readyz(&gw)), (1.0, 1.0, 200));

    // A's web server is up, its Rails is not.
    sick(a, 500);
    let took = until(5, "A out of rotation", || up(&gw, a) == 0.0);
    // Two failed probes at 300 ms apart: well under 2 s (a TCP probe would
    // never take it out).
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(up(&gw, b), 1.0);
    assert_eq!(readyz(&gw), 200, "B still serves");
    // Every call goes to B: answered by B, nothing reaches A.
    sim_reset(a);
    sim_reset(b);
    for _ in 0..10 {
        let r = gw.send(&verified_call(false));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("client123"), "{}", r.text());
    }
    assert_eq!((calls(a), calls(b)), (0, 10));

    // B goes sick too: nothing is in rotation, /readyz says so.
    sick(b, 503);
    until(5, "readyz 503", || readyz(&gw) == 503);
    assert_eq!(up(&gw, b), 0.0);
    let r = send(gw.metrics, get("/readyz").as_bytes());
    assert!(r.text().contains("no upstream is up"), "{}", r.text());

    // Both well again: back after two passed probes each, calls on both.
    sick(a, 0);
    sick(b, 0);
    until(5, "both back", || up(&gw, a) == 1.0 && up(&gw, b) == 1.0);
    assert_eq!(readyz(&gw), 200);
    sim_reset(a);
    sim_reset(b);
    for _ in 0..10 {
        assert_eq!(gw.send(&verified_call(false)).status, 200);
    }
    assert!(calls(a) > 0 && calls(b) > 0, "{} {}", calls(a), calls(b));

    // One readable line per change, none of pingora's Debug dumps.
    let text = log(&gw);
    let down_a = format!(
        "MOR server {a} is down: failed 2 probe(s) in a row, last: answered 500, expected 200"
    );
    let down_b = format!(
        "MOR server {b} is down: failed 2 probe(s) in a row, last: answered 503, expected 200"
    );
    let up_a = format!("MOR server {a} is up: passed 2 probe(s) in a row");
    for line in [&down_a, &down_b, &up_a] {
        assert_eq!(text.matches(line.as_str()).count(), 1, "{line} in:\n{text}");
    }
    assert!(
        !text.contains("Backend {") && !text.contains("becomes"),
        "{text}"
    );
    assert!(text.lines().all(|l| l.len() < 300), "{text}");
}

#[test]
fn a_server_whose_calls_keep_failing_is_ejected_and_back_after_its_probes() {
    let ((_pa, a), (_pb, b)) = sims();
    // The probe asks something the sickness does not touch: only the real
    // calls tell A is failing.
    let gw = gateway(
        &[a, b],
        "health_check_path = \"/_sim/requests\"\nhealth_check_interval = \"1s\"\nhealth_check_timeout = \"500ms\"\nhealth_check_passes = 3\neject_after_failures = 3",
    );
    sick(a, 500);
    sim_reset(b);
    let ejections = format!("mor_gateway_upstream_ejections_total{{upstream=\"{a}\"}}");
    assert_eq!(metric(&gw, &ejections), 0.0);
    // Round robin: A answers 500 (MOR's answer, passed on) until its third
    // failure in a row ejects it.
    let mut failed = 0;
    let t = Instant::now();
    while up(&gw, a) == 1.0 {
        let r = gw.send(&verified_call(false));
        if r.status == 500 {
            failed += 1;
        }
        assert!(
            failed <= 3,
            "A answered {failed} 500s and is still in rotation"
        );
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(failed, 3);
    assert_eq!(metric(&gw, &ejections), 1.0);
    assert_eq!(readyz(&gw), 200);
    // Out at once: the next calls all go to B (the probe, 1 s apart and
    // three passes needed, cannot bring A back meanwhile).
    let before = calls(b);
    for _ in 0..10 {
        let r = gw.send(&verified_call(false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(calls(b), before + 10);

    // Well again: back after three passed probes.
    sick(a, 0);
    let back = until(8, "A back", || up(&gw, a) == 1.0);
    assert!(
        back > Duration::from_millis(1500),
        "back after {back:?}: before 3 probes"
    );
    sim_reset(a);
    for _ in 0..6 {
        assert_eq!(gw.send(&verified_call(false)).status, 200);
    }
    assert!(calls(a) > 0);
    let text = log(&gw);
    let ejected = format!("MOR server {a} ejected: failed 3 calls in a row, last: answered 500; back after 3 passed probe(s)");
    let returned =
        format!("MOR server {a} is back in rotation: passed 3 probe(s) after its ejection");
    for line in [&ejected, &returned] {
        assert_eq!(text.matches(line.as_str()).count(), 1, "{line} in:\n{text}");
    }
}

#[test]
fn the_last_server_in_rotation_is_never_ejected() {
    let (_p, a) = start_sim(KEY, &[]);
    let gw = gateway(
        &[a],
        "health_check_path = \"/_sim/requests\"\neject_after_failures = 2",
    );
    sick(a, 500);
    for _ in 0..6 {
        assert_eq!(gw.send(&verified_call(false)).status, 500);
    }
    assert_eq!(up(&gw, a), 1.0);
    assert_eq!(readyz(&gw), 200);
    let ejections = format!("mor_gateway_upstream_ejections_total{{upstream=\"{a}\"}}");
    assert_eq!(metric(&gw, &ejections), 0.0);
    // Said once, not per call.
    let text = log(&gw);
    let line = format!("MOR server {a} failed 2 calls in a row (answered 500), not ejected: it is the last server in rotation");
    assert_eq!(text.matches(line.as_str()).count(), 1, "{text}");
    // Well again, it serves.
    sick(a, 0);
    assert_eq!(gw.send(&verified_call(false)).status, 200);
}
