//! The lockout admin interface on the metrics listener, end to end: pairs
//! locked by bad hashes through a real gateway, listed, one cleared, the
//! cleared pair served again at once while another stays locked; in local
//! mode and in shared mode (a real redis-server of our own, two gateways).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;
use std::net::SocketAddr;

const BAD: &str = "0000000000000000000000000000000000000000";
const LOCKOUT: &str = "[limits.lockout]\nfailures = 3\nwindow = \"60s\"\ncooloff = \"60s\"\n";

fn call(user: &str, hash: &str) -> String {
    post_form(
        "/billing/api/user_details_get",
        &format!("u={user}&user_id=123&hash={hash}"),
    )
}

fn served(r: &Resp) -> bool {
    r.status == 200 && r.text().contains("client123")
}

fn locked(r: &Resp) -> bool {
    r.text() == mor_error("Too many failed attempts, try later")
}

/// Three bad hashes of `user` from `src` through `gw`: the pair is locked.
fn lock(gw: SocketAddr, src: &str, user: &str) {
    for _ in 0..3 {
        let r = send_from(src, gw, call(user, BAD).as_bytes());
        assert_eq!(r.text(), mor_error("Incorrect hash"));
    }
    assert!(locked(&send_from(src, gw, call(user, H_123).as_bytes())));
}

/// `GET /lockouts` from `src`.
fn list(metrics: SocketAddr, src: &str) -> (u16, serde_json::Value) {
    let r = send_from(
        src,
        metrics,
        b"GET /lockouts HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

/// `POST /lockouts/clear?<query>` from `src`.
fn clear(metrics: SocketAddr, src: &str, query: &str) -> (u16, serde_json::Value) {
    let raw = format!(
        "POST /lockouts/clear?{query} HTTP/1.1\r\nHost: m\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let r = send_from(src, metrics, raw.as_bytes());
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or_default(),
    )
}

/// The (ip, user, where) of each listed pair, and checks seconds_left.
fn pairs(v: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = v["lockouts"]
        .as_array()
        .unwrap_or_else(|| panic!("no lockouts in {v}"))
        .iter()
        .map(|p| {
            let left = p["seconds_left"].as_u64().unwrap();
            assert!((1..=60).contains(&left), "{p}");
            (
                p["ip"].as_str().unwrap().to_string(),
                p["user"].as_str().unwrap().to_string(),
                p["where"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(ip: &str, user: &str, at: &str) -> (String, String, String) {
    (ip.into(), user.into(), at.into())
}

fn stderr(gw: &Gw) -> String {
    std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap_or_default()
}

#[test]
fn local_lockouts_are_listed_and_one_cleared_at_once() {
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(&[sa], "", &format!("[limits]\n{LOCKOUT}")));
    lock(gw.addr, "127.0.0.2", "alice");
    lock(gw.addr, "127.0.0.2", "bob");
    lock(gw.addr, "127.0.0.3", "alice");

    let (status, v) = list(gw.metrics, "127.0.0.1");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mode"], "local");
    assert_eq!(
        pairs(&v),
        [
            pair("127.0.0.2", "alice", "local"),
            pair("127.0.0.2", "bob", "local"),
            pair("127.0.0.3", "alice", "local"),
        ]
    );
    // No secret in the listing: no hash, no key.
    assert!(secrets_in(&v.to_string()).is_empty(), "{v}");

    let before = sim_seen(sa).len();
    let (status, v) = clear(gw.metrics, "127.0.0.1", "ip=127.0.0.2&user=alice");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["cleared"], true);
    // Served again at once; the other pairs stay locked.
    assert!(served(&send_from(
        "127.0.0.2",
        gw.addr,
        call("alice", H_123).as_bytes()
    )));
    assert_eq!(sim_seen(sa).len(), before + 1);
    assert!(locked(&send_from(
        "127.0.0.2",
        gw.addr,
        call("bob", H_123).as_bytes()
    )));
    assert!(locked(&send_from(
        "127.0.0.3",
        gw.addr,
        call("alice", H_123).as_bytes()
    )));
    assert_eq!(sim_seen(sa).len(), before + 1);
    let (_, v) = list(gw.metrics, "127.0.0.1");
    assert_eq!(
        pairs(&v),
        [
            pair("127.0.0.2", "bob", "local"),
            pair("127.0.0.3", "alice", "local"),
        ]
    );
    // A pair not locked: 404, nothing changes.
    let (status, v) = clear(gw.metrics, "127.0.0.1", "ip=127.0.0.2&user=alice");
    assert_eq!((status, &v["cleared"]), (404, &serde_json::json!(false)));
    let (status, _) = clear(gw.metrics, "127.0.0.1", "ip=127.0.0.2");
    assert_eq!(status, 400);
    // Logged: who cleared which pair.
    let log = stderr(&gw);
    assert!(
        log.lines().any(|l| l.contains("INFO")
            && l.contains(
                "lockouts: 127.0.0.1 cleared the lock of ip 127.0.0.2 user \"alice\": unlocked"
            )),
        "{log}"
    );
}

#[test]
fn only_admin_allow_is_answered() {
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(
        &[sa],
        "",
        &format!("[limits]\n{LOCKOUT}\n[metrics]\nadmin_allow = [\"127.0.0.2/32\"]\n"),
    ));
    lock(gw.addr, "127.0.0.5", "alice");
    // Outside admin_allow: refused, and the clear changes nothing.
    assert_eq!(list(gw.metrics, "127.0.0.1").0, 403);
    assert_eq!(
        clear(gw.metrics, "127.0.0.3", "ip=127.0.0.5&user=alice").0,
        403
    );
    assert!(locked(&send_from(
        "127.0.0.5",
        gw.addr,
        call("alice", H_123).as_bytes()
    )));
    // /metrics stays open to everyone on that listener.
    let r = send_from(
        "127.0.0.1",
        gw.metrics,
        b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // Inside: answered.
    let (status, v) = list(gw.metrics, "127.0.0.2");
    assert_eq!(status, 200);
    assert_eq!(pairs(&v), [pair("127.0.0.5", "alice", "local")]);
    assert_eq!(
        clear(gw.metrics, "127.0.0.2", "ip=127.0.0.5&user=alice").0,
        200
    );
    assert!(served(&send_from(
        "127.0.0.5",
        gw.addr,
        call("alice", H_123).as_bytes()
    )));
}

#[test]
fn shared_lockouts_are_listed_and_cleared_for_every_gateway() {
    let rp = free_port();
    let _redis = start_redis(rp, &[]);
    let (_sim, sa) = start_sim(KEY, &[]);
    let tables = format!(
        "[limits]\n{LOCKOUT}\n[limits.shared]\nurl = \"redis://127.0.0.1:{rp}\"\nkey_prefix = \"t*:\"\ntimeout = \"500ms\"\nretry_interval = \"300ms\"\n"
    );
    let body = body_for(&[sa], "", &tables);
    let (a, b) = (start_gateway(&body), start_gateway(&body));
    // Locked through gateway a, one of the pairs by a user name with a
    // separator and a glob character in it.
    lock(a.addr, "127.0.0.2", "alice");
    lock(a.addr, "127.0.0.2", "b|o*b");
    assert!(locked(&send_from(
        "127.0.0.2",
        b.addr,
        call("alice", H_123).as_bytes()
    )));
    // Listed by gateway b: from Redis, found with SCAN.
    let (status, v) = list(b.metrics, "127.0.0.1");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["mode"], "shared");
    assert!(v.get("redis_error").is_none(), "{v}");
    assert!(v.get("truncated").is_none(), "{v}");
    assert_eq!(
        pairs(&v),
        [
            pair("127.0.0.2", "alice", "redis"),
            pair("127.0.0.2", "b|o*b", "redis"),
        ]
    );
    // Cleared through gateway b...
    let (status, v) = clear(b.metrics, "127.0.0.1", "ip=127.0.0.2&user=alice");
    assert_eq!(status, 200, "{v}");
    // ...served again through gateway a at once; the other pair stays.
    let before = sim_seen(sa).len();
    assert!(served(&send_from(
        "127.0.0.2",
        a.addr,
        call("alice", H_123).as_bytes()
    )));
    assert_eq!(sim_seen(sa).len(), before + 1);
    assert!(locked(&send_from(
        "127.0.0.2",
        a.addr,
        call("b|o*b", H_123).as_bytes()
    )));
    let (_, v) = list(a.metrics, "127.0.0.1");
    assert_eq!(pairs(&v), [pair("127.0.0.2", "b|o*b", "redis")]);
    // The gauge agrees (the set of locks lost the cleared pair).
    assert!(
        a.metrics_text()
            .lines()
            .any(|l| l == "mor_gateway_lockouts_active 1"),
        "{}",
        a.metrics_text()
    );
    // The failure count went with the lock: one more bad hash does not
    // lock alice again.
    let r = send_from("127.0.0.2", a.addr, call("alice", BAD).as_bytes());
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    assert!(served(&send_from(
        "127.0.0.2",
        b.addr,
        call("alice", H_123).as_bytes()
    )));
    let log = stderr(&b);
    assert!(
        log.contains(
            "lockouts: 127.0.0.1 cleared the lock of ip 127.0.0.2 user \"alice\": unlocked (redis)"
        ),
        "{log}"
    );
    // The other pair, cleared with its odd name, is served too.
    let (status, _) = clear(a.metrics, "127.0.0.1", "ip=127.0.0.2&user=b%7Co%2Ab");
    assert_eq!(status, 200);
    // (MOR itself does not know this user: it answers, the gateway did not.)
    let before = sim_seen(sa).len();
    let r = send_from("127.0.0.2", b.addr, call("b|o*b", H_123).as_bytes());
    assert!(!locked(&r), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), before + 1, "forwarded to MOR");

    // More locks than one listing shows: bounded, and it says so.
    let made = redis_cli(
        rp,
        &[
            "EVAL",
            "for i = 1, 10005 do redis.call('SET', 't*:lo:l|10.' .. math.floor(i / 256) .. '.' .. (i % 256) .. '.1|u', '1', 'PX', 60000) end return 1",
            "0",
        ],
    );
    assert_eq!(made, "1");
    let (status, v) = list(a.metrics, "127.0.0.1");
    assert_eq!(status, 200);
    assert_eq!(v["truncated"], true, "{}", v["truncated"]);
    assert_eq!(v["lockouts"].as_array().unwrap().len(), 10_000);
}

#[test]
fn the_lockouts_command_lists_and_clears() {
    let (_sim, sa) = start_sim(KEY, &[]);
    let gw = start_gateway(&body_for(&[sa], "", &format!("[limits]\n{LOCKOUT}")));
    lock(gw.addr, "127.0.0.2", "alice");
    lock(gw.addr, "127.0.0.2", "bob");
    let run = |args: &[&str]| {
        // No secret in the environment: the command reads metrics.listen only.
        let out = std::process::Command::new(BIN)
            .arg("lockouts")
            .arg("-c")
            .arg(&gw.config)
            .args(args)
            .env_remove("GW_KEY")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&[]);
    assert!(ok, "{text}");
    assert!(text.contains("lockout mode: local"), "{text}");
    assert!(text.contains("127.0.0.2  \"alice\"  "), "{text}");
    assert!(text.contains("2 locked pair(s)"), "{text}");
    let (ok, text) = run(&["--clear", "127.0.0.2", "alice"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("cleared: ip 127.0.0.2 user \"alice\""),
        "{text}"
    );
    assert!(served(&send_from(
        "127.0.0.2",
        gw.addr,
        call("alice", H_123).as_bytes()
    )));
    let (ok, text) = run(&["--clear", "127.0.0.2", "alice"]);
    assert!(!ok && text.contains("not locked"), "{text}");
    let (ok, text) = run(&[]);
    assert!(
        ok && text.contains("1 locked pair(s)") && !text.contains("alice"),
        "{text}"
    );
}
