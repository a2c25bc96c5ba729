//! The pure decision core: a request view in, a [`Verdict`] out. No I/O and
//! no state: the limit layers are questions ([`Question`]) the caller has
//! answered by a gate (local limiters or Redis) and hands back.
//!
//! The one route, the proxy's and every test's:
//! 1. [`admit`]: route, the global address lists ([`crate::core::access`])
//!    and the path policies (a call refused here costs no per-IP token); then [`Admission::question`] (the per-IP layer), its
//!    answer to [`Admission::conclude`], which also applies the HTTP method,
//!    the API policies and the method's own rule (refused actions die
//!    before their body is read);
//! 2. (the body, read by the caller);
//! 3. [`verify`]: parameter view → caller and owner → the owner's address
//!    lists → hash with the owner's key → the path to forward to;
//! 4. [`Pending::question`] (lockout, then user and method limits), its
//!    answer to [`Pending::conclude`]: the [`Verdict`].
//!
//! Each refusal by a layer ([`Guard`]) goes through the layer's mode
//! ([`Policy::rollout`]): an enforcing layer refuses; a reporting one notes
//! the would-be refusal in [`CallInfo::would_refuse`] and the call goes on
//! as if the layer had let it through. A first-stage layer whose mode some
//! owner's table sets waits for the caller (stage two) before it decides.

use std::net::IpAddr;

use crate::core::catalog::{Auth, Caller, Envelope, Method};
use crate::core::directory::{self, Directory, Lookup, UserId};
use crate::core::layers::{Guard, Modes, WouldRefuse};
use crate::core::limits::HashCheck;
use crate::core::limits::{Allowance, Answer, Gate, LimitSettings, LimitTrace, Question};
use crate::core::params::{ParamError, Params, Value};
use crate::core::policy::{PathPolicy, Policy, Undetermined, UnknownMethods};
use crate::core::reply::{Reason, Refusal};
use crate::core::route::{forward_path, route, ApiPath, PathKind, RouteError};
use crate::core::signature;
use http::uri::PathAndQuery;

/// What the core needs of a request before its body is read.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Raw query string (without `?`), if any.
    pub query: Option<&'a str>,
    /// `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// Client address.
    pub client_ip: IpAddr,
}

/// Who signed a verified call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// The admin (system) key.
    Admin,
    /// A reseller's (another owner's) own key (its username).
    Reseller(String),
    /// No hash was compared (an action without one, or a check skipped:
    /// [`Forward::skipped`]).
    Unchecked,
    /// Not an API call (pass-through path).
    PassThrough,
}

/// Facts about a call, known whether it is forwarded or refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallInfo {
    /// Canonical method name when catalogued.
    pub method: Option<String>,
    /// Requested name when it was a legacy alias.
    pub alias: Option<String>,
    /// Requested name when not catalogued.
    pub unknown: Option<String>,
    /// `u`, when given as a single value.
    pub user: Option<String>,
    /// Where MOR puts this action's error element.
    pub envelope: Envelope,
    /// The rate-limit layers that decided about the call.
    pub limits: LimitTrace,
    /// What reporting layers would have refused.
    pub would_refuse: WouldRefuse,
    /// How a hash that did not match was compared (for the refusal's debug
    /// line; set only then).
    pub mismatch: Option<Mismatch>,
}

/// How a hash that did not match was compared: never a value or a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// `global order`, `own list` or `candidate lists`.
    pub rule: &'static str,
    /// Parameters hashed (in the first list).
    pub parts: usize,
    /// Whose keys were tried (owner names).
    pub owners: Vec<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} over {} parameter(s), key(s) of {} tried",
            self.rule,
            self.parts,
            if self.owners.is_empty() {
                "nobody".to_string()
            } else {
                self.owners.join(", ")
            }
        )
    }
}

impl CallInfo {
    /// Bounded-cardinality label: the canonical name, or `other`.
    pub fn label(&self) -> &str {
        self.method.as_deref().unwrap_or("other")
    }
}

/// Why a call MOR hash-checks was forwarded without the gateway's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skipped {
    /// The caller's owner has hash checking off in MOR.
    HashCheckingOff,
    /// An uncatalogued action, with `api.unknown_methods = "unchecked"`.
    UnknownMethod,
    /// An action whose hash list is undetermined (`api.undetermined`).
    Undetermined,
}

impl Skipped {
    /// Every cause, for metric pre-registration.
    pub const ALL: [Skipped; 3] = [
        Skipped::HashCheckingOff,
        Skipped::UnknownMethod,
        Skipped::Undetermined,
    ];

    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Skipped::HashCheckingOff => "hash_checking_off",
            Skipped::UnknownMethod => "unknown_method",
            Skipped::Undetermined => "undetermined",
        }
    }
}

/// A forward decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Path and query to send upstream (alias rewritten, path canonical).
    pub path_and_query: PathAndQuery,
    /// Who signed.
    pub signer: Signer,
    /// Set when MOR checks a hash the gateway did not.
    pub skipped: Option<Skipped>,
    /// Tightest rate-limit allowance, for RateLimit-* headers.
    pub allowance: Option<Allowance>,
}

/// The core's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send upstream.
    Forward(Forward, CallInfo),
    /// Answer at the edge.
    Refuse(Refusal, CallInfo),
}

/// What passed the first stage: an API call with its method resolved once,
/// or a path forwarded unchanged. Its body is needed next ([`verify`]).
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The API path and the catalogue index of its method (None: not
    /// catalogued); None for a pass-through path (REST v2 or other paths,
    /// when configured).
    api: Option<(ApiPath, Option<usize>)>,
    info: CallInfo,
    /// The per-IP layer's allowance.
    allowance: Option<Allowance>,
    /// First-stage refusals whose layer's mode depends on the caller's
    /// owner, decided in stage two.
    deferred: Vec<(Guard, Refusal)>,
}

impl Admitted {
    /// What is known of the call before its body is read.
    pub fn info(&self) -> &CallInfo {
        &self.info
    }

    /// The first-stage refusals waiting for the caller's owner (their
    /// layer's mode is set per owner).
    pub fn waiting(&self) -> impl Iterator<Item = (Guard, &Refusal)> + '_ {
        self.deferred.iter().map(|(g, r)| (*g, r))
    }
}

/// A routed request waiting for the per-IP layer: ask
/// [`Admission::question`], hand the answer to [`Admission::conclude`].
#[derive(Debug, Clone)]
pub struct Admission {
    ip: IpAddr,
    /// The layers' modes before the caller is known.
    modes: Modes,
    /// What the first stage decides once the per-IP layer allows the call.
    next: Result<Admitted, Box<Rejected>>,
}

impl Admission {
    /// The per-IP layer's question.
    pub fn question(&self, limits: &LimitSettings) -> Question<'static> {
        limits.ip_question(self.ip, self.modes)
    }

    /// The first stage's outcome once the per-IP layer answered.
    pub fn conclude(self, answer: Answer) -> Result<Admitted, Box<Rejected>> {
        let Answer { outcome, trace, .. } = answer;
        let (info, next) = match self.next {
            Ok(mut a) => (std::mem::take(&mut a.info), Ok(a)),
            Err(r) => {
                let Rejected { refusal, info } = *r;
                (info, Err(refusal))
            }
        };
        // The per-IP layer is met first: its report goes first.
        let mut noted = WouldRefuse::default();
        if outcome.is_ok() && trace.iter().any(|(_, ok)| !ok) {
            noted.push(
                Guard::Quota(crate::core::limits::Layer::Ip),
                Reason::Limited,
            );
        }
        let info = CallInfo {
            limits: info.limits.then(trace),
            would_refuse: noted.then(info.would_refuse),
            ..info
        };
        match (outcome, next) {
            (Err(refusal), _) | (Ok(_), Err(refusal)) => Err(Box::new(Rejected { refusal, info })),
            (Ok(allowance), Ok(a)) => Ok(Admitted {
                info,
                allowance,
                ..a
            }),
        }
    }
}

/// A first-stage refusal with what is known of the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why, and how to answer.
    pub refusal: Refusal,
    /// What is known of the call.
    pub info: CallInfo,
}

fn route_refusal(e: RouteError) -> Refusal {
    let reason = match e {
        RouteError::Traversal
        | RouteError::EncodedSeparator
        | RouteError::BadEscape
        | RouteError::NotAbsolute => Reason::BadRequest,
        RouteError::BadName
        | RouteError::TooDeep
        | RouteError::BadFormat
        | RouteError::NoMethod => Reason::NotFound,
    };
    Refusal::with(reason, e.to_string())
}

/// Whether `method` is GET or HEAD: the calls MOR's "Allow GET API" governs.
fn is_get(method: &str) -> bool {
    method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD")
}

/// Stage one, before the body is read: route, the global address lists
/// and the path policies; what
/// follows the per-IP layer (HTTP method, API policies that do not depend
/// on the caller, the method's own rule) is decided here and applied by
/// [`Admission::conclude`]. A refusal carries what is known of the call.
pub fn admit(s: &Policy, dir: &Directory, head: &Head<'_>) -> Result<Admission, Box<Rejected>> {
    let kind = route(head.path, &s.prefix).map_err(|e| {
        Box::new(Rejected {
            refusal: route_refusal(e),
            info: CallInfo::default(),
        })
    })?;
    let found = match &kind {
        PathKind::Api(a) => s.catalog.lookup(&a.method),
        _ => None,
    };
    let info = match (&kind, found) {
        (PathKind::Api(_), Some(f)) => CallInfo {
            method: Some(f.method.name.clone()),
            alias: f.alias.map(str::to_string),
            envelope: f.method.envelope,
            ..CallInfo::default()
        },
        (PathKind::Api(a), None) => CallInfo {
            unknown: Some(a.method.clone()),
            ..CallInfo::default()
        },
        _ => CallInfo::default(),
    };
    // The global address lists: after routing (the refusal is in the
    // action's envelope), before the per-IP question and the body.
    if let Err(refusal) = s.access.screen(head.client_ip) {
        return Err(Box::new(Rejected { refusal, info }));
    }
    let policy = match &kind {
        PathKind::Api(_) => None,
        PathKind::RestV2 => Some(s.rest_v2),
        PathKind::Other => Some(s.other_paths),
    };
    if policy == Some(PathPolicy::Refuse) {
        return Err(Box::new(Rejected {
            refusal: Refusal::new(Reason::NotFound),
            info,
        }));
    }
    let modes = s.rollout.modes(info.label(), None);
    let next = match kind {
        PathKind::Api(api) => screen(s, dir, head, api, found, info, modes),
        _ => Ok(Admitted {
            api: None,
            info,
            allowance: None,
            deferred: Vec::new(),
        }),
    };
    Ok(Admission {
        ip: head.client_ip,
        modes,
        next,
    })
}

/// The first stage's refusals by a layer, through the layer's mode.
struct Layers<'a> {
    s: &'a Policy,
    modes: Modes,
    info: CallInfo,
    deferred: Vec<(Guard, Refusal)>,
}

impl Layers<'_> {
    /// `r` by layer `g`: refused now (Err), waiting for the caller's
    /// owner, or noted as reported.
    fn refuse(&mut self, g: Guard, r: Refusal) -> Result<(), Refusal> {
        if self.s.rollout.per_owner(g) {
            self.deferred.push((g, r));
        } else if self.modes.enforces(g) {
            return Err(r);
        } else {
            self.info.would_refuse.push(g, r.reason);
        }
        Ok(())
    }
}

/// The first stage's checks after the per-IP layer, for an API path.
fn screen(
    s: &Policy,
    dir: &Directory,
    head: &Head<'_>,
    api: ApiPath,
    found: Option<crate::core::catalog::Found<'_>>,
    info: CallInfo,
    modes: Modes,
) -> Result<Admitted, Box<Rejected>> {
    let mut layers = Layers {
        s,
        modes,
        info,
        deferred: Vec::new(),
    };
    match screen_checks(&mut layers, s, dir, head, &api, found) {
        Ok(()) => Ok(Admitted {
            api: Some((api, found.map(|f| f.index))),
            info: layers.info,
            allowance: None,
            deferred: layers.deferred,
        }),
        Err(refusal) => Err(Box::new(Rejected {
            refusal,
            info: layers.info,
        })),
    }
}

/// The checks of [`screen`]: Err is the refusal in force.
fn screen_checks(
    layers: &mut Layers<'_>,
    s: &Policy,
    dir: &Directory,
    head: &Head<'_>,
    api: &ApiPath,
    found: Option<crate::core::catalog::Found<'_>>,
) -> Result<(), Refusal> {
    let get = is_get(head.method);
    if !get && !head.method.eq_ignore_ascii_case("POST") {
        return Err(Refusal::new(Reason::MethodNotAllowed));
    }
    // MOR's generic route gives every canonical action a `/<id>`; of the
    // legacy aliases only those the catalogue names take one.
    if api.id.is_some()
        && found.is_some_and(|f| {
            f.alias
                .is_some_and(|a| !f.method.id_routes.iter().any(|r| r == a))
        })
    {
        return Err(Refusal::with(Reason::NotFound, "no such API path"));
    }
    let method = found.map(|f| f.method);
    let auth = method.map_or(Auth::Global, |m| m.auth);
    if auth != Auth::NoAuth {
        if !dir.available {
            let mut r = Refusal::new(Reason::DirectoryUnavailable);
            r.retry_after = Some(std::time::Duration::from_secs(1));
            return Err(r);
        }
        // Per owner once the caller is known (stage two); here only when
        // no owner at all has the API on.
        if !dir.any_api() {
            layers.refuse(Guard::AllowApi, Refusal::new(Reason::ApiDisabled))?;
        }
    }
    if get && !dir.allow_get && !method.is_some_and(|m| m.get_always) {
        layers.refuse(Guard::AllowGet, Refusal::new(Reason::GetDisabled))?;
    }
    match auth {
        Auth::UsernameOnly => layers.refuse(
            Guard::UsernameOnly,
            Refusal::with(
                Reason::UsernameOnly,
                "MOR serves this action without a secret; closed at the gateway",
            ),
        )?,
        Auth::Refuse => return Err(Refusal::new(Reason::MethodDisabled)),
        Auth::Undetermined if s.undetermined == Undetermined::Refuse => {
            return Err(Refusal::with(
                Reason::MethodDisabled,
                "the hash rule of this action is not documented; refused by the gateway's configuration",
            ))
        }
        _ => {}
    }
    if method.is_none() && s.unknown_methods == UnknownMethods::Refuse {
        layers.refuse(Guard::UnknownMethod, Refusal::new(Reason::UnknownMethod))?;
    }
    Ok(())
}

/// Builds MOR's parameter view. Sources go in Rails' precedence, lowest
/// first: body, query, then the path's `/<id>` and `.<format>`.
pub fn view(
    head: &Head<'_>,
    api: &ApiPath,
    method: Option<&Method>,
    body: &[u8],
) -> Result<Params, ParamError> {
    let mut params = Params::new();
    params.add_body(
        head.content_type,
        body,
        head.method.eq_ignore_ascii_case("POST"),
        method.is_some_and(|m| m.multipart),
    )?;
    if let Some(q) = head.query {
        params.add_form(q.as_bytes())?;
    }
    if let Some(id) = &api.id {
        params.insert("id", Value::Str(id.clone()))?;
    }
    if let Some(f) = &api.format {
        params.insert("format", Value::Str(f.clone()))?;
    }
    Ok(params)
}

/// The caller as MOR finds it ("current user"), by the action's rule.
pub fn lookup(dir: &Directory, m: Option<&Method>, params: &Params) -> Result<Lookup, ParamError> {
    let caller = m.map_or(Caller::U, |m| m.caller);
    Ok(match caller {
        Caller::UniquehashId => match params.scalar("id")?.filter(|id| !id.is_empty()) {
            Some(id) => dir.by_uniquehash(id),
            // MOR: user_register without an id is checked with the admin key.
            None => Lookup::Known(directory::Caller {
                owner: directory::ADMIN,
                reseller_itself: false,
            }),
        },
        Caller::U | Caller::Username => {
            let name = if caller == Caller::U { "u" } else { "username" };
            match params.scalar(name)? {
                Some(n) => dir.by_username(n),
                None if dir.complete() => Lookup::Unknown,
                None => Lookup::Unlisted,
            }
        }
    })
}

/// What stage two does about the hash.
#[derive(Debug, Clone, Copy)]
pub enum Check<'a> {
    /// The action takes no hash.
    None,
    /// The catalogue's rule (global order or own list).
    Rule,
    /// Any of these own lists (an undetermined action, `candidates`).
    Lists(&'a [Vec<String>]),
    /// MOR checks it; the gateway does not.
    Skip(Skipped),
}

/// What stage two does about the hash of a call to `method` (None: not
/// catalogued).
pub fn check_of<'a>(s: &Policy, method: Option<&'a Method>) -> Check<'a> {
    match method {
        // Unknown while the layer refusing them only reports (or waits for
        // the owner): MOR checks its hash.
        None if matches!(
            s.unknown_methods,
            UnknownMethods::Unchecked | UnknownMethods::Refuse
        ) =>
        {
            Check::Skip(Skipped::UnknownMethod)
        }
        None => Check::Rule,
        Some(m) => match m.auth {
            Auth::Global | Auth::Own => Check::Rule,
            Auth::Undetermined => match s.undetermined {
                Undetermined::Candidates if !m.candidates.is_empty() => Check::Lists(&m.candidates),
                _ => Check::Skip(Skipped::Undetermined),
            },
            _ => Check::None,
        },
    }
}

/// A call whose parameters and hash were checked, waiting for the limit
/// layers: ask [`Pending::question`] (lockout, then user and method
/// quotas), hand the answer to [`Pending::conclude`].
#[derive(Debug, Clone)]
pub struct Pending {
    info: CallInfo,
    ip: IpAddr,
    hash: HashCheck,
    modes: Modes,
    forward: Forward,
}

/// The outcome of stage two before the limit layers.
#[derive(Debug, Clone)]
pub enum Checked {
    /// Decided already (refused, or a pass-through forward).
    Done(Verdict),
    /// Waiting for the limit layers.
    Pending(Pending),
}

impl Pending {
    /// The limit layers' question about this call.
    pub fn question<'a>(&'a self, limits: &LimitSettings) -> Question<'a> {
        limits.call_question(
            self.ip,
            self.info.user.as_deref(),
            self.info.label(),
            self.hash,
            self.modes,
        )
    }

    /// The verdict once the limit layers answered: their refusal, the
    /// hash's when it did not match, or the forward with the tightest
    /// allowance (none once a layer reported: no RateLimit headers then).
    /// The answer's trace follows the per-IP layer's; what reporting
    /// layers would have refused is noted.
    pub fn conclude(self, answer: Answer) -> Verdict {
        let Pending {
            mut info,
            mut forward,
            hash,
            modes,
            ..
        } = self;
        info.limits = info.limits.then(answer.trace);
        let allowance = match answer.outcome {
            Err(r) => return Verdict::Refuse(r, info),
            Ok(a) => a,
        };
        if hash == HashCheck::Bad {
            if modes.enforces(Guard::Hash) {
                return Verdict::Refuse(Refusal::new(Reason::BadHash), info);
            }
            info.would_refuse.push(Guard::Hash, Reason::BadHash);
        }
        if answer.locked {
            info.would_refuse.push(Guard::Lockout, Reason::LockedOut);
        }
        for (layer, ok) in answer.trace.iter() {
            if !ok {
                info.would_refuse.push(Guard::Quota(layer), Reason::Limited);
            }
        }
        forward.allowance = if info.would_refuse.is_empty() {
            Allowance::tighter(forward.allowance, allowance)
        } else {
            None
        };
        Verdict::Forward(forward, info)
    }
}

/// The path and query sent upstream, built once.
fn target(path: String, query: Option<&str>) -> Result<PathAndQuery, Refusal> {
    let mut pq = path;
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    PathAndQuery::try_from(pq).map_err(|e| Refusal::with(Reason::BadRequest, e.to_string()))
}

/// Stage two up to the limit layers: parameter view, caller, keys, hash,
/// the path to forward to. Pure: no limiter is touched.
pub fn verify(
    s: &Policy,
    dir: &Directory,
    head: &Head<'_>,
    admitted: Admitted,
    body: &[u8],
) -> Checked {
    let Admitted {
        api,
        mut info,
        allowance: ip_allowance,
        deferred,
    } = admitted;
    let Some((api, method)) = api else {
        return Checked::Done(match target(head.path.to_string(), head.query) {
            Ok(pq) => Verdict::Forward(
                Forward {
                    path_and_query: pq,
                    signer: Signer::PassThrough,
                    skipped: None,
                    allowance: ip_allowance,
                },
                info,
            ),
            Err(r) => Verdict::Refuse(r, info),
        });
    };
    let method = method.and_then(|i| s.catalog.get(i));
    let bad = |e: &dyn std::fmt::Display, info: CallInfo| {
        Checked::Done(Verdict::Refuse(
            Refusal::with(Reason::BadRequest, e.to_string()),
            info,
        ))
    };
    let params = match view(head, &api, method, body) {
        Ok(p) => p,
        Err(e) => return bad(&e, info),
    };
    let user = match params.scalar("u") {
        Ok(u) => u.map(str::to_string),
        Err(e) => return bad(&e, info),
    };
    info.user = user;

    let check = check_of(s, method);
    let done = |r: Refusal, info: CallInfo| Checked::Done(Verdict::Refuse(r, info));
    // Whose settings apply: every call MOR checks a hash for, and the
    // no-hash calls that name a user (login, a uniquehash).
    let named = matches!(check, Check::None).then(|| {
        method.is_some_and(|m| {
            m.auth == Auth::Login || (m.auth == Auth::Balance && m.caller == Caller::UniquehashId)
        })
    });
    let who = match named {
        Some(false) => None,
        _ => match lookup(dir, method, &params) {
            Ok(l) => Some(l),
            Err(e) => return bad(&e, info),
        },
    };
    // The owner's address lists, before any key is tried.
    if let Some(Lookup::Known(c)) = who {
        if let Err(r) = s.access.owner(dir, c.owner, head.client_ip) {
            return done(r, info);
        }
    }
    // The layers' modes, now that the caller's owner is known.
    let owner = match &who {
        Some(Lookup::Known(c)) => dir.owner(c.owner).map(|o| &*o.name),
        _ => None,
    };
    let modes = s.rollout.modes(info.label(), owner);
    for (g, r) in deferred {
        if modes.enforces(g) {
            return done(r, info);
        }
        info.would_refuse.push(g, r.reason);
    }
    // A refusal by layer `g`: returned when it enforces, else noted.
    macro_rules! layer {
        ($g:expr, $reason:expr) => {{
            let (g, reason) = ($g, $reason);
            if modes.enforces(g) {
                return done(Refusal::new(reason), info);
            }
            info.would_refuse.push(g, reason);
        }};
    }
    // Forwarded without the gateway's hash check.
    const UNCHECKED: (Signer, HashCheck, Option<Skipped>) =
        (Signer::Unchecked, HashCheck::Skipped, None);
    let (signer, hash, skipped) = match (check, who) {
        (Check::None, Some(Lookup::Known(c))) if !dir.allow_api(c) => {
            layer!(Guard::AllowApi, Reason::ApiDisabled);
            UNCHECKED
        }
        (Check::None, Some(Lookup::Unlisted)) if !dir.admin().allow_api => {
            layer!(Guard::AllowApi, Reason::ApiDisabled);
            UNCHECKED
        }
        (Check::None, _) | (_, None) => UNCHECKED,
        (_, Some(Lookup::Unknown)) => {
            layer!(Guard::Hash, Reason::UnknownUser);
            UNCHECKED
        }
        (check, Some(l)) => {
            // An unlisted caller (static config) has the admin's switches
            // and may sign with any configured key.
            let known;
            let (allowed, off, signers): (bool, bool, &[UserId]) = match l {
                Lookup::Known(c) => {
                    known = dir.signers(c);
                    (dir.allow_api(c), dir.hash_off(c), known.ids())
                }
                _ => {
                    let a = dir.admin();
                    (a.allow_api, a.allow_api && a.hash_off, dir.any_signers())
                }
            };
            if !allowed {
                layer!(Guard::AllowApi, Reason::ApiDisabled);
            }
            let skip = match check {
                _ if off => Some(Skipped::HashCheckingOff),
                Check::Skip(why) => Some(why),
                _ => None,
            };
            if let Some(why) = skip {
                (Signer::Unchecked, HashCheck::Skipped, Some(why))
            } else if signers.is_empty() {
                layer!(Guard::Hash, Reason::NoSecretKey);
                UNCHECKED
            } else if l == Lookup::Unlisted && !s.access.any_admits(dir, signers, head.client_ip) {
                // No owner whose key could sign admits the address: refused
                // before any key is tried.
                return done(crate::core::access::denied(), info);
            } else {
                match params.scalar("hash") {
                    Ok(Some(given)) => {
                        let lists: Result<Vec<Vec<signature::Part<'_>>>, ParamError> = match check {
                            Check::Lists(lists) => lists
                                .iter()
                                .map(|l| signature::own_parts(l, &params))
                                .collect::<Result<_, _>>(),
                            _ => signature::hashed_parts(&s.catalog, method, &params)
                                .map(|p| vec![p]),
                        };
                        let lists = match lists {
                            Ok(l) => l,
                            Err(e) => return bad(&e, info),
                        };
                        let matched = signed_by(dir, signers, &lists, given, |_, _| {});
                        // An unlisted caller's owner is the one whose key
                        // signed: its address lists apply now.
                        if let (Lookup::Unlisted, Some(id)) = (l, matched) {
                            if let Err(r) = s.access.owner(dir, id, head.client_ip) {
                                return done(r, info);
                            }
                        }
                        match matched {
                            None => {
                                info.mismatch = Some(Mismatch {
                                    rule: match check {
                                        Check::Lists(_) => "candidate lists",
                                        _ if method.is_some_and(|m| m.auth == Auth::Own) => {
                                            "own list"
                                        }
                                        _ => "global order",
                                    },
                                    parts: lists.first().map_or(0, Vec::len),
                                    owners: signers
                                        .iter()
                                        .filter_map(|id| dir.owner(*id))
                                        .map(|o| o.name.to_string())
                                        .collect(),
                                });
                                (Signer::Unchecked, HashCheck::Bad, None)
                            }
                            Some(directory::ADMIN) => (Signer::Admin, HashCheck::Good, None),
                            Some(id) => (
                                Signer::Reseller(
                                    dir.owner(id)
                                        .map_or_else(String::new, |o| o.name.to_string()),
                                ),
                                HashCheck::Good,
                                None,
                            ),
                        }
                    }
                    Ok(None) => {
                        layer!(Guard::Hash, Reason::BadHash);
                        UNCHECKED
                    }
                    Err(e) => return bad(&e, info),
                }
            }
        }
    };

    // MOR routes `/<id>` only under the requested legacy name; everything
    // else goes to the canonical name.
    let name = match (&api.id, method) {
        (None, Some(m)) => m.name.as_str(),
        _ => api.method.as_str(),
    };
    let pq = forward_path(&s.prefix, name, api.id.as_deref(), api.format.as_deref());
    let pq = match target(pq, head.query) {
        Ok(pq) => pq,
        Err(r) => return done(r, info),
    };
    Checked::Pending(Pending {
        info,
        ip: head.client_ip,
        hash,
        modes,
        forward: Forward {
            path_and_query: pq,
            signer,
            skipped,
            allowance: ip_allowance,
        },
    })
}

/// The owner whose key signed `given` over one of `lists`, of `signers`;
/// `seen` is told each key's digest over each list, in order (`explain`
/// prints them). Every candidate key and list is always computed, so timing
/// does not tell which one matched.
pub fn signed_by(
    dir: &Directory,
    signers: &[UserId],
    lists: &[Vec<signature::Part<'_>>],
    given: &str,
    mut seen: impl FnMut(UserId, &signature::HexDigest),
) -> Option<UserId> {
    let mut matched: Option<UserId> = None;
    for id in signers.iter() {
        let Some(key) = dir.owner(*id).and_then(|o| o.key.as_ref()) else {
            continue;
        };
        let mut ok = false;
        for parts in lists {
            let d = signature::digest(parts, key.expose());
            ok |= d.matches(given);
            seen(*id, &d);
        }
        if ok && matched.is_none() {
            matched = Some(*id);
        }
    }
    matched
}

/// The proxy's route (admit, the per-IP question, verify, the call's
/// question) with a gate that answers at once: for the CLI, tests, benches
/// and tools. The proxy runs the same steps with its asynchronous gates.
pub fn decide_now<G: Gate>(
    s: &Policy,
    dir: &Directory,
    limits: &LimitSettings,
    gate: &G,
    head: &Head<'_>,
    body: &[u8],
) -> Verdict {
    let admission = match admit(s, dir, head) {
        Ok(a) => a,
        Err(r) => return Verdict::Refuse(r.refusal, r.info),
    };
    let answer = gate.answer(&admission.question(limits));
    let admitted = match admission.conclude(answer) {
        Ok(a) => a,
        Err(r) => return Verdict::Refuse(r.refusal, r.info),
    };
    match verify(s, dir, head, admitted, body) {
        Checked::Done(v) => v,
        Checked::Pending(p) => {
            let answer = gate.answer(&p.question(limits));
            p.conclude(answer)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::limits::Open;

    /// The proxy's route, with a gate that answers at once and `limits`.
    pub(crate) fn route_with<G: Gate>(
        s: &Policy,
        dir: &Directory,
        limits: &LimitSettings,
        gate: &G,
        head: &Head<'_>,
        body: &[u8],
    ) -> Verdict {
        super::decide_now(s, dir, limits, gate, head, body)
    }

    /// The route with `dir` and no limits.
    pub(crate) fn decide_with<G: Gate>(
        s: &Policy,
        dir: &Directory,
        gate: &G,
        head: &Head<'_>,
        body: &[u8],
    ) -> Verdict {
        route_with(s, dir, &LimitSettings::default(), gate, head, body)
    }

    /// The route with the static config's directory and no limits.
    pub(crate) fn decide<G: Gate>(s: &Policy, gate: &G, head: &Head<'_>, body: &[u8]) -> Verdict {
        decide_with(s, &s.directory, gate, head, body)
    }

    fn env() -> std::collections::HashMap<&'static str, &'static str> {
        std::collections::HashMap::from([
            ("MORGW_DECISION_KEY", "456789"),
            ("MORGW_DECISION_RKEY", "resellerkey"),
            ("MORGW_DECISION_SECRET", "secret"),
        ])
    }

    /// The core's view of a test config (admin key 456789, reseller res1).
    pub(crate) fn settings(extra: &str) -> Policy {
        let text = format!(
            r#"
listen = ["127.0.0.1:0"]
[upstream]
servers = ["127.0.0.1:1"]
[secrets]
admin_key_env = "MORGW_DECISION_KEY"
[[resellers]]
name = "res1"
key_env = "MORGW_DECISION_RKEY"
users = ["ruser"]
uniquehash = "res1uniq"
{extra}
"#
        );
        let s = crate::config::Settings::from_toml(&text, None, &env()).unwrap();
        (*s.policy).clone()
    }

    fn head<'a>(method: &'a str, path: &'a str, query: Option<&'a str>) -> Head<'a> {
        Head {
            method,
            path,
            query,
            content_type: None,
            client_ip: "192.0.2.1".parse().unwrap(),
        }
    }

    fn post(s: &Policy, path: &str, query: &str) -> Verdict {
        let q = (!query.is_empty()).then_some(query);
        decide(s, &Open, &head("POST", path, q), b"")
    }

    fn fwd_path(v: &Verdict) -> &str {
        match v {
            Verdict::Forward(f, _) => f.path_and_query.as_str(),
            Verdict::Refuse(r, _) => panic!("refused: {r:?}"),
        }
    }

    fn reason(v: &Verdict) -> Reason {
        match v {
            Verdict::Refuse(r, _) => r.reason,
            Verdict::Forward(f, _) => panic!("forwarded: {f:?}"),
        }
    }

    #[test]
    fn seed_user_details_get() {
        let s = settings("");
        let v = post(
            &s,
            "/billing/api/user_details_get",
            "u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
        );
        assert_eq!(
            fwd_path(&v),
            "/billing/api/user_details_get?u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441"
        );
    }

    #[test]
    fn seed_user_details_update_via_alias_is_rewritten() {
        let s = settings("");
        let q = "u=admin&user_id=123&u15=1&hash=0ab3ede4e93a55c38855a2cc9b9e169d35442c48";
        let v = post(&s, "/billing/api/user_update_api", q);
        assert_eq!(
            fwd_path(&v),
            format!("/billing/api/user_details_update?{q}")
        );
        match v {
            Verdict::Forward(_, info) => {
                assert_eq!(info.alias.as_deref(), Some("user_update_api"));
                assert_eq!(info.method.as_deref(), Some("user_details_update"));
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn seed_user_calls_get_and_uppercase_hash() {
        let s = settings("");
        let v = post(
            &s,
            "/billing/api/user_calls",
            "u=admin&s_user=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
        );
        assert!(fwd_path(&v).starts_with("/billing/api/user_calls_get?"));
        // MOR compares lower-case hex exactly.
        let v = post(
            &s,
            "/billing/api/user_calls",
            "u=admin&s_user=123&hash=F7C3BC1D808E04732ADF679965CCC34CA7AE3441",
        );
        assert_eq!(reason(&v), Reason::BadHash);
    }

    #[test]
    fn seed_device_clis_get_key_only() {
        let s2 = crate::config::Settings::from_toml(
            r#"
listen = ["127.0.0.1:0"]
[upstream]
servers = ["127.0.0.1:1"]
[secrets]
admin_key_env = "MORGW_DECISION_SECRET"
"#,
            None,
            &env(),
        )
        .unwrap();
        let v = post(
            &s2.policy,
            "/billing/api/device_clis_get",
            "u=admin&devices_id=6&users_id=3&hash=e5e9fa1ba31ecd1ae84f75caaa474f3a663f05f4",
        );
        fwd_path(&v);
    }

    #[test]
    fn wrong_or_missing_hash_refused() {
        let s = settings("");
        let v = post(
            &s,
            "/billing/api/user_details_get",
            "u=admin&user_id=124&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
        );
        assert_eq!(reason(&v), Reason::BadHash);
        let v = post(&s, "/billing/api/user_details_get", "u=admin&user_id=123");
        assert_eq!(reason(&v), Reason::BadHash);
    }

    /// What a shared store sees of a call: the questions after `verify`,
    /// and its answer turned into the verdict by `conclude`.
    #[test]
    fn verify_leaves_the_limit_layers_to_the_caller() {
        use crate::core::limits::{Layer, Lockout, QuotaSpec};
        let s = settings("");
        let limits = LimitSettings {
            per_user: Some(QuotaSpec {
                per_second: 1.0,
                burst: 5,
            }),
            lockout: Some(Lockout {
                failures: 3,
                window: std::time::Duration::from_secs(60),
                cooloff: std::time::Duration::from_secs(60),
            }),
            ..LimitSettings::default()
        };
        let checked = |q: &str| {
            let h = head("POST", "/billing/api/user_details", Some(q));
            let a = admit(&s, &s.directory, &h)
                .unwrap()
                .conclude(Answer::default())
                .unwrap();
            match verify(&s, &s.directory, &h, a, b"") {
                Checked::Pending(p) => p,
                Checked::Done(v) => panic!("decided without the limit layers: {v:?}"),
            }
        };
        let good = "u=john&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441";
        let p = checked(good);
        let q = p.question(&limits);
        assert_eq!(
            (q.ip, q.user, q.method, q.lockout),
            (
                "192.0.2.1".parse().unwrap(),
                Some("john"),
                "user_details_get",
                Some(crate::core::limits::PairCheck {
                    rule: limits.lockout.unwrap(),
                    good: true,
                    enforce: true
                })
            )
        );
        assert_eq!(
            q.steps().map(|s| s.layer).collect::<Vec<_>>(),
            [Layer::User]
        );
        // The store's refusal is the verdict; the trace is the store's.
        let mut trace = LimitTrace::default();
        trace.push(Layer::User, false);
        let v = p.conclude(Answer {
            outcome: Err(crate::core::limits::limited(
                std::time::Duration::from_secs(2),
            )),
            trace,
            locked: false,
        });
        match &v {
            Verdict::Refuse(r, info) => {
                assert_eq!(r.reason, Reason::Limited);
                assert_eq!(
                    info.limits.iter().collect::<Vec<_>>(),
                    [(Layer::User, false)]
                );
            }
            v => panic!("{v:?}"),
        }
        // Allowed: forwarded under the canonical name with the store's allowance.
        let a = Allowance {
            limit: 5,
            remaining: 4,
            reset: std::time::Duration::from_millis(100),
        };
        let v = checked(good).conclude(Answer {
            outcome: Ok(Some(a)),
            trace: LimitTrace::default(),
            locked: false,
        });
        match v {
            Verdict::Forward(f, _) => {
                assert!(f
                    .path_and_query
                    .as_str()
                    .starts_with("/billing/api/user_details_get?"));
                assert_eq!(f.allowance, Some(a));
                assert_eq!(f.signer, Signer::Admin);
            }
            v => panic!("{v:?}"),
        }
        // A bad hash: only the lockout is asked, and conclude refuses it.
        let p = checked("u=john&user_id=124&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441");
        let q = p.question(&limits);
        assert_eq!(
            (q.steps().count(), q.lockout.map(|l| l.good)),
            (0, Some(false))
        );
        assert_eq!(reason(&p.conclude(Answer::default())), Reason::BadHash);
        // No hash needed: the lockout does not apply.
        let h = head("POST", "/billing/api/user_login", Some("u=john&p=x"));
        let a = admit(&s, &s.directory, &h)
            .unwrap()
            .conclude(Answer::default())
            .unwrap();
        match verify(&s, &s.directory, &h, a, b"") {
            Checked::Pending(p) => assert_eq!(p.question(&limits).lockout, None),
            Checked::Done(v) => panic!("{v:?}"),
        }
    }

    /// The per-IP layer is asked after routing: a path refused by routing
    /// or by the path policies asks nothing; everything routed asks it, and
    /// its refusal wins over the later first-stage checks.
    #[test]
    fn the_per_ip_question_after_routing() {
        use crate::core::limits::{Layer, QuotaSpec};
        let s = settings("");
        let limits = LimitSettings {
            per_ip: Some(QuotaSpec {
                per_second: 1.0,
                burst: 1,
            }),
            ..LimitSettings::default()
        };
        for (m, path) in [
            ("POST", "/billing/callc/login"),
            ("POST", "/billing/api/v2/calls"),
            ("POST", "/billing/api/a/b/c/d/e"),
            ("POST", "/billing/api/../x"),
        ] {
            assert!(
                admit(&s, &s.directory, &head(m, path, None)).is_err(),
                "{path}"
            );
        }
        let a = admit(
            &s,
            &s.directory,
            &head("PUT", "/billing/api/user_details", None),
        )
        .unwrap();
        assert_eq!(
            a.question(&limits)
                .steps()
                .map(|s| s.layer)
                .collect::<Vec<_>>(),
            [Layer::Ip]
        );
        let mut trace = LimitTrace::default();
        trace.push(Layer::Ip, false);
        let r = a
            .clone()
            .conclude(Answer {
                outcome: Err(crate::core::limits::limited(
                    std::time::Duration::from_secs(1),
                )),
                trace,
                locked: false,
            })
            .unwrap_err();
        assert_eq!(r.refusal.reason, Reason::Limited);
        assert_eq!(
            r.info.limits.iter().collect::<Vec<_>>(),
            [(Layer::Ip, false)]
        );
        assert_eq!(r.info.method.as_deref(), Some("user_details_get"));
        let r = a.conclude(Answer::default()).unwrap_err();
        assert_eq!(r.refusal.reason, Reason::MethodNotAllowed);
    }

    #[test]
    fn reseller_key_only_for_its_users() {
        let s = settings("");
        let h = signature::compute(&["user_id"], |_| Some("5"), b"resellerkey");
        let q = format!("u=ruser&user_id=5&hash={}", h.as_str());
        let v = post(&s, "/billing/api/user_details_get", &q);
        match &v {
            Verdict::Forward(f, _) => assert_eq!(f.signer, Signer::Reseller("res1".into())),
            other => panic!("{other:?}"),
        }
        // A user the static config does not list may be anyone's: checked
        // against every configured key, `signer` names the one that matched.
        let q = format!("u=someone&user_id=5&hash={}", h.as_str());
        match post(&s, "/billing/api/user_details_get", &q) {
            Verdict::Forward(f, _) => assert_eq!(f.signer, Signer::Reseller("res1".into())),
            other => panic!("{other:?}"),
        }
        let q = format!("u=someone&user_id=6&hash={}", h.as_str());
        assert_eq!(
            reason(&post(&s, "/billing/api/user_details_get", &q)),
            Reason::BadHash
        );
        // A reseller's users may not sign with the admin key...
        let h = signature::compute(&["user_id"], |_| Some("5"), b"456789");
        let q = format!("u=ruser&user_id=5&hash={}", h.as_str());
        assert_eq!(
            reason(&post(&s, "/billing/api/user_details_get", &q)),
            Reason::BadHash
        );
        // ...but the reseller itself may, and with its own key too.
        let q = format!("u=res1&user_id=5&hash={}", h.as_str());
        match post(&s, "/billing/api/user_details_get", &q) {
            Verdict::Forward(f, _) => assert_eq!(f.signer, Signer::Admin),
            other => panic!("{other:?}"),
        }
        let h = signature::compute(&["user_id"], |_| Some("5"), b"resellerkey");
        let q = format!("u=res1&user_id=5&hash={}", h.as_str());
        assert!(matches!(
            post(&s, "/billing/api/user_details_get", &q),
            Verdict::Forward(..)
        ));
    }

    fn noted(v: &Verdict) -> Vec<(&'static str, Reason)> {
        let info = match v {
            Verdict::Forward(_, i) | Verdict::Refuse(_, i) => i,
        };
        info.would_refuse
            .iter()
            .map(|(g, r)| (g.label(), r))
            .collect()
    }

    #[test]
    fn a_reporting_hash_layer_forwards_the_rebuilt_call_and_notes_it() {
        let s = settings("[rollout.layers]\nhash = \"report\"\n");
        let bad = "u=admin&user_id=123&hash=0000000000000000000000000000000000000000";
        let v = post(&s, "/billing/api/user_details", bad);
        assert_eq!(
            fwd_path(&v),
            format!("/billing/api/user_details_get?{bad}"),
            "the alias is rewritten as for a verified call"
        );
        assert_eq!(noted(&v), [("hash", Reason::BadHash)]);
        match &v {
            Verdict::Forward(f, _) => assert_eq!(f.signer, Signer::Unchecked),
            other => panic!("{other:?}"),
        }
        // No hash at all, an unknown user: the same layer.
        let v = post(&s, "/billing/api/user_details_get", "u=admin&user_id=123");
        assert_eq!(noted(&v), [("hash", Reason::BadHash)]);
        // A good hash notes nothing.
        let v = post(
            &s,
            "/billing/api/user_details_get",
            "u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441",
        );
        assert!(noted(&v).is_empty());
        // Refusals that are not layers still enforce.
        let v = post(&s, "/billing/api/user_details_get", "u=a&u=b&hash=x");
        assert_eq!(reason(&v), Reason::BadRequest);
    }

    #[test]
    fn stage_one_layers_report_and_the_call_goes_on_to_the_hash() {
        let s = settings(
            "[api]\nallow_get = false\nunknown_methods = \"refuse\"\n[rollout.layers]\nallow_get = \"report\"\nunknown_method = \"report\"\nusername_only = \"report\"\n",
        );
        let get = |q: &str| {
            decide(
                &s,
                &Open,
                &head("GET", "/billing/api/user_details_get", Some(q)),
                b"",
            )
        };
        let v = get("u=admin&user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441");
        assert!(matches!(v, Verdict::Forward(..)));
        assert_eq!(noted(&v), [("allow_get", Reason::GetDisabled)]);
        // The hash still enforces after a reported GET.
        let v = get("u=admin&user_id=123&hash=00");
        assert_eq!(reason(&v), Reason::BadHash);
        assert_eq!(noted(&v), [("allow_get", Reason::GetDisabled)]);
        // An unknown action, reported: forwarded unchecked (MOR checks it).
        let v = post(&s, "/billing/api/no_such_action", "u=admin&hash=00");
        match &v {
            Verdict::Forward(f, _) => assert_eq!(f.skipped, Some(Skipped::UnknownMethod)),
            other => panic!("{other:?}"),
        }
        assert_eq!(noted(&v), [("unknown_method", Reason::UnknownMethod)]);
    }

    #[test]
    fn per_method_and_per_owner_tables_win_and_stage_one_waits_for_the_owner() {
        let s = settings(
            "[api]\nallow_get = false\n[rollout.layers]\nall = \"report\"\n[rollout.methods.user_balance_get]\nhash = \"enforce\"\n[rollout.owners.res1]\nall = \"enforce\"\n",
        );
        let bad = |m: &str, u: &str| {
            post(
                &s,
                &format!("/billing/api/{m}"),
                &format!("u={u}&user_id=5&username={u}&hash=00"),
            )
        };
        // The admin's user: every layer reports, except the method's hash.
        assert_eq!(
            noted(&bad("user_details_get", "someone")),
            [("hash", Reason::BadHash)]
        );
        assert_eq!(reason(&bad("user_balance_get", "someone")), Reason::BadHash);
        // res1's users: the owner's table enforces everything.
        assert_eq!(reason(&bad("user_details_get", "ruser")), Reason::BadHash);
        // GET is decided before the caller is known: it waits for the owner.
        let get = |u: &str| {
            let q = format!("u={u}&user_id=5&hash=00");
            decide(
                &s,
                &Open,
                &head("GET", "/billing/api/user_details_get", Some(q.as_str())),
                b"",
            )
        };
        let v = get("someone");
        assert!(matches!(v, Verdict::Forward(..)), "{v:?}");
        assert_eq!(
            noted(&v),
            [
                ("allow_get", Reason::GetDisabled),
                ("hash", Reason::BadHash)
            ]
        );
        let v = get("ruser");
        assert_eq!(reason(&v), Reason::GetDisabled);
    }

    #[test]
    fn caller_by_username_and_by_uniquehash() {
        let s = settings("");
        // user_balance_get: the caller is `username`, whatever `u` says.
        let h = signature::compute(&["username"], |_| Some("ruser"), b"resellerkey");
        let q = format!("u=admin&username=ruser&hash={}", h.as_str());
        assert!(matches!(
            post(&s, "/billing/api/user_balance_get", &q),
            Verdict::Forward(..)
        ));
        // user_register: `id` is the owner's uniquehash.
        let parts = "id=res1uniq&username=new&email=a%40b";
        let h = signature::compute(
            &["email", "id", "username"],
            |n| match n {
                "email" => Some("a@b"),
                "id" => Some("res1uniq"),
                _ => Some("new"),
            },
            b"resellerkey",
        );
        let q = format!("{parts}&hash={}", h.as_str());
        assert!(matches!(
            post(&s, "/billing/api/user_register", &q),
            Verdict::Forward(..)
        ));
        let q = format!(
            "{}&hash={}",
            parts.replace("res1uniq", "otheruniq"),
            h.as_str()
        );
        assert_eq!(
            reason(&post(&s, "/billing/api/user_register", &q)),
            Reason::BadHash
        );
    }

    #[test]
    fn policies() {
        let s = settings("[api]\nallow_api = false\n");
        assert_eq!(
            reason(&post(&s, "/billing/api/user_details_get", "")),
            Reason::ApiDisabled
        );
        let s = settings("");
        let v = decide(
            &s,
            &Open,
            &head("GET", "/billing/api/user_details_get", None),
            b"",
        );
        assert_eq!(reason(&v), Reason::GetDisabled);
        let v = decide(
            &s,
            &Open,
            &head("HEAD", "/billing/api/user_details_get", None),
            b"",
        );
        assert_eq!(reason(&v), Reason::GetDisabled);
        let v = decide(
            &s,
            &Open,
            &head("PUT", "/billing/api/user_details_get", None),
            b"",
        );
        assert_eq!(reason(&v), Reason::MethodNotAllowed);
        let s = settings("[api]\nallow_get = true\n");
        let v = decide(
            &s,
            &Open,
            &head(
                "GET",
                "/billing/api/user_details_get",
                Some("user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441"),
            ),
            b"",
        );
        assert!(matches!(v, Verdict::Forward(..)));
    }

    #[test]
    fn conflicting_values_refused_never_forwarded() {
        let s = settings("");
        let good = "user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441";
        let v = post(
            &s,
            "/billing/api/user_details_get",
            &format!("{good}&user_id=999"),
        );
        assert_eq!(reason(&v), Reason::BadRequest);
        let mut h = head("POST", "/billing/api/user_details_get", Some(good));
        h.content_type = Some("application/json");
        let v = decide(&s, &Open, &h, br#"{"user_id":"999"}"#);
        assert_eq!(reason(&v), Reason::BadRequest);
        let v = decide(&s, &Open, &h, br#"{"user_id":123}"#);
        assert!(
            matches!(v, Verdict::Forward(..)),
            "same value as number is fine"
        );
    }

    #[test]
    fn json_body_signed_call() {
        let s = settings("");
        let mut h = head("POST", "/billing/api/user_details_update", None);
        h.content_type = Some("application/json");
        let v = decide(
            &s,
            &Open,
            &h,
            br#"{"u":"admin","user_id":123,"u15":1,"hash":"0ab3ede4e93a55c38855a2cc9b9e169d35442c48"}"#,
        );
        assert_eq!(fwd_path(&v), "/billing/api/user_details_update");
    }

    #[test]
    fn path_forms_verified_or_refused() {
        let s = settings("");
        let q = "user_id=123&hash=f7c3bc1d808e04732adf679965ccc34ca7ae3441";
        for p in [
            "/billing//api/user_details_get/",
            "/billing/api/user%5Fdetails_get",
        ] {
            assert!(
                fwd_path(&post(&s, p, q)).starts_with("/billing/api/user_details_get?"),
                "{p}"
            );
        }
        assert_eq!(
            reason(&post(&s, "/billing/api/../api/user_details_get", q)),
            Reason::BadRequest
        );
        assert_eq!(
            reason(&post(&s, "/billing/api%2Fuser_details_get", q)),
            Reason::BadRequest
        );
        // Any `.format` becomes params[:format]; not hash-covered, still verified.
        for f in ["xml", "json"] {
            assert!(
                fwd_path(&post(&s, &format!("/billing/api/user_details.{f}"), q))
                    .starts_with(&format!("/billing/api/user_details_get.{f}?"))
            );
        }
        // MOR's generic route: every canonical action takes a `/<id>`; of
        // the legacy aliases only simple_balance does.
        // The path id is params id, hashed where the rule hashes id.
        assert_eq!(
            reason(&post(&s, "/billing/api/user_details_get/5", q)),
            Reason::BadHash
        );
        let h5 = signature::compute(
            &["user_id", "id"],
            |n| Some(if n == "id" { "5" } else { "123" }),
            b"456789",
        );
        let q5 = format!("user_id=123&hash={}", h5.as_str());
        assert_eq!(
            fwd_path(&post(&s, "/billing/api/user_details_get/5", &q5)),
            format!("/billing/api/user_details_get/5?{q5}")
        );
        assert_eq!(
            reason(&post(&s, "/billing/api/user_details/5", q)),
            Reason::NotFound
        );
        assert_eq!(
            fwd_path(&post(&s, "/billing/api/user_simple_balance_get/5", "")),
            "/billing/api/user_simple_balance_get/5"
        );
        assert_eq!(
            fwd_path(&post(&s, "/billing/api/simple_balance/abc.xml", "")),
            "/billing/api/simple_balance/abc.xml"
        );
        // The path id is params[:id]: a different id elsewhere is refused.
        assert_eq!(
            reason(&post(&s, "/billing/api/simple_balance/abc", "id=xyz")),
            Reason::BadRequest
        );
        // card_group_get hashes id, from any source.
        let h = signature::compute(&["id"], |_| Some("5"), b"456789");
        let ok = post(
            &s,
            "/billing/api/card_group_get",
            &format!("id=5&hash={}", h.as_str()),
        );
        assert!(fwd_path(&ok).starts_with("/billing/api/card_group_get?"));
        let bad = post(
            &s,
            "/billing/api/card_group_get",
            &format!("id=6&hash={}", h.as_str()),
        );
        assert_eq!(reason(&bad), Reason::BadHash);
    }

    #[test]
    fn unknown_methods_by_policy() {
        let s = settings("");
        let h = signature::compute(
            s.catalog.global_order(),
            |n| (n == "user_id").then_some("9"),
            b"456789",
        );
        let v = post(
            &s,
            "/billing/api/brand_new_get",
            &format!("user_id=9&hash={}", h.as_str()),
        );
        assert!(fwd_path(&v).starts_with("/billing/api/brand_new_get?"));
        let s = settings("[api]\nunknown_methods = \"refuse\"\n");
        assert_eq!(
            reason(&post(&s, "/billing/api/brand_new_get", "")),
            Reason::UnknownMethod
        );
    }

    #[test]
    fn other_paths_and_v2_by_policy() {
        let s = settings("");
        assert_eq!(
            reason(&post(&s, "/billing/callc/login", "")),
            Reason::NotFound
        );
        assert_eq!(
            reason(&post(&s, "/billing/api/v2/calls", "")),
            Reason::NotFound
        );
        let s = settings("[api]\nother_paths = \"forward\"\nrest_v2 = \"forward\"\n");
        assert_eq!(
            fwd_path(&post(&s, "/billing/callc/login", "a=1")),
            "/billing/callc/login?a=1"
        );
        assert_eq!(
            fwd_path(&post(&s, "/billing/api/v2/calls", "")),
            "/billing/api/v2/calls"
        );
    }

    #[test]
    fn no_hash_groups() {
        let s = settings("");
        for (path, q) in [
            ("/billing/api/user_login", "u=a&p=b"),
            ("/billing/api/login", "u=a&p=b"),
            ("/billing/api/morphone_details_get", "u=a&p=b"),
            ("/billing/api/user_simple_balance_get", "id=x"),
            ("/billing/api/user_balance_get_by_psw", "id=x"),
            ("/billing/api/invoice_xlsx_generate", ""),
        ] {
            assert!(matches!(post(&s, path, q), Verdict::Forward(..)), "{path}");
        }
        // Balance over HTTP is served over GET even with GET disabled.
        let v = decide(
            &s,
            &Open,
            &head("GET", "/billing/api/simple_balance/x", None),
            b"",
        );
        assert!(matches!(v, Verdict::Forward(..)));
        // user_balance_get also, but still with its hash.
        let v = decide(
            &s,
            &Open,
            &head("GET", "/billing/api/balance", Some("username=john")),
            b"",
        );
        assert_eq!(reason(&v), Reason::BadHash);
        // no_auth skips even Allow API.
        let off = settings("[api]\nallow_api = false\n");
        assert!(matches!(
            post(&off, "/billing/api/invoice_xlsx_generate", ""),
            Verdict::Forward(..)
        ));
        assert_eq!(
            reason(&post(&off, "/billing/api/user_login", "u=a&p=b")),
            Reason::ApiDisabled
        );
        // Username-only actions are closed unless the config opens one.
        let v = post(&s, "/billing/api/user_devices", "u=john");
        assert_eq!(reason(&v), Reason::UsernameOnly);
        let open = settings("[api.methods.user_devices]\nauth = \"unsigned\"\n");
        assert!(matches!(
            post(&open, "/billing/api/user_devices", "u=john"),
            Verdict::Forward(..)
        ));
        let closed = settings("[api.methods.user_details_get]\nauth = \"refuse\"\n");
        assert_eq!(
            reason(&post(&closed, "/billing/api/user_details", "")),
            Reason::MethodDisabled
        );
    }

    #[test]
    fn envelopes_per_method() {
        let s = settings("");
        let env = |p: &str| match post(&s, p, "hash=00") {
            Verdict::Refuse(_, i) => i.envelope,
            other => panic!("{other:?}"),
        };
        assert_eq!(env("/billing/api/did_create"), Envelope::PageStatus);
        assert_eq!(env("/billing/api/did_close"), Envelope::PageStatus);
        assert_eq!(env("/billing/api/rate"), Envelope::Page);
        assert_eq!(env("/billing/api/devices_get"), Envelope::Status);
    }

    /// MOR's directory: per-owner switches, keys, unknown callers.
    fn mor_dir() -> Directory {
        use crate::core::directory::{ConfRow, UserRow};
        let u = |id: u64, n: &str, t: &str, o: u64| UserRow {
            id,
            username: n.into(),
            usertype: t.into(),
            owner_id: o,
            uniquehash: Some(format!("{n}uniq")),
        };
        let c = |n: &str, v: &str, o: u64| ConfRow {
            name: n.into(),
            value: v.as_bytes().to_vec(),
            owner_id: o,
        };
        Directory::from_rows(
            &[
                u(0, "admin", "admin", 0),
                u(2, "john", "user", 0),
                u(4, "res1", "reseller", 0),
                u(5, "ruser", "user", 4),
                u(7, "res2", "reseller", 0),
                u(8, "r2user", "user", 7),
                u(9, "res3", "reseller", 0),
                u(10, "r3user", "user", 9),
            ],
            &[
                c("API_Secret_Key", "456789", 0),
                c("Allow_API", "1", 0),
                c("API_Secret_Key", "resellerkey", 4),
                c("Allow_API", "1", 4),
                c("API_Disable_hash_checking", "1", 4),
                c("API_Secret_Key", "r2key", 7),
                c("Allow_API", "0", 7),
                c("Allow_API", "1", 9),
            ],
        )
    }

    #[test]
    fn per_owner_switches_from_mors_directory() {
        let s = settings("");
        let d = mor_dir();
        let call = |q: &str| {
            decide_with(
                &s,
                &d,
                &Open,
                &head("POST", "/billing/api/user_details_get", Some(q)),
                b"",
            )
        };
        // res1 has hash checking off: its users pass unsigned, counted.
        match call("u=ruser&user_id=5") {
            Verdict::Forward(f, _) => {
                assert_eq!(
                    (f.signer, f.skipped),
                    (Signer::Unchecked, Some(Skipped::HashCheckingOff))
                )
            }
            other => panic!("{other:?}"),
        }
        // ... and only its users: the admin's are still checked.
        assert_eq!(reason(&call("u=john&user_id=5")), Reason::BadHash);
        let h = signature::compute(&["user_id"], |_| Some("5"), b"456789");
        assert!(matches!(
            call(&format!("u=john&user_id=5&hash={}", h.as_str())),
            Verdict::Forward(..)
        ));
        // res2 has Allow API off: its users are refused with MOR's text.
        assert_eq!(reason(&call("u=r2user&user_id=5")), Reason::ApiDisabled);
        // res3 has Allow API on but no key: MOR's "API must have Secret Key".
        assert_eq!(reason(&call("u=r3user&user_id=5")), Reason::NoSecretKey);
        // ... while res3 itself may sign with the admin's key.
        assert!(matches!(
            call(&format!("u=res3&user_id=5&hash={}", h.as_str())),
            Verdict::Forward(..)
        ));
        // A user MOR does not have: MOR's "Access Denied", nothing forwarded.
        assert_eq!(
            reason(&call(&format!("u=ghost&user_id=5&hash={}", h.as_str()))),
            Reason::UnknownUser
        );
        // Allow GET API is the admin's, read from the directory.
        let v = decide_with(
            &s,
            &d,
            &Open,
            &head("GET", "/billing/api/user_details_get", Some("u=john")),
            b"",
        );
        assert_eq!(reason(&v), Reason::GetDisabled);
        // Before the first snapshot, with without_snapshot = "refuse".
        let v = decide_with(
            &s,
            &Directory::unavailable(),
            &Open,
            &head("POST", "/billing/api/user_details_get", Some("u=john")),
            b"",
        );
        assert_eq!(reason(&v), Reason::DirectoryUnavailable);
    }

    #[test]
    fn per_reseller_switches_in_the_static_config() {
        let s = settings("");
        let s2 = crate::config::Settings::from_toml(
            "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"MORGW_DECISION_KEY\"\n[[resellers]]\nname = \"res1\"\nkey_env = \"MORGW_DECISION_RKEY\"\nusers = [\"ruser\"]\nverify_hash = false\n[[resellers]]\nname = \"res2\"\nkey_env = \"MORGW_DECISION_RKEY\"\nusers = [\"r2user\"]\nallow_api = false\n",
            None,
            &env(),
        )
        .unwrap();
        let p = &s2.policy;
        match post(p, "/billing/api/user_details_get", "u=ruser&user_id=1") {
            Verdict::Forward(f, _) => assert_eq!(f.skipped, Some(Skipped::HashCheckingOff)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reason(&post(
                p,
                "/billing/api/user_details_get",
                "u=r2user&user_id=1"
            )),
            Reason::ApiDisabled
        );
        assert_eq!(
            reason(&post(
                p,
                "/billing/api/user_details_get",
                "u=john&user_id=1"
            )),
            Reason::BadHash
        );
        assert_eq!(
            reason(&post(
                &s,
                "/billing/api/user_details_get",
                "u=ruser&user_id=1"
            )),
            Reason::BadHash
        );
    }

    #[test]
    fn undetermined_and_unknown_by_policy() {
        let s = settings("");
        // number_pool_create: the 2022 text (key alone) or Dec 2024 ([u]).
        let key_only = signature::compute::<&str, _>(&[], |_| None, b"456789");
        let with_u = signature::compute(&["u"], |_| Some("admin"), b"456789");
        let q = |h: &str| format!("u=admin&name=test2&hash={h}");
        match post(&s, "/billing/api/number_pool_create", &q("0")) {
            Verdict::Forward(f, _) => assert_eq!(f.skipped, Some(Skipped::Undetermined)),
            other => panic!("{other:?}"),
        }
        let c = settings("[api]\nundetermined = \"candidates\"\n");
        for h in [key_only.as_str(), with_u.as_str()] {
            match post(&c, "/billing/api/number_pool_create", &q(h)) {
                Verdict::Forward(f, _) => assert_eq!((f.signer, f.skipped), (Signer::Admin, None)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            reason(&post(&c, "/billing/api/number_pool_create", &q("0"))),
            Reason::BadHash
        );
        // No documented list: forwarded unchecked even with candidates.
        match post(&c, "/billing/api/spy_call", "u=admin") {
            Verdict::Forward(f, _) => assert_eq!(f.skipped, Some(Skipped::Undetermined)),
            other => panic!("{other:?}"),
        }
        let r = settings("[api]\nundetermined = \"refuse\"\n");
        assert_eq!(
            reason(&post(
                &r,
                "/billing/api/number_pool_create",
                &q(key_only.as_str())
            )),
            Reason::MethodDisabled
        );
        let u = settings("[api]\nunknown_methods = \"unchecked\"\n");
        match post(&u, "/billing/api/brand_new_get", "u=admin") {
            Verdict::Forward(f, _) => assert_eq!(f.skipped, Some(Skipped::UnknownMethod)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disabled_checking() {
        let s = settings("[api]\nverify_hash = false\n");
        assert!(matches!(
            post(&s, "/billing/api/user_details_get", "user_id=1"),
            Verdict::Forward(..)
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::tests::{decide, settings};
    use super::*;
    use crate::core::limits::Open;
    use crate::core::params::encode;
    use proptest::prelude::*;

    /// Names of the global order without a filter: every value is hashed as sent.
    fn covered() -> Vec<String> {
        let s = settings("");
        s.catalog
            .global_order()
            .iter()
            .filter(|n| s.catalog.position(n).is_some() && s.catalog.filter(n).is_none())
            .take(60)
            .cloned()
            .collect()
    }

    /// Random subsets of user_details_update's covered params with values of
    /// any characters (including &, =, +, %, multi-byte).
    fn call() -> impl Strategy<Value = Vec<(String, String)>> {
        let names = covered();
        proptest::sample::subsequence(names, 1..8)
            .prop_flat_map(|picked| {
                let n = picked.len();
                (
                    Just(picked),
                    proptest::collection::vec("[a-zA-Z0-9 &=+%;é€_.-]{0,12}", n),
                )
            })
            .prop_map(|(names, values)| names.into_iter().zip(values).collect())
    }

    fn body(params: &[(String, String)], hash: &str) -> String {
        let mut parts: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        parts.push(format!("hash={hash}"));
        parts.join("&")
    }

    fn decide_form(s: &Policy, b: &str) -> Verdict {
        let h = Head {
            method: "POST",
            path: "/billing/api/user_details_update",
            query: None,
            content_type: Some("application/x-www-form-urlencoded"),
            client_ip: "192.0.2.7".parse().unwrap(),
        };
        decide(s, &Open, &h, b.as_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn sign_then_verify_round_trips(params in call()) {
            let s = settings("");
            let order = covered();
            let h = signature::compute(&order, |n| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()), b"456789");
            let v = decide_form(&s, &body(&params, h.as_str()));
            prop_assert!(matches!(v, Verdict::Forward(..)), "{:?}", v);
        }

        #[test]
        fn any_changed_hashed_value_fails(params in call(), which in any::<prop::sample::Index>(), new in "[a-z0-9]{0,6}") {
            let s = settings("");
            let order = covered();
            let h = signature::compute(&order, |n| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()), b"456789");
            let mut changed = params.clone();
            let i = which.index(changed.len());
            prop_assume!(changed[i].1 != new);
            changed[i].1 = new;
            let v = decide_form(&s, &body(&changed, h.as_str()));
            prop_assert!(matches!(&v, Verdict::Refuse(r, _) if r.reason == Reason::BadHash), "{:?}", v);
        }

        #[test]
        fn never_panics_on_arbitrary_requests(
            method in "(GET|POST|HEAD|PUT|[A-Z]{1,6})",
            path in "(/billing/api/)?[a-z_/.%0-9A-F]{0,40}",
            query in proptest::option::of("[ -~]{0,80}"),
            ctype in proptest::option::of("(application/json|application/x-www-form-urlencoded|text/[a-z]{1,5}|[ -~]{0,20})"),
            body in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let s = settings("[api]\nallow_get = true\n");
            let h = Head { method: &method, path: &path, query: query.as_deref(), content_type: ctype.as_deref(), client_ip: "192.0.2.9".parse().unwrap() };
            let _ = decide(&s, &Open, &h, &body);
        }
    }
}
