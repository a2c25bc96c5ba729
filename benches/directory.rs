//! One refresh of MOR's directory from a real MariaDB, as the gateway does
//! it: run by `benches/directory.sh` (which starts the server and seeds
//! 100,000 users). Prints time (read, build), the bytes the server sent,
//! and the RSS the snapshot takes.

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
use mysql_async::prelude::Queryable;

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
    let mut reads = Vec::new();
    let mut builds = Vec::new();
    let mut bytes = 0;
    let mut kept: Option<Directory> = None;
    let mut snapshot_kib = Vec::new();
    for _ in 0..rounds {
        let b0 = rt.block_on(bytes_sent(&root));
        let t0 = Instant::now();
        let (users, conf) = rt.block_on(mor_gateway::edge::mor_db::read(&db)).unwrap();
        let t1 = Instant::now();
        let b1 = rt.block_on(bytes_sent(&root));
        // The rows are still held: the RSS growth is the snapshot's.
        let r0 = rss_kib();
        let d = Directory::from_rows(&users, &conf);
        let t2 = Instant::now();
        let r1 = rss_kib();
        drop((users, conf));
        reads.push((t1 - t0).as_secs_f64() * 1e3);
        builds.push((t2 - t1).as_secs_f64() * 1e3);
        // The bytes_sent probe itself is counted too (a few hundred bytes).
        bytes = b1 - b0;
        snapshot_kib.push(r1.saturating_sub(r0));
        // The previous snapshot is dropped when the new one is installed.
        kept = Some(d);
    }
    let d = kept.unwrap();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (read, build) = (med(&mut reads), med(&mut builds));
    snapshot_kib.sort_unstable();
    println!(
        "| users | owners | refresh (read + build), median of {rounds} | read | build | bytes from the server | snapshot RSS | per user |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let kib = snapshot_kib[snapshot_kib.len() / 2];
    println!(
        "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} MiB | {:.1} MiB | {:.0} B |",
        d.user_count,
        d.owner_count,
        read + build,
        read,
        build,
        bytes as f64 / 1048576.0,
        kib as f64 / 1024.0,
        kib as f64 * 1024.0 / d.user_count as f64
    );
    println!(
        "process RSS after {rounds} refreshes: {:.1} MiB",
        rss_kib() as f64 / 1024.0
    );
}
