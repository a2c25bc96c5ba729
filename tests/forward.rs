//! The gateway's own upstream forward (src/edge/forward.rs) where it stands
//! in for pingora's proxy loop, over raw sockets against a tiny MOR
//! stand-in that controls every byte: informational answers (100, 103)
//! before MOR's answer are skipped, 101 is refused; a kept-alive connection
//! that MOR closes when the next request arrives is retried once on a fresh
//! connection for a GET, never for a POST, and one MOR closed while it
//! was idle is not used; a request reaches MOR in one segment, header and
//! body together; MOR's answer framed by length, chunked, until close or as
//! HTTP/1.0 reaches the client whole, and its connection is used again
//! only when HTTP keeps it and MOR sent nothing past the answer (the
//! exchange is src/edge/mor_http.rs).

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
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// MOR's answer to user_details_get, as the stand-in sends it.
const ANSWER: &str = "<page><details>client123</details></page>";

/// What the stand-in does with one request on one connection.
#[derive(Clone, Copy)]
enum Act {
    /// `HTTP/1.1 100 Continue`, `103 Early Hints`, then the answer.
    Informational,
    /// `101 Switching Protocols` and nothing more.
    Switch,
    /// The answer, the connection kept open.
    Answer,
    /// Read the request, then close without a byte (MOR closed the idle
    /// connection as the request arrived).
    Close,
    /// The answer, then the connection closed 100 ms later (MOR's own
    /// keep-alive timeout passing while the gateway holds it idle).
    AnswerThenClose,
    /// The answer chunked, a wrong Content-Length beside the coding.
    Chunked,
    /// The answer without a length, then the connection closed.
    UntilClose,
    /// The answer as HTTP/1.0 (the connection stays open).
    Http10,
    /// The answer, then bytes nobody asked for.
    Overread,
    /// Two Content-Length values that disagree.
    BadLength,
}

/// What the stand-in does with request `.1` on connection `.0`.
type Plan = fn(usize, usize) -> Act;

/// One request as the stand-in received it: the connection's number and
/// its request line.
type Seen = Arc<Mutex<Vec<(usize, String)>>>;

/// A MOR stand-in: `plan(connection, request on it)` says what to do.
/// Connections are numbered in the order their first request arrives
/// (health checks connect and send nothing: they get no number; the
/// gateways here use the TCP check, so that MOR's HTTP probe is not counted
/// as a call).
fn stand_in(plan: Plan) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let numbers = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            let (s, numbers) = (s.clone(), numbers.clone());
            std::thread::spawn(move || serve(conn, &numbers, plan, &s));
        }
    });
    (a, seen)
}

fn serve(mut conn: TcpStream, numbers: &AtomicUsize, plan: Plan, seen: &Seen) {
    let mut n = None;
    for i in 0.. {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let len: usize = text
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if conn.read_exact(&mut body).is_err() {
            return;
        }
        let line = text.lines().next().unwrap_or_default().to_string();
        let n = *n.get_or_insert_with(|| numbers.fetch_add(1, Ordering::SeqCst));
        seen.lock().unwrap().push((n, line));
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{ANSWER}",
            ANSWER.len()
        );
        let out = match plan(n, i) {
            Act::Informational => format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n{answer}"
            ),
            Act::Switch => {
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
                    .to_string()
            }
            Act::Answer | Act::AnswerThenClose => answer,
            Act::Close => return,
            Act::Chunked => {
                let (a, b) = ANSWER.split_at(10);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: 999\r\nTransfer-Encoding: chunked\r\n\r\n{:x};x=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
                    a.len(),
                    b.len()
                )
            }
            Act::UntilClose => {
                let _ = conn.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n\r\n{ANSWER}")
                        .as_bytes(),
                );
                return;
            }
            Act::Http10 => answer.replacen("HTTP/1.1", "HTTP/1.0", 1),
            Act::Overread => format!("{answer}HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nJUNK"),
            Act::BadLength => answer.replacen("Content-Length: ", "Content-Length: 5, ", 1),
        };
        if conn.write_all(out.as_bytes()).is_err() {
            return;
        }
        if matches!(plan(n, i), Act::AnswerThenClose) {
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
    }
}

/// A signed user_details_get over GET, kept alive.
fn verified_get() -> String {
    format!(
        "GET /billing/api/user_details_get?u=admin&user_id=123&hash={H_123} HTTP/1.1\r\nHost: mor\r\n\r\n"
    )
}

/// Sends `raw` on `c` (kept alive) and reads one answer with a
/// Content-Length body.
fn call(c: &mut TcpStream, raw: &str) -> Resp {
    c.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        if let Some(r) = parse(&buf) {
            let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let len: usize = r
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + len {
                return r;
            }
        }
        match c.read(&mut b) {
            Ok(0) | Err(_) => {
                return parse(&buf)
                    .unwrap_or_else(|| panic!("no answer: {:?}", String::from_utf8_lossy(&buf)))
            }
            Ok(k) => buf.extend_from_slice(&b[..k]),
        }
    }
}

fn connect(gw: &Gw) -> TcpStream {
    let c = TcpStream::connect(gw.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

fn requests(seen: &Seen) -> Vec<(usize, String)> {
    seen.lock().unwrap().clone()
}

/// A gateway config in front of `up` whose health check is a TCP connect.
fn tcp_checked(up: &[SocketAddr], tables: &str) -> String {
    body_for(up, "", tables).replace("[upstream]\n", "[upstream]\nhealth_check = \"tcp\"\n")
}

/// A gateway (default tables) in front of a stand-in following `plan`, and
/// a client connection to it; the stand-in's address and what it saw.
fn gateway_before(plan: Plan) -> (Gw, TcpStream, SocketAddr, Seen) {
    let (up, seen) = stand_in(plan);
    let gw = start_gateway(&tcp_checked(&[up], ""));
    let c = connect(&gw);
    (gw, c, up, seen)
}

/// A verified POST on `c`, answered with MOR's page.
fn answered(c: &mut TcpStream) -> Resp {
    let r = call(c, &verified_call(true));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), ANSWER);
    r
}

#[test]
fn informational_answers_before_mors_are_skipped() {
    let (_gw, mut c, _, seen) = gateway_before(|_, _| Act::Informational);
    // Twice on one client connection (and, kept alive, one upstream
    // connection): each answer is MOR's final one, whole.
    for _ in 0..2 {
        assert_eq!(answered(&mut c).header("link"), None);
    }
    let seen = requests(&seen);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|(n, _)| *n == seen[0].0), "{seen:?}");
}

#[test]
fn switching_protocols_is_refused_not_relayed() {
    let (up, seen) = stand_in(|_, _| Act::Switch);
    let gw = start_gateway(&tcp_checked(&[up], ""));
    let r = gw.send(&verified_call(false));
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("upgrade"), None);
    assert!(r.text().contains("<error>"), "{}", r.text());
    assert_eq!(requests(&seen).len(), 1);
}

/// MOR's answer framed each way HTTP allows reaches the client whole; its
/// connection is used again only when HTTP says MOR keeps it and MOR sent
/// nothing past the answer (else the next call would read those bytes as
/// its answer). An answer whose length cannot be read is MOR's fault: a
/// 502, nothing of it relayed.
#[test]
fn answers_of_every_framing_are_relayed_whole_and_kept_only_when_http_allows() {
    let cases: [(Plan, bool, &str); 5] = [
        (|_, _| Act::Answer, true, "length"),
        (|_, _| Act::Chunked, true, "chunked"),
        (|_, _| Act::UntilClose, false, "until close"),
        (|_, _| Act::Http10, false, "HTTP/1.0"),
        (|_, _| Act::Overread, false, "bytes past the answer"),
    ];
    for (plan, kept, name) in cases {
        let (up, seen) = stand_in(plan);
        let gw = start_gateway(&tcp_checked(&[up], ""));
        for _ in 0..2 {
            let r = gw.send(&verified_call(false));
            assert_eq!(r.status, 200, "{name}: {r:?}");
            assert_eq!(r.text(), ANSWER, "{name}");
            // A length relayed is the body's own (never the 999 sent
            // beside a coding).
            if let Some(n) = r.header("content-length") {
                assert_eq!(n, ANSWER.len().to_string(), "{name}");
            }
        }
        let seen = requests(&seen);
        assert_eq!(seen.len(), 2, "{name}: {seen:?}");
        assert_eq!(seen[0].0 == seen[1].0, kept, "{name}: {seen:?}");
    }
    let (up, seen) = stand_in(|_, _| Act::BadLength);
    let gw = start_gateway(&tcp_checked(&[up], ""));
    let r = gw.send(&verified_call(false));
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!r.text().contains(ANSWER), "{r:?}");
    assert!(r.text().contains("<error>"), "{r:?}");
    assert_eq!(requests(&seen).len(), 1);
}

/// Connection 0 answers its first request and closes on its second; every
/// other connection answers.
fn stale_second(conn: usize, req: usize) -> Act {
    if conn == 0 && req == 1 {
        Act::Close
    } else {
        Act::Answer
    }
}

#[test]
fn a_get_on_a_connection_mor_closed_is_retried_once_on_a_fresh_one() {
    let (up, seen) = stand_in(stale_second);
    let gw = start_gateway(&tcp_checked(&[up], "[api]\nallow_get = true\n"));
    let mut c = connect(&gw);
    let first = call(&mut c, &verified_get());
    assert_eq!(first.status, 200, "{first:?}");
    // The second call reuses the kept-alive upstream connection, which the
    // stand-in closes on reading it: the gateway sends it once more on a
    // new connection and the client sees MOR's answer.
    let second = call(&mut c, &verified_get());
    assert_eq!(second.status, 200, "{second:?}");
    assert_eq!(second.text(), ANSWER);
    let seen = requests(&seen);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].0, 0, "{seen:?}");
    assert_eq!(
        seen[1].0, 0,
        "the kept-alive connection was reused: {seen:?}"
    );
    assert_eq!(seen[2].0, 1, "retried on a fresh connection: {seen:?}");
    assert_eq!(seen[1].1, seen[2].1);
    assert!(seen[2].1.starts_with("GET "), "{seen:?}");
}

#[test]
fn a_post_on_a_connection_mor_closed_is_not_retried() {
    let (up, seen) = stand_in(stale_second);
    let gw = start_gateway(&tcp_checked(&[up], ""));
    let mut c = connect(&gw);
    assert_eq!(call(&mut c, &verified_call(true)).status, 200);
    let second = call(&mut c, &verified_call(true));
    // MOR may have acted on it: never sent twice, the client told.
    assert_eq!(second.status, 502, "{second:?}");
    std::thread::sleep(Duration::from_millis(300));
    let seen = requests(&seen);
    assert_eq!(seen.len(), 2, "sent once: {seen:?}");
    assert_eq!(seen[0].0, seen[1].0, "{seen:?}");
}

/// The version pinned for `name` in Cargo.toml (`name = { version = "=X"`).
fn pin(manifest: &str, name: &str) -> String {
    let line = manifest
        .lines()
        .find(|l| l.starts_with(&format!("{name} = ")))
        .unwrap_or_else(|| panic!("no {name} in Cargo.toml"));
    let v = line
        .split("version = \"=")
        .nth(1)
        .unwrap_or_else(|| panic!("{name} is not pinned exactly: {line}"));
    v.split('"').next().unwrap().to_string()
}

/// Every file under `dir`, recursively, with its text.
fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
}

#[test]
fn pingora_is_pinned_to_the_version_the_owned_loops_mirror() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let v = pin(&manifest, "pingora");
    assert_eq!(pin(&manifest, "pingora-core"), v);
    assert_eq!(pin(&manifest, "pingora-proxy"), v);
    // Every pingora crate the build resolves is that version.
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
    let mut crates = 0;
    for pkg in lock.split("[[package]]") {
        let field = |k: &str| {
            pkg.lines()
                .find_map(|l| l.strip_prefix(&format!("{k} = \"")))
                .map(|r| r.trim_end_matches('"').to_string())
        };
        if let (Some(name), Some(version)) = (field("name"), field("version")) {
            if name == "pingora" || name.starts_with("pingora-") {
                assert_eq!(version, v, "{name} in Cargo.lock");
                crates += 1;
            }
        }
    }
    assert!(crates >= 5, "{crates} pingora crates in Cargo.lock");
    // The owned loops name the upstream files they mirror at that version.
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    for head in [format!("pingora-core {v}"), format!("pingora-proxy {v}")] {
        assert!(
            files.iter().any(|(_, text)| text.contains(&head)),
            "no source file names {head}"
        );
    }
}

#[test]
fn a_connection_mor_closed_while_idle_is_not_used_for_the_next_post() {
    let (_gw, mut c, _, seen) = gateway_before(|_, _| Act::AnswerThenClose);
    for _ in 0..3 {
        // A POST is never sent twice: had the gateway used the closed
        // connection, this would be a 502.
        answered(&mut c);
        std::thread::sleep(Duration::from_millis(400));
    }
    let seen = requests(&seen);
    let conns: Vec<usize> = seen.iter().map(|(n, _)| *n).collect();
    assert_eq!(conns, [0, 1, 2], "each call on a new connection: {seen:?}");
}

/// TCP segments with data that the stand-in's connections on `port`
/// received, as the kernel counts them (`ss`, `data_segs_in`).
fn data_segments_in(port: u16) -> Vec<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("data_segs_in:"))
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn a_request_with_a_body_reaches_mor_in_one_segment() {
    let (_gw, mut c, up, seen) = gateway_before(|_, _| Act::Answer);
    for _ in 0..3 {
        answered(&mut c);
    }
    assert_eq!(requests(&seen).len(), 3);
    // One kept-alive connection to MOR, three POSTs with bodies on it: each
    // one segment (header and body written at once, as nginx does), not a
    // header segment and then a body segment.
    let segs: Vec<u64> = data_segments_in(up.port())
        .into_iter()
        .filter(|n| *n > 0)
        .collect();
    assert_eq!(segs, [3], "data segments per MOR connection");
}
