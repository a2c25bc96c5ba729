//! Heap allocations per call through the whole gateway (pingora, the
//! decision core, the forward to MOR), counted by dhat's global allocator.
//!
//! The gateway runs in this process (one worker thread); MOR is a minimal
//! keep-alive HTTP server in a child process (its allocations are not
//! counted); the client is this process's main thread with preformatted
//! requests and one fixed buffer (it allocates nothing per call). For each
//! load, 1,000 warm-up calls, then N calls: allocations and bytes per call
//! are the difference of dhat's totals divided by N.
//!
//! `cargo bench --bench allocations` (N = 10,000; `-- --calls N` to change).
//! `-- --sites FILE LOAD` (LOAD: verified, bad, alias) runs that load only,
//! with backtraces, and writes dhat's profile to FILE; `benches/alloc_sites.py
//! FILE N` lists the allocation sites per call. `-- --idle N` then opens N
//! connections that make one call each and stay open, and prints the heap
//! each holds (with `--sites`, the profile's end lists who holds it:
//! `benches/alloc_sites.py FILE N --live`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a benchmark: a failed unwrap is a failed run"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use mor_gateway::config::Settings;
use mor_gateway::server::{run, Plan};
use sha1::{Digest, Sha1};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEY: &str = "456789";
const PAGE: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><page><details><id>123</id><username>client123</username><balance>55.0000</balance></details></page>";

/// The upstream: answers every request on a connection with `PAGE`
/// (keep-alive), one thread per connection. Runs in a child process.
fn upstream(listener: TcpListener) -> ! {
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || serve_upstream(conn));
    }
    std::process::exit(0)
}

fn serve_upstream(mut c: TcpStream) {
    let mut buf = vec![0u8; 65536];
    let mut have = 0;
    // One write per answer, no Nagle delay.
    let _ = c.set_nodelay(true);
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
        PAGE.len()
    )
    .into_bytes();
    answer.extend_from_slice(PAGE);
    loop {
        match c.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        // One complete request (header + Content-Length body) at a time.
        while let Some(len) = request_len(&buf[..have]) {
            if c.write_all(&answer).is_err() {
                return;
            }
            buf.copy_within(len..have, 0);
            have -= len;
        }
    }
}

/// The length of the first complete HTTP message in `b` (header and
/// Content-Length body), if it is all there.
fn request_len(b: &[u8]) -> Option<usize> {
    let end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..end]).ok()?;
    let body = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    (b.len() >= end + body).then_some(end + body)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_listening(addr: SocketAddr) {
    for _ in 0..400 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{addr} never listened");
}

/// A load: preformatted requests, cycled.
struct Load {
    name: &'static str,
    requests: Vec<Vec<u8>>,
}

fn load(name: &'static str, path: &str, good: bool) -> Load {
    let requests = (1..=1000)
        .map(|n| {
            let hash = if good {
                hex::encode(Sha1::digest(format!("{n}{KEY}").as_bytes()))
            } else {
                "0".repeat(40)
            };
            let body = format!("u=user{n}&user_id={n}&hash={hash}");
            format!(
                "POST {path} HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect();
    Load { name, requests }
}

/// Sends `n` calls of `load` on one keep-alive connection, reading each
/// answer whole into `buf` (no allocation per call).
fn calls(c: &mut TcpStream, load: &Load, n: usize, buf: &mut [u8]) {
    for i in 0..n {
        c.write_all(&load.requests[i % load.requests.len()])
            .unwrap();
        let mut have = 0;
        loop {
            let got = c.read(&mut buf[have..]).unwrap();
            assert!(got > 0, "the gateway closed the connection");
            have += got;
            if let Some(len) = request_len(&buf[..have]) {
                assert_eq!(len, have, "one answer per call");
                assert!(buf.starts_with(b"HTTP/1.1 200"), "not 200");
                break;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--upstream-child") {
        let listener = TcpListener::bind(&args[i + 1]).unwrap();
        upstream(listener);
    }
    let n: usize = args
        .iter()
        .position(|a| a == "--calls")
        .and_then(|i| args.get(i + 1))
        .map_or(10_000, |v| v.parse().expect("--calls N"));

    let up = free_addr();
    let mut child = std::process::Command::new(&args[0])
        .args(["--upstream-child", &up.to_string()])
        .spawn()
        .unwrap();
    wait_listening(up);

    let gw = free_addr();
    let text = format!(
        "listen = [\"{gw}\"]\nthreads = 1\n[client]\nmax_connections = 0\nmax_connections_per_address = 0\n[upstream]\nservers = [\"{up}\"]\n[api]\nallow_get = false\n\
         [secrets]\nadmin_key_env = \"BENCH_KEY\"\n[access_log]\nmode = \"off\"\n[metrics]\nlisten = \"\"\n"
    );
    let settings = Settings::from_toml(
        &text,
        None,
        &std::collections::HashMap::from([("BENCH_KEY", KEY)]),
    )
    .unwrap();
    let sites = args
        .iter()
        .position(|a| a == "--sites")
        .map(|i| (args[i + 1].clone(), args[i + 2].clone()));
    let profiler = match &sites {
        Some((file, _)) => dhat::Profiler::builder()
            .file_name(file)
            .trim_backtraces(Some(16))
            .build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    std::thread::spawn(move || {
        run(Plan {
            settings: Arc::new(settings),
            config_path: None,
            upgrade: false,
            on_exit: None,
        })
        .unwrap()
    });
    wait_listening(gw);

    let loads = [
        load("verified", "/billing/api/user_details_get", true),
        load("bad hash", "/billing/api/user_details_get", false),
        load("alias", "/billing/api/user_details", true),
    ];
    let mut buf = vec![0u8; 65536];
    println!("heap allocations per call through the gateway ({n} calls per load, one keep-alive connection)");
    println!("| load | allocations/call | bytes allocated/call |");
    println!("| --- | --- | --- |");
    for l in &loads {
        if sites
            .as_ref()
            .is_some_and(|(_, name)| !l.name.starts_with(name.as_str()))
        {
            continue;
        }
        let mut c = TcpStream::connect(gw).unwrap();
        c.set_nodelay(true).unwrap();
        calls(&mut c, l, 1000, &mut buf);
        let before = dhat::HeapStats::get();
        calls(&mut c, l, n, &mut buf);
        let after = dhat::HeapStats::get();
        let blocks = (after.total_blocks - before.total_blocks) as f64 / n as f64;
        let bytes = (after.total_bytes - before.total_bytes) as f64 / n as f64;
        println!("| {} | {blocks:.1} | {bytes:.0} |", l.name);
    }
    let idle: usize = args
        .iter()
        .position(|a| a == "--idle")
        .and_then(|i| args.get(i + 1))
        .map_or(0, |v| v.parse().expect("--idle N"));
    // Kept open until the profile is written: its t-end lists what they hold.
    let mut kept = Vec::with_capacity(idle);
    if idle > 0 {
        let before = dhat::HeapStats::get();
        for _ in 0..idle {
            let mut c = TcpStream::connect(gw).unwrap();
            c.set_nodelay(true).unwrap();
            calls(&mut c, &loads[0], 1, &mut buf);
            kept.push(c);
        }
        // The loop reaches its wait between requests.
        std::thread::sleep(Duration::from_millis(300));
        let after = dhat::HeapStats::get();
        println!(
            "\n{idle} idle keep-alive connections (one verified call each): {:.0} heap bytes in {:.1} blocks per connection",
            (after.curr_bytes as f64 - before.curr_bytes as f64) / idle as f64,
            (after.curr_blocks as f64 - before.curr_blocks as f64) / idle as f64,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    // Writes the profile (with --sites).
    drop(profiler);
    std::process::exit(0);
}
