//! `mor-gateway doctor` against a real simulator: all OK when the config
//! matches MOR; each disagreement reported as what it is, exit status 1; no
//! key or valid hash in what it prints.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// Runs doctor on `config` with the admin key `key`; (success, stdout).
fn doctor(config: &str, key: &str) -> (bool, String) {
    let dir = temp_dir();
    let p = dir.join("g.toml");
    std::fs::write(&p, config).unwrap();
    let o = Command::new(BIN)
        .args(["doctor", "-c"])
        .arg(&p)
        .env("GW_KEY", key)
        .env("RES_KEY", "resellerkey")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    for text in [&out, &err] {
        assert!(
            !text.contains(KEY) && !text.contains("resellerkey"),
            "a key printed:\n{text}"
        );
        assert!(secrets_in(text).is_empty(), "a hash printed:\n{text}");
    }
    (o.status.success(), out)
}

fn config(servers: &str, extra: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [{servers}]\nconnect_timeout = \"500ms\"\nread_timeout = \"3s\"\n{extra}\n[secrets]\nadmin_key_env = \"GW_KEY\"\n\n[[resellers]]\nname = \"res1\"\nkey_env = \"RES_KEY\"\nusers = [\"ruser\"]\n"
    )
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(check))
        .unwrap_or_else(|| panic!("no '{check}' line in:\n{out}"))
}

#[test]
fn all_ok_when_the_config_matches_mor() {
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let (ok, out) = doctor(
        &config(&format!("\"{sa}\""), "[api]\nallow_get = true"),
        KEY,
    );
    assert!(ok, "{out}");
    for check in [
        "MOR @",
        "admin key @",
        "Allow API @",
        "hash checking @",
        "Allow GET API @",
        "reseller res1 key @",
    ] {
        let l = line(&out, check);
        assert!(l.starts_with("OK "), "{l}");
    }
}

#[test]
fn each_disagreement_is_reported_as_what_it_is() {
    let (_sim, sa) = start_sim(KEY, &["--reseller", "res1=SIM_RESELLER_KEY"]);
    let here = format!("\"{sa}\"");
    // The gateway's admin key is not MOR's.
    let (ok, out) = doctor(&config(&here, "[api]\nallow_get = true"), "not-the-key");
    assert!(!ok);
    let l = line(&out, "admin key @");
    assert!(
        l.starts_with("MISMATCH") && l.contains("Incorrect hash"),
        "{l}"
    );
    // GET off in MOR, on in the config.
    let (_nget, na) = start_sim(KEY, &["--no-get"]);
    let (ok, out) = doctor(
        &config(&format!("\"{na}\""), "[api]\nallow_get = true"),
        KEY,
    );
    assert!(!ok);
    let l = line(&out, "Allow GET API @");
    assert!(
        l.starts_with("MISMATCH") && l.contains("allow_get = false"),
        "{l}"
    );
    // ... and the other way round.
    let (ok, out) = doctor(&config(&here, ""), KEY);
    assert!(!ok);
    assert!(line(&out, "Allow GET API @").contains("allow_get = true"));
    // A reseller key that is not MOR's.
    let wrong = config(&here, "[api]\nallow_get = true").replace("RES_KEY", "GW_KEY");
    let (ok, out) = doctor(&wrong, KEY);
    assert!(!ok);
    assert!(
        line(&out, "reseller res1 key @").starts_with("MISMATCH"),
        "{out}"
    );
    // MOR's API off while the config has it on.
    let (_off, oa) = start_sim(KEY, &["--no-api"]);
    let (ok, out) = doctor(
        &config(&format!("\"{oa}\""), "[api]\nallow_get = true"),
        KEY,
    );
    assert!(!ok);
    let l = line(&out, "Allow API @");
    assert!(
        l.starts_with("MISMATCH") && l.contains("API Requests are disabled"),
        "{l}"
    );
    // MOR checks no hash while the config does.
    let (_nh, ha) = start_sim(KEY, &["--no-hash-check"]);
    let (ok, out) = doctor(
        &config(&format!("\"{ha}\""), "[api]\nallow_get = true"),
        KEY,
    );
    assert!(!ok);
    let l = line(&out, "hash checking @");
    assert!(
        l.starts_with("MISMATCH") && l.contains("hash checking is off"),
        "{l}"
    );
    // MOR X8 while the config says current, and the matching config.
    let (_x8, xa) = start_sim(
        KEY,
        &[
            "--version-text",
            "MOR X8 (build 2017)",
            "--reseller",
            "res1=SIM_RESELLER_KEY",
        ],
    );
    let (ok, out) = doctor(
        &config(&format!("\"{xa}\""), "[api]\nallow_get = true"),
        KEY,
    );
    assert!(!ok);
    let l = line(&out, "MOR version @");
    assert!(l.starts_with("MISMATCH") && l.contains("\"x8\""), "{l}");
    let (ok, out) = doctor(
        &config(
            &format!("\"{xa}\""),
            "[api]\nallow_get = true\nmor_version = \"x8\"",
        ),
        KEY,
    );
    assert!(ok, "{out}");
    // MOR down.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = down.local_addr().unwrap();
    drop(down);
    let (ok, out) = doctor(&config(&format!("\"{gone}\""), ""), KEY);
    assert!(!ok);
    assert!(line(&out, "MOR @").starts_with("UNREACHABLE"), "{out}");
}

#[test]
fn a_tls_mor_with_a_wrong_ca_is_unreachable() {
    let dir = temp_dir();
    let (ca, pem, key) = certs(&dir, "ca", "mor", "localhost");
    let (other_ca, _, _) = certs(&dir, "otherca", "x", "x");
    let (pem_s, key_s) = (pem.display().to_string(), key.display().to_string());
    let (_sim, a) = start_sim(KEY, &["--tls-cert", &pem_s, "--tls-key", &key_s]);
    let with_ca = |ca: &Path| {
        config(
            &format!("\"https://localhost:{}\"", a.port()),
            &format!("ca_file = \"{}\"\n[api]\nallow_get = true", ca.display()),
        )
    };
    let (ok, out) = doctor(&with_ca(&ca), KEY);
    assert!(line(&out, "admin key @").starts_with("OK "), "{out}");
    assert!(ok || out.contains("reseller"), "{out}");
    let (ok, out) = doctor(&with_ca(&other_ca), KEY);
    assert!(!ok);
    let l = line(&out, "MOR @");
    assert!(l.starts_with("UNREACHABLE") && l.contains("ca_file"), "{l}");
}
