//! Criterion microbenchmarks of the decision core, driven like the proxy
//! drives it (admit, the per-IP question, verify, the call's question):
//! parse + normalise + verify + decide, for a GET, a form POST and a JSON
//! POST, plus a bad hash; and a form POST with the local limiters on; and
//! MOR as the judge (the peek of an answer as it is relayed, and its
//! classification), to compare with the decision per call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

use mor_gateway::config::Settings;
use mor_gateway::core::decision::{decide_now, Head, Verdict};
use mor_gateway::core::directory::{ConfRow, Directory, UserRow};
use mor_gateway::core::limits::{LimitSettings, Open};
use mor_gateway::core::policy::Policy;

fn decide(s: &Policy, gate: &Open, head: &Head<'_>, body: &[u8]) -> Verdict {
    decide_now(s, &s.directory, &LimitSettings::default(), gate, head, body)
}

fn decide_with(s: &Policy, dir: &Directory, gate: &Open, head: &Head<'_>, body: &[u8]) -> Verdict {
    decide_now(s, dir, &LimitSettings::default(), gate, head, body)
}

fn settings() -> Settings {
    Settings::from_toml(
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[api]\nallow_get = true\n[secrets]\nadmin_key_env = \"BENCH_KEY\"\n",
        None,
        &std::collections::HashMap::from([("BENCH_KEY", "456789")]),
    )
    .expect("bench config")
}

const H: &str = "f7c3bc1d808e04732adf679965ccc34ca7ae3441";

fn bench(c: &mut Criterion) {
    let s = settings();
    let ip = "192.0.2.1".parse().expect("ip");
    let get_q = format!("u=admin&user_id=123&hash={H}");
    let form = format!("u=admin&user_id=123&hash={H}");
    let json = format!(r#"{{"u":"admin","user_id":123,"hash":"{H}"}}"#);
    let bad = "u=admin&user_id=123&hash=0000000000000000000000000000000000000000".to_string();
    let cases: [(&str, Head<'_>, &[u8]); 4] = [
        (
            "get",
            Head {
                method: "GET",
                path: "/billing/api/user_details_get",
                query: Some(&get_q),
                content_type: None,
                client_ip: ip,
            },
            b"",
        ),
        (
            "form_post",
            Head {
                method: "POST",
                path: "/billing/api/user_details_get",
                query: None,
                content_type: Some("application/x-www-form-urlencoded"),
                client_ip: ip,
            },
            form.as_bytes(),
        ),
        (
            "json_post",
            Head {
                method: "POST",
                path: "/billing/api/user_details_get",
                query: None,
                content_type: Some("application/json"),
                client_ip: ip,
            },
            json.as_bytes(),
        ),
        (
            "bad_hash",
            Head {
                method: "POST",
                path: "/billing/api/user_details",
                query: None,
                content_type: Some("application/x-www-form-urlencoded"),
                client_ip: ip,
            },
            bad.as_bytes(),
        ),
    ];
    // Pre-authentication work must be linear in the request size: a 1 MiB
    // form of bracket keys over 1,000 bases costs what a plain 1 MiB form of
    // as many pairs costs (both are parsed whole before the hash is checked).
    let fill = |pair: &dyn Fn(usize) -> String| {
        let mut out = format!("u=admin&user_id=123&hash={H}");
        let mut i = 0;
        while out.len() < 1024 * 1024 {
            out.push('&');
            out.push_str(&pair(i % 1000));
            i += 1;
        }
        out
    };
    let plain = fill(&|i| format!("a{i}x=1"));
    let brackets = fill(&|i| format!("k{i}[]=1"));
    let post_form = Head {
        method: "POST",
        path: "/billing/api/user_details_get",
        query: None,
        content_type: Some("application/x-www-form-urlencoded"),
        client_ip: ip,
    };
    let mut slow = c.benchmark_group("prehash_1MiB");
    slow.sample_size(10);
    for (name, body) in [("plain", &plain), ("brackets", &brackets)] {
        slow.bench_function(name, |b| {
            b.iter(|| {
                decide(
                    black_box(&s.policy),
                    &Open,
                    &post_form,
                    black_box(body.as_bytes()),
                )
            })
        });
    }
    slow.finish();
    for (name, head, body) in &cases {
        let v = decide(&s.policy, &Open, head, body);
        assert_eq!(
            matches!(v, Verdict::Forward(..)),
            *name != "bad_hash",
            "{name}: {v:?}"
        );
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| {
                decide(
                    black_box(&s.policy),
                    &Open,
                    black_box(head),
                    black_box(body),
                )
            })
        });
    }
}

/// The verified call of benches/e2e.sh (users user1..user1000, the admin's,
/// cycled) decided with the static config's directory and with a snapshot
/// of 100,000 users and 1,000 resellers (as benches/lib.sh seeds MOR).
fn directory(c: &mut Criterion) {
    let s = settings();
    let ip = "192.0.2.1".parse().expect("ip");
    let mut users = vec![UserRow {
        id: 0,
        username: "admin".into(),
        usertype: "admin".into(),
        owner_id: 0,
        uniquehash: Some("adminuniq".into()),
    }];
    let mut conf = vec![
        ConfRow {
            name: "API_Secret_Key".into(),
            value: b"456789".to_vec(),
            owner_id: 0,
        },
        ConfRow {
            name: "Allow_API".into(),
            value: b"1".to_vec(),
            owner_id: 0,
        },
    ];
    for r in 1..=1000u64 {
        conf.push(ConfRow {
            name: "API_Secret_Key".into(),
            value: format!("k{r}").into_bytes(),
            owner_id: 1_000_000 + r,
        });
        conf.push(ConfRow {
            name: "Allow_API".into(),
            value: b"1".to_vec(),
            owner_id: 1_000_000 + r,
        });
    }
    for n in 1..=100_000u64 {
        users.push(UserRow {
            id: n,
            username: format!("user{n}"),
            usertype: "user".into(),
            owner_id: if n <= 1000 { 0 } else { 1_000_001 + n % 1000 },
            uniquehash: Some(format!("{n:040x}")),
        });
    }
    let big = Directory::from_rows(&users, &conf);
    let bodies: Vec<String> = (1..=1000)
        .map(|n| {
            use sha1::Digest;
            let h = hex::encode(sha1::Sha1::digest(format!("{n}456789").as_bytes()));
            format!("u=user{n}&user_id={n}&hash={h}")
        })
        .collect();
    let head = Head {
        method: "POST",
        path: "/billing/api/user_details_get",
        query: None,
        content_type: Some("application/x-www-form-urlencoded"),
        client_ip: ip,
    };
    let mut g = c.benchmark_group("directory");
    for (name, dir) in [("static", &*s.policy.directory), ("mor_100k", &big)] {
        for b in &bodies {
            let v = decide_with(&s.policy, dir, &Open, &head, b.as_bytes());
            assert!(matches!(v, Verdict::Forward(..)), "{name}: {v:?}");
        }
        let mut i = 0;
        g.bench_function(name, |bench| {
            bench.iter(|| {
                i = (i + 1) % bodies.len();
                decide_with(
                    black_box(&s.policy),
                    black_box(dir),
                    &Open,
                    &head,
                    black_box(bodies[i].as_bytes()),
                )
            })
        });
    }
    g.finish();
}

/// The form POST with the local limiters on (per IP, per user, per method
/// and user, the lockout; quotas never reached): the limit seam's cost.
fn limited(c: &mut Criterion) {
    let s = Settings::from_toml(
        "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"BENCH_KEY\"\n[limits]\nper_ip = { per_second = 1000000000, burst = 1000000 }\nper_user = { per_second = 1000000000, burst = 1000000 }\n[limits.per_method_user]\nuser_details_get = { per_second = 1000000000, burst = 1000000 }\n[limits.lockout]\nfailures = 5\nwindow = \"60s\"\ncooloff = \"60s\"\n",
        None,
        &std::collections::HashMap::from([("BENCH_KEY", "456789")]),
    )
    .expect("bench config");
    let form = format!("u=admin&user_id=123&hash={H}");
    let head = Head {
        method: "POST",
        path: "/billing/api/user_details_get",
        query: None,
        content_type: Some("application/x-www-form-urlencoded"),
        client_ip: "192.0.2.1".parse().expect("ip"),
    };
    let gate = mor_gateway::edge::local_limits::Limits::new(&s.limits);
    let go = |head: &Head<'_>, body: &[u8]| {
        decide_now(&s.policy, &s.policy.directory, &s.limits, &gate, head, body)
    };
    assert!(matches!(go(&head, form.as_bytes()), Verdict::Forward(..)));
    c.bench_function("decide_limited/form_post", |b| {
        b.iter(|| go(black_box(&head), black_box(form.as_bytes())))
    });
}

/// The judge's work per forwarded call: the peek of the answer's chunks and
/// the classification (the forward also bumps one counter).
fn judge(c: &mut Criterion) {
    use bytes::Bytes;
    use mor_gateway::core::judge::{MorAnswer, Peek};
    const PROLOG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";
    let page = Bytes::from(format!("{PROLOG}<page><details><id>123</id><username>client123</username><balance>55.0000</balance></details></page>"));
    let error = Bytes::from(format!(
        "{PROLOG}<status><error>Incorrect hash</error></status>"
    ));
    let mut big = format!("{PROLOG}<page><users>");
    while big.len() < 64 * 1024 {
        big.push_str("<user><id>1</id><username>user1</username></user>");
    }
    let big: Vec<Bytes> = big
        .as_bytes()
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let split: Vec<Bytes> = error.chunks(40).map(Bytes::copy_from_slice).collect();
    let cases: [(&str, Vec<Bytes>, MorAnswer); 4] = [
        ("served_page", vec![page], MorAnswer::Served),
        ("error", vec![error.clone()], MorAnswer::IncorrectHash),
        ("error_in_two_chunks", split, MorAnswer::IncorrectHash),
        ("served_64KiB_in_16KiB_chunks", big, MorAnswer::Served),
    ];
    let mut g = c.benchmark_group("judge");
    for (name, chunks, want) in &cases {
        let run = || {
            let mut p = Peek::default();
            for ch in chunks {
                p.add(black_box(ch));
            }
            p.classify(black_box(200))
        };
        assert_eq!(run(), *want, "{name}");
        g.bench_function(*name, |b| b.iter(run));
    }
    g.finish();
}

criterion_group!(benches, bench, directory, limited, judge);
criterion_main!(benches);
