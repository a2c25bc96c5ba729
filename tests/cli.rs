//! The command line: `check` (like nginx -t), `sign`, and the shipped configs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::{temp_dir, BIN};
use std::process::{Command, Output};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run mor-gateway")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn config(body: &str) -> std::path::PathBuf {
    let p = temp_dir().join("g.toml");
    std::fs::write(&p, body).unwrap();
    p
}

const GOOD: &str = "listen = [\"127.0.0.1:8080\"]\n[upstream]\nservers = [\"127.0.0.1:8081\"]\n[secrets]\nadmin_key_env = \"CLI_KEY\"\n";

#[test]
fn check_accepts_reference_and_demo_configs_without_printing_secrets() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let o = run(
        &["check", "-c", &format!("{dir}/config/gateway.toml")],
        &[("MOR_API_SECRET", "s3cr3t-value")],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains("is valid") && out.contains("catalogue"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t-value") && !err.contains("s3cr3t-value"));
    let o = run(
        &["check", "-c", &format!("{dir}/config/demo.toml")],
        &[
            ("MOR_GATEWAY_DEMO_KEY", "456789"),
            ("MOR_GATEWAY_DEMO_RESELLER_KEY", "r"),
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn check_names_a_typoed_key_and_fails() {
    let p = config(&format!("{GOOD}[api]\nalow_get = true\n"));
    let o = run(&["check", "-c", p.to_str().unwrap()], &[("CLI_KEY", "k")]);
    let (out, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("alow_get"), "{err}");
    assert!(err.contains("line"), "points at the line: {err}");
    assert!(out.is_empty());
}

#[test]
fn check_names_bad_values_and_missing_secrets() {
    let cases = [
        (GOOD.replace("127.0.0.1:8080", "nonsense"), "listen[0]"),
        (
            GOOD.replace("127.0.0.1:8081", "256.1.1.1:1"),
            "upstream.servers[0]",
        ),
        (format!("{GOOD}[api]\nprefix = \"billing\"\n"), "api.prefix"),
        (
            format!("{GOOD}[limits]\nexempt = [\"10.0.0.0/33\"]\n"),
            "limits.exempt[0]",
        ),
        (
            format!("{GOOD}[api.aliases]\nold = \"nothing_get\"\n"),
            "api.aliases.old",
        ),
        (
            GOOD.replace("CLI_KEY", "CLI_UNSET_VARIABLE"),
            "CLI_UNSET_VARIABLE",
        ),
        (
            format!("read_buffer_bytes = 10\n{GOOD}"),
            "read_buffer_bytes",
        ),
        (format!("threads = 0\n{GOOD}"), "threads"),
    ];
    for (body, key) in cases {
        let p = config(&body);
        let o = run(&["check", "-c", p.to_str().unwrap()], &[("CLI_KEY", "k")]);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{key}");
        assert!(err.contains(key), "{key}: {err}");
    }
    let o = run(&["check", "-c", "/nonexistent/gw.toml"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("/nonexistent/gw.toml"));
}

#[test]
fn sign_prints_mor_hash_and_signed_url() {
    let o = run(
        &[
            "sign",
            "--key-env",
            "SIGN_KEY",
            "user_details_get?u=admin&user_id=123",
        ],
        &[("SIGN_KEY", "456789")],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("hash    f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
        "{out}"
    );
    // Without a config, GET is assumed disabled (the default): a POST line.
    assert!(out.contains(
        "curl -s -X POST 'http://127.0.0.1:8080/billing/api/user_details_get' -d 'u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441'"
    ), "{out}");
    // Filters apply: user_id=0123 is hashed as 123; s_user=all is not hashed.
    let o = run(
        &[
            "sign",
            "--key-env",
            "SIGN_KEY",
            "user_calls?u=admin&s_user=all&user_id=0123",
        ],
        &[("SIGN_KEY", "456789")],
    );
    let (out, _) = text(&o);
    assert!(out.contains("hashed  user_id=123 + key"), "{out}");
    assert!(
        out.contains("hash    f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
        "{out}"
    );
    // With a config that allows GET: a GET line; no-hash actions get none.
    let dir = temp_dir();
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[api]\nallow_get = true\n[secrets]\nadmin_key_env = \"SIGN_KEY\"\n",
    )
    .unwrap();
    let cfgs = cfg.to_str().unwrap();
    let o = run(
        &[
            "sign",
            "--key-env",
            "SIGN_KEY",
            "-c",
            cfgs,
            "user_details_get?u=admin&user_id=123",
        ],
        &[("SIGN_KEY", "456789")],
    );
    assert!(text(&o).0.contains(
        "curl -s 'http://127.0.0.1:8080/billing/api/user_details_get?u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441'"
    ), "{}", text(&o).0);
    let o = run(
        &[
            "sign",
            "--key-env",
            "SIGN_KEY",
            "-c",
            cfgs,
            "login?u=john&p=x",
        ],
        &[("SIGN_KEY", "456789")],
    );
    let out = text(&o).0;
    assert!(
        out.contains("takes no hash") && !out.contains("hash="),
        "{out}"
    );
    // check --method prints the effective rule.
    let o = run(
        &["check", "-c", cfgs, "--method", "user_calls"],
        &[("SIGN_KEY", "456789")],
    );
    let out = text(&o).0;
    assert!(o.status.success());
    assert!(
        out.contains("legacy alias of user_calls_get") && out.contains("global order"),
        "{out}"
    );
    let o = run(&["check", "-c", cfgs], &[("SIGN_KEY", "456789")]);
    assert!(
        text(&o).0.contains(
            "username-only  refused (MOR serves them with u alone): dg_list_user_destinations"
        ),
        "{}",
        text(&o).0
    );
    assert!(!out.contains("456789"), "key not printed");
    let o = run(
        &[
            "sign",
            "--key-env",
            "SIGN_KEY",
            "user_update_api?user_id=123&u15=1&hash=old",
        ],
        &[("SIGN_KEY", "456789")],
    );
    let (out, _) = text(&o);
    assert!(
        out.contains("0ab3ede4e93a55c38855a2cc9b9e169d35442c48"),
        "{out}"
    );
    assert!(out.contains("method  user_details_update"));
    assert!(!out.contains("hash=old"));
    let o = run(
        &[
            "sign",
            "--key-env",
            "SIGN_KEY",
            "device_clis_get?u=admin&devices_id=6&users_id=3",
        ],
        &[("SIGN_KEY", "secret")],
    );
    assert!(text(&o)
        .0
        .contains("e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4"));
    let o = run(&["sign", "--key-env", "SIGN_UNSET", "x?a=1"], &[]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("SIGN_UNSET"));
}
