//! The simulator's HTTP app: routing, the test hooks, the answers.
//!
//! A call goes: route (`<prefix>/<name>[.<format>]`, or
//! `<prefix>/simple_balance/<id>[.<format>]`; aliases resolved; anything
//! else 404), Rails params (400 if they do not parse), then
//! [`crate::rules::Rules::decide`] (Allow API, Allow GET API, caller,
//! owner's key, hash), then the action over a small in-memory dataset
//! ([`crate::data`]). Error documents use MOR's envelopes per action;
//! success documents are illustrative (the gateway forwards bytes
//! unchanged).
//!
//! Test hooks: `GET /_sim/requests` lists what it received (JSON),
//! `POST /_sim/reset` clears that list, and a request header
//! `X-Sim-Delay-Ms: N` delays the answer (timeout tests), `X-Sim-Status: N`
//! answers with that status and no body. `POST /_sim/sick?status=N` makes
//! every API call answer N (a MOR whose web server is up and whose Rails is
//! not; health tests), `status=0` makes it well again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{header, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::data::{Answer, Data};
use crate::rails::{unescape_path, Params};
use crate::rules::{Envelope, Kind, Policy, Rules, Verdict, Version};
use crate::xml::{doc, error_doc};
use crate::{db, rails, xml};

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
    /// Resellers' own switches: (username, Allow API, Disable hash checking).
    pub reseller_switches: Vec<(String, bool, bool)>,
    /// Which MOR where X8 and the newer wiki pages disagree.
    pub version: Version,
    /// MOR's database (`mysql://user:password@host:port/db`): the callers
    /// and API settings are read from it for every call instead of the
    /// fields above.
    pub db_url: Option<String>,
    /// The text of `system_version_get`'s `<version>` (None: the
    /// simulator's own name).
    pub version_text: Option<String>,
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
            reseller_switches: Vec::new(),
            version: Version::Current,
            db_url: None,
            version_text: None,
        }
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
    /// Every header as received, names lower-case, in order.
    pub headers: Vec<(String, String)>,
}

/// The simulator app.
pub struct Simulator {
    settings: SimSettings,
    rules: Rules,
    db: Option<db::SimDb>,
    data: Mutex<Data>,
    seen: Mutex<VecDeque<Seen>>,
    /// Set by `/_sim/sick`: every API call answers this status (0: none).
    sick: std::sync::atomic::AtomicU16,
}

const SEEN_KEEP: usize = 1000;

/// The `User-Agent` of the gateway's health probes, which `/_sim/requests`
/// does not list.
pub const PROBE_AGENT: &str = "mor-gateway health check";

/// The document `fixed_reply` answers.
const FIXED_REPLY: &str =
    "<page><status>ok</status><user_id>123</user_id><balance>55.0</balance></page>";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn respond(status: u16, content_type: &str, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body.into_bytes())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn xml_response(status: u16, body: String) -> Response<Vec<u8>> {
    respond(status, xml::CONTENT_TYPE, body)
}

fn error_response(status: u16, envelope: Envelope, msg: &str) -> Response<Vec<u8>> {
    xml_response(status, error_doc(envelope, msg))
}

fn not_found() -> Response<Vec<u8>> {
    error_response(404, Envelope::Status, "Not found")
}

/// A routed API path: the route name and the path's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Action name or alias, as in the path (decoded).
    pub name: String,
    /// `/<id>` (MOR's generic route; of the aliases only after
    /// `simple_balance`).
    pub id: Option<String>,
    /// `.<format>`.
    pub format: Option<String>,
}

/// Splits `x.fmt` like Rails' `:segment(.:format)` (neither part may contain
/// a `.`; both non-empty). Pieces are percent-decoded.
fn split_format(seg: &str) -> Option<(String, Option<String>)> {
    let (name, format) = match seg.split_once('.') {
        Some((_, f)) if f.is_empty() || f.contains('.') => return None,
        Some((n, f)) => (n, Some(unescape_path(f))),
        None => (seg, None),
    };
    (!name.is_empty()).then(|| (unescape_path(name), format))
}

/// MOR's API routes under `prefix`: `/<name>[.<fmt>]` and
/// `/<name>/<id>[.<fmt>]` (the generic route; which names take an id is
/// [`Simulator`]'s to say); one trailing `/` is ignored (Rails normalises it
/// away). `None`: no route (404).
pub fn route(path: &str, prefix: &str) -> Option<Target> {
    let rest = path
        .strip_prefix(prefix.trim_end_matches('/'))?
        .strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        [one] => {
            let (name, format) = split_format(one)?;
            Some(Target {
                name,
                id: None,
                format,
            })
        }
        [first, id] if !first.contains('.') => {
            let (id, format) = split_format(id)?;
            Some(Target {
                name: unescape_path(first),
                id: Some(id),
                format,
            })
        }
        _ => None,
    }
}

impl Simulator {
    /// A simulator with the seed dataset.
    #[allow(
        clippy::expect_used,
        reason = "the facts are embedded at build time and unit-tested; start-up only"
    )]
    pub fn new(settings: SimSettings) -> Simulator {
        let rules = Rules::embedded_for(settings.version)
            .expect("the embedded facts are valid (unit-tested)");
        let db = settings
            .db_url
            .as_deref()
            .and_then(|u| match db::SimDb::new(u) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!("simulator: bad database URL: {e}");
                    None
                }
            });
        Simulator {
            settings,
            rules,
            db,
            data: Mutex::new(Data::seed(now_secs())),
            seen: Mutex::new(VecDeque::new()),
            sick: std::sync::atomic::AtomicU16::new(0),
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
        if path == "/_sim/sick" {
            let status = query
                .and_then(|q| q.strip_prefix("status="))
                .and_then(|v| v.parse::<u16>().ok())
                .filter(|s| *s == 0 || (200..600).contains(s));
            let Some(status) = status else {
                return error_response(400, Envelope::Status, "status=0 or 200-599");
            };
            self.sick
                .store(status, std::sync::atomic::Ordering::Relaxed);
            return xml_response(200, doc("<status>ok</status>"));
        }
        if path == "/_sim/reset" {
            if let Ok(mut q) = self.seen.lock() {
                q.clear();
            }
            return xml_response(200, doc("<status>ok</status>"));
        }
        let s = &self.settings;
        let prepared = match self.prepare(method, path, query, content_type, body) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let policy = Policy {
            admin_key: &s.key,
            resellers: &s.resellers,
            allow_api: s.allow_api,
            allow_get: s.allow_get,
            check_hash: s.check_hash,
            reseller_switches: &s.reseller_switches,
        };
        self.answer(&prepared, &policy, None)
    }

    /// Routes and parses a call; `Err` is the answer (404, 400, test hooks).
    fn prepare(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Prepared, Box<Response<Vec<u8>>>> {
        let sick = self.sick.load(std::sync::atomic::Ordering::Relaxed);
        if sick != 0 {
            return Err(Box::new(error_response(
                sick,
                Envelope::Status,
                "Internal error",
            )));
        }
        let s = &self.settings;
        let target = route(path, &s.prefix).ok_or_else(|| Box::new(not_found()))?;
        if s.fixed_reply {
            return Err(Box::new(xml_response(200, doc(FIXED_REPLY))));
        }
        let action = self
            .rules
            .resolve(&target.name)
            .ok_or_else(|| Box::new(not_found()))?;
        // A legacy alias followed by /<id> reaches no action, except
        // simple_balance.
        if target.id.is_some()
            && !self.rules.is_action(&target.name)
            && target.name != "simple_balance"
        {
            return Err(Box::new(not_found()));
        }
        let mut path_params = Vec::new();
        if let Some(id) = &target.id {
            path_params.push(("id", id.as_str()));
        }
        if let Some(f) = &target.format {
            path_params.push(("format", f.as_str()));
        }
        let params = Params::from_request(method, query, content_type, body, &path_params)
            .map_err(|_| Box::new(error_response(400, Envelope::Status, "Bad request")))?;
        Ok(Prepared {
            action: action.to_string(),
            method: method.to_string(),
            params,
        })
    }

    /// Decides and answers a prepared call with these settings (and, with
    /// a database, the caller it found).
    fn answer(
        &self,
        p: &Prepared,
        policy: &Policy<'_>,
        db: Option<&db::Auth>,
    ) -> Response<Vec<u8>> {
        let action = p.action.as_str();
        let envelope = self.rules.envelope(action);
        let Ok(mut data) = self.data.lock() else {
            return error_response(500, envelope, "Internal error");
        };
        let verdict = match db {
            Some(auth) => self
                .rules
                .decide(action, &p.method, &p.params, policy, auth),
            None => self
                .rules
                .decide(action, &p.method, &p.params, policy, &*data),
        };
        match verdict {
            Verdict::Refuse(msg) => error_response(200, envelope, msg),
            Verdict::Serve => {
                let kind = self.rules.kind(action);
                if kind == Kind::BalanceOverHttp && db.is_some_and(|a| !a.balance_over_http) {
                    return error_response(200, envelope, "Feature disabled");
                }
                if let (Some(v), "system_version_get") = (&self.settings.version_text, action) {
                    let v = quick_xml::escape::escape(v.as_str());
                    return xml_response(200, doc(&format!("<page><version>{v}</version></page>")));
                }
                match data.answer(action, kind, &p.params, now_secs()) {
                    Answer::Doc(body) => xml_response(200, doc(&body)),
                    Answer::Error(msg) => error_response(200, envelope, &msg),
                    Answer::Text(t) => respond(200, "text/plain; charset=utf-8", t),
                }
            }
        }
    }

    /// With a database: the caller and settings read from it, then
    /// [`Simulator::answer`].
    async fn handle_db(
        &self,
        db: &db::SimDb,
        method: &str,
        path: &str,
        query: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        if path.starts_with("/_sim/") {
            return self.handle(method, path, query, content_type, body);
        }
        let p = match self.prepare(method, path, query, content_type, body) {
            Ok(p) => p,
            Err(r) => return *r,
        };
        let by = self.rules.caller_by(&p.action);
        let value = p
            .params
            .get(by.param())
            .and_then(rails::Value::to_s)
            .map(|v| v.into_owned());
        let auth = match db.auth(by, value).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("simulator: database: {e}");
                return error_response(500, self.rules.envelope(&p.action), "Internal error");
            }
        };
        let policy = Policy {
            admin_key: &auth.admin_key,
            resellers: &auth.resellers,
            allow_api: auth.allow_api,
            allow_get: auth.allow_get,
            check_hash: auth.check_hash,
            reseller_switches: &auth.switches,
        };
        self.answer(&p, &policy, Some(&auth))
    }
}

/// A routed and parsed call.
struct Prepared {
    action: String,
    method: String,
    params: Params,
}

#[async_trait]
impl ServeHttp for Simulator {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > 8 * 1024 * 1024 {
                        return error_response(413, Envelope::Status, "Request body too large");
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => return error_response(400, Envelope::Status, "Bad request"),
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
        let forced = hv("x-sim-status").and_then(|v| v.parse::<u16>().ok());
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let content_type = hv("content-type");
        // The gateway's health probes are not calls it forwarded.
        let probe = hv("user-agent").is_some_and(|u| u == PROBE_AGENT);
        if !path.starts_with("/_sim/") && !probe {
            self.record(Seen {
                method: method.clone(),
                path: path.clone(),
                query: query.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
                x_forwarded_for: hv("x-forwarded-for"),
                x_real_ip: hv("x-real-ip"),
                content_type: content_type.clone(),
                headers: req
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
            });
        }
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms.min(120_000))).await;
        }
        // Test hook: answer with this status and no body (e.g. 101).
        if let Some(code) = forced {
            let mut r = Response::new(Vec::new());
            if let Ok(st) = http::StatusCode::from_u16(code) {
                *r.status_mut() = st;
            }
            return r;
        }
        match &self.db {
            Some(db) => {
                self.handle_db(
                    db,
                    &method,
                    &path,
                    query.as_deref(),
                    content_type.as_deref(),
                    &body,
                )
                .await
            }
            None => self.handle(
                &method,
                &path,
                query.as_deref(),
                content_type.as_deref(),
                &body,
            ),
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
