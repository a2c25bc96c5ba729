//! Fuzzes the pure decision core with arbitrary request views, driven like
//! the proxy drives it: admit, the per-IP question, verify, the call's
//! question, each answered by the local limiters.
//! Run: `cargo fuzz run decide` from the repo root (needs cargo-fuzz).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mor_gateway::config::Settings;
use mor_gateway::core::decision::{admit, verify, Checked, Head};
use mor_gateway::core::limits::Gate;
use mor_gateway::edge::local_limits::Limits;

fn settings() -> &'static (Settings, Limits) {
    static S: OnceLock<(Settings, Limits)> = OnceLock::new();
    S.get_or_init(|| {
        let s = Settings::from_toml(
            r#"
listen = ["127.0.0.1:0"]
[upstream]
servers = ["127.0.0.1:1"]
[api]
allow_get = true
[secrets]
admin_key_env = "FUZZ_KEY"
[limits]
per_ip = { per_second = 1000000, burst = 1000000 }
per_user = { per_second = 1000000, burst = 1000000 }
[limits.lockout]
failures = 1000000
window = "1s"
cooloff = "1s"
"#,
            None,
            &std::collections::HashMap::from([("FUZZ_KEY", "456789")]),
        )
        .expect("fuzz config");
        let l = Limits::new(&s.limits);
        (s, l)
    })
}

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xFF: method, path, query, content type, body.
    let mut parts = data.splitn(5, |&b| b == 0xFF);
    let mut text = || parts.next().map(|p| String::from_utf8_lossy(p).into_owned());
    let (method, path, query, ctype) = (text(), text(), text(), text());
    let body = data.rsplit(|&b| b == 0xFF).next().unwrap_or(&[]);
    let (s, limits) = settings();
    let head = Head {
        method: method.as_deref().unwrap_or("POST"),
        path: path.as_deref().unwrap_or("/billing/api/user_details_get"),
        query: query.as_deref(),
        content_type: ctype.as_deref(),
        client_ip: "192.0.2.1".parse().unwrap(),
    };
    let (p, dir, l) = (&s.policy, &s.policy.directory, &s.limits);
    let Ok(admission) = admit(p, dir, &head) else {
        return;
    };
    let answer = limits.answer(&admission.question(l));
    let Ok(admitted) = admission.conclude(answer) else {
        return;
    };
    if let Checked::Pending(pending) = verify(p, dir, &head, admitted, body) {
        let answer = limits.answer(&pending.question(l));
        let _ = pending.conclude(answer);
    }
});
