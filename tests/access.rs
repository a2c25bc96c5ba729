//! `[access]` end to end: a real gateway in front of the MOR simulator,
//! client addresses given by `X-Forwarded-For` from a trusted balancer
//! (127.0.0.1) or by the connection's own loopback source address.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

/// A reseller `res1` (key `resellerkey`, user `ruser`) the simulator knows
/// too; the loopback balancer is trusted; the access log in the gateway's
/// directory.
fn body(sa: std::net::SocketAddr, access: &str) -> String {
    body_with_log(
        &[sa],
        "",
        &format!(
            "[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[[resellers]]\nname = \"res1\"\nkey_env = \"GW_RESELLER_KEY\"\nusers = [\"ruser\"]\n{access}"
        ),
    )
}

/// A signed user_details_get (user_id=5) for `user` with `key`, from
/// `client` as the balancer's X-Forwarded-For says.
fn call_from(client: &str, user: &str, key: &str) -> String {
    let body = format!("u={user}&user_id=5&hash={}", sha1_hex(&format!("5{key}")));
    format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nX-Forwarded-For: {client}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn served(r: &Resp, user: &str) -> bool {
    r.text().contains(&format!("<username>{user}</username>"))
}

fn denied_count(gw: &Gw) -> f64 {
    gw.metrics_text()
        .lines()
        .filter(|l| {
            l.starts_with("mor_gateway_requests_total{") && l.contains("reason=\"address_denied\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn access_log(gw: &Gw) -> Vec<serde_json::Value> {
    // The log is written by a background task: wait for it.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::read_to_string(gw.dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn a_denied_address_is_refused_at_the_edge_and_nothing_reaches_mor() {
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let gw = start_gateway(&body(
        sa,
        "[access]\nallow = [\"192.0.2.0/24\", \"198.51.100.0/24\", \"2001:db8::/32\"]\ndeny = [\"198.51.100.66\"]\n",
    ));
    for client in [
        "203.0.113.9",
        "198.51.100.66",
        "::ffff:198.51.100.66",
        "2001:db9::1",
    ] {
        let r = gw.send(&call_from(client, "admin", KEY));
        assert_eq!(r.status, 200, "MOR's status for its refusals");
        assert_eq!(r.text(), mor_error("Access Denied"), "{client}");
    }
    assert!(sim_seen(sa).is_empty(), "nothing forwarded");
    assert_eq!(denied_count(&gw), 4.0);
    let log = access_log(&gw);
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|l| l["reason"] == "address_denied"
        && l["verdict"] == "refused"
        && l["api_method"] == "user_details_get"));
    assert_eq!(log[0]["client_ip"], "203.0.113.9");

    // Refused before the body: the answer comes while the client has sent
    // its header only, and the body is never waited for.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n",
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("an answer before any body byte");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("Access Denied"), "{text}");

    // Allowed addresses are served, IPv4, mapped and IPv6 alike.
    for client in ["192.0.2.7", "::ffff:198.51.100.7", "2001:db8::7"] {
        let r = gw.send(&call_from(client, "admin", KEY));
        assert!(!r.text().contains("<error>"), "{client}: {}", r.text());
    }
    assert_eq!(sim_seen(sa).len(), 3);
}

#[test]
fn a_denied_address_spends_no_per_ip_token() {
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let limits = "[limits]\nper_ip = { per_second = 0.001, burst = 1 }\n";
    let gw = start_gateway(&body(
        sa,
        &format!("{limits}[access]\ndeny = [\"203.0.113.0/24\"]\n"),
    ));
    // A denied address knocks many times...
    for _ in 0..5 {
        let r = gw.send(&call_from("203.0.113.9", "admin", KEY));
        assert_eq!(r.text(), mor_error("Access Denied"));
    }
    // ...then is let in (the per-IP buckets survive a reload whose quota
    // did not change): its one token is still there, the next is not.
    gw.reload(&body(sa, limits));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = gw.send(&call_from("203.0.113.9", "admin", KEY));
        if r.text() != mor_error("Access Denied") {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!r.text().contains("<error>"), "{}", r.text());
    let r = gw.send(&call_from("203.0.113.9", "admin", KEY));
    assert_eq!(r.text(), mor_error("Too many requests"));
    assert_eq!(sim_seen(sa).len(), 1);
}

#[test]
fn an_owners_lists_apply_to_its_users_only() {
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let gw = start_gateway(&body(
        sa,
        "[access.owners.res1]\nallow = [\"192.0.2.0/24\"]\n[limits.lockout]\nfailures = 2\nwindow = \"1m\"\ncooloff = \"1m\"\n",
    ));
    // res1's user from res1's network: served.
    let r = gw.send(&call_from("192.0.2.5", "ruser", "resellerkey"));
    assert!(served(&r, "ruser"), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), 1);
    // From elsewhere: refused, whatever the hash (no key is tried, so no
    // failure is counted towards the lockout either).
    for key in ["resellerkey", "wrong", "wrong", "wrong"] {
        let r = gw.send(&call_from("203.0.113.9", "ruser", key));
        assert_eq!(r.text(), mor_error("Access Denied"), "key {key}");
    }
    assert_eq!(sim_seen(sa).len(), 1, "nothing forwarded");
    // The admin's users are not held to res1's lists.
    let r = gw.send(&call_from("203.0.113.9", "admin", KEY));
    assert!(!r.text().contains("<error>"), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), 2);
    // res1's user from its network still served: the wrong hashes above
    // locked nothing.
    let r = gw.send(&call_from("192.0.2.5", "ruser", "resellerkey"));
    assert!(served(&r, "ruser"), "{}", r.text());
    assert_eq!(denied_count(&gw), 4.0);
}

#[test]
fn the_lists_follow_a_reload_and_the_real_source_address_counts() {
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    // No balancer here: the connection's own source address is the client.
    let plain = |access: &str| body_with_log(&[sa], "", access);
    let gw = start_gateway(&plain("[access]\ndeny = [\"127.0.0.2\"]\n"));
    let call = verified_call(false);
    let r = send_from("127.0.0.2", gw.addr, call.as_bytes());
    assert_eq!(r.text(), mor_error("Access Denied"));
    let r = send_from("127.0.0.3", gw.addr, call.as_bytes());
    assert!(!r.text().contains("<error>"), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), 1);
    // SIGHUP: the lists swap with the configuration.
    gw.reload(&plain("[access]\nallow = [\"127.0.0.2\"]\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = send_from("127.0.0.3", gw.addr, call.as_bytes());
        if r.text() == mor_error("Access Denied") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = send_from("127.0.0.2", gw.addr, call.as_bytes());
    assert!(!r.text().contains("<error>"), "{}", r.text());
}

#[test]
fn check_warns_about_an_owner_the_directory_does_not_have() {
    let dir = temp_dir();
    let config = dir.join("gw.toml");
    std::fs::write(
        &config,
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n[[resellers]]\nname = \"res1\"\nkey_env = \"GW_KEY\"\nusers = [\"ruser\"]\n[access.owners.RES1]\nallow = [\"192.0.2.0/24\"]\n[access.owners.admin]\ndeny = [\"203.0.113.0/24\"]\n[access.owners.nobody]\ndeny = [\"203.0.113.0/24\"]\n[metrics]\nlisten = \"\"\n[access_log]\nmode = \"off\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&config)
        .env("GW_KEY", KEY)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("WARNING: [access.owners.nobody] names no owner"),
        "{text}"
    );
    assert!(!text.contains("access.owners.RES1]"), "{text}");
    assert!(!text.contains("access.owners.admin]"), "{text}");
    // Nonsense is refused naming the key.
    std::fs::write(
        &config,
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n[access]\ndeny = [\"203.0.113.9/24\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&config)
        .env("GW_KEY", KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("access.deny[0]") && text.contains("host bits"),
        "{text}"
    );
}

/// The reason of each access-log line whose user is `user`.
fn reasons_of(gw: &Gw, user: &str) -> Vec<String> {
    access_log(gw)
        .iter()
        .filter(|l| l["user"] == user)
        .map(|l| l["reason"].as_str().unwrap_or("forwarded").to_string())
        .collect()
}

#[test]
fn owners_from_mors_database_have_their_lists_too() {
    let db = Mariadb::start();
    db.mor();
    let (_sim, sa) = start_sim_db(&db.mor_url(), &[]);
    let tables = format!(
        "{}\n[client]\ntrusted_proxies = [\"127.0.0.1/32\"]\n[access.owners.res1]\nallow = [\"192.0.2.0/24\"]\n[access.owners.res2]\ndeny = [\"0.0.0.0/0\", \"::/0\"]\n[access.owners.ghost]\ndeny = [\"0.0.0.0/0\"]\n",
        db.directory_toml("")
    );
    let gw = start_gateway(&body_with_log(&[sa], "", &tables));
    // ruser belongs to res1 (id 4) in MOR's database only.
    let r = gw.send(&call_from("203.0.113.9", "ruser", "resellerkey"));
    assert_eq!(r.text(), mor_error("Access Denied"));
    assert!(sim_seen(sa).is_empty(), "nothing forwarded");
    let r = gw.send(&call_from("192.0.2.5", "ruser", "resellerkey"));
    assert!(!r.text().contains("<error>"), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), 1);
    // The admin's users are not res1's.
    let r = gw.send(&call_from("203.0.113.9", "john", KEY));
    assert!(!r.text().contains("<error>"), "{}", r.text());
    assert_eq!(sim_seen(sa).len(), 2);
    // carol is nobody's yet (MOR would not know her either)...
    let r = gw.send(&call_from("192.0.2.5", "carol", "res2key"));
    assert_eq!(r.text(), mor_error("Access Denied"));
    assert_eq!(reasons_of(&gw, "carol"), ["unknown_user"]);
    // ...until reseller res2 and its customer carol are created in MOR:
    // res2's lists then apply to her, from the next snapshot on.
    db.sql("INSERT INTO mor.users (id, username, usertype, owner_id, uniquehash) VALUES (40, 'res2', 'reseller', 0, 'res2uniq'), (41, 'carol', 'user', 40, 'caroluniq')");
    db.sql("INSERT INTO mor.conflines (name, value, owner_id) VALUES ('API_Secret_Key', 'res2key', 40), ('Allow_API', '1', 40), ('API_Disable_hash_checking', '0', 40)");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reasons_of(&gw, "carol").last().map(String::as_str) != Some("address_denied") {
        assert!(
            std::time::Instant::now() < deadline,
            "res2's lists never applied"
        );
        gw.send(&call_from("192.0.2.5", "carol", "res2key"));
    }
    assert_eq!(sim_seen(sa).len(), 2, "nothing of carol's forwarded");

    // `check` reads the database and warns about the name it lacks.
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&gw.config)
        .env("GW_KEY", KEY)
        .env("GW_DB_PASSWORD", DB_PASSWORD)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("WARNING: [access.owners.ghost] names no owner in MOR's database"),
        "{text}"
    );
    assert!(!text.contains("[access.owners.res1]"), "{text}");
    assert!(!text.contains("[access.owners.res2]"), "{text}");
}

#[test]
fn sign_decides_its_curl_line_as_from_this_host() {
    let dir = temp_dir();
    let config = dir.join("gw.toml");
    let sign = |access: &str| {
        std::fs::write(
            &config,
            format!("listen = [\"127.0.0.1:8080\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n{access}"),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["sign", "--key-env", "GW_KEY", "-c"])
            .arg(&config)
            .arg("user_details_get?u=admin&user_id=123")
            .env("GW_KEY", KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = sign("[access]\nallow = [\"192.0.2.0/24\"]\n");
    assert!(!ok && !out.contains("curl"), "{out}");
    assert!(
        err.contains("address_denied") && err.contains("127.0.0.1, which [access] does not admit"),
        "{err}"
    );
    let (ok, out, err) = sign("[access]\nallow = [\"192.0.2.0/24\", \"127.0.0.1\"]\n");
    assert!(ok && out.contains("curl -s -X POST"), "{out}{err}");
}

#[test]
fn explain_shows_the_address_lists() {
    let dir = temp_dir();
    let config = dir.join("gw.toml");
    std::fs::write(
        &config,
        "listen = [\"127.0.0.1:8080\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n[[resellers]]\nname = \"res1\"\nkey_env = \"GW_KEY\"\nusers = [\"ruser\"]\n[access]\ndeny = [\"203.0.113.0/24\"]\n[access.owners.res1]\nallow = [\"192.0.2.0/24\"]\n",
    )
    .unwrap();
    let explain = |from: &str, user: &str| {
        let out = std::process::Command::new(BIN)
            .args(["explain", "-c"])
            .arg(&config)
            .args(["--client-ip", from, "-d"])
            .arg(format!("u={user}&user_id=123&hash={H_123}"))
            .args(["POST", "/billing/api/user_details_get"])
            .env("GW_KEY", KEY)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = explain("203.0.113.9", "admin");
    assert!(!ok, "{out}");
    assert!(
        out.contains("stage one  refused before the body is read: address_denied"),
        "{out}"
    );
    let (ok, out) = explain("198.51.100.1", "ruser");
    assert!(!ok, "{out}");
    assert!(
        out.contains("access     client 198.51.100.1: the global lists admit it; the owner's lists refuse it (address_denied)"),
        "{out}"
    );
    let (ok, out) = explain("198.51.100.1", "admin");
    assert!(ok, "{out}");
}
