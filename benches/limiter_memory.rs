//! Memory of the keyed limiters under a flood of distinct keys.
//!
//! `cargo bench --bench limiter_memory` feeds 1,000,000 distinct client IPs,
//! 1,000,000 distinct users (per-user and per-method+user layers) and
//! 1,000,000 distinct (IP, user) hash failures into the gateway's limiter
//! state, once with the default cap (max_tracked_keys = 100,000) and once
//! effectively uncapped, each in a fresh process, and prints peak RSS
//! (VmHWM) growth and what a sweep gives back. Under `cargo test` it runs a
//! 10,000-key smoke pass only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use mor_gateway::core::layers::Modes;
use mor_gateway::core::limits::{Gate, HashCheck, LimitSettings, Lockout, QuotaSpec};
use mor_gateway::edge::local_limits::Limits;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn settings(cap: usize) -> LimitSettings {
    let q = QuotaSpec {
        per_second: 1000.0,
        burst: 50,
    };
    let mut per_method_user = HashMap::new();
    per_method_user.insert("user_calls_get".to_string(), q);
    LimitSettings {
        exempt: Vec::new(),
        per_ip: Some(q),
        per_user: Some(q),
        per_method: HashMap::new(),
        per_method_user,
        max_tracked_keys: cap,
        headers: false,
        lockout: Some(Lockout {
            failures: 5,
            window: Duration::from_millis(50),
            cooloff: Duration::from_millis(50),
        }),
        ipv6_prefix: 64,
    }
}

/// Runs one scenario in this process and prints one result line.
fn scenario(keys: u32, cap: usize) {
    let base_rss = status_kib("VmRSS:");
    let limits = Limits::new(&settings(cap));
    let t = Instant::now();
    for i in 0..keys {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i));
        let user = format!("user{i}");
        let s = limits.settings();
        let _ = limits.answer(&s.ip_question(ip, Modes::ENFORCE));
        let quotas = s.call_question(
            ip,
            Some(&user),
            "user_calls_get",
            HashCheck::Skipped,
            Modes::ENFORCE,
        );
        let _ = limits.answer(&quotas);
        let _ =
            limits.answer(&s.call_question(ip, Some(&user), "m", HashCheck::Bad, Modes::ENFORCE));
    }
    let fed = t.elapsed();
    let tracked = limits.tracked_keys();
    let peak = status_kib("VmHWM:");
    std::thread::sleep(Duration::from_millis(200));
    limits.sweep();
    let after_sweep = status_kib("VmRSS:");
    println!(
        "| {keys} | {cap} | {tracked} | {:.1} | {:.1} | {} | {:.0} |",
        (peak.saturating_sub(base_rss)) as f64 / 1024.0,
        after_sweep as f64 / 1024.0,
        limits.tracked_keys(),
        fed.as_nanos() as f64 / f64::from(keys.max(1)) / 3.0,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--scenario") {
        let keys = args
            .get(pos + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let cap = args
            .get(pos + 2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        scenario(keys, cap);
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let keys: u32 = if full { 1_000_000 } else { 10_000 };
    println!("limiter memory: {keys} distinct IPs, users and (IP, user) failures");
    println!("| keys fed | max_tracked_keys | tracked keys | peak RSS growth MiB | RSS after sweep MiB | tracked after sweep | ns per decision |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let exe = std::env::current_exe().expect("own path");
    for cap in [100_000usize, 10_000_000] {
        let out = Command::new(&exe)
            .args(["--scenario", &keys.to_string(), &cap.to_string()])
            .output()
            .expect("run scenario");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
