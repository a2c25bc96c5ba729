//! TLS both ways, with certificates generated for the test by the `openssl`
//! command: an HTTPS listener (TLS 1.2/1.3) whose certificate is replaced on
//! SIGHUP without dropping an open connection, and `https://` upstreams
//! verified against a CA file (a wrong CA is refused: 502). `check` refuses
//! what `run` could not serve. (The HTTPS listeners' caps under attack are
//! tests/tls_caps.rs, a binary of their own so that their load does not
//! share a run with the timing of these.)

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
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVersion};
use openssl::x509::X509;

/// A TLS client trusting `ca`, connected to `a`.
fn tls_connect(a: SocketAddr, ca: &Path, max: Option<SslVersion>) -> SslStream<TcpStream> {
    let tcp = TcpStream::connect(a).unwrap();
    tls_over(tcp, ca, max)
}

/// Reads one response with a Content-Length body from a kept-alive stream.
fn read_one(s: &mut impl Read) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

fn leaf_cn(s: &SslStream<TcpStream>) -> String {
    let cert: X509 = s.ssl().peer_certificate().unwrap();
    let entry = cert.subject_name().entries().next().unwrap();
    String::from_utf8_lossy(entry.data().as_slice()).into_owned()
}

#[test]
fn https_listener_and_certificate_reload_without_dropping_connections() {
    let dir = temp_dir();
    let (ca, pem, key) = certs(&dir, "ca", "gw", "gateway-one");
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::copy(&pem, &cert_file).unwrap();
    std::fs::copy(&key, &key_file).unwrap();
    let tls_port = free_port();
    let tls_addr = addr(tls_port);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[tls]\nlisten = [\"{tls_addr}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    );
    let gw = start_gateway(&body_for(&[sa], "", &tables));
    wait_listening(tls_addr, "TLS listener");
    // TLS 1.3 and 1.2 both work; the plain listener still serves too.
    for max in [Some(SslVersion::TLS1_3), Some(SslVersion::TLS1_2)] {
        let mut s = tls_connect(tls_addr, &ca, max);
        s.write_all(verified_call(false).as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.contains("client123"), "{out}");
    }
    assert!(gw
        .post(
            "/billing/api/user_details_get",
            &format!("u=admin&user_id=123&hash={H_123}")
        )
        .text()
        .contains("client123"));
    // A kept-alive TLS connection, opened before the reload.
    let mut open = tls_connect(tls_addr, &ca, None);
    assert_eq!(leaf_cn(&open), "gateway-one");
    open.write_all(verified_call(true).as_bytes()).unwrap();
    assert!(read_one(&mut open).contains("client123"));
    // New certificate files, SIGHUP: new handshakes get the new certificate.
    let (_, pem2, key2) = certs(&dir, "ca", "gw2", "gateway-two");
    std::fs::copy(&pem2, &cert_file).unwrap();
    std::fs::copy(&key2, &key_file).unwrap();
    gw.proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = tls_connect(tls_addr, &ca, None);
        if leaf_cn(&s) == "gateway-two" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the certificate was not reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...and the connection opened before the reload still works.
    open.write_all(verified_call(true).as_bytes()).unwrap();
    assert!(read_one(&mut open).contains("client123"));
}

fn start_tls_sim(cert: &Path, key: &Path) -> (Proc, SocketAddr) {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    start_sim(KEY, &["--tls-cert", &cert, "--tls-key", &key])
}

#[test]
fn https_upstreams_verified_against_the_ca_file() {
    let dir = temp_dir();
    let (ca, pem, key) = certs(&dir, "ca", "mor", "localhost");
    let (other_ca, _, _) = certs(&dir, "otherca", "x", "x");
    let (_sim, sa) = start_tls_sim(&pem, &key);
    let https = format!("https://localhost:{}", sa.port());
    let body = |ca_file: &Path| {
        body_for(&[], "", "").replace(
            "servers = []",
            &format!(
                "servers = [\"{https}\"]\nca_file = \"{}\"",
                ca_file.display()
            ),
        )
    };
    let gw = start_gateway(&body(&ca));
    let r = gw.post(
        "/billing/api/user_details_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert!(r.text().contains("client123"), "{}", r.text());
    // A MOR whose certificate the CA file does not vouch for: nothing is sent.
    let bad = start_gateway(&body(&other_ca));
    let r = bad.post(
        "/billing/api/user_details_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    // The HTTP probe is verified as the calls are: the good one stays in
    // rotation, the bad one is taken out, and its log line says why.
    let up = |g: &Gw| {
        let text = g.metrics_text();
        let line = text
            .lines()
            .find(|l| l.starts_with("mor_gateway_upstream_up{"));
        line.map(|l| l.ends_with(" 1"))
    };
    let t = std::time::Instant::now();
    while up(&bad) != Some(false) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            up(&bad)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(bad.dir.join("stderr.log")).unwrap();
    assert!(log.contains("is down: failed 1 probe(s) in a row"), "{log}");
    assert_eq!(up(&gw), Some(true));
    let log = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap();
    assert!(!log.contains("is down"), "{log}");
}

/// `[limits.shared]` over `rediss://`: Redis' certificate verified against
/// `ca_file`; one the CA does not vouch for is never used (local limits).
#[test]
fn shared_limits_over_tls_verified_against_the_ca_file() {
    let dir = temp_dir();
    let (ca, pem, key) = certs(&dir, "ca", "redis", "localhost");
    let (other_ca, _, _) = certs(&dir, "otherca", "x", "x");
    let port = free_port();
    let p = port.to_string();
    let (pem_s, key_s, ca_s) = (
        pem.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    let _redis = start_redis(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &p,
            "--tls-cert-file",
            &pem_s,
            "--tls-key-file",
            &key_s,
            "--tls-ca-cert-file",
            &ca_s,
            "--tls-auth-clients",
            "no",
        ],
    );
    let (_sim, sa) = start_sim(KEY, &[]);
    let body = |ca_file: &Path| {
        body_for(
            &[sa],
            "",
            &format!(
                "[limits]\nper_user = {{ per_second = 0.01, burst = 2 }}\n[limits.shared]\nurl = \"rediss://localhost:{port}\"\nca_file = \"{}\"\ntimeout = \"3s\"\n",
                ca_file.display()
            ),
        )
    };
    let calls = |gw: &Gw| {
        (0..3)
            .map(|_| {
                gw.post(
                    "/billing/api/user_details_get",
                    &format!("u=alice&user_id=123&hash={H_123}"),
                )
                .text()
                .contains("client123")
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (start_gateway(&body(&ca)), start_gateway(&body(&ca)));
    assert_eq!(
        [calls(&a), calls(&b)].concat(),
        [true, true, false, false, false, false]
    );
    let up = |gw: &Gw| {
        gw.metrics_text()
            .lines()
            .any(|l| l == "mor_gateway_shared_limits_up 1")
    };
    assert!(up(&a) && up(&b));
    // A certificate the CA file does not vouch for: local limits, Redis unused.
    let bad = start_gateway(&body(&other_ca));
    assert_eq!(calls(&bad), [true, true, false], "its own local burst");
    assert!(!up(&bad));
    let log = std::fs::read_to_string(bad.dir.join("stderr.log")).unwrap();
    assert!(log.contains("certificate verify failed"), "{log}");
}

#[test]
fn check_refuses_tls_it_could_not_serve() {
    let dir = temp_dir();
    let (_, pem, key) = certs(&dir, "ca", "a", "a");
    let (_, _, other_key) = certs(&dir, "ca", "b", "b");
    let cfg = dir.join("gw.toml");
    let check = |tls: &str, upstream: &str| {
        std::fs::write(
            &cfg,
            format!("listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"{upstream}\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n{tls}"),
        )
        .unwrap();
        let o = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&cfg)
            .env("GW_KEY", KEY)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let tls = |c: &Path, k: &Path| {
        format!(
            "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            c.display(),
            k.display()
        )
    };
    let (ok, out) = check(&tls(&pem, &key), "https://localhost:1");
    assert!(ok, "{out}");
    assert!(
        out.contains("tls listen") && out.contains("over HTTPS"),
        "{out}"
    );
    let (ok, out) = check(&tls(&pem, &other_key), "127.0.0.1:1");
    assert!(
        !ok && out.contains("tls.key_file") && out.contains("is not the key"),
        "{out}"
    );
    let (ok, out) = check(&tls(&dir.join("missing.pem"), &key), "127.0.0.1:1");
    assert!(!ok && out.contains("tls.cert_file"), "{out}");
    let (ok, out) = check("", "ftp://localhost:1");
    assert!(!ok && out.contains("upstream.servers[0]"), "{out}");
    let (ok, out) = check("[upstream.x]\n", "127.0.0.1:1");
    assert!(!ok, "{out}");
    let (ok, out) = check(&tls(&pem, &key), "127.0.0.1:1");
    assert!(
        ok && out.contains("handshake within 5s, 32 pending per client address"),
        "{out}"
    );
    for (extra, named) in [
        ("handshake_timeout = \"0s\"", "tls.handshake_timeout"),
        ("handshake_timeout = \"2m\"", "tls.handshake_timeout"),
        (
            "max_handshakes_per_address = 300",
            "tls.max_handshakes_per_address",
        ),
        ("handshake_timout = \"1s\"", "handshake_timout"),
    ] {
        let (ok, out) = check(&format!("{}{extra}\n", tls(&pem, &key)), "127.0.0.1:1");
        assert!(!ok && out.contains(named), "{extra}: {out}");
    }
}

/// A TLS connection that first sends `preamble` in the clear (a PROXY header).
fn tls_after(a: SocketAddr, ca: &Path, preamble: &[u8]) -> Result<SslStream<TcpStream>, String> {
    let mut tcp = TcpStream::connect(a).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(preamble).unwrap();
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.build()
        .connect("localhost", tcp)
        .map_err(|e| e.to_string())
}

#[test]
fn proxy_protocol_before_tls_names_the_client() {
    let dir = temp_dir();
    let (ca, pem, key) = certs(&dir, "ca", "gw", "gw");
    let tls_addr = addr(free_port());
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[tls]\nlisten = [\"{tls_addr}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\nproxy_protocol = true\n\n[client]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        pem.display(),
        key.display()
    );
    let gw = start_gateway(&body_for(&[sa], "", &tables));
    wait_listening(tls_addr, "TLS listener");
    let ask = |s: &mut SslStream<TcpStream>| {
        s.write_all(verified_call(false).as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    // v1
    let mut s = tls_after(
        tls_addr,
        &ca,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n",
    )
    .unwrap();
    assert!(ask(&mut s).contains("client123"));
    // v2, IPv4
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 5, 127, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    let mut s = tls_after(tls_addr, &ca, &v2).unwrap();
    assert!(ask(&mut s).contains("client123"));
    // v2 LOCAL (the balancer's own check) with a forwarded header: the
    // balancer is the client; X-Forwarded-For is not believed after PROXY.
    let mut s = tls_after(tls_addr, &ca, b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").unwrap();
    let spoofed =
        verified_call(false).replace("Host: mor\r\n", "Host: mor\r\nX-Forwarded-For: 6.6.6.6\r\n");
    s.write_all(spoofed.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("client123"), "{out}");
    let seen = sim_seen(sa);
    assert_eq!(seen[0]["x_real_ip"], "198.51.100.7");
    assert_eq!(seen[1]["x_real_ip"], "203.0.113.5");
    assert_eq!(seen[2]["x_real_ip"], "127.0.0.1");
    sim_reset(sa);
    // No header: the connection is dropped before any TLS.
    assert!(tls_after(tls_addr, &ca, b"").is_err());
    // A header from a peer that is not a trusted balancer is not believed.
    let mut tcp = connect_from("127.0.0.2", tls_addr);
    tcp.write_all(b"PROXY TCP4 6.6.6.6 127.0.0.1 1 443\r\n")
        .unwrap();
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(&ca).unwrap();
    assert!(b.build().connect("localhost", tcp).is_err());
    assert!(sim_seen(sa).is_empty());
    // After SIGHUP the TLS listeners' PROXY check reads the new list: the
    // peer trusted now is believed, the one trusted no more is refused.
    gw.reload(&body_for(
        &[sa],
        "",
        &tables.replace("\"127.0.0.1\"", "\"127.0.0.2\""),
    ));
    let trusted_now = || {
        let mut tcp = connect_from("127.0.0.2", tls_addr);
        tcp.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 1 443\r\n")
            .unwrap();
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_ca_file(&ca).unwrap();
        b.build().connect("localhost", tcp).ok()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut s = loop {
        if let Some(s) = trusted_now() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload not applied to the TLS listener"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(ask(&mut s).contains("client123"));
    assert_eq!(sim_seen(sa)[0]["x_real_ip"], "192.0.2.9");
    assert!(tls_after(
        tls_addr,
        &ca,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n"
    )
    .is_err());
    drop(gw);
}
