//! A body budget one client cannot spend, over real sockets: bytes are
//! reserved as they arrive (a declared length holds nothing), one client
//! address gets a share of the budget, and a body must keep a minimum rate
//! (a byte now and then, each read in time, is cut). Meanwhile calls with
//! bodies from other addresses keep succeeding, and nothing of the
//! attacker's reaches MOR.

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

/// A verified call whose form body is padded to exactly `len` bytes.
fn padded_body(len: usize) -> String {
    let b = format!("{}&pad=", details("admin"));
    format!("{b}{}", "x".repeat(len - b.len()))
}

fn head(len: usize) -> String {
    format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
}

/// A call with a `len`-byte body from `src`; true when MOR's answer came back.
fn call_from(src: &str, gw: &Gw, len: usize) -> bool {
    let raw = format!("{}{}", head(len), padded_body(len));
    send_from(src, gw.addr, raw.as_bytes())
        .text()
        .contains("client123")
}

fn requests(gw: &Gw, labels: &str) -> f64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("mor_gateway_requests_total{{{labels}}} "))?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// Reads what the gateway sends until it closes.
fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_declared_length_reserves_nothing_and_a_silent_body_is_cut() {
    // The defaults (64 MiB in all, 1 MiB bodies), a 2 s body deadline.
    let (gw, _sim, sa) = gw_and_sim("", "[client]\nbody_timeout = \"2s\"\n");
    // 64 connections each announce 1 MiB and send nothing more: before, they
    // reserved the whole budget and every body from everyone got 503.
    let mut idle: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = connect_from("127.0.0.1", gw.addr);
            s.write_all(head(1 << 20).as_bytes()).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for _ in 0..5 {
        assert!(call_from("127.0.0.2", &gw, 50_000));
    }
    assert!(call_from("127.0.0.1", &gw, 50_000), "the same address too");
    // At their deadline they are answered 408 and closed; MOR saw only the
    // six calls.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let a = answer(s);
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
        assert!(a.contains("Request body too slow"), "{a}");
    }
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(sim_seen(sa).len(), 6);
    assert_eq!(
        requests(
            &gw,
            r#"api_method="user_details_get",http_method="POST",outcome="client_error",reason="body_too_slow""#
        ),
        64.0
    );
}

#[test]
fn one_address_gets_only_its_share_of_the_budget() {
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[api]\nmax_body_bytes = 100000\nmax_buffered_bytes = 1000000\nmax_buffered_bytes_per_address = 200000\n",
    );
    // Two bodies of 127.0.0.1 held at 90,000 bytes each...
    let len = 100_000;
    let body = padded_body(len);
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect_from("127.0.0.1", gw.addr);
            s.write_all(head(len).as_bytes()).unwrap();
            s.write_all(&body.as_bytes()[..90_000]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // ...a third does not fit in its 200,000: 429, closed, counted.
    let mut third = connect_from("127.0.0.1", gw.addr);
    third.write_all(head(len).as_bytes()).unwrap();
    let _ = third.write_all(&body.as_bytes()[..90_000]);
    let a = answer(&mut third);
    assert!(a.starts_with("HTTP/1.1 429"), "{a}");
    assert!(
        a.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{a}"
    );
    assert!(a.contains("Too many request bodies in progress from this address"));
    assert_eq!(
        requests(
            &gw,
            r#"api_method="user_details_get",http_method="POST",outcome="limited",reason="overloaded_address""#
        ),
        1.0
    );
    // Another address is served meanwhile, bodies of the same size.
    for _ in 0..3 {
        assert!(call_from("127.0.0.2", &gw, len));
    }
    // The held bodies complete and are served; the address has its share back.
    for s in &mut held {
        s.write_all(&body.as_bytes()[90_000..]).unwrap();
        assert!(answer(s).contains("client123"));
    }
    assert!(call_from("127.0.0.1", &gw, len));
    assert_eq!(sim_seen(sa).len(), 6);
}

#[test]
fn a_dripping_body_is_cut_at_its_minimum_rate() {
    // 1 s, plus a second per 10 bytes received: a byte every 200 ms falls
    // behind after about 10 bytes, although each read is well in time.
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[client]\nbody_timeout = \"1s\"\nbody_min_rate = 10\nread_timeout = \"30s\"\n",
    );
    let mut s = connect_from("127.0.0.1", gw.addr);
    s.write_all(head(200).as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let start = Instant::now();
    let drip = std::thread::spawn(move || {
        for b in padded_body(200).bytes() {
            if w.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let a = answer(&mut s);
    let took = start.elapsed();
    assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    assert!(a.contains("Request body too slow"), "{a}");
    assert!(
        took > Duration::from_millis(1500) && took < Duration::from_secs(8),
        "cut after {took:?}"
    );
    drop(s);
    let _ = drip.join();
    // A body at a fair pace is read however long it takes past body_timeout.
    let mut ok = connect_from("127.0.0.2", gw.addr);
    ok.write_all(head(200).as_bytes()).unwrap();
    for chunk in padded_body(200).as_bytes().chunks(20) {
        ok.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(answer(&mut ok).contains("client123"));
    assert_eq!(sim_seen(sa).len(), 1);
    assert_eq!(
        requests(
            &gw,
            r#"api_method="user_details_get",http_method="POST",outcome="client_error",reason="body_too_slow""#
        ),
        1.0
    );
}
