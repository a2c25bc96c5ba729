//! Whose fault it is, over real sockets: the gateway's own lack of file
//! descriptors on the way to MOR is counted as the gateway's (503,
//! `no_socket`), never as MOR's (no upstream error, MOR not marked down);
//! a client that does not read its answer is cut after
//! `client.send_timeout` with MOR's connection, counted as the client's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn metric(gw: &Gw, series: &str) -> f64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn out_of_descriptors_is_the_gateways_fault_not_mors() {
    const LIMIT: usize = 64;
    let (_sim, sa) = start_sim(KEY, &[]);
    let limit = format!("--nofile={LIMIT}:{LIMIT}");
    let gw = start_gateway_via(
        &body_for(
            &[sa],
            "",
            "[client]\nmax_connections = 0\nmax_connections_per_address = 0\n",
        )
        .replace(
            "[upstream]\n",
            "[upstream]\nhealth_check_interval = \"200ms\"\n",
        ),
        &[],
        &["prlimit", &limit, "--"],
    );
    let pid = gw.proc.pid();
    // Idle connections until every descriptor of the gateway is taken (a
    // few more wait in the listen backlog and take any that frees up).
    let mut idle: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fds(pid) < LIMIT {
        assert!(Instant::now() < deadline, "{} descriptors", fds(pid));
        idle.push(connect_from("127.0.0.1", gw.addr));
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..5 {
        idle.push(connect_from("127.0.0.1", gw.addr));
    }
    // Health checks run (and cannot open a socket) for a while.
    std::thread::sleep(Duration::from_secs(1));
    // A verified call on an accepted connection: MOR cannot be reached
    // because the gateway has no descriptor left.
    let first = &mut idle[0];
    first.write_all(verified_call(false).as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = first.read_to_end(&mut out);
    let r = parse(&out).unwrap_or_else(|| panic!("{:?}", String::from_utf8_lossy(&out)));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.text(), mor_error("Server busy, try later"));
    std::thread::sleep(Duration::from_secs(1));
    drop(idle);
    // Counted as the gateway's: no upstream error, MOR never marked down.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds(pid) >= LIMIT - 4 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let up = format!("mor_gateway_upstream_up{{upstream=\"{sa}\"}}");
    assert_eq!(metric(&gw, &up), 1.0);
    let errors = format!("mor_gateway_upstream_errors_total{{kind=\"connect\",upstream=\"{sa}\"}}");
    assert_eq!(metric(&gw, &errors), 0.0, "{}", gw.metrics_text());
    assert_eq!(
        metric(
            &gw,
            r#"mor_gateway_requests_total{api_method="user_details_get",http_method="POST",outcome="limited",reason="no_socket"}"#
        ),
        1.0
    );
    let log = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap_or_default();
    assert!(!log.contains("becomes unhealthy"), "{log}");
    // And the gateway serves again once descriptors are free.
    assert!(gw.send(&verified_call(false)).text().contains("client123"));
}

/// A MOR stand-in that answers every request with `size` bytes, and records
/// when the gateway stopped taking them (its write failed).
fn big_answers(size: usize) -> (SocketAddr, Arc<Mutex<Option<Instant>>>, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let cut = Arc::new(Mutex::new(None));
    let served = Arc::new(AtomicBool::new(false));
    let (c, s) = (cut.clone(), served.clone());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (c, s) = (c.clone(), s.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut b) {
                        Ok(1) => head.push(b[0]),
                        _ => return, // a health check
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                let _ = conn.read_exact(&mut body);
                s.store(true, Ordering::SeqCst);
                let _ = conn.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
                );
                let chunk = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < size {
                    if conn.write_all(&chunk).is_err() {
                        *c.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    (a, cut, served)
}

#[test]
fn a_client_that_does_not_read_is_cut_with_mors_connection() {
    let (up, cut, served) = big_answers(256 << 20);
    let gw = start_gateway(&body_for(&[up], "", "[client]\nsend_timeout = \"1s\"\n"));
    // A client with a small receive buffer that never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.addr.into()).unwrap();
    let mut client: TcpStream = sock.into();
    client.write_all(verified_call(false).as_bytes()).unwrap();
    let start = Instant::now();
    // MOR's connection is dropped within a few seconds (nginx-like
    // send_timeout), not when MOR's own write timeout ends it.
    let deadline = start + Duration::from_secs(15);
    loop {
        if cut.lock().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "MOR's connection still held");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served.load(Ordering::SeqCst));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The client's fault: counted under its method, no upstream error, no
    // error line.
    let series = r#"mor_gateway_requests_total{api_method="user_details_get",http_method="POST",outcome="client_error",reason="client_timeout"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&gw, series) != 1.0 {
        assert!(Instant::now() < deadline, "{}", gw.metrics_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let errors = format!("mor_gateway_upstream_errors_total{{kind=\"other\",upstream=\"{up}\"}}");
    assert_eq!(metric(&gw, &errors), 0.0);
    let log = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap_or_default();
    assert!(!log.contains("ERROR"), "{log}");
    drop(client);
}
