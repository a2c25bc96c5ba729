//! MOR as the judge, end to end: real gateways in front of the MOR
//! simulator (and of a raw MOR stand-in that controls every byte of its
//! answers). Every forwarded API call's answer is classified and counted
//! gateway x MOR (`mor_gateway_mor_answers_total`), and written into the
//! access line (`mor_answer`, `disagreement`): a verified call MOR served;
//! drift (the gateway verified with a key MOR no longer has: MOR says
//! "Incorrect hash"); an unchecked call MOR refused (mor_caught). Calls
//! refused at the edge and pass-through paths are not judged. Answers are
//! relayed byte-exact and never held back for the peek: a large answer, a
//! chunked one whose first chunk reaches the client before MOR sends the
//! rest (and whose error text spans chunks), a gzip-encoded one (counted
//! `encoded`, not read).

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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const API: &str = "/billing/api/user_details_get";

/// The value of the counter line that starts with `series` (0 if absent).
fn counter(gw: &Gw, series: &str) -> u64 {
    let text = gw.metrics_text();
    let line = text.lines().find(|l| l.starts_with(&format!("{series} ")));
    line.and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// `mor_gateway_mor_answers_total` of one gateway side and MOR class.
fn answers(gateway: &str, mor: &str) -> String {
    format!("mor_gateway_mor_answers_total{{gateway=\"{gateway}\",mor=\"{mor}\"}}")
}

/// `mor_gateway_mor_disagreements_total` of one kind for user_details_get.
fn disagreements(kind: &str) -> String {
    format!(
        "mor_gateway_mor_disagreements_total{{api_method=\"user_details_get\",kind=\"{kind}\"}}"
    )
}

/// The sum of every `mor_gateway_mor_answers_total` series.
fn all_answers(gw: &Gw) -> u64 {
    let text = gw.metrics_text();
    let lines = text
        .lines()
        .filter(|l| l.starts_with("mor_gateway_mor_answers_total{"));
    lines
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Waits until the counter `series` reads `want` (the forward counts after
/// the client got its answer), and fails if it does not.
fn wait_counter(gw: &Gw, series: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(gw, series) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        counter(gw, series),
        want,
        "{series}:\n{}",
        gw.metrics_text()
    );
}

/// The gateway's access lines, once there are `n` of them.
fn access_lines(gw: &Gw, n: usize) -> Vec<Value> {
    let path = gw.dir.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            assert_eq!(lines.len(), n, "access lines:\n{text}");
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_verified_call_mor_served_is_counted_and_logged_and_edge_refusals_and_pass_through_are_not_judged(
) {
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_with_log(
        &[sa],
        "",
        "[api]\nother_paths = \"forward\"\n",
    ));
    let r = gw.post(API, &details("admin"));
    assert!(r.text().contains("client123"), "{}", r.text());
    wait_counter(&gw, &answers("verified", "served"), 1);
    // Refused at the edge: MOR never saw it, nothing to judge.
    let bad = format!("u=admin&user_id=123&hash={}", "0".repeat(40));
    assert_eq!(gw.post(API, &bad).text(), mor_error("Incorrect hash"));
    // A pass-through path (MOR's web UI): forwarded, not an API call.
    gw.send(&get("/billing/callc/main"));
    let lines = access_lines(&gw, 3);
    assert_eq!(all_answers(&gw), 1, "{}", gw.metrics_text());
    for kind in ["would_break", "drift", "mor_caught"] {
        assert_eq!(counter(&gw, &disagreements(kind)), 0, "{kind}");
    }
    let (served, refused, through) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(served["verdict"], "forwarded");
    assert_eq!(served["signer"], "admin");
    assert_eq!(served["mor_answer"], "served", "{served}");
    assert!(served.get("disagreement").is_none(), "{served}");
    assert_eq!(refused["verdict"], "refused");
    assert!(refused.get("mor_answer").is_none(), "{refused}");
    assert_eq!(through["verdict"], "forwarded");
    assert_eq!(through["signer"], "pass_through");
    assert!(through.get("mor_answer").is_none(), "{through}");
}

#[test]
fn drift_a_key_mor_rotated_is_counted_and_logged_as_drift() {
    // MOR's admin key is not the gateway's: the gateway verifies the call
    // with its own (stale) copy, MOR refuses it.
    let (_sim, sa) = start_sim("a-key-mor-rotated-to", &[]);
    let gw = start_gateway(&body_with_log(&[sa], "", ""));
    let r = gw.post(API, &details("admin"));
    // MOR's own answer, relayed unchanged.
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    wait_counter(&gw, &answers("verified", "incorrect_hash"), 1);
    wait_counter(&gw, &disagreements("drift"), 1);
    assert_eq!(counter(&gw, &disagreements("mor_caught")), 0);
    assert_eq!(all_answers(&gw), 1);
    let line = &access_lines(&gw, 1)[0];
    assert_eq!(line["verdict"], "forwarded");
    assert_eq!(line["signer"], "admin");
    assert_eq!(line["mor_answer"], "incorrect_hash", "{line}");
    assert_eq!(line["disagreement"], "drift", "{line}");
}

#[test]
fn an_unchecked_call_mor_refused_is_mor_caught() {
    // The gateway mirrors "Disable hash checking" on; MOR checks anyway.
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_with_log(&[sa], "", "[api]\nverify_hash = false\n"));
    let bad = format!("u=admin&user_id=123&hash={}", "0".repeat(40));
    assert_eq!(gw.post(API, &bad).text(), mor_error("Incorrect hash"));
    let r = gw.post(API, &details("admin"));
    assert!(r.text().contains("client123"), "{}", r.text());
    wait_counter(&gw, &answers("unchecked", "incorrect_hash"), 1);
    wait_counter(&gw, &answers("unchecked", "served"), 1);
    wait_counter(&gw, &disagreements("mor_caught"), 1);
    assert_eq!(counter(&gw, &disagreements("drift")), 0);
    let lines = access_lines(&gw, 2);
    assert_eq!(lines[0]["signer"], "unchecked");
    assert_eq!(lines[0]["mor_answer"], "incorrect_hash", "{}", lines[0]);
    assert_eq!(lines[0]["disagreement"], "mor_caught", "{}", lines[0]);
    assert_eq!(lines[1]["mor_answer"], "served", "{}", lines[1]);
    assert!(lines[1].get("disagreement").is_none(), "{}", lines[1]);
}

// ------------------------------------------------------ the raw stand-in

/// The first chunk of the chunked answer: its error element is cut in two.
const FIRST_CHUNK: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><status><err";
/// The rest of the chunked answer, in chunks.
const MORE_CHUNKS: [&str; 3] = ["or>Incorrect ", "hash</error></status>", "\n"];

/// A served document of `n` bytes or more (past the peek).
fn large_doc(n: usize) -> String {
    let mut d = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><page><users>");
    let mut i = 0;
    while d.len() < n {
        d.push_str(&format!(
            "<user><id>{i}</id><username>user{i}</username></user>"
        ));
        i += 1;
    }
    d.push_str("</users></page>");
    d
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A MOR stand-in answering its n-th request (0, 1, 2) with: a large
/// Content-Length document, a chunked error whose rest waits for `gate`,
/// a gzip-encoded error document.
fn stand_in(gate: Receiver<()>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Mutex::new(gate));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let (n, gate) = (n.clone(), gate.clone());
            std::thread::spawn(move || serve(conn, &n, &gate));
        }
    });
    a
}

fn serve(mut c: TcpStream, n: &AtomicUsize, gate: &Mutex<Receiver<()>>) {
    loop {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match c.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return, // a TCP health check, or the gateway closed
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if c.read_exact(&mut body).is_err() {
            return;
        }
        let ok = match n.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let doc = large_doc(20 * 1024);
                let h = format!("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n", doc.len());
                c.write_all(h.as_bytes())
                    .and_then(|_| c.write_all(doc.as_bytes()))
            }
            1 => {
                let h = "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n";
                let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
                let first = format!("{h}{}", chunk(FIRST_CHUNK));
                if c.write_all(first.as_bytes())
                    .and_then(|_| c.flush())
                    .is_err()
                {
                    return;
                }
                // The rest only once the client has the first chunk (or
                // after 10 s, when the test has failed already).
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
                let rest: String = MORE_CHUNKS.iter().map(|s| chunk(s)).collect();
                c.write_all(format!("{rest}0\r\n\r\n").as_bytes())
            }
            _ => {
                let gz = gzip(mor_error("Incorrect hash").as_bytes());
                let h = format!("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n", gz.len());
                c.write_all(h.as_bytes()).and_then(|_| c.write_all(&gz))
            }
        };
        if ok.is_err() {
            return;
        }
    }
}

/// Reads from `c` until `buf` holds `needle` or `limit` passed.
fn read_until(c: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut b = [0u8; 4096];
    while Instant::now() < deadline {
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        match c.read(&mut b) {
            Ok(0) => return false,
            Ok(k) => buf.extend_from_slice(&b[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return false,
        }
    }
    buf.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn large_chunked_and_compressed_answers_are_relayed_byte_exact_and_never_held_back() {
    let (gate_tx, gate_rx): (Sender<()>, Receiver<()>) = channel();
    let up = stand_in(gate_rx);
    // MOR's pauses are well within the gateway's read timeout (10 s): a
    // gateway that held the first chunk back would send it only after it
    // gave up on MOR, past the 5 s the client waits.
    let body = body_with_log(&[up], "", "")
        .replace("[upstream]\n", "[upstream]\nhealth_check = \"tcp\"\n")
        .replace("read_timeout = \"3s\"", "read_timeout = \"10s\"");
    assert!(body.contains("read_timeout = \"10s\""));
    let gw = start_gateway(&body);

    // A large answer: every byte, and judged from its first 4 KiB (served).
    let r = gw.post(API, &details("admin"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), large_doc(20 * 1024));
    wait_counter(&gw, &answers("verified", "served"), 1);

    // A chunked answer: its first chunk reaches the client while MOR holds
    // back the rest (the peek never waits for 4 KiB); the error text cut
    // across chunks is still read.
    let mut c = TcpStream::connect(gw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    c.write_all(post_form(API, &details("admin")).as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let first_came = read_until(
        &mut c,
        &mut buf,
        FIRST_CHUNK.as_bytes(),
        Duration::from_secs(5),
    );
    gate_tx.send(()).unwrap();
    assert!(
        first_came,
        "the first chunk did not reach the client before MOR sent the rest: {:?}",
        String::from_utf8_lossy(&buf)
    );
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_to_end(&mut buf).unwrap();
    let r = parse(&buf).unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), format!("{FIRST_CHUNK}{}", MORE_CHUNKS.concat()));
    wait_counter(&gw, &answers("verified", "incorrect_hash"), 1);
    wait_counter(&gw, &disagreements("drift"), 1);

    // A compressed answer: relayed as it came, counted `encoded`, not read.
    let r = gw.post(API, &details("admin"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, gzip(mor_error("Incorrect hash").as_bytes()));
    wait_counter(&gw, &answers("verified", "encoded"), 1);
    assert_eq!(counter(&gw, &disagreements("drift")), 1);
    assert_eq!(all_answers(&gw), 3);

    let lines = access_lines(&gw, 3);
    let classes: Vec<&Value> = lines.iter().map(|l| &l["mor_answer"]).collect();
    assert_eq!(classes, ["served", "incorrect_hash", "encoded"]);
    assert_eq!(lines[1]["disagreement"], "drift");
}
