//! The gateway's lifecycle over real sockets: a listener that cannot bind
//! ends the process at once; SIGTERM lets a slow call in flight finish; a
//! reload and a zero-downtime upgrade (`run --upgrade`, then SIGQUIT to the
//! old process) under continuous load fail no call and refuse no connection.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn call() -> String {
    post_form(
        "/billing/api/user_details_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    )
}

fn slow_call(ms: u64) -> String {
    call().replacen(
        "Host: mor\r\n",
        &format!("Host: mor\r\nX-Sim-Delay-Ms: {ms}\r\n"),
        1,
    )
}

/// Calls `addr` in a loop on fresh connections until stopped; counts
/// answered calls and failures (a refused connection, a broken or wrong answer).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let (stop, ok, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let mut why = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match std::panic::catch_unwind(|| send(addr, call().as_bytes())) {
                    Ok(r) if r.status == 200 && r.text().contains("client123") => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        why.push(format!("{} {}", r.status, r.text()));
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        why.push("no answer".into());
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            why
        });
        Load {
            stop,
            ok,
            failed,
            handle: Some(handle),
        }
    }

    /// Stops the load; returns (answered, failed, why).
    fn finish(mut self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let why = self
            .handle
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            why,
        )
    }
}

#[test]
fn a_listener_that_cannot_bind_ends_the_process_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap();
    let dir = temp_dir();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"{a}\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n[metrics]\nlisten = \"\"\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("GW_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "exits at once");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&a.to_string()), "{err}");
    drop(taken);
}

#[test]
fn sigterm_lets_the_slow_call_in_flight_finish_and_stops_accepting() {
    let (_sim, sa) = start_sim(KEY, &[]);
    // The common config has no grace; this gateway gets 3 s.
    let mut gw = start_gateway(&body_for(&[sa], "shutdown_grace = \"3s\"", ""));
    let addr = gw.addr;
    let slow = std::thread::spawn(move || send(addr, slow_call(1500).as_bytes()));
    std::thread::sleep(Duration::from_millis(300));
    gw.proc.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "no new connection after SIGTERM"
    );
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("client123"),
        "the call in flight finished: {}",
        r.text()
    );
    exited_within(&mut gw.proc, Duration::from_secs(8))
        .expect("the gateway did not exit after its grace");
}

/// Reads one answer from a kept-alive connection (its head and body by
/// Content-Length), leaving the connection open.
fn read_answer(s: &mut std::net::TcpStream) -> Resp {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(r) = parse(&buf) {
            return r;
        }
        let n = s.read(&mut chunk).expect("read an answer");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn exited_within(p: &mut Proc, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(st)) = p.child.try_wait() {
            assert!(st.success(), "{st:?}");
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// SIGTERM on a gateway whose only connection is idle (kept alive between
/// calls): the connection is closed and the process exits at once, not
/// after its 30 s grace (a restart refuses calls only while it restarts).
#[test]
fn sigterm_on_an_idle_gateway_exits_at_once() {
    use std::io::{Read, Write};
    let (_sim, sa) = start_sim(KEY, &[]);
    let mut gw = start_gateway(&body_for(&[sa], "shutdown_grace = \"30s\"", ""));
    let mut idle = std::net::TcpStream::connect(gw.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    idle.write_all(verified_call(true).as_bytes()).unwrap();
    assert!(read_answer(&mut idle).text().contains("client123"));
    gw.proc.signal("TERM");
    let took = exited_within(&mut gw.proc, Duration::from_secs(20))
        .expect("the idle gateway still runs 20 s after SIGTERM");
    assert!(
        took < Duration::from_secs(10),
        "an idle gateway waited out its grace: {took:?}"
    );
    let mut rest = Vec::new();
    assert_eq!(
        idle.read_to_end(&mut rest).unwrap_or(0),
        0,
        "the idle connection is closed"
    );
    eprintln!("idle gateway: exit {took:?} after SIGTERM (grace 30 s)");
}

/// Drain (SIGUSR2): calls are still served, `/readyz` answers 503, each
/// answer closes its connection; SIGUSR2 again ends it.
#[test]
fn drain_keeps_serving_while_readyz_says_503() {
    use std::io::{Read, Write};
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(&[sa], "", ""));
    let readyz = || {
        send(
            gw.metrics,
            b"GET /readyz HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        )
    };
    let wait_ready = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = readyz();
            if r.status == want {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stays {}: {}",
                r.status,
                r.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_ready(200);
    let mut kept = std::net::TcpStream::connect(gw.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    gw.proc.signal("USR2");
    assert!(wait_ready(503).text().contains("draining"));
    assert!(gw.metrics_text().contains("mor_gateway_draining 1"));
    // A connection opened before the drain: served, then closed.
    kept.write_all(verified_call(true).as_bytes()).unwrap();
    let r = read_answer(&mut kept);
    assert!(r.text().contains("client123"), "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        kept.read_to_end(&mut rest).unwrap_or(0),
        0,
        "closed after its answer"
    );
    // New calls are served too.
    assert!(gw.send(&verified_call(false)).text().contains("client123"));
    gw.proc.signal("USR2");
    wait_ready(200);
    assert!(gw.metrics_text().contains("mor_gateway_draining 0"));
    let mut again = std::net::TcpStream::connect(gw.addr).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    again.write_all(verified_call(true).as_bytes()).unwrap();
    let r = read_answer(&mut again);
    assert_ne!(r.header("connection"), Some("close"), "keep-alive again");
}

#[test]
fn reload_and_zero_downtime_upgrade_under_load() {
    let (_sim, sa) = start_sim(KEY, &[]);
    // Grace for the old process's calls; the hand-off socket in a test dir.
    let sock_dir = temp_dir();
    let sock = sock_dir.join("upgrade.sock");
    let top = format!(
        "shutdown_grace = \"2s\"\nupgrade_sock = \"{}\"",
        sock.display()
    );
    let gw = start_gateway(&body_for(&[sa], &top, ""));
    let load = Load::start(gw.addr);
    std::thread::sleep(Duration::from_millis(500));
    // A reload under load.
    gw.proc.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    // The upgrade: a new process waits for the listeners, the old one hands
    // them over on SIGQUIT and finishes what it has.
    let new = Command::new(BIN)
        .args(["run", "--upgrade", "-c"])
        .arg(&gw.config)
        .env("GW_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(gw.dir.join("new.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let new = Proc {
        child: new,
        name: "new gateway".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        sock.exists(),
        "the new process listens on the upgrade socket"
    );
    let in_flight = {
        let a = gw.addr;
        std::thread::spawn(move || send(a, slow_call(1000).as_bytes()))
    };
    std::thread::sleep(Duration::from_millis(100));
    gw.proc.signal("QUIT");
    // The old process exits after its grace; the new one serves meanwhile.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut old = gw;
    loop {
        if let Ok(Some(_)) = old.proc.child.try_wait() {
            break;
        }
        assert!(Instant::now() < deadline, "the old gateway did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, why) = load.finish();
    let r = in_flight.join().unwrap();
    assert!(
        r.text().contains("client123"),
        "slow call across the upgrade: {}",
        r.text()
    );
    println!("calls across reload and upgrade: {ok} answered, {failed} failed");
    assert_eq!(failed, 0, "failed calls: {why:?}");
    assert!(ok > 50, "calls answered across reload and upgrade: {ok}");
    // The new process serves the same port, metrics included.
    assert!(send(old.addr, call().as_bytes())
        .text()
        .contains("client123"));
    assert!(old.metrics_text().contains("mor_gateway_requests_total"));
    drop(new);
}

#[test]
fn the_real_client_address_behind_a_trusted_balancer_only() {
    // 127.0.0.2 is a trusted balancer; 127.0.0.1 is not.
    let tables = "[client]\ntrusted_proxies = [\"127.0.0.2\"]\n\n[limits.lockout]\nfailures = 2\nwindow = \"60s\"\ncooloff = \"60s\"\n";
    let (gw, _sim, sa) = gw_and_sim("", tables);
    let with_xff = |xff: &str, body: &str| {
        post_form("/billing/api/user_details_get", body).replacen(
            "Host: mor\r\n",
            &format!("Host: mor\r\nX-Forwarded-For: {xff}\r\n"),
            1,
        )
    };
    let good = format!("u=admin&user_id=123&hash={H_123}");
    // From the balancer: the right-most untrusted address is the client.
    let r = send_from(
        "127.0.0.2",
        gw.addr,
        with_xff("6.6.6.6, 198.51.100.7", &good).as_bytes(),
    );
    assert!(r.text().contains("client123"), "{}", r.text());
    // From anyone else: a spoofed header is ignored.
    let r = send_from(
        "127.0.0.1",
        gw.addr,
        with_xff("198.51.100.7", &good).as_bytes(),
    );
    assert!(r.text().contains("client123"), "{}", r.text());
    let seen = sim_seen(sa);
    assert_eq!(seen[0]["x_real_ip"], "198.51.100.7");
    assert_eq!(seen[0]["x_forwarded_for"], "198.51.100.7");
    assert_eq!(seen[1]["x_real_ip"], "127.0.0.1");
    // The lockout is per real client: 198.51.100.7 locked out behind the
    // balancer does not lock out 203.0.113.5 behind the same balancer.
    let bad = "u=admin&user_id=123&hash=0000000000000000000000000000000000000000";
    for _ in 0..2 {
        send_from(
            "127.0.0.2",
            gw.addr,
            with_xff("198.51.100.7", bad).as_bytes(),
        );
    }
    let r = send_from(
        "127.0.0.2",
        gw.addr,
        with_xff("198.51.100.7", &good).as_bytes(),
    );
    assert!(
        r.text().contains("Too many failed attempts"),
        "{}",
        r.text()
    );
    let r = send_from(
        "127.0.0.2",
        gw.addr,
        with_xff("203.0.113.5", &good).as_bytes(),
    );
    assert!(r.text().contains("client123"), "{}", r.text());
}

/// The shipped allocator is jemalloc with its purging thread (settings
/// compiled in by .cargo/config.toml): it gives the pages of closed
/// connections back to the kernel (benches/idle.sh measures how much).
/// Without those settings there is no such thread and RSS stays at its peak.
#[cfg(feature = "jemalloc")]
#[test]
fn jemalloc_gives_memory_back_from_a_thread_of_its_own() {
    let (gw, _sim, _sa) = gw_and_sim("", "");
    let r = gw.send(&call());
    assert_eq!(r.status, 200, "{}", r.text());
    let tasks = format!("/proc/{}/task", gw.proc.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = std::fs::read_dir(&tasks)
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect();
        if names.iter().any(|n| n == "jemalloc_bg_thd") {
            return;
        }
        assert!(Instant::now() < deadline, "no purging thread: {names:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The wait between calls counts from the last answer, not from the first:
/// a connection that calls every 1.3 s with `keepalive_timeout = 2s` stays
/// open over three calls (3.9 s in all), then is closed about 2 s after its
/// last answer.
#[test]
fn keep_alive_idle_time_counts_from_the_last_answer() {
    let (gw, _sim, sa) = gw_and_sim("", "[client]\nkeepalive_timeout = \"2s\"\n");
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let one = call().replace("Connection: close\r\n", "");
    let mut answer = || {
        s.write_all(one.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s
                .read(&mut chunk)
                .expect("an answer on the kept connection");
            assert!(n > 0, "closed while kept alive: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse(&buf) {
                if r.text().contains("</page>") {
                    return r;
                }
            }
        }
    };
    for _ in 0..3 {
        let r = answer();
        assert_eq!(r.status, 200, "{}", r.text());
        std::thread::sleep(Duration::from_millis(1300));
    }
    // Idle now: closed within the timeout (counted from the last answer).
    let last = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let idle = last.elapsed();
    assert!(rest.is_empty(), "{rest:?}");
    assert!(idle < Duration::from_secs(5), "closed after {idle:?}");
    assert_eq!(sim_seen(sa).len(), 3);
}

#[test]
fn slow_and_idle_clients_are_closed() {
    let (gw, _sim, sa) = gw_and_sim(
        "",
        "[client]\nread_timeout = \"1s\"\nkeepalive_timeout = \"1s\"\n",
    );
    use std::io::{Read, Write};
    // A body that stalls: 408, counted as a client error, never upstream.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nu=admin")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = parse(&buf).expect("an answer");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4));
    // An idle keep-alive connection is closed after keepalive_timeout.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let one = call().replace("Connection: close\r\n", "");
    s.write_all(one.as_bytes()).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(parse(&buf).unwrap().text().contains("client123"));
    let idle = started.elapsed();
    assert!(
        idle < Duration::from_secs(4),
        "closed when idle after {idle:?}"
    );
    let m = gw.metrics_text();
    assert!(
        m.contains(r#"outcome="client_error",reason="client_timeout"} 1"#),
        "{m}"
    );
    assert!(
        !m.contains(r#"outcome="upstream_error",reason="upstream_timeout"} 1"#),
        "{m}"
    );
    assert_eq!(sim_seen(sa).len(), 1);
}
