//! The simulator end to end through [`Simulator::handle`]. Hashes are
//! computed here with SHA1 directly from the documented strings.

use super::*;
use crate::rules;
use sha1::{Digest, Sha1};

const PROLOG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

fn sha(s: &str) -> String {
    hex::encode(Sha1::digest(s.as_bytes()))
}

fn sim() -> Simulator {
    Simulator::new(SimSettings::new(b"456789"))
}

fn with_reseller() -> Simulator {
    let mut st = SimSettings::new(b"456789");
    st.resellers = vec![("res1".into(), b"reskey".to_vec())];
    Simulator::new(st)
}

fn text(r: Response<Vec<u8>>) -> String {
    String::from_utf8(r.into_body()).unwrap()
}

fn post(s: &Simulator, name: &str, query: &str) -> String {
    text(s.handle(
        "POST",
        &format!("/billing/api/{name}"),
        Some(query),
        None,
        b"",
    ))
}

fn status_err(msg: &str) -> String {
    format!("{PROLOG}<status><error>{msg}</error></status>")
}

fn ok(action: &str) -> String {
    format!("{PROLOG}<page><status>ok</status><action>{action}</action></page>")
}

#[test]
fn seed_vector_answers_details() {
    let t = post(
        &sim(),
        "user_details_get",
        "u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
    );
    assert!(t.contains("<username>client123</username>"), "{t}");
}

#[test]
fn bad_hash_is_mor_error_with_xml_headers() {
    let r = sim().handle(
        "POST",
        "/billing/api/user_details_get",
        Some("u=admin&user_id=123&hash=00"),
        None,
        b"",
    );
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/xml; charset=utf-8"
    );
    assert_eq!(text(r), status_err("Incorrect hash"));
}

#[test]
fn upper_case_hex_refused() {
    let t = post(
        &sim(),
        "user_details_get",
        "u=admin&user_id=123&hash=F7C3BC1D808E04732ADF679965CCC34CA7AE3441",
    );
    assert_eq!(t, status_err("Incorrect hash"));
}

#[test]
fn update_then_get_reflects_change() {
    let s = sim();
    let t = post(
        &s,
        "user_details_update",
        "u=admin&user_id=123&u15=1&hash=0ab3ede4e93a55c38855a2cc9b9e169d35442c48",
    );
    assert!(t.contains("updated"), "{t}");
    let t = post(
        &s,
        "user_details_get",
        "u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
    );
    assert!(t.contains("<blocked>1</blocked>"), "{t}");
}

#[test]
fn user_calls_default_period_is_today() {
    let t = post(
        &sim(),
        "user_calls_get",
        "u=admin&s_user=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
    );
    assert!(t.contains("<total_calls>3</total_calls>"), "{t}");
}

#[test]
fn user_calls_filters() {
    let s = sim();
    // Global order: period_start, period_end, then s_user, s_call_type.
    let h = sha("099999999999123456789");
    let t = post(
        &s,
        "user_calls_get",
        &format!("u=admin&s_user=123&period_start=0&period_end=99999999999&hash={h}"),
    );
    assert!(t.contains("<total_calls>6</total_calls>"), "{t}");
    let h = sha("099999999999123answered456789");
    let t = post(
        &s,
        "user_calls_get",
        &format!(
            "u=admin&s_user=123&period_start=0&period_end=99999999999&s_call_type=answered&hash={h}"
        ),
    );
    assert!(t.contains("<total_calls>3</total_calls>"), "{t}");
    // s_user=all is not hashed.
    let h = sha("099999999999456789");
    let t = post(
        &s,
        "user_calls_get",
        &format!("u=admin&s_user=all&period_start=0&period_end=99999999999&hash={h}"),
    );
    assert!(t.contains("<total_calls>10</total_calls>"), "{t}");
}

#[test]
fn device_clis_key_only_hash() {
    let s = Simulator::new(SimSettings::new(b"secret"));
    assert_eq!(sha("secret"), "e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4");
    let t = post(
        &s,
        "device_clis_get",
        "u=admin&devices_id=6&users_id=3&hash=e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4",
    );
    assert!(t.contains("<cli>37060000001</cli>"), "{t}");
}

#[test]
fn filters_through_the_server() {
    let s = sim();
    // user_id=007 is hashed as 7; block=1 is not hashed.
    let h = sha("7456789");
    let t = post(
        &s,
        "user_details_get",
        &format!("u=admin&user_id=007&block=1&hash={h}"),
    );
    assert!(t.contains("User was not found"), "authenticated: {t}");
    // users: some line matches.
    let h = sha("x\nall456789");
    let t = post(
        &s,
        "users_get_x",
        &format!("u=admin&users=x%0Aall&hash={h}"),
    );
    assert_eq!(t, status_err("Not found"));
    let t = post(
        &s,
        "invoices_get",
        &format!("u=admin&users=x%0Aall&hash={h}"),
    );
    assert_eq!(t, ok("invoices_get"));
}

#[test]
fn json_bodies_keep_types() {
    let s = sim();
    let call = |body: &str| {
        text(s.handle(
            "POST",
            "/billing/api/invoices_get",
            None,
            Some("application/json; charset=utf-8"),
            body.as_bytes(),
        ))
    };
    // false/null left out, true hashed "true", 5.0 hashed "5.0"; user_id 123.
    let h = sha("123true5.0456789");
    let t = call(&format!(
        r#"{{"u":"admin","user_id":123,"u0":false,"u1":null,"u2":true,"credit":5.0,"hash":"{h}"}}"#
    ));
    assert_eq!(t, ok("invoices_get"));
    // A list where a value is hashed never matches.
    let h = sha("456789");
    let t = call(&format!(r#"{{"u":"admin","email":["a"],"hash":"{h}"}}"#));
    assert_eq!(t, status_err("Incorrect hash"));
    // Invalid JSON: 400.
    let r = s.handle(
        "POST",
        "/billing/api/invoices_get",
        None,
        Some("application/json"),
        b"{",
    );
    assert_eq!(r.status(), 400);
}

#[test]
fn own_lists() {
    let s = Simulator::new(SimSettings::new(b"secret"));
    assert_eq!(
        sha("adminadmin1secret"),
        "c420ef706a02e6449994b7575b25ef5f74cc722b"
    );
    let t = post(
        &s,
        "users_get",
        "u=admin&p=admin1&test=1&hash=c420ef706a02e6449994b7575b25ef5f74cc722b",
    );
    assert_eq!(t, ok("users_get"));
    // voucher_use: only voucher_number, raw (no integer normalisation).
    let h = sha("007secret");
    let t = post(
        &s,
        "voucher_use",
        &format!("u=admin&voucher_number=007&user_id=5&hash={h}"),
    );
    assert_eq!(t, ok("voucher_use"));
    // quickstats_get with u=admin hashes nothing; with another u, u.
    let t = post(
        &s,
        "quickstats_get",
        &format!("u=admin&hash={}", sha("secret")),
    );
    assert_eq!(t, ok("quickstats_get"));
    let t = post(
        &s,
        "quickstats_get",
        &format!("u=john&hash={}", sha("secret")),
    );
    assert_eq!(t, status_err("Incorrect hash"));
    let t = post(
        &s,
        "quickstats_get",
        &format!("u=john&hash={}", sha("johnsecret")),
    );
    assert_eq!(t, ok("quickstats_get"));
}

#[test]
fn owner_keys() {
    let s = with_reseller();
    let call = |u: &str, key: &str| {
        post(
            &s,
            "user_details_get",
            &format!("u={u}&user_id=5&hash={}", sha(&format!("5{key}"))),
        )
    };
    assert_eq!(call("ruser", "456789"), status_err("Incorrect hash"));
    assert!(call("ruser", "reskey").contains("<username>ruser</username>"));
    assert!(call("res1", "reskey").contains("<username>ruser</username>"));
    assert!(call("res1", "456789").contains("<username>ruser</username>"));
    assert!(call("acc1", "456789").contains("<username>ruser</username>"));
    assert_eq!(call("john", "reskey"), status_err("Incorrect hash"));
    assert_eq!(call("nobody", "456789"), status_err("Access Denied"));
    // Without resellers configured, ruser is the admin's.
    let t = post(
        &sim(),
        "user_details_get",
        &format!("u=ruser&user_id=5&hash={}", sha("5456789")),
    );
    assert!(t.contains("<username>ruser</username>"), "{t}");
}

#[test]
fn rails_params_merge() {
    let s = sim();
    let h = sha("123456789");
    // The query wins over the body.
    let t = text(s.handle(
        "POST",
        "/billing/api/user_details_get",
        Some(&format!("u=admin&user_id=123&hash={h}")),
        Some("application/x-www-form-urlencoded"),
        b"user_id=2",
    ));
    assert!(t.contains("<username>client123</username>"), "{t}");
    // The last duplicate wins, and `;` separates.
    let t = post(
        &s,
        "user_details_get",
        &format!("u=admin;user_id=2;user_id=123&hash=x&hash={h}"),
    );
    assert!(t.contains("<username>client123</username>"), "{t}");
    // A GET body is ignored without a form Content-Type.
    let t = text(s.handle(
        "GET",
        "/billing/api/user_details_get",
        Some("u=admin&user_id=123"),
        None,
        format!("hash={h}").as_bytes(),
    ));
    assert_eq!(t, status_err("Incorrect hash"));
    // Invalid escapes: 400.
    let r = s.handle(
        "POST",
        "/billing/api/user_details_get",
        Some("u=admin&user_id=%G1"),
        None,
        b"",
    );
    assert_eq!(
        (r.status().as_u16(), text(r)),
        (400, status_err("Bad request"))
    );
}

#[test]
fn policies_answer_mor_errors() {
    let mut st = SimSettings::new(b"k");
    st.allow_get = false;
    let s = Simulator::new(st.clone());
    let get = |s: &Simulator, name: &str, q: &str| {
        text(s.handle("GET", &format!("/billing/api/{name}"), Some(q), None, b""))
    };
    assert_eq!(
        get(&s, "user_details_get", "u=admin"),
        status_err("GET Requests are disabled")
    );
    assert_eq!(get(&s, "get_otp", ""), ok("get_otp"));
    assert_eq!(get(&s, "user_simple_balance_get", "id=annauniq"), "40.0000");
    st.allow_api = false;
    let s = Simulator::new(st);
    assert_eq!(
        post(&s, "user_details_get", ""),
        status_err("API Requests are disabled")
    );
    assert_eq!(
        post(&s, "user_login", "u=john&p=john1"),
        status_err("API Requests are disabled")
    );
    assert_eq!(
        get(&s, "invoice_xlsx_generate", ""),
        ok("invoice_xlsx_generate")
    );
}

#[test]
fn no_hash_groups() {
    let s = sim();
    assert_eq!(
        post(&s, "user_login", "u=john&p=john1"),
        format!(
            "{PROLOG}<action><name>login</name><status>ok</status><user_id>2</user_id></action>"
        )
    );
    assert_eq!(
        post(&s, "login", "u=john&p=bad"),
        format!("{PROLOG}<action><name>login</name><status>failed</status></action>")
    );
    assert_eq!(
        post(&s, "invoice_xlsx_generate", ""),
        ok("invoice_xlsx_generate")
    );
    let t = post(&s, "user_devices", "u=client123");
    assert!(t.contains("<secret>client123_secret</secret>"), "{t}");
    assert_eq!(
        post(&s, "user_devices", "u=ghost"),
        status_err("Access Denied")
    );
    assert_eq!(
        post(&s, "personal_payments", "u=anna"),
        ok("personal_payments")
    );
    for open in ["get_otp", "verify_otp", "check_rs_user_count"] {
        assert_eq!(post(&s, open, ""), ok(open));
    }
    assert_eq!(
        post(&s, "user_balance_get_by_psw", "id=john_secret"),
        "12.5000"
    );
    assert_eq!(
        post(&s, "user_balance_get_by_username", "id=nobody"),
        status_err("User was not found")
    );
}

#[test]
fn routes_and_aliases() {
    let s = sim();
    let h = sha("123456789");
    let t = post(&s, "user_details", &format!("u=admin&user_id=123&hash={h}"));
    assert!(t.contains("<username>client123</username>"), "{t}");
    let t = post(
        &s,
        "user_details.xml",
        &format!("u=admin&user_id=123&hash={h}"),
    );
    assert!(t.contains("<username>client123</username>"), "{t}");
    assert_eq!(post(&s, "ma_activate", ""), ok("monitoring_addon_activate"));
    assert_eq!(
        post(
            &s,
            "get_version.json",
            &format!("u=admin&hash={}", sha("456789"))
        ),
        format!("{PROLOG}<page><version>MOR simulator (mor-gateway)</version></page>")
    );
    // MOR's generic route: every action takes a /<id> (params id); a
    // legacy alias does not, except simple_balance.
    assert_eq!(
        text(s.handle(
            "GET",
            "/billing/api/user_simple_balance_get/client123uniq",
            None,
            None,
            b""
        )),
        "55.0000"
    );
    assert_eq!(
        text(s.handle(
            "GET",
            "/billing/api/user_balance_get_by_psw/anna_secret.xml",
            None,
            None,
            b""
        )),
        "40.0000"
    );
    assert_eq!(
        post(
            &s,
            "card_group_get/5",
            &format!("u=admin&hash={}", sha("5456789"))
        ),
        ok("card_group_get")
    );
    assert_eq!(
        post(
            &s,
            "card_group_get/5",
            &format!("u=admin&id=5&hash={}", sha("5456789"))
        ),
        ok("card_group_get")
    );
    assert_eq!(
        post(
            &s,
            "card_group_get/5",
            &format!("u=admin&hash={}", sha("6456789"))
        ),
        status_err("Incorrect hash")
    );
    for bad in [
        "no_such_method",
        "user_details/123",
        "show_calling_card_group/5",
        "no_such_method/5",
        "user_details_get.",
        "user_details_get.a.b",
        "v2/calls",
        "",
    ] {
        let r = s.handle("POST", &format!("/billing/api/{bad}"), None, None, b"");
        assert_eq!(r.status(), 404, "{bad}");
        assert_eq!(text(r), status_err("Not found"));
    }
    let r = s.handle("POST", "/billing/callc/main", None, None, b"");
    assert_eq!(r.status(), 404);
}

#[test]
fn simple_balance_path_id() {
    let s = sim();
    let get = |p: &str, q: Option<&str>| text(s.handle("GET", p, q, None, b""));
    assert_eq!(
        get("/billing/api/simple_balance/client123uniq", None),
        "55.0000"
    );
    assert_eq!(
        get("/billing/api/simple_balance/annauniq.xml", None),
        "40.0000"
    );
    // The path's id wins over the query's.
    assert_eq!(
        get(
            "/billing/api/simple_balance/annauniq",
            Some("id=client123uniq")
        ),
        "40.0000"
    );
    assert_eq!(
        get("/billing/api/simple_balance/nope", None),
        status_err("User was not found")
    );
    assert_eq!(
        get("/billing/api/user_simple_balance_get", Some("id=johnuniq")),
        "12.5000"
    );
}

#[test]
fn envelopes_per_action() {
    let s = sim();
    assert_eq!(
        post(&s, "did_create", "u=admin&did=1&hash=0"),
        format!("{PROLOG}<page><status><error>Incorrect hash</error></status></page>")
    );
    assert_eq!(
        post(&s, "did_close", "u=ghost"),
        format!("{PROLOG}<page><status><error>Access Denied</error></status></page>")
    );
    assert_eq!(
        post(&s, "rate", "u=admin&hash=0"),
        format!("{PROLOG}<page><error>Incorrect hash</error></page>")
    );
    assert_eq!(
        post(&s, "provider_rules_get", "u=admin&hash=0"),
        format!("{PROLOG}<page><error>Incorrect hash</error></page>")
    );
    // Current MOR's dids_get page prints <page><error>; MOR X8 answers at
    // the root.
    assert_eq!(
        post(&s, "dids_get", "u=admin&hash=0"),
        format!("{PROLOG}<page><error>Incorrect hash</error></page>")
    );
    let mut st = SimSettings::new(b"456789");
    st.version = rules::Version::X8;
    let x8 = Simulator::new(st);
    assert_eq!(
        post(&x8, "dids_get", "u=admin&hash=0"),
        status_err("Incorrect hash")
    );
}

#[test]
fn newer_methods_use_the_wiki_lists() {
    let s = with_reseller();
    // user_delete hashes user_id raw (no integer normalisation).
    let t = post(
        &s,
        "user_delete",
        &format!("u=admin&user_id=012&hash={}", sha("012456789")),
    );
    assert_eq!(t, ok("user_delete"));
    let t = post(
        &s,
        "user_delete",
        &format!("u=admin&user_id=012&hash={}", sha("12456789")),
    );
    assert_eq!(t, status_err("Incorrect hash"));
    // tariffs_get hashes u; a reseller's user signs with the reseller's key.
    let t = post(
        &s,
        "tariffs_get",
        &format!("u=ruser&hash={}", sha("ruserreskey")),
    );
    assert_eq!(t, ok("tariffs_get"));
    let t = post(
        &s,
        "tariffs_get",
        &format!("u=ruser&hash={}", sha("ruser456789")),
    );
    assert_eq!(t, status_err("Incorrect hash"));
    // did_close: its envelope on success is not used; ok doc.
    let t = post(
        &s,
        "did_close",
        &format!("u=admin&dids_id=1&hash={}", sha("1456789")),
    );
    assert_eq!(t, ok("did_close"));
}

#[test]
fn hash_checking_off() {
    let mut st = SimSettings::new(b"k");
    st.check_hash = false;
    let s = Simulator::new(st);
    assert_eq!(post(&s, "devices_get", "u=admin"), ok("devices_get"));
    assert_eq!(
        post(&s, "devices_get", "u=ghost"),
        status_err("Access Denied")
    );
}

#[test]
fn fixed_reply_and_hooks() {
    let mut st = SimSettings::new(b"k");
    st.fixed_reply = true;
    let s = Simulator::new(st);
    assert_eq!(
        post(&s, "user_details_get", ""),
        format!("{PROLOG}{FIXED_REPLY}")
    );
    let r = s.handle("GET", "/_sim/requests", None, None, b"");
    assert_eq!(text(r), "[]");
    let r = s.handle("POST", "/_sim/reset", None, None, b"");
    assert_eq!(text(r), format!("{PROLOG}<status>ok</status>"));
}

#[test]
fn user_register_owner_by_uniquehash() {
    let s = with_reseller();
    // id = res1's uniquehash: signed with res1's key (id, username hashed).
    let h = sha("res1uniqnewbiereskey");
    let t = post(
        &s,
        "user_register",
        &format!("id=res1uniq&username=newbie&hash={h}"),
    );
    assert_eq!(t, ok("user_register"));
    let t = post(&s, "user_register", "id=nouniq&username=newbie&hash=0");
    assert_eq!(t, status_err("Access Denied"));
    let h = sha("newbie456789");
    let t = post(&s, "user_register", &format!("username=newbie&hash={h}"));
    assert_eq!(t, ok("user_register"));
}
