//! End-to-end: the real gateway binary in front of the real simulator, over
//! loopback HTTP. Covers verification, policies, parameter views, path safety,
//! aliases, replies, forwarding, timeouts and several upstreams.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    reason = "a test: a failed unwrap is a failed test"
)]

mod common;
use common::*;

const H_UPD: &str = "0ab3ede4e93a55c38855a2cc9b9e169d35442c48"; // SHA1("123" + "1" + "456789")

#[test]
fn seed_vectors_forwarded_byte_for_byte() {
    let (gw, _sim, sa) = gw_and_sim("", "");
    // The hashes are MOR's printed examples; check them independently first.
    assert_eq!(sha1_hex("123456789"), H_123);
    assert_eq!(sha1_hex("1231456789"), H_UPD);

    let body = format!("u=admin&user_id=123&hash={H_123}");
    let r = gw.post("/billing/api/user_details_get", &body);
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("<username>client123</username>"),
        "{}",
        r.text()
    );

    let body2 = format!("u=admin&user_id=123&u15=1&hash={H_UPD}");
    let r = gw.post("/billing/api/user_details_update", &body2);
    assert!(r.text().contains("updated"), "{}", r.text());

    let body3 = format!("u=admin&s_user=123&hash={H_123}");
    let r = gw.post("/billing/api/user_calls_get", &body3);
    assert!(r.text().contains("<calls_stat>"), "{}", r.text());

    let seen = sim_seen(sa);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0]["path"], "/billing/api/user_details_get");
    assert_eq!(seen[0]["body"], body.as_str(), "body forwarded unchanged");
    assert_eq!(seen[1]["body"], body2.as_str());
    assert_eq!(seen[2]["body"], body3.as_str());
}

#[test]
fn device_clis_get_key_only_seed() {
    // device_clis_get's example: hash = SHA1("secret") whatever the params.
    assert_eq!(
        sha1_hex("secret"),
        "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4"
    );
    let (sim, sa) = start_sim("secret", &[]);
    let gw = start_gateway_env(&body_for(&[sa], "", ""), &[("GW_KEY", "secret")]);
    let r = gw.send(&get_post_query(
        "/billing/api/device_clis_get?u=admin&devices_id=6&users_id=3&hash=e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4",
    ));
    assert!(r.text().contains("<cli>37060000001</cli>"), "{}", r.text());
    drop(sim);
}

fn get_post_query(pq: &str) -> String {
    format!("POST {pq} HTTP/1.1\r\nHost: mor\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

#[test]
fn bad_or_missing_hash_refused_at_edge_in_mor_shape() {
    let (gw, _sim, sa) = gw_and_sim("", "");
    for body in [
        "u=admin&user_id=123&hash=0000000000000000000000000000000000000000".to_string(),
        "u=admin&user_id=123".to_string(),
        format!("u=admin&user_id=124&hash={H_123}"),
        format!("u=admin&user_id=123&hash={}", &H_123[..39]),
    ] {
        let r = gw.post("/billing/api/user_details_get", &body);
        assert_eq!(r.status, 200, "MOR mode answers 200");
        assert_eq!(r.text(), mor_error("Incorrect hash"), "{body}");
        assert_eq!(
            r.header("content-type"),
            Some("application/xml; charset=utf-8")
        );
    }
    // Upper-case hex is refused: MOR compares lower-case hex exactly.
    let r = gw.post(
        "/billing/api/user_details_get",
        &format!("u=admin&user_id=123&hash={}", H_123.to_uppercase()),
    );
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    assert!(sim_seen(sa).is_empty(), "no refused call reached MOR");
}

#[test]
fn http_reply_mode_uses_status_codes() {
    let (gw, _sim, _sa) = gw_and_sim("reply_mode = \"http\"", "");
    let r = gw.post(
        "/billing/api/user_details_get",
        "u=admin&user_id=123&hash=00",
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    let r = gw.send(&get("/billing/api/user_details_get?u=admin&user_id=123"));
    assert_eq!(r.status, 405);
    assert_eq!(r.text(), mor_error("GET Requests are disabled"));
    let r = gw.send(
        "DELETE /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    let r = gw.post("/billing/callc/login", "");
    assert_eq!(r.status, 404);
    let r = gw.post(
        "/billing/api/user_details_get",
        "u=admin&user_id=1&user_id=2",
    );
    assert_eq!(r.status, 400);
}

#[test]
fn allow_api_and_allow_get_policies() {
    let (gw, _sim, sa) = gw_and_sim("", "[api]\nallow_api = false\n");
    let r = gw.post(
        "/billing/api/user_details_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert_eq!(r.text(), mor_error("API Requests are disabled"));

    let (gw2, _sim2, sa2) = gw_and_sim("", "");
    let q = format!("/billing/api/user_details_get?u=admin&user_id=123&hash={H_123}");
    assert_eq!(
        gw2.send(&get(&q)).text(),
        mor_error("GET Requests are disabled")
    );
    let head = format!("HEAD {q} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n");
    let r = gw2.send(&head);
    assert_eq!(r.status, 200);
    assert!(sim_seen(sa).is_empty() && sim_seen(sa2).is_empty());

    let (gw3, _sim3, sa3) = gw_and_sim("", "[api]\nallow_get = true\n");
    let r = gw3.send(&get(&q));
    assert!(r.text().contains("client123"), "{}", r.text());
    assert_eq!(sim_seen(sa3)[0]["method"], "GET");
}

#[test]
fn json_and_form_bodies_and_query() {
    let (gw, _sim, sa) = gw_and_sim("", "");
    let json = format!(r#"{{"u":"admin","user_id":123,"u15":1,"hash":"{H_UPD}"}}"#);
    let r = gw.send(&post_json("/billing/api/user_details_update", &json));
    assert!(r.text().contains("updated"), "{}", r.text());
    // Query + body with the same value is one view; body forwarded unchanged.
    let r = gw.send(&post_json(
        &format!("/billing/api/user_details_get?u=admin&user_id=123&hash={H_123}"),
        r#"{"user_id":"123"}"#,
    ));
    assert!(r.text().contains("client123"), "{}", r.text());
    let seen = sim_seen(sa);
    assert_eq!(seen[0]["body"], json.as_str());
    assert_eq!(seen[0]["content_type"], "application/json");
    assert_eq!(seen.len(), 2);
}

#[test]
fn ambiguous_or_malformed_parameters_refused_never_forwarded() {
    let (gw, _sim, sa) = gw_and_sim("", "");
    let cases = [
        // duplicate hash-covered param with different values
        post_form("/billing/api/user_details_get", &format!("u=admin&user_id=123&user_id=999&hash={H_123}")),
        // query and body disagree
        post_form(&format!("/billing/api/user_details_get?user_id=999&hash={H_123}"), "u=admin&user_id=123"),
        // JSON duplicate key
        post_json("/billing/api/user_details_get", &format!(r#"{{"user_id":"999","user_id":"123","hash":"{H_123}"}}"#)),
        // array where a value is hashed
        post_form("/billing/api/user_details_get", &format!("user_id[]=123&hash={H_123}")),
        // broken escape, invalid UTF-8
        post_form("/billing/api/user_details_get", &format!("user_id=12%G3&hash={H_123}")),
        post_form("/billing/api/user_details_get", &format!("user_id=%FF&hash={H_123}")),
        // unparseable JSON, unsupported body type
        post_json("/billing/api/user_details_get", "{nope"),
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n--x\n".to_string(),
        // ';' separates pairs, as in MOR's Rack: a conflicting duplicate
        post_form("/billing/api/user_details_get", &format!("u=admin&user_id=123;user_id=999&hash={H_123}")),
    ];
    for raw in &cases {
        let r = gw.send(raw);
        assert_eq!(r.status, 200);
        assert!(
            r.text().contains("<error>Bad request"),
            "{raw}\n=> {}",
            r.text()
        );
    }
    assert!(sim_seen(sa).is_empty(), "nothing ambiguous reached MOR");
}

#[test]
fn path_forms_resolve_and_verify_or_are_refused() {
    let (gw, _sim, sa) = gw_and_sim("", "");
    let body = format!("u=admin&user_id=123&hash={H_123}");
    for p in [
        "/billing/api/user_details_get/",
        "//billing//api//user_details_get",
        "/billing/api/user%5Fdetails_get",
        "/billing/api/user_details_get.xml",
        "/billing/api/user_details_get.json",
    ] {
        let r = gw.post(p, &body);
        assert!(r.text().contains("client123"), "{p}: {}", r.text());
    }
    let paths: Vec<String> = sim_seen(sa)
        .iter()
        .map(|s| s["path"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/billing/api/user_details_get",
            "/billing/api/user_details_get",
            "/billing/api/user_details_get",
            "/billing/api/user_details_get.xml",
            "/billing/api/user_details_get.json"
        ]
    );
    sim_reset(sa);
    for p in [
        "/billing/api/../api/user_details_get",
        "/billing/api/%2e%2e/api/user_details_get",
        "/billing/api%2Fuser_details_get",
        "/billing/api/user_details_get%2F..",
        "/billing/api/user_details_get/1/2",
        "/billing/api/user_details_get.a.b",
        "/billing/api/user_details_get/5",
        "/billing/api/USER_DETAILS_GET",
        "/billing/api/",
    ] {
        let r = gw.post(p, &body);
        assert!(r.text().contains("<error>"), "{p}: {}", r.text());
    }
    // `/<id>` is Rails' params[:id], routed by MOR only under simple_balance:
    // a different id elsewhere is refused.
    let r = gw.post("/billing/api/simple_balance/johnuniq", "id=7");
    assert!(r.text().contains("Bad request"), "{}", r.text());
    assert!(sim_seen(sa).is_empty(), "nothing unverified was forwarded");
    // card_group_get hashes id (the global order): the id sent is verified.
    let h5 = sha1_hex("5456789");
    let r = gw.post("/billing/api/card_group_get", &format!("id=6&hash={h5}"));
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    let r = gw.post("/billing/api/card_group_get", &format!("id=5&hash={h5}"));
    assert!(!r.text().contains("Incorrect hash"), "{}", r.text());
    assert_eq!(sim_seen(sa)[0]["path"], "/billing/api/card_group_get");
}

#[test]
fn legacy_aliases_rewritten_before_forwarding() {
    let (gw, _sim, sa) = gw_and_sim("", "[api.aliases]\nmy_details = \"user_details_get\"\n");
    let r = gw.post(
        "/billing/api/user_details",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert!(r.text().contains("client123"));
    gw.post(
        "/billing/api/user_update_api",
        &format!("u=admin&user_id=123&u15=1&hash={H_UPD}"),
    );
    gw.post(
        "/billing/api/user_calls",
        &format!("u=admin&s_user=123&hash={H_123}"),
    );
    gw.send(&get_post_query(&format!(
        "/billing/api/my_details?u=admin&user_id=123&hash={H_123}"
    )));
    let seen = sim_seen(sa);
    let paths: Vec<&str> = seen
        .iter()
        .map(|s| s["path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "/billing/api/user_details_get",
            "/billing/api/user_details_update",
            "/billing/api/user_calls_get",
            "/billing/api/user_details_get"
        ]
    );
    assert_eq!(
        seen[3]["query"],
        format!("u=admin&user_id=123&hash={H_123}").as_str()
    );
    let m = gw.metrics_text();
    assert!(
        m.contains(r#"mor_gateway_alias_rewrites_total{alias="user_details"} 1"#),
        "{m}"
    );
}

#[test]
fn unknown_methods_by_policy_and_other_paths() {
    let (gw, _sim, sa) = gw_and_sim("", "");
    // Unknown method: verified by MOR's global order (user_id first).
    let r = gw.post(
        "/billing/api/brand_new_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert!(!r.text().contains("Incorrect hash"), "{}", r.text());
    let r = gw.post("/billing/api/brand_new_get", "u=admin&user_id=123&hash=00");
    assert_eq!(r.text(), mor_error("Incorrect hash"));
    assert_eq!(sim_seen(sa).len(), 1);
    let r = gw.post("/billing/callc/main", "");
    assert_eq!(r.text(), mor_error("Not found"));
    let r = gw.post("/billing/api/v2/calls", "");
    assert_eq!(r.text(), mor_error("Not found"));

    let (gw2, _s2, _a2) = gw_and_sim("", "[api]\nunknown_methods = \"refuse\"\n");
    let r = gw2.post(
        "/billing/api/brand_new_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert_eq!(r.text(), mor_error("Unknown API method"));
}

#[test]
fn reseller_key_signs_its_users_only() {
    let tables =
        "[[resellers]]\nname = \"res1\"\nkey_env = \"GW_RESELLER_KEY\"\nusers = [\"ruser\"]\n";
    let (gw, _sim, _sa) = gw_and_sim("", tables);
    let h = sha1_hex("5resellerkey");
    let r = gw.post(
        "/billing/api/user_details_get",
        &format!("u=ruser&user_id=5&hash={h}"),
    );
    assert!(
        r.text().contains("<username>ruser</username>"),
        "{}",
        r.text()
    );
    let r = gw.post(
        "/billing/api/user_details_get",
        &format!("u=john&user_id=5&hash={h}"),
    );
    assert_eq!(r.text(), mor_error("Incorrect hash"));
}

#[test]
fn forwarding_headers_body_limit_and_large_bodies() {
    let (gw, _sim, sa) = gw_and_sim("", "[api]\nmax_body_bytes = 200000\n");
    let raw = format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: mor\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\nu=admin&user_id=123&hash={H_123}",
        format!("u=admin&user_id=123&hash={H_123}").len()
    );
    gw.send(&raw);
    let seen = sim_seen(sa);
    // The edge replaces a client-supplied (spoofable) X-Forwarded-For.
    assert_eq!(seen[0]["x_forwarded_for"], "127.0.0.1");
    assert_eq!(seen[0]["x_real_ip"], "127.0.0.1");
    let behind_lb = start_gateway(
        &body_for(&[sa], "", "")
            .replace("[upstream]\n", "[upstream]\nx_forwarded_for = \"append\"\n"),
    );
    behind_lb.send(&raw);
    assert_eq!(sim_seen(sa)[1]["x_forwarded_for"], "203.0.113.9, 127.0.0.1");

    // A verified body larger than pingora's 64 KiB replay buffer still
    // reaches MOR whole and unchanged.
    sim_reset(sa);
    let big = format!(
        "u=admin&user_id=123&hash={H_123}&comment={}",
        "x".repeat(150_000)
    );
    let r = gw.post("/billing/api/user_details_get", &big);
    assert!(
        r.text().contains("client123"),
        "{}",
        &r.text()[..r.text().len().min(300)]
    );
    let seen = sim_seen(sa);
    assert_eq!(seen[0]["body"].as_str().map(str::len), Some(big.len()));

    // Over the limit: 413, by declared length or by chunked stream.
    let huge = format!("u=admin&user_id=123&hash={H_123}&c={}", "y".repeat(200_001));
    let r = gw.post("/billing/api/user_details_get", &huge);
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), mor_error("Request body too large"));
    let chunk = "z".repeat(100_000);
    let chunked = format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len(),
        chunk.len()
    );
    let r = gw.send(&chunked);
    assert_eq!(r.status, 413);
    assert_eq!(sim_seen(sa).len(), 1);
}

#[test]
fn keep_alive_client_connection_serves_several_calls() {
    use std::io::{Read, Write};
    let (gw, _sim, sa) = gw_and_sim("", "");
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let body = format!("u=admin&user_id=123&hash={H_123}");
    for _ in 0..3 {
        let req = format!(
            "POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed early");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(r) = parse(&buf) {
                let len: usize = r
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if r.body.len() >= len {
                    assert!(r.text().contains("client123"));
                    break;
                }
            }
        }
    }
    assert_eq!(sim_seen(sa).len(), 3);
}

#[test]
fn upstream_down_answers_502_within_connect_timeout() {
    let dead = addr(free_port());
    let gw = start_gateway(&body_for(&[dead], "", ""));
    let t = std::time::Instant::now();
    let r = gw.post(
        "/billing/api/user_details_get",
        &format!("u=admin&user_id=123&hash={H_123}"),
    );
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), mor_error("MOR server unavailable"));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        t.elapsed()
    );
    let m = gw.metrics_text();
    assert!(
        m.contains("mor_gateway_upstream_errors_total{kind=\"connect\""),
        "{m}"
    );
}

#[test]
fn slow_upstream_answers_504_after_read_timeout() {
    let (gw, _sim, _sa) = gw_and_sim("", "");
    let body = format!("u=admin&user_id=123&hash={H_123}");
    let raw = format!(
        "POST /billing/api/user_details_get HTTP/1.1\r\nHost: m\r\nX-Sim-Delay-Ms: 5000\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let t = std::time::Instant::now();
    let r = gw.send(&raw);
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), mor_error("MOR server timed out"));
    assert!(t.elapsed() < std::time::Duration::from_millis(4900));
}

#[test]
fn several_upstreams_round_robin_and_skip_a_dead_one() {
    let (_s1, a1) = start_sim(KEY, &[]);
    let (_s2, a2) = start_sim(KEY, &[]);
    let dead = addr(free_port());
    let gw = start_gateway(&body_for(&[a1, a2, dead], "", ""));
    let body = format!("u=admin&user_id=123&hash={H_123}");
    for _ in 0..9 {
        let r = gw.post("/billing/api/user_details_get", &body);
        assert!(r.text().contains("client123"), "{}", r.text());
    }
    let (n1, n2) = (sim_seen(a1).len(), sim_seen(a2).len());
    assert_eq!(n1 + n2, 9, "every call answered by a live upstream");
    assert!(n1 >= 3 && n2 >= 3, "spread: {n1} / {n2}");
}
