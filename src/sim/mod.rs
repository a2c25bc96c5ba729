//! An embedded MOR simulator: a real HTTP upstream for the demo, the tests
//! and the benchmark. It checks hashes the way MOR does (admin key, or a
//! reseller's key for its users), honours "Allow API" / "Allow GET API", and
//! answers user_details_get, user_details_update, user_calls_get and
//! device_clis_get over a small in-memory dataset. Error documents use MOR's
//! shapes; success documents are illustrative (the gateway forwards bytes
//! unchanged and never interprets them).
//!
//! Test hooks: `GET /_sim/requests` lists what it received (JSON),
//! `POST /_sim/reset` clears that list, and a request header
//! `X-Sim-Delay-Ms: N` delays the answer (timeout tests).

pub mod json;
pub mod rails;
pub mod rules;
pub mod xml;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::catalog::{Auth, Catalog, Product};
use crate::params::Params;
use crate::reply::{error_xml, XML_CONTENT_TYPE, XML_PROLOG};
use crate::route::{route, PathKind};
use crate::signature;

/// Simulator settings (MOR's API tab).
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// API secret key (admin).
    pub key: Vec<u8>,
    /// Resellers: (username, own key).
    pub resellers: Vec<(String, Vec<u8>)>,
    /// "Allow API".
    pub allow_api: bool,
    /// "Allow GET API".
    pub allow_get: bool,
    /// Hash checking on ("Disable hash checking" off).
    pub check_hash: bool,
    /// API prefix.
    pub prefix: String,
    /// Answer every API call with one fixed document (benchmarks).
    pub fixed_reply: bool,
}

impl SimSettings {
    /// Defaults matching the demo.
    pub fn new(key: &[u8]) -> SimSettings {
        SimSettings {
            key: key.to_vec(),
            resellers: Vec::new(),
            allow_api: true,
            allow_get: true,
            check_hash: true,
            prefix: "/billing/api".into(),
            fixed_reply: false,
        }
    }
}

#[derive(Debug, Clone)]
struct User {
    id: u64,
    username: String,
    first_name: String,
    last_name: String,
    balance: f64,
    blocked: bool,
    owner: Option<String>,
}

#[derive(Debug, Clone)]
struct Cli {
    id: u64,
    device_id: u64,
    user_id: u64,
    number: String,
    description: String,
}

#[derive(Debug, Clone)]
struct Call {
    id: u64,
    user_id: u64,
    device_id: u64,
    provider_id: u64,
    did: String,
    calldate: u64,
    src: String,
    dst: String,
    duration: u64,
    disposition: &'static str,
    price: f64,
}

struct Data {
    users: Vec<User>,
    clis: Vec<Cli>,
    calls: Vec<Call>,
}

fn user(
    id: u64,
    username: &str,
    first: &str,
    last: &str,
    balance: f64,
    owner: Option<&str>,
) -> User {
    User {
        id,
        username: username.into(),
        first_name: first.into(),
        last_name: last.into(),
        balance,
        blocked: false,
        owner: owner.map(str::to_string),
    }
}

fn start_of_day(now: u64) -> u64 {
    now - now % 86_400
}

impl Data {
    fn seed(now: u64) -> Data {
        let today = start_of_day(now);
        let users = vec![
            user(0, "admin", "System", "Admin", 0.0, None),
            user(2, "john", "John", "Smith", 12.5, None),
            user(3, "anna", "Anna", "Berg", 40.0, None),
            user(4, "res1", "Reseller", "One", 100.0, None),
            user(5, "ruser", "Rita", "User", 7.25, Some("res1")),
            user(123, "client123", "Carl", "Client", 55.0, None),
        ];
        let clis = vec![
            Cli {
                id: 1,
                device_id: 6,
                user_id: 3,
                number: "37060000001".into(),
                description: "office".into(),
            },
            Cli {
                id: 2,
                device_id: 6,
                user_id: 3,
                number: "37060000002".into(),
                description: "mobile".into(),
            },
            Cli {
                id: 3,
                device_id: 7,
                user_id: 123,
                number: "4420000123".into(),
                description: "main".into(),
            },
        ];
        let mut calls = Vec::new();
        let dispositions = ["ANSWERED", "ANSWERED", "NO ANSWER", "BUSY", "FAILED"];
        for i in 0..10u64 {
            // Half of the calls fall today (default period), half a week ago.
            let base = if i % 2 == 0 {
                today + 3600
            } else {
                today - 7 * 86_400
            };
            calls.push(Call {
                id: 100 + i,
                user_id: if i < 6 { 123 } else { 2 },
                device_id: if i < 6 { 7 } else { 8 },
                provider_id: 1 + i % 2,
                did: if i % 3 == 0 {
                    "37052000001".into()
                } else {
                    String::new()
                },
                calldate: base + i * 60,
                src: "4420000123".into(),
                dst: format!("3706{:07}", 1000 + i),
                duration: if dispositions[(i % 5) as usize] == "ANSWERED" {
                    30 + i * 7
                } else {
                    0
                },
                disposition: dispositions[(i % 5) as usize],
                price: if dispositions[(i % 5) as usize] == "ANSWERED" {
                    0.05 * (i + 1) as f64
                } else {
                    0.0
                },
            });
        }
        Data { users, clis, calls }
    }

    fn user_by(&self, id: Option<&str>, username: Option<&str>) -> Option<usize> {
        self.users.iter().position(|u| {
            id.map(|i| u.id.to_string() == i).unwrap_or(true)
                && username.map(|n| u.username == n).unwrap_or(true)
                && (id.is_some() || username.is_some())
        })
    }
}

/// One request as the simulator saw it (for tests).
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Raw query.
    pub query: Option<String>,
    /// Body as text (lossy).
    pub body: String,
    /// X-Forwarded-For.
    pub x_forwarded_for: Option<String>,
    /// X-Real-IP.
    pub x_real_ip: Option<String>,
    /// Content-Type.
    pub content_type: Option<String>,
}

/// The simulator app.
pub struct Simulator {
    settings: SimSettings,
    catalog: Catalog,
    data: Mutex<Data>,
    seen: Mutex<VecDeque<Seen>>,
}

const SEEN_KEEP: usize = 1000;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn el(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&quick_xml::escape::escape(text));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

fn doc(body: &str) -> String {
    format!("{XML_PROLOG}{body}")
}

fn xml_response(status: u16, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, XML_CONTENT_TYPE)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body.into_bytes())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn err(msg: &str) -> Response<Vec<u8>> {
    xml_response(200, error_xml(msg))
}

impl Simulator {
    /// A simulator with the seed dataset.
    pub fn new(settings: SimSettings) -> Simulator {
        let catalog = Catalog::parse(crate::catalog::EMBEDDED, Product::Mor)
            .expect("the embedded catalogue is valid (unit-tested)");
        Simulator {
            settings,
            catalog,
            data: Mutex::new(Data::seed(now_secs())),
            seen: Mutex::new(VecDeque::new()),
        }
    }

    /// What has been received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, s: Seen) {
        if let Ok(mut q) = self.seen.lock() {
            if q.len() >= SEEN_KEEP {
                q.pop_front();
            }
            q.push_back(s);
        }
    }

    /// Answers one request (pure apart from the dataset and the request log).
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        if path == "/_sim/requests" {
            let json = serde_json::to_vec(&self.seen()).unwrap_or_default();
            return Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .body(json)
                .unwrap_or_else(|_| Response::new(Vec::new()));
        }
        if path == "/_sim/reset" {
            if let Ok(mut q) = self.seen.lock() {
                q.clear();
            }
            return xml_response(200, doc("<status>ok</status>"));
        }
        let s = &self.settings;
        let api = match route(path, &s.prefix) {
            Ok(PathKind::Api(a)) => a,
            _ => return xml_response(404, doc("<error>Not found</error>")),
        };
        if s.fixed_reply {
            return xml_response(
                200,
                doc(
                    "<page><status>ok</status><user_id>123</user_id><balance>55.0</balance></page>",
                ),
            );
        }
        if !s.allow_api {
            return err("API Requests are disabled");
        }
        let get = method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD");
        if get && !s.allow_get {
            return err("GET Requests are disabled");
        }
        let found = match self.catalog.lookup(&api.method) {
            Some(f) => f,
            None => return err("Unknown method"),
        };
        let mut p = Params::new();
        let parsed = query
            .map(|q| p.add_form(q.as_bytes()))
            .unwrap_or(Ok(()))
            .and_then(|_| p.add_body(content_type, body, method.eq_ignore_ascii_case("POST")))
            // Rails' path parameters: `/<id>` and `.xml`.
            .and_then(|_| match &api.id {
                Some(id) => p.insert("id", crate::params::Value::Scalar(id.clone())),
                None => Ok(()),
            })
            .and_then(|_| match &api.format {
                Some(f) => p.insert("format", crate::params::Value::Scalar(f.clone())),
                None => Ok(()),
            });
        if parsed.is_err() {
            return err("Bad request");
        }
        let v = |n: &str| p.scalar(n).ok().flatten();
        let u = v("u");
        if found.method.auth == Auth::Hash && s.check_hash {
            let given = v("hash").unwrap_or("");
            let order = &found.method.hash;
            let mut ok = signature::compute(order, v, &s.key).matches(given);
            let owner = u.and_then(|name| {
                self.data.lock().ok().and_then(|d| {
                    d.users
                        .iter()
                        .find(|x| x.username == name)
                        .and_then(|x| x.owner.clone().or_else(|| Some(x.username.clone())))
                })
            });
            for (res, key) in &s.resellers {
                if owner.as_deref() == Some(res.as_str()) {
                    ok |= signature::compute(order, v, key).matches(given);
                }
            }
            if !ok {
                return err("Incorrect hash");
            }
        }
        match found.method.name.as_str() {
            "user_details_get" => self.user_details_get(v("user_id"), v("username")),
            "user_details_update" => self.user_details_update(&p),
            "user_calls_get" => self.user_calls_get(&p),
            "device_clis_get" => self.device_clis_get(v("devices_id"), v("users_id")),
            "system_version_get" => xml_response(
                200,
                doc("<page><version>MOR simulator (mor-gateway)</version></page>"),
            ),
            _ => xml_response(200, doc("<page><status>ok</status></page>")),
        }
    }

    fn user_details_get(&self, id: Option<&str>, username: Option<&str>) -> Response<Vec<u8>> {
        let Ok(d) = self.data.lock() else {
            return err("Internal error");
        };
        let Some(i) = d.user_by(id, username) else {
            return err("User was not found");
        };
        let u = &d.users[i];
        let mut x = String::from("<page><details>");
        el(&mut x, "id", &u.id.to_string());
        el(&mut x, "username", &u.username);
        el(&mut x, "first_name", &u.first_name);
        el(&mut x, "last_name", &u.last_name);
        el(&mut x, "balance", &format!("{:.4}", u.balance));
        el(&mut x, "blocked", if u.blocked { "1" } else { "0" });
        x.push_str("</details></page>");
        xml_response(200, doc(&x))
    }

    fn user_details_update(&self, p: &Params) -> Response<Vec<u8>> {
        let v = |n: &str| p.scalar(n).ok().flatten();
        let Ok(mut d) = self.data.lock() else {
            return err("Internal error");
        };
        let Some(i) = d.user_by(v("user_id"), None) else {
            return err("User was not found");
        };
        let u = &mut d.users[i];
        if let Some(b) = v("u15") {
            u.blocked = b == "1";
        }
        if let Some(f) = v("u23") {
            u.first_name = f.to_string();
        }
        if let Some(l) = v("u17") {
            u.last_name = l.to_string();
        }
        if let Some(n) = v("u9") {
            u.username = n.to_string();
        }
        xml_response(
            200,
            doc("<status><success>User details updated</success></status>"),
        )
    }

    fn user_calls_get(&self, p: &Params) -> Response<Vec<u8>> {
        let v = |n: &str| p.scalar(n).ok().flatten();
        let Ok(d) = self.data.lock() else {
            return err("Internal error");
        };
        let Some(s_user) = v("s_user") else {
            return err("User was not found");
        };
        let all = s_user == "all" || s_user.is_empty();
        if !all && d.user_by(Some(s_user), None).is_none() {
            return err("User was not found");
        }
        // MOR's defaults: the current day, 00:00:00 to 23:59:59.
        let now = now_secs();
        let num = |n: &str, dflt: u64| v(n).and_then(|s| s.parse::<u64>().ok()).unwrap_or(dflt);
        let start = num("period_start", start_of_day(now));
        let end = num("period_end", start_of_day(now) + 86_399);
        let call_type = v("s_call_type").unwrap_or("all").to_ascii_lowercase();
        let mut calls: Vec<&Call> = d
            .calls
            .iter()
            .filter(|c| all || c.user_id.to_string() == s_user)
            .filter(|c| c.calldate >= start && c.calldate <= end)
            .filter(|c| match call_type.as_str() {
                "answered" => c.disposition == "ANSWERED",
                "no_answer" => c.disposition == "NO ANSWER",
                "busy" => c.disposition == "BUSY",
                "failed" => c.disposition == "FAILED",
                "missed" => c.disposition != "ANSWERED",
                _ => true,
            })
            .filter(|c| v("s_device").is_none_or(|x| x == "all" || c.device_id.to_string() == x))
            .filter(|c| {
                v("s_provider").is_none_or(|x| x == "all" || c.provider_id.to_string() == x)
            })
            .filter(|c| v("s_did").is_none_or(|x| x == "all" || c.did == x))
            .filter(|c| v("s_destination").is_none_or(|x| c.dst.starts_with(x)))
            .filter(|c| v("only_did") != Some("1") || !c.did.is_empty())
            .collect();
        match v("order_by").unwrap_or("time") {
            "duration" => calls.sort_by_key(|c| c.duration),
            "price" => calls.sort_by(|a, b| a.price.total_cmp(&b.price)),
            _ => calls.sort_by_key(|c| c.calldate),
        }
        if v("order_desc") == Some("1") {
            calls.reverse();
        }
        let mut x = String::from("<page><calls_stat>");
        el(&mut x, "period_start", &start.to_string());
        el(&mut x, "period_end", &end.to_string());
        el(&mut x, "total_calls", &calls.len().to_string());
        x.push_str("<calls>");
        for c in calls {
            x.push_str("<call>");
            el(&mut x, "id", &c.id.to_string());
            el(&mut x, "calldate", &c.calldate.to_string());
            el(&mut x, "src", &c.src);
            el(&mut x, "dst", &c.dst);
            el(&mut x, "duration", &c.duration.to_string());
            el(&mut x, "disposition", c.disposition);
            el(&mut x, "device_id", &c.device_id.to_string());
            el(&mut x, "price", &format!("{:.4}", c.price));
            x.push_str("</call>");
        }
        x.push_str("</calls></calls_stat></page>");
        xml_response(200, doc(&x))
    }

    fn device_clis_get(
        &self,
        devices_id: Option<&str>,
        users_id: Option<&str>,
    ) -> Response<Vec<u8>> {
        let Ok(d) = self.data.lock() else {
            return err("Internal error");
        };
        if let Some(u) = users_id {
            if d.user_by(Some(u), None).is_none() {
                return err("User was not found");
            }
        }
        let clis: Vec<&Cli> = d
            .clis
            .iter()
            .filter(|c| devices_id.is_none_or(|x| c.device_id.to_string() == x))
            .filter(|c| users_id.is_none_or(|x| c.user_id.to_string() == x))
            .collect();
        if clis.is_empty() {
            return err(if devices_id.is_some() {
                "Device was not found"
            } else {
                "CLIs were not found"
            });
        }
        let mut x = String::from("<page><clis>");
        for c in clis {
            x.push_str("<cli>");
            el(&mut x, "id", &c.id.to_string());
            el(&mut x, "device_id", &c.device_id.to_string());
            el(&mut x, "user_id", &c.user_id.to_string());
            el(&mut x, "cli", &c.number);
            el(&mut x, "description", &c.description);
            x.push_str("</cli>");
        }
        x.push_str("</clis></page>");
        xml_response(200, doc(&x))
    }
}

#[async_trait]
impl ServeHttp for Simulator {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > 8 * 1024 * 1024 {
                        return xml_response(413, error_xml("Request body too large"));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return xml_response(400, error_xml("Bad request")),
            }
        }
        let req = session.req_header();
        let hv = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let delay = hv("x-sim-delay-ms").and_then(|v| v.parse::<u64>().ok());
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let content_type = hv("content-type");
        if !path.starts_with("/_sim/") {
            self.record(Seen {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
                x_forwarded_for: hv("x-forwarded-for"),
                x_real_ip: hv("x-real-ip"),
                content_type: content_type.clone(),
            });
        }
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
        }
        self.handle(
            &method,
            &path,
            query.as_deref(),
            content_type.as_deref(),
            &body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Simulator {
        Simulator::new(SimSettings::new(b"456789"))
    }

    fn text(r: Response<Vec<u8>>) -> String {
        String::from_utf8(r.into_body()).unwrap()
    }

    #[test]
    fn seed_vector_answers_details() {
        let t = text(sim().handle(
            "POST",
            "/billing/api/user_details_get",
            Some("u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
            None,
            b"",
        ));
        assert!(t.contains("<username>client123</username>"), "{t}");
    }

    #[test]
    fn bad_hash_is_mor_error() {
        let t = text(sim().handle(
            "POST",
            "/billing/api/user_details_get",
            Some("user_id=123&hash=00"),
            None,
            b"",
        ));
        assert_eq!(
            t,
            r#"<?xml version="1.0" encoding="UTF-8"?><status><error>Incorrect hash</error></status>"#
        );
    }

    #[test]
    fn update_then_get_reflects_change() {
        let s = sim();
        let t = text(s.handle(
            "POST",
            "/billing/api/user_details_update",
            Some("u=admin&user_id=123&u15=1&hash=0ab3ede4e93a55c38855a2cc9b9e169d35442c48"),
            None,
            b"",
        ));
        assert!(t.contains("updated"), "{t}");
        let t = text(s.handle(
            "POST",
            "/billing/api/user_details_get",
            Some("user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
            None,
            b"",
        ));
        assert!(t.contains("<blocked>1</blocked>"), "{t}");
    }

    #[test]
    fn user_calls_default_period_is_today() {
        let t = text(sim().handle(
            "POST",
            "/billing/api/user_calls_get",
            Some("s_user=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
            None,
            b"",
        ));
        assert!(t.contains("<total_calls>3</total_calls>"), "{t}");
    }

    #[test]
    fn user_calls_filters() {
        let s = sim();
        let key = b"456789";
        let call = |q: &[(&str, &str)]| {
            let h = signature::compute(
                &s.catalog.lookup("user_calls_get").unwrap().method.hash,
                |n| q.iter().find(|(k, _)| *k == n).map(|(_, v)| *v),
                key,
            );
            let mut qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
            qs.push(format!("hash={}", h.as_str()));
            text(s.handle(
                "POST",
                "/billing/api/user_calls_get",
                Some(&qs.join("&")),
                None,
                b"",
            ))
        };
        let t = call(&[
            ("s_user", "123"),
            ("period_start", "0"),
            ("period_end", "99999999999"),
        ]);
        assert!(t.contains("<total_calls>6</total_calls>"), "{t}");
        let t = call(&[
            ("s_user", "123"),
            ("period_start", "0"),
            ("period_end", "99999999999"),
            ("s_call_type", "answered"),
        ]);
        assert!(t.contains("<total_calls>3</total_calls>"), "{t}");
    }

    #[test]
    fn device_clis_key_only_hash() {
        let s = Simulator::new(SimSettings::new(b"secret"));
        let t = text(s.handle(
            "POST",
            "/billing/api/device_clis_get",
            Some("u=admin&devices_id=6&users_id=3&hash=e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4"),
            None,
            b"",
        ));
        assert!(t.contains("<cli>37060000001</cli>"), "{t}");
    }

    #[test]
    fn policies_answer_mor_errors() {
        let mut st = SimSettings::new(b"k");
        st.allow_get = false;
        let s = Simulator::new(st.clone());
        assert!(
            text(s.handle("GET", "/billing/api/user_details_get", None, None, b""))
                .contains("GET Requests are disabled")
        );
        st.allow_api = false;
        let s = Simulator::new(st);
        assert!(
            text(s.handle("POST", "/billing/api/user_details_get", None, None, b""))
                .contains("API Requests are disabled")
        );
    }
}
