//! Connection-level defences over real sockets: the caps on open
//! connections (total, per client address, a trusted balancer counted only
//! in the total), the total header deadline against a dripping client
//! (slowloris), the header-size cap, and the PROXY protocol on a plain
//! listener.

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
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends `raw` on `s` and reads until the gateway closes.
fn exchange(s: &mut TcpStream, raw: &[u8]) -> Vec<u8> {
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf
}

/// Reads one whole response (Content-Length framed) from a kept-alive stream.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse(&buf).unwrap();
            let len: usize = r.header("content-length").unwrap().parse().unwrap();
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf).into_owned();
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One metric sample from the exposition (0 when absent).
fn metric(gw: &Gw, series: &str) -> f64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn refused(gw: &Gw, reason: &str) -> f64 {
    metric(
        gw,
        &format!("mor_gateway_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Waits until the gateway counts `n` open connections.
fn wait_open(gw: &Gw, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = metric(gw, "mor_gateway_connections_open");
        if open == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "open connections {open}, not {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MOR-shaped 503 of a connection cap.
fn assert_busy(buf: &[u8]) {
    let r = parse(buf).unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(buf)));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), mor_error("Too many connections, try later"));
}

#[test]
fn open_connections_are_capped_in_total_and_per_client_address() {
    let (gw, _sim, _) = gw_and_sim(
        "",
        "[client]\nmax_connections = 4\nmax_connections_per_address = 2\ntrusted_proxies = [\"127.0.0.3\"]\n",
    );
    wait_open(&gw, 0.0);
    // Two idle connections from 127.0.0.1: the third is refused.
    let a1 = connect_from("127.0.0.1", gw.addr);
    let _a2 = connect_from("127.0.0.1", gw.addr);
    wait_open(&gw, 2.0);
    let mut a3 = connect_from("127.0.0.1", gw.addr);
    assert_busy(&exchange(&mut a3, verified_call(false).as_bytes()));
    assert_eq!(refused(&gw, "max_connections_per_address"), 1.0);
    // Closing one lets a new one in, and it is served.
    drop(a1);
    wait_open(&gw, 1.0);
    let mut a4 = connect_from("127.0.0.1", gw.addr);
    let r = parse(&exchange(&mut a4, verified_call(false).as_bytes())).unwrap();
    assert!(r.text().contains("client123"), "{}", r.text());
    wait_open(&gw, 1.0);
    // A trusted balancer is counted only in the total: three from it.
    let _b: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.3", gw.addr)).collect();
    wait_open(&gw, 4.0);
    let mut c = connect_from("127.0.0.2", gw.addr);
    assert_busy(&exchange(&mut c, verified_call(false).as_bytes()));
    assert_eq!(refused(&gw, "max_connections"), 1.0);
    assert_eq!(refused(&gw, "max_connections_per_address"), 1.0);
    drop(_b);
    wait_open(&gw, 1.0);
    let r = send_from("127.0.0.2", gw.addr, verified_call(false).as_bytes());
    assert!(r.text().contains("client123"), "{}", r.text());
}

#[test]
fn hostile_connections_write_no_log_line_each() {
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[client]\nheader_timeout = \"1s\"\nmax_header_bytes = 2048\n",
    );
    let partial = b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nX-Slow: a";
    let mut stalled = Vec::new();
    for _ in 0..30 {
        // A slowloris that gives up (FIN), one that resets, one that stays.
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(partial).unwrap();
        drop(s);
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(partial).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(partial).unwrap();
        stalled.push(s);
        // An oversized header.
        let mut s = TcpStream::connect(gw.addr).unwrap();
        let _ = s.write_all(&[b'x'; 4096]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while refused(&gw, "closed_mid_header") < 60.0 || refused(&gw, "header_timeout") < 30.0 {
        assert!(Instant::now() < deadline, "{}", gw.metrics_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(refused(&gw, "closed_mid_header"), 60.0);
    assert_eq!(refused(&gw, "header_timeout"), 30.0);
    assert_eq!(refused(&gw, "header_too_large"), 30.0);
    assert!(sim_seen(sa).is_empty());
    let log = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(lines.is_empty(), "{lines:#?}");
    // The gateway still serves.
    assert!(gw.send(&verified_call(false)).text().contains("client123"));
    drop(stalled);
}

/// Open file descriptors of a process (its sockets among them).
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_flood_refused_at_the_per_address_cap_takes_nothing_from_other_clients() {
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[client]\nmax_connections = 40\nmax_connections_per_address = 10\n",
    );
    wait_open(&gw, 0.0);
    let base = fds(gw.proc.pid());
    // The attacker holds its 10 and keeps opening connections it never
    // closes: each refusal would linger (reading for up to 1 s).
    let held: Vec<TcpStream> = (0..10)
        .map(|_| connect_from("127.0.0.1", gw.addr))
        .collect();
    wait_open(&gw, 10.0);
    let a = gw.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut kept = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && kept.len() < 5000 {
            if let Ok(mut s) = TcpStream::connect(a) {
                let _ = s.write_all(b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\n");
                kept.push(s);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        kept.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut most = 0;
    let mut served = 0;
    for _ in 0..20 {
        let r = send_from("127.0.0.2", gw.addr, verified_call(false).as_bytes());
        served += usize::from(r.text().contains("client123"));
        most = most.max(fds(gw.proc.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = flood.join().unwrap();
    assert_eq!(served, 20, "another client is served throughout");
    assert!(opened >= 200, "the flood opened {opened} connections");
    assert!(
        refused(&gw, "max_connections_per_address") >= 100.0,
        "{}",
        gw.metrics_text()
    );
    assert_eq!(refused(&gw, "max_connections"), 0.0);
    // What the gateway held: the attacker's 10, at most 4 lingering
    // refusals of its address, and a margin for the other client's call,
    // the upstream and refused connections between their accept and close
    // (without the linger cap: some 300).
    assert!(
        most <= base + 10 + 4 + 25,
        "{most} descriptors open (base {base}) during the flood"
    );
    assert_eq!(sim_seen(sa).len(), 20);
    drop(held);
}

/// Drips `bytes` one at a time every `every` from a thread, until a write
/// fails; returns what the gateway answered and when it closed.
fn drip(mut s: TcpStream, bytes: &'static [u8], every: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        for b in bytes.iter().cycle().take(200) {
            if w.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(every);
        }
    });
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = start.elapsed();
    drop(s);
    let _ = writer.join();
    (buf, took)
}

const DRIPPED: &[u8] = b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn a_dripping_header_is_cut_at_the_header_deadline() {
    let (gw, _sim, _) = gw_and_sim(
        "",
        "[client]\nheader_timeout = \"1s\"\nread_timeout = \"10s\"\nkeepalive_timeout = \"10s\"\n",
    );
    // A byte every 200 ms: each read is well within read_timeout, the whole
    // header never arrives.
    let s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let slow = std::thread::spawn(move || drip(s, DRIPPED, Duration::from_millis(200)));
    // Meanwhile a normal call on another connection is served.
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.send(&verified_call(false)).text().contains("client123"));
    let (buf, took) = slow.join().unwrap();
    let r = parse(&buf).unwrap_or_else(|| panic!("no 408: {:?}", String::from_utf8_lossy(&buf)));
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), mor_error("Request timeout"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    assert_eq!(refused(&gw, "header_timeout"), 1.0);

    // On a kept-alive connection, idling between requests is the keep-alive
    // timeout's business; the deadline starts with the next request's first
    // byte.
    let mut k = TcpStream::connect(gw.addr).unwrap();
    k.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    k.write_all(verified_call(true).as_bytes()).unwrap();
    assert!(read_response(&mut k).contains("client123"));
    std::thread::sleep(Duration::from_millis(1500));
    let (buf, took) = drip(k, DRIPPED, Duration::from_millis(200));
    assert_eq!(parse(&buf).map(|r| r.status), Some(408));
    assert!(took < Duration::from_secs(6), "closed after {took:?}");

    // The deadline ends with the header: a body that takes longer than it
    // (each read within read_timeout) is read and the call served.
    let body = format!("u=admin&user_id=123&hash={H_123}");
    let mut b = TcpStream::connect(gw.addr).unwrap();
    b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    b.write_all(
        format!(
            "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let start = Instant::now();
    for c in body.bytes() {
        b.write_all(&[c]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(start.elapsed() > Duration::from_millis(1500));
    let mut out = String::new();
    let _ = b.read_to_string(&mut out);
    assert!(out.contains("client123"), "{out}");

    // A new connection that sends nothing is closed at the deadline, unanswered.
    let mut quiet = TcpStream::connect(gw.addr).unwrap();
    quiet
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = quiet.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(refused(&gw, "header_timeout"), 3.0);
    assert_eq!(metric(&gw, "mor_gateway_connections_open"), 0.0);
}

/// A verified call whose header (request line to the blank line) is exactly
/// `len` bytes, padded with an `X-Pad` header, its body (with `extra` after
/// the signed parameters) in the same write.
fn call_with_header_of(len: usize, extra: &str) -> Vec<u8> {
    let body = format!("u=admin&user_id=123&hash={H_123}{extra}");
    let head = |pad: usize| {
        format!(
            "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            body.len(),
            "p".repeat(pad)
        )
    };
    let fixed = head(0).len();
    let h = head(len - fixed);
    assert_eq!(h.len(), len);
    format!("{h}{body}").into_bytes()
}

#[test]
fn a_header_over_max_header_bytes_is_refused_without_reading_it_all() {
    let (gw, _sim, _) = gw_and_sim("", "[client]\nmax_header_bytes = 2048\n");
    // Exactly at the cap (and its body in the same packet): served.
    let r = send(gw.addr, &call_with_header_of(2048, ""));
    assert!(r.text().contains("client123"), "{}", r.text());
    // The body does not count: a 2048-byte header and a 20 KiB body pass.
    let pad = format!("&x={}", "p".repeat(20 * 1024));
    let r = send(gw.addr, &call_with_header_of(2048, &pad));
    assert!(r.text().contains("client123"), "{}", r.text());
    // One byte over: 431.
    let r = send(gw.addr, &call_with_header_of(2049, ""));
    assert_eq!(r.status, 431);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), mor_error("Request header too large"));
    // A 200 KiB header sent at once: refused, and the client still reads
    // the answer (the gateway reads the rest for a moment before closing).
    let r = send(gw.addr, &call_with_header_of(200 * 1024, ""));
    assert_eq!(r.status, 431);
    assert_eq!(refused(&gw, "header_too_large"), 2.0);
    // pingora's own 1 MiB cap is not what answers: a kept-alive client
    // that sends a second, oversized header on the same connection gets 431.
    let mut k = TcpStream::connect(gw.addr).unwrap();
    k.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    k.write_all(verified_call(true).as_bytes()).unwrap();
    assert!(read_response(&mut k).contains("client123"));
    let buf = exchange(&mut k, &call_with_header_of(4096, ""));
    assert_eq!(parse(&buf).map(|r| r.status), Some(431));
    assert_eq!(refused(&gw, "header_too_large"), 3.0);
}

#[test]
fn proxy_protocol_on_a_plain_listener_names_the_client() {
    let (sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(
        &[sa],
        "proxy_protocol = true",
        "[client]\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_address = 1\n",
    ));
    // v1, then v2 (IPv4), each followed by the call in the same write.
    let mut s = connect_from("127.0.0.1", gw.addr);
    let mut v1 = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n".to_vec();
    v1.extend_from_slice(verified_call(false).as_bytes());
    assert!(String::from_utf8_lossy(&exchange(&mut s, &v1)).contains("client123"));
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 5, 127, 0, 0, 1, 0x9c, 0x40, 0x00, 0x50]);
    let mut s = connect_from("127.0.0.1", gw.addr);
    s.write_all(&v2).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        String::from_utf8_lossy(&exchange(&mut s, verified_call(false).as_bytes()))
            .contains("client123")
    );
    let seen = sim_seen(sa);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["x_real_ip"], "198.51.100.7");
    assert_eq!(seen[0]["x_forwarded_for"], "198.51.100.7");
    assert_eq!(seen[1]["x_real_ip"], "203.0.113.5");
    assert_eq!(seen[1]["x_forwarded_for"], "203.0.113.5");

    // The per-address cap counts the PROXY source, not the balancer.
    let mut held = connect_from("127.0.0.1", gw.addr);
    let mut first = b"PROXY TCP4 198.51.100.7 127.0.0.1 40001 80\r\n".to_vec();
    first.extend_from_slice(verified_call(true).as_bytes());
    held.write_all(&first).unwrap();
    assert!(read_response(&mut held).contains("client123"));
    let mut same = connect_from("127.0.0.1", gw.addr);
    same.write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 40002 80\r\n")
        .unwrap();
    assert_busy(&exchange(&mut same, verified_call(false).as_bytes()));
    let mut other = connect_from("127.0.0.1", gw.addr);
    other
        .write_all(b"PROXY TCP4 198.51.100.8 127.0.0.1 40003 80\r\n")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&exchange(&mut other, verified_call(false).as_bytes()))
            .contains("client123")
    );
    drop(held);

    // No header from the balancer, or a header from a peer that is not a
    // trusted balancer: dropped unanswered, MOR sees nothing.
    let mut none = connect_from("127.0.0.1", gw.addr);
    assert!(exchange(&mut none, verified_call(false).as_bytes()).is_empty());
    let mut spoof = connect_from("127.0.0.2", gw.addr);
    let mut forged = b"PROXY TCP4 6.6.6.6 127.0.0.1 1 80\r\n".to_vec();
    forged.extend_from_slice(verified_call(false).as_bytes());
    assert!(exchange(&mut spoof, &forged).is_empty());
    assert_eq!(sim_seen(sa).len(), 4);
    assert_eq!(refused(&gw, "proxy_protocol"), 2.0);
    drop((gw, sim));
}

#[test]
fn check_refuses_nonsense_connection_settings() {
    let dir = temp_dir();
    let check = |extra: &str| {
        let p = dir.join("c.toml");
        std::fs::write(
            &p,
            format!("listen = [\"127.0.0.1:0\"]\n{extra}\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"K\"\n"),
        )
        .unwrap();
        let o = std::process::Command::new(BIN)
            .args(["check", "-c"])
            .arg(&p)
            .env("K", "k")
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = check("");
    assert!(ok, "{out}");
    assert!(
        out.contains("10000 open at most, 256 per client address (IPv6: per /64)"),
        "{out}"
    );
    assert!(
        out.contains("1048576 bytes; 67108864 buffered at most, 4194304 per client address; within 10s + 1s per 1024 bytes"),
        "{out}"
    );
    for (extra, key) in [
        ("[client]\nheader_timeout = \"0s\"", "client.header_timeout"),
        (
            "[client]\nmax_header_bytes = 100",
            "client.max_header_bytes",
        ),
        (
            "[client]\nmax_header_bytes = 2000000",
            "client.max_header_bytes",
        ),
        (
            "[client]\nmax_connections = 10\nmax_connections_per_address = 11",
            "client.max_connections_per_address",
        ),
        ("proxy_protocol = true", "proxy_protocol"),
        ("[client]\nmax_connections = -1", "max_connections"),
        ("[client]\nipv6_prefix = 8", "client.ipv6_prefix"),
        ("[client]\nbody_min_rate = 0", "client.body_min_rate"),
        ("[client]\nsend_timeout = \"0s\"", "client.send_timeout"),
        ("[client]\nbody_timeout = \"0s\"", "client.body_timeout"),
        (
            "[api]\nmax_body_bytes = 1000\nmax_buffered_bytes_per_address = 999",
            "api.max_buffered_bytes_per_address",
        ),
        (
            "[api]\nmax_buffered_bytes = 2000\nmax_body_bytes = 1000\nmax_buffered_bytes_per_address = 3000",
            "api.max_buffered_bytes_per_address",
        ),
        ("[api]\nmax_buffered_per_address = 1", "max_buffered_per_address"),
        ("[client]\nipv6_prefix = 129", "client.ipv6_prefix"),
    ] {
        let (ok, out) = check(extra);
        assert!(!ok && out.contains(key), "{extra}: {out}");
    }
    let (ok, out) = check("[client]\nmax_connections = 0\nmax_connections_per_address = 0");
    assert!(ok && out.contains("unlimited open at most"), "{out}");
}
