//! MOR's directory from MOR's own database, end to end: one real MariaDB
//! (started here on a free port, data in a temp dir, stopped by its pid)
//! holding MOR's `users` and `conflines`, the gateway reading it through a
//! least-privilege account, and the simulator (MOR) reading the same tables.
//! A user added, a key rotated, hash checking or Allow API switched in the
//! database take effect within one refresh; the database going away costs
//! no call; no credential or key reaches a log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const RKEY: &str = "resellerkey";

/// MOR's hash of user_details_get for `user_id` with `key`.
fn details_hash(user_id: &str, key: &str) -> String {
    sha1_hex(&format!("{user_id}{key}"))
}

fn details_call(u: &str, user_id: &str, hash: Option<&str>) -> String {
    let mut b = format!("u={u}&user_id={user_id}");
    if let Some(h) = hash {
        b.push_str("&hash=");
        b.push_str(h);
    }
    post_form("/billing/api/user_details_get", &b)
}

/// Gateway + MOR-simulator + one MariaDB.
struct Stack {
    db: Mariadb,
    gw: Gw,
    _sim: Proc,
    sim: SocketAddr,
}

fn stack(extra_tables: &str) -> Stack {
    let db = Mariadb::start();
    db.mor();
    let (sim, sa) = start_sim_db(&db.mor_url(), &[]);
    let tables = format!("{}\n{extra_tables}", db.directory_toml(""));
    let gw = start_gateway(&body_with_log(&[sa], "", &tables));
    Stack {
        db,
        gw,
        _sim: sim,
        sim: sa,
    }
}

impl Stack {
    /// Sends through the gateway: (answer, reached MOR).
    fn call(&self, raw: &str) -> (String, bool) {
        sim_reset(self.sim);
        let r = self.gw.send(raw);
        (r.text(), !sim_seen(self.sim).is_empty())
    }
    /// The same straight to MOR.
    fn mor(&self, raw: &str) -> String {
        send(self.sim, raw.as_bytes()).text()
    }
}

/// Polls `f` until it holds, at most `within`; returns how long it took.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if f() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("not within {within:?}");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}

#[test]
fn a_user_added_and_a_key_rotated_in_mor_take_effect_within_one_refresh() {
    let s = stack("");
    let good = details_hash("123", RKEY);
    // bob is not in MOR yet: MOR's own answer, at the edge.
    let (body, reached) = s.call(&details_call("bob", "123", Some(&good)));
    assert!(body.contains("Access Denied"), "{body}");
    assert!(!reached, "nothing forwarded for a user MOR does not have");
    assert_eq!(body, s.mor(&details_call("bob", "123", Some(&good))));

    // The reseller adds customer bob in MOR's GUI.
    s.db.sql("INSERT INTO mor.users (id, username, usertype, owner_id, uniquehash) VALUES (30, 'bob', 'user', 4, 'bobuniq')");
    let took = eventually(Duration::from_secs(3), || {
        s.call(&details_call("bob", "123", Some(&good))).1
    });
    println!("bob verified {took:?} after the insert (refresh_interval 1s)");
    let (body, reached) = s.call(&details_call("bob", "123", Some(&good)));
    assert!(reached && body.contains("client123"), "{body}");
    // ... with his reseller's key only (MOR refuses the admin's for him).
    let (body, reached) = s.call(&details_call("bob", "123", Some(&details_hash("123", KEY))));
    assert!(!reached && body.contains("Incorrect hash"), "{body}");

    // The reseller rotates its key in MOR.
    s.db.sql("UPDATE mor.conflines SET value = 'rotated-reseller-key' WHERE name = 'API_Secret_Key' AND owner_id = 4");
    let new = details_hash("123", "rotated-reseller-key");
    let took = eventually(Duration::from_secs(3), || {
        s.call(&details_call("ruser", "123", Some(&new))).1
    });
    println!("rotated key honoured {took:?} after the update");
    let (body, reached) = s.call(&details_call("ruser", "123", Some(&good)));
    assert!(
        !reached && body.contains("Incorrect hash"),
        "old key: {body}"
    );
    assert_eq!(body, s.mor(&details_call("ruser", "123", Some(&good))));
    let m = s.gw.metrics_text();
    assert_eq!(metric(&m, "mor_gateway_directory_users"), 8.0, "{m}");
    assert!(metric(&m, "mor_gateway_directory_snapshot_age_seconds") < 3.0);
}

#[test]
fn a_resellers_hash_checking_off_forwards_its_users_only() {
    let s = stack("");
    let (body, reached) = s.call(&details_call("ruser", "123", None));
    assert!(!reached && body.contains("Incorrect hash"), "{body}");
    s.db.sql("UPDATE mor.conflines SET value = '1' WHERE name = 'API_Disable_hash_checking' AND owner_id = 4");
    eventually(Duration::from_secs(3), || {
        s.call(&details_call("ruser", "123", None)).1
    });
    // Unsigned, and with any hash: MOR accepts both for res1's users.
    for h in [None, Some("0000")] {
        let raw = details_call("ruser", "123", h);
        let (body, reached) = s.call(&raw);
        assert!(reached && body.contains("client123"), "{body}");
        assert_eq!(body, s.mor(&raw));
    }
    // The admin's users are still checked.
    let (body, reached) = s.call(&details_call("john", "123", None));
    assert!(!reached && body.contains("Incorrect hash"), "{body}");
    let m = s.gw.metrics_text();
    assert!(
        m.contains(r#"mor_gateway_unchecked_total{reason="hash_checking_off"} "#)
            && metric_labeled(
                &m,
                r#"mor_gateway_unchecked_total{reason="hash_checking_off"}"#
            ) >= 2.0,
        "{m}"
    );
    let log = std::fs::read_to_string(s.gw.dir.join("access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(r#""user":"ruser""#) && l.contains(r#""signer":"unchecked""#)),
        "{log}"
    );
}

fn metric_labeled(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_resellers_allow_api_off_refuses_its_users_with_mors_text() {
    let s = stack("");
    s.db.sql("UPDATE mor.conflines SET value = '0' WHERE name = 'Allow_API' AND owner_id = 4");
    let raw = details_call("ruser", "123", Some(&details_hash("123", RKEY)));
    eventually(Duration::from_secs(3), || !s.call(&raw).1);
    let (body, reached) = s.call(&raw);
    assert!(!reached);
    assert_eq!(body, mor_error("API Requests are disabled"));
    assert_eq!(body, s.mor(&raw), "the same answer as MOR");
    // The reseller itself is let in by the admin's Allow API, and the
    // admin's users pass.
    let (body, reached) = s.call(&details_call(
        "res1",
        "123",
        Some(&details_hash("123", RKEY)),
    ));
    assert!(reached && body.contains("client123"), "{body}");
    let (body, reached) = s.call(&details_call(
        "john",
        "123",
        Some(&details_hash("123", KEY)),
    ));
    assert!(reached && body.contains("client123"), "{body}");
}

#[test]
fn the_database_stopped_mid_load_costs_no_call() {
    let mut db = Mariadb::start();
    db.mor();
    // MOR (the simulator) keeps its own settings here: this is the
    // gateway's mirror going away, not MOR's database.
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let gw = start_gateway(&body_with_log(&[sa], "", &db.directory_toml("")));
    let calls = [
        details_call("john", "123", Some(&details_hash("123", KEY))),
        details_call("ruser", "123", Some(&details_hash("123", RKEY))),
    ];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let (a, calls) = (gw.addr, calls.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = send(a, calls[i % 2].as_bytes());
                if r.status == 200 && r.text().contains("client123") {
                    ok += 1;
                } else {
                    failed.push(r.text());
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (ok, failed)
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    db.stop();
    // The snapshot ages, refreshes fail, calls go on.
    eventually(Duration::from_secs(10), || {
        let m = gw.metrics_text();
        metric(&m, "mor_gateway_directory_snapshot_age_seconds") > 3.0
            && metric_labeled(
                &m,
                r#"mor_gateway_directory_refreshes_total{result="failed"}"#,
            ) >= 2.0
    });
    db.run();
    let ok_before = metric_labeled(
        &gw.metrics_text(),
        r#"mor_gateway_directory_refreshes_total{result="ok"}"#,
    );
    eventually(Duration::from_secs(5), || {
        let m = gw.metrics_text();
        metric_labeled(&m, r#"mor_gateway_directory_refreshes_total{result="ok"}"#) > ok_before
            && metric(&m, "mor_gateway_directory_snapshot_age_seconds") < 2.0
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    println!("{ok} calls across the outage, {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 50, "{ok}");
    let log = std::fs::read_to_string(gw.dir.join("stderr.log")).unwrap();
    assert!(log.contains("directory: cannot read"), "{log}");
}

#[test]
fn before_the_first_snapshot_the_config_decides() {
    // Nothing listens here.
    let dead = free_port();
    let dir = |policy: &str| {
        format!(
            "[directory]\nurl = \"mysql://mor-gateway@127.0.0.1:{dead}/mor\"\npassword_env = \"GW_DB_PASSWORD\"\ntimeout = \"500ms\"\nwithout_snapshot = \"{policy}\"\n"
        )
    };
    let (_sim, sa) = start_sim(KEY, &[]);
    // "refuse": API calls get 503, /readyz says why.
    let gw = start_gateway(&body_with_log(&[sa], "", &dir("refuse")));
    let r = gw.send(&details_call("admin", "123", Some(H_123)));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("MOR settings not loaded yet"),
        "{}",
        r.text()
    );
    let ready = send(gw.metrics, get("/readyz").as_bytes());
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("never read"), "{}", ready.text());
    drop(gw);
    // "static": the config decides until the first snapshot.
    let gw = start_gateway(&body_with_log(&[sa], "", &dir("static")));
    let r = gw.send(&details_call("admin", "123", Some(H_123)));
    assert!(r.text().contains("client123"), "{}", r.text());
    let ready = send(gw.metrics, get("/readyz").as_bytes());
    assert!(ready.text().contains("static config"), "{}", ready.text());
    drop(gw);
    // "exit" (the default): run does not start.
    let d = temp_dir();
    let cfg = d.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"127.0.0.1:{}\"]\n{}\n[metrics]\nlisten = \"\"\n",
            free_port(),
            body_for(&[sa], "", &dir("exit"))
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(&cfg)
        .env("GW_KEY", KEY)
        .env("GW_DB_PASSWORD", DB_PASSWORD)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read MOR's database at start"), "{err}");
    assert!(secrets_in(&err).is_empty(), "{err}");
}

#[test]
fn check_reads_the_directory_and_names_grants_beyond_the_need() {
    let db = Mariadb::start();
    db.mor();
    let d = temp_dir();
    let cfg = d.join("gw.toml");
    let write = |url_user: &str| {
        std::fs::write(
            &cfg,
            format!(
                "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"GW_KEY\"\n[directory]\nurl = \"mysql://{url_user}@127.0.0.1:{}/mor\"\npassword_env = \"GW_DB_PASSWORD\"\n",
                db.port
            ),
        )
        .unwrap();
    };
    let check = || {
        let out = std::process::Command::new(BIN)
            .args(["check", "-c"])
            .arg(&cfg)
            .env("GW_KEY", KEY)
            .env("GW_DB_PASSWORD", DB_PASSWORD)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(secrets_in(&text).is_empty(), "{text}");
        text
    };
    write("mor-gateway");
    let text = check();
    assert!(text.contains("read: 7 users, 2 owners"), "{text}");
    assert!(text.contains("grants         least privilege"), "{text}");
    // An account that can read MOR's mail and payment passwords.
    db.sql(&format!(
        "CREATE USER 'lazy'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; GRANT SELECT ON mor.* TO 'lazy'@'127.0.0.1';"
    ));
    write("lazy");
    let text = check();
    assert!(text.contains("can read more than it needs"), "{text}");
    assert!(text.contains("GRANT SELECT ON `mor`.*"), "{text}");
    // Switches are printed.
    db.sql("UPDATE mor.conflines SET value = '1' WHERE name = 'API_Disable_hash_checking' AND owner_id = 4");
    let text = check();
    assert!(
        text.contains("res1 (id 4): Allow API on, hash checking off"),
        "{text}"
    );
}

#[test]
fn by_psw_and_the_generic_route_as_mor_routes_them() {
    let db = Mariadb::start();
    db.mor();
    let (_sim, sa) = start_sim_db(&db.mor_url(), &[]);
    let gw = start_gateway(&body_with_log(&[sa], "", &db.directory_toml("")));
    let seen_path = |raw: &str| {
        sim_reset(sa);
        let r = gw.send(raw);
        let seen = sim_seen(sa);
        (
            r,
            seen.first()
                .map(|s| s["path"].as_str().unwrap().to_string()),
        )
    };
    // Device anna_sip's secret is "anna_secret" in the simulator's data;
    // a device secret that looks like one: s3cr3t-pw (grepped in the logs).
    for (path, want) in [
        ("user_balance_get_by_psw/anna_secret", Some("40.0000")),
        ("user_balance_get_by_psw/s3cr3t-pw.xml", None),
        ("user_balance_get_by_username/john_sip", Some("12.5000")),
        ("user_simple_balance_get/client123uniq", Some("55.0000")),
    ] {
        let (r, fwd) = seen_path(&get(&format!("/billing/api/{path}")));
        assert_eq!(
            fwd.as_deref(),
            Some(&*format!("/billing/api/{path}")),
            "{path}"
        );
        if let Some(w) = want {
            assert_eq!(r.text(), w, "{path}");
        }
    }
    // by_psw with the secret in the query: redacted as well.
    let (r, fwd) = seen_path(&get("/billing/api/user_balance_get_by_psw?id=s3cr3t-pw"));
    assert!(fwd.is_some(), "{}", r.text());
    // card_group_get/5: the path id is params id, hashed.
    let h = sha1_hex(&format!("5{KEY}"));
    let (r, fwd) = seen_path(&post_form(
        "/billing/api/card_group_get/5",
        &format!("u=admin&hash={h}"),
    ));
    assert_eq!(
        fwd.as_deref(),
        Some("/billing/api/card_group_get/5"),
        "{}",
        r.text()
    );
    let (r, fwd) = seen_path(&post_form(
        "/billing/api/card_group_get/6",
        &format!("u=admin&hash={h}"),
    ));
    assert!(
        fwd.is_none() && r.text().contains("Incorrect hash"),
        "{}",
        r.text()
    );
    // A legacy alias takes no /<id>: user_details/5 is not routed.
    let (r, fwd) = seen_path(&post_form("/billing/api/user_details/5", &details("admin")));
    assert!(
        fwd.is_none() && r.text().contains("Not found"),
        "{}",
        r.text()
    );
    // The device secret is in no log line (the access log and stderr are
    // grepped for s3cr3t-pw when the gateway stops), but the username is.
    let log = std::fs::read_to_string(gw.dir.join("access.log")).unwrap();
    assert!(log.contains("user_balance_get_by_psw/[redacted]"), "{log}");
    assert!(log.contains(r#""query":"id=[redacted]""#), "{log}");
    assert!(
        log.contains("user_balance_get_by_username/john_sip"),
        "{log}"
    );
    assert!(!log.contains("anna_secret"), "{log}");
}

#[test]
fn sighup_refreshes_the_directory_at_once() {
    let db = Mariadb::start();
    db.mor();
    let (_sim, sa) = start_sim_db(&db.mor_url(), &[]);
    // A refresh interval far beyond the test: only SIGHUP can refresh.
    let body = body_with_log(
        &[sa],
        "",
        &db.directory_toml("").replace("\"1s\"", "\"10m\""),
    );
    let gw = start_gateway(&body);
    let raw = details_call("carl", "123", Some(&details_hash("123", KEY)));
    assert!(send(gw.addr, raw.as_bytes())
        .text()
        .contains("Access Denied"));
    db.sql(
        "INSERT INTO mor.users (id, username, usertype, owner_id) VALUES (31, 'carl', 'user', 0)",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        send(gw.addr, raw.as_bytes())
            .text()
            .contains("Access Denied"),
        "no refresh before the interval"
    );
    gw.proc.signal("HUP");
    let took = eventually(Duration::from_secs(3), || {
        send(gw.addr, raw.as_bytes()).text().contains("client123")
    });
    println!("carl verified {took:?} after SIGHUP");
}

/// `doctor` with the running gateway's own config: (succeeded, output).
fn doctor_of(gw: &Gw) -> (bool, String) {
    let o = std::process::Command::new(BIN)
        .args(["doctor", "-c"])
        .arg(&gw.config)
        .env("GW_KEY", KEY)
        .env("GW_DB_PASSWORD", DB_PASSWORD)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!out.contains(KEY) && !out.contains(DB_PASSWORD), "{out}");
    assert!(secrets_in(&out).is_empty(), "a hash printed:\n{out}");
    (o.status.success(), out)
}

#[test]
fn doctor_calls_a_mirror_whose_refreshes_fail_stale() {
    let s = stack("");
    let (_, out) = doctor_of(&s.gw);
    let mirror = out
        .lines()
        .find(|l| l.contains("directory mirror"))
        .unwrap_or_else(|| panic!("no mirror line:\n{out}"));
    assert!(mirror.starts_with("OK"), "{mirror}");
    // MOR's database stops answering the gateway: its refreshes fail and
    // its snapshot ages (refresh_interval 1s; stale past three).
    s.db.sql("REVOKE SELECT ON mor.gateway_conflines FROM 'mor-gateway'@'127.0.0.1'");
    let mut last = String::new();
    eventually(Duration::from_secs(15), || {
        let (ok, out) = doctor_of(&s.gw);
        let stale = !ok
            && out
                .lines()
                .any(|l| l.contains("directory mirror") && l.contains("STALE"));
        last = out;
        stale
    });
    assert!(last.contains("refreshes fail"), "{last}");
}
