//! One refresh of MOR's directory from a real MariaDB, as the gateway does
//! it: run by `benches/directory.sh` (which starts the server and seeds
//! 100,000 users). Prints the time of a full refresh (connect, the settings,
//! the fingerprint, the users streamed into a snapshot) and of one with
//! nothing changed (the fingerprint only), the bytes the server sent, and
//! the RSS the snapshot takes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a benchmark: a failed unwrap is a failed run"
)]

use std::time::Instant;

use mor_gateway::config::Settings;
use mor_gateway::core::directory::Directory;
use mor_gateway::edge::mor_db::{self, Read};
use mysql_async::prelude::Queryable;

/// This process's CPU time (user + system), in milliseconds.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the name.
    (f[11] + f[12]) as f64 * 1000.0 / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

async fn bytes_sent(root: &str) -> u64 {
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(root).unwrap())
        .await
        .unwrap();
    let v: Option<(String, u64)> = c
        .query_first("SHOW GLOBAL STATUS LIKE 'Bytes_sent'")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
    v.unwrap().1
}

fn main() {
    let Ok(port) = std::env::var("MORGW_BENCH_DB_PORT") else {
        println!("directory: run benches/directory.sh (it starts MariaDB with 100,000 users)");
        return;
    };
    let rounds: usize = std::env::var("MORGW_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let cfg = format!(
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"K\"\n[directory]\nurl = \"mysql://mor-gateway@127.0.0.1:{port}/mor\"\npassword_env = \"BENCH_DB_PASSWORD\"\ntimeout = \"60s\"\n"
    );
    let env =
        std::collections::HashMap::from([("K", "456789"), ("BENCH_DB_PASSWORD", "bench-db-pw")]);
    let s = Settings::from_toml(&cfg, None, &env).unwrap();
    let db = s.mor_db.clone().unwrap();
    let root = format!("mysql://root@127.0.0.1:{port}/mor");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut fulls = Vec::new();
    let mut unchanged = Vec::new();
    let (mut cpu_full, mut cpu_same) = (0.0, 0.0);
    let (mut bytes_full, mut bytes_same) = (0, 0);
    let mut snapshot_kib = Vec::new();
    let mut kept: Option<Directory> = None;
    let mut users = 0;
    let mut owners = 0;
    for _ in 0..rounds {
        // A full read: the users streamed into a new snapshot while the
        // previous one is still held (as in the gateway).
        let b0 = rt.block_on(bytes_sent(&root));
        let r0 = rss_kib();
        let c0 = cpu_ms();
        let t0 = Instant::now();
        let (read, fp) = rt.block_on(mor_db::read(&db, None)).unwrap();
        let t1 = Instant::now();
        cpu_full += cpu_ms() - c0;
        let r1 = rss_kib();
        let b1 = rt.block_on(bytes_sent(&root));
        let Read::Fresh(d) = read else {
            panic!("no last fingerprint, yet unchanged")
        };
        fulls.push((t1 - t0).as_secs_f64() * 1e3);
        bytes_full = b1 - b0;
        snapshot_kib.push(r1.saturating_sub(r0));
        (users, owners) = (d.user_count, d.owner_count);
        kept = Some(*d);
        // The next refresh with nothing changed: the server's fingerprint.
        let b2 = rt.block_on(bytes_sent(&root));
        let c2 = cpu_ms();
        let t2 = Instant::now();
        let (again, _) = rt.block_on(mor_db::read(&db, Some(&fp))).unwrap();
        let t3 = Instant::now();
        cpu_same += cpu_ms() - c2;
        let b3 = rt.block_on(bytes_sent(&root));
        assert!(matches!(again, Read::Unchanged));
        unchanged.push((t3 - t2).as_secs_f64() * 1e3);
        bytes_same = b3 - b2;
    }
    drop(kept);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    snapshot_kib.sort_unstable();
    let kib = snapshot_kib[snapshot_kib.len() / 2];
    println!(
        "| users | owners | full refresh (median of {rounds}) | bytes from the server | snapshot RSS | per user | unchanged refresh | its bytes |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {users} | {owners} | {:.0} ms | {:.1} MiB | {:.1} MiB | {:.0} B | {:.1} ms | {:.1} KiB |",
        med(&mut fulls),
        bytes_full as f64 / 1048576.0,
        kib as f64 / 1024.0,
        kib as f64 * 1024.0 / users as f64,
        med(&mut unchanged),
        bytes_same as f64 / 1024.0
    );
    println!(
        "gateway CPU per refresh (mean of {rounds}, 10 ms ticks): full {:.0} ms, unchanged {:.1} ms",
        cpu_full / rounds as f64,
        cpu_same / rounds as f64
    );
    println!(
        "(bytes include the probe's own answer, a few hundred bytes; the gateway makes a full read at least every {} refreshes)",
        mor_gateway::edge::mirror::FULL_READ_EVERY
    );
    println!(
        "process RSS after {rounds} rounds: {:.1} MiB",
        rss_kib() as f64 / 1024.0
    );
}
