//! One reading of the client address, over real sockets: X-Forwarded-For
//! from a trusted balancer read entry by entry from the right (a bad byte in
//! the client's own part does not make the balancer the client), a PROXY
//! protocol header (LOCAL and UNKNOWN included) never overridden by
//! X-Forwarded-For, and IPv6 clients grouped by their /64 for the
//! per-address connection cap and the per-IP limit.

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

/// Sends `raw` on `s` and reads until the gateway closes.
fn exchange(s: &mut TcpStream, raw: &[u8]) -> String {
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A verified call carrying `header` (raw bytes: any byte may be in it).
fn call_with(header: &[u8]) -> Vec<u8> {
    let body = details("admin");
    let mut out = format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(header);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[test]
fn a_bad_byte_in_the_clients_part_does_not_make_the_balancer_the_client() {
    // The balancers (127.0.0.0/8) are exempt from limits; each client is
    // allowed 5 calls.
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[client]\ntrusted_proxies = [\"127.0.0.1\"]\n[limits]\nexempt = [\"127.0.0.0/8\"]\nper_ip = { per_second = 0.001, burst = 5 }\n",
    );
    // nginx appends the client's address to the client's own header line.
    let line = b"X-Forwarded-For: 6.6.6.\xff6, 198.51.100.7";
    let served = (0..30)
        .filter(|_| {
            let mut s = connect_from("127.0.0.1", gw.addr);
            exchange(&mut s, &call_with(line)).contains("client123")
        })
        .count();
    assert_eq!(served, 5, "the client's own per-IP limit");
    let seen = sim_seen(sa);
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert_eq!(s["x_real_ip"], "198.51.100.7", "{s}");
        assert_eq!(s["x_forwarded_for"], "198.51.100.7", "{s}");
    }
    // A port after an address is still the address.
    sim_reset(sa);
    let mut s = connect_from("127.0.0.1", gw.addr);
    let out = exchange(&mut s, &call_with(b"X-Forwarded-For: [2001:db8::7]:4711"));
    assert!(out.contains("client123"), "{out}");
    assert_eq!(sim_seen(sa)[0]["x_real_ip"], "2001:db8::7");
}

#[test]
fn after_a_proxy_header_x_forwarded_for_is_never_believed() {
    let (sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(
        &[sa],
        "proxy_protocol = true",
        "[client]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    ));
    let xff = b"X-Forwarded-For: 6.6.6.6".as_slice();
    // v1 UNKNOWN, v2 LOCAL (a balancer's own health check): the balancer
    // stays the client; the header it forwarded is not believed.
    let mut v1 = b"PROXY UNKNOWN\r\n".to_vec();
    v1.extend_from_slice(&call_with(xff));
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    v2.extend_from_slice(&call_with(xff));
    // A named client: it is the client, whatever the header says.
    let mut named = b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n".to_vec();
    named.extend_from_slice(&call_with(xff));
    for req in [&v1, &v2, &named] {
        let mut s = connect_from("127.0.0.1", gw.addr);
        let out = exchange(&mut s, req);
        assert!(out.contains("client123"), "{out}");
    }
    let ips: Vec<String> = sim_seen(sa)
        .iter()
        .map(|s| s["x_real_ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips, ["127.0.0.1", "127.0.0.1", "198.51.100.7"]);
    drop((gw, sim));
}

/// A PROXY v1 header naming an IPv6 client.
fn proxied_v6(client: &str) -> Vec<u8> {
    format!("PROXY TCP6 {client} 2001:db8::ffff 40000 80\r\n").into_bytes()
}

#[test]
fn ipv6_clients_are_grouped_by_their_64() {
    let (sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(
        &[sa],
        "proxy_protocol = true",
        "[client]\ntrusted_proxies = [\"127.0.0.1\"]\nmax_connections_per_address = 1\n[limits]\nper_ip = { per_second = 0.001, burst = 2 }\n",
    ));
    // One connection held by 2001:db8:1:2::1: another address of the same
    // /64 is the same client for the per-address cap.
    let mut held = connect_from("127.0.0.1", gw.addr);
    held.write_all(&proxied_v6("2001:db8:1:2::1")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut same = connect_from("127.0.0.1", gw.addr);
    let mut req = proxied_v6("2001:db8:1:2:ffff::9");
    req.extend_from_slice(verified_call(false).as_bytes());
    let out = exchange(&mut same, &req);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    // Another /64 is another client.
    let mut other = connect_from("127.0.0.1", gw.addr);
    let mut req = proxied_v6("2001:db8:1:3::1");
    req.extend_from_slice(verified_call(false).as_bytes());
    assert!(exchange(&mut other, &req).contains("client123"));
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(200));
    // The per-IP limit: two calls for the whole /64, from any of its addresses.
    let results: Vec<bool> = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2::3"]
        .iter()
        .map(|c| {
            let mut s = connect_from("127.0.0.1", gw.addr);
            let mut req = proxied_v6(c);
            req.extend_from_slice(verified_call(false).as_bytes());
            exchange(&mut s, &req).contains("client123")
        })
        .collect();
    assert_eq!(results, [true, true, false]);
    // MOR still sees each client's own address.
    let seen = sim_seen(sa);
    assert_eq!(seen.last().unwrap()["x_real_ip"], "2001:db8:1:2::2");
    drop((gw, sim));
}
