//! Refusals and how they are answered: MOR's XML error shape, with HTTP 200
//! like MOR (`reply_mode = "mor"`) or a matching status (`"http"`).

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;

use crate::core::catalog::Envelope;

/// How refusals are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyMode {
    /// Like MOR: HTTP 200 with the XML error (transport errors keep 413/502).
    Mor,
    /// Proper status codes (400/403/404/405/413/429/502) with the same XML body.
    Http,
}

/// Why a request was refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `allow_api = false`.
    ApiDisabled,
    /// GET/HEAD while `allow_get = false`.
    GetDisabled,
    /// HTTP method other than GET, HEAD, POST.
    MethodNotAllowed,
    /// Missing or wrong hash.
    BadHash,
    /// (IP, user) locked out after repeated hash failures.
    LockedOut,
    /// A rate limit.
    Limited,
    /// Malformed or ambiguous parameters.
    BadRequest,
    /// API method not in the catalogue (`unknown_methods = "refuse"`).
    UnknownMethod,
    /// An action MOR serves with `u` alone, no secret (closed at the edge).
    UsernameOnly,
    /// An action the catalogue or config refuses (`auth = "refuse"`).
    MethodDisabled,
    /// Path refused (outside the API, traversal, REST v2 when refused).
    NotFound,
    /// Body over `max_body_bytes`.
    BodyTooLarge,
    /// Framing or headers that could be read two ways (always 400, closed).
    BadFraming,
    /// The bodies buffered before their verdict are at their global budget.
    Overloaded,
    /// The bodies of this client address are at their share of the budget.
    AddressOverloaded,
    /// The body came slower than `client.body_min_rate` allows.
    BodyTooSlow,
    /// The gateway could not open a socket to MOR (its own file descriptors
    /// or local ports ran out): the gateway's fault, not MOR's.
    NoSocket,
    /// The client stopped sending its request mid-way (never answered).
    ClientClosed,
    /// The client was too slow sending its request.
    ClientTimeout,
    /// MOR could not be reached or failed mid-answer.
    UpstreamError,
    /// MOR did not answer within the timeout.
    UpstreamTimeout,
    /// The caller is not in MOR's directory (MOR has no current user).
    UnknownUser,
    /// The caller's owner has Allow API on but no API secret key.
    NoSecretKey,
    /// MOR's directory was never loaded and the config says to refuse then.
    DirectoryUnavailable,
    /// The client address is not admitted by `[access]` (globally or by the
    /// caller's owner).
    AddressDenied,
}

impl Reason {
    /// Every reason, for metric pre-registration.
    pub const ALL: [Reason; 25] = [
        Reason::ApiDisabled,
        Reason::GetDisabled,
        Reason::MethodNotAllowed,
        Reason::BadHash,
        Reason::LockedOut,
        Reason::Limited,
        Reason::BadRequest,
        Reason::UnknownMethod,
        Reason::UsernameOnly,
        Reason::MethodDisabled,
        Reason::NotFound,
        Reason::BodyTooLarge,
        Reason::BadFraming,
        Reason::Overloaded,
        Reason::AddressOverloaded,
        Reason::BodyTooSlow,
        Reason::NoSocket,
        Reason::ClientClosed,
        Reason::ClientTimeout,
        Reason::UpstreamError,
        Reason::UpstreamTimeout,
        Reason::UnknownUser,
        Reason::NoSecretKey,
        Reason::DirectoryUnavailable,
        Reason::AddressDenied,
    ];

    /// MOR's own error text where MOR has one, else the gateway's.
    pub fn text(self) -> &'static str {
        match self {
            Reason::ApiDisabled => "API Requests are disabled",
            Reason::GetDisabled => "GET Requests are disabled",
            Reason::MethodNotAllowed => "Method not allowed",
            Reason::BadHash => "Incorrect hash",
            Reason::LockedOut => "Too many failed attempts, try later",
            Reason::Limited => "Too many requests",
            Reason::BadRequest => "Bad request",
            Reason::UnknownMethod => "Unknown API method",
            Reason::UsernameOnly | Reason::MethodDisabled => "Access Denied",
            Reason::NotFound => "Not found",
            Reason::BodyTooLarge => "Request body too large",
            Reason::BadFraming => "Bad request",
            Reason::Overloaded => "Server busy, try later",
            Reason::AddressOverloaded => {
                "Too many request bodies in progress from this address, try later"
            }
            Reason::BodyTooSlow => "Request body too slow",
            Reason::NoSocket => "Server busy, try later",
            Reason::ClientClosed => "Client closed the request",
            Reason::ClientTimeout => "Request timeout",
            Reason::UpstreamError => "MOR server unavailable",
            Reason::UpstreamTimeout => "MOR server timed out",
            Reason::UnknownUser | Reason::AddressDenied => "Access Denied",
            Reason::NoSecretKey => "API must have Secret Key",
            Reason::DirectoryUnavailable => "MOR settings not loaded yet, try later",
        }
    }

    /// Status in `reply_mode = "http"`.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::ApiDisabled
            | Reason::BadHash
            | Reason::UsernameOnly
            | Reason::MethodDisabled
            | Reason::UnknownUser
            | Reason::NoSecretKey
            | Reason::AddressDenied => 403,
            Reason::GetDisabled | Reason::MethodNotAllowed => 405,
            Reason::LockedOut | Reason::Limited => 429,
            Reason::BadRequest => 400,
            Reason::UnknownMethod | Reason::NotFound => 404,
            Reason::BodyTooLarge => 413,
            Reason::BadFraming => 400,
            Reason::Overloaded | Reason::DirectoryUnavailable => 503,
            Reason::AddressOverloaded => 429,
            Reason::BodyTooSlow => 408,
            Reason::NoSocket => 503,
            Reason::ClientClosed => 499,
            Reason::ClientTimeout => 408,
            Reason::UpstreamError => 502,
            Reason::UpstreamTimeout => 504,
        }
    }

    /// Status actually sent in `mode`: MOR answers its own refusals with 200;
    /// transport and client faults (400 framing, 408, 413, 429 and 503 of the
    /// body budget, 502, 504) keep their status.
    pub fn status(self, mode: ReplyMode) -> u16 {
        match (mode, self) {
            (
                _,
                Reason::BodyTooLarge
                | Reason::BadFraming
                | Reason::Overloaded
                | Reason::DirectoryUnavailable
                | Reason::AddressOverloaded
                | Reason::BodyTooSlow
                | Reason::NoSocket
                | Reason::ClientClosed
                | Reason::ClientTimeout
                | Reason::UpstreamError
                | Reason::UpstreamTimeout,
            ) => self.http_status(),
            (ReplyMode::Mor, _) => 200,
            (ReplyMode::Http, _) => self.http_status(),
        }
    }

    /// The outcome class of a refusal: `refused`, `limited` or `upstream_error`
    /// (a forwarded call's outcome is `forwarded`).
    pub fn outcome(self) -> &'static str {
        match self {
            Reason::Limited
            | Reason::LockedOut
            | Reason::Overloaded
            | Reason::AddressOverloaded
            | Reason::NoSocket => "limited",
            Reason::ClientClosed | Reason::ClientTimeout | Reason::BodyTooSlow => "client_error",
            Reason::UpstreamError | Reason::UpstreamTimeout => "upstream_error",
            _ => "refused",
        }
    }

    /// Outcome and reason labels of a request that was refused (`Some`) or
    /// forwarded (`None`).
    pub fn labels(reason: Option<Reason>) -> (&'static str, &'static str) {
        reason.map_or(("forwarded", ""), |r| (r.outcome(), r.label()))
    }

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Reason::ApiDisabled => "api_disabled",
            Reason::GetDisabled => "get_disabled",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::BadHash => "bad_hash",
            Reason::LockedOut => "locked_out",
            Reason::Limited => "limited",
            Reason::BadRequest => "bad_request",
            Reason::UnknownMethod => "unknown_method",
            Reason::UsernameOnly => "username_only",
            Reason::MethodDisabled => "method_disabled",
            Reason::NotFound => "not_found",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BadFraming => "bad_framing",
            Reason::Overloaded => "overloaded",
            Reason::AddressOverloaded => "overloaded_address",
            Reason::BodyTooSlow => "body_too_slow",
            Reason::NoSocket => "no_socket",
            Reason::ClientClosed => "client_closed",
            Reason::ClientTimeout => "client_timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UnknownUser => "unknown_user",
            Reason::NoSecretKey => "no_secret_key",
            Reason::DirectoryUnavailable => "directory_unavailable",
            Reason::AddressDenied => "address_denied",
        }
    }
}

/// A refusal: the reason, an optional detail appended to the text, and for
/// limits the time until a retry can succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// Extra words after the reason's text (never secrets).
    pub detail: Option<Cow<'static, str>>,
    /// For limits and lockouts: when to retry.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// A refusal with no detail.
    pub fn new(reason: Reason) -> Self {
        Refusal {
            reason,
            detail: None,
            retry_after: None,
        }
    }

    /// A refusal with a detail.
    pub fn with(reason: Reason, detail: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            detail: Some(detail.into()),
            ..Refusal::new(reason)
        }
    }

    /// The error element's text.
    pub fn message(&self) -> Cow<'static, str> {
        match &self.detail {
            None => Cow::Borrowed(self.reason.text()),
            Some(d) => Cow::Owned(format!("{}: {d}", self.reason.text())),
        }
    }

    /// Whole seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|d| ceil_secs(d).max(1))
    }
}

/// A duration in whole seconds, rounded up (for `Retry-After`, `RateLimit-Reset`).
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The XML prolog MOR sends.
pub const XML_PROLOG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Content type of every XML answer.
pub const XML_CONTENT_TYPE: &str = "application/xml; charset=utf-8";

/// MOR's error document: the prolog, then the error element inside the
/// action's envelope (e.g. `<status><error>MSG</error></status>`).
pub fn error_xml(envelope: Envelope, message: &str) -> String {
    let esc = quick_xml::escape::escape(message);
    let (open, close) = match envelope {
        Envelope::Status => ("<status><error>", "</error></status>"),
        Envelope::PageStatus => ("<page><status><error>", "</error></status></page>"),
        Envelope::Page => ("<page><error>", "</error></page>"),
    };
    let mut s = String::with_capacity(XML_PROLOG.len() + esc.len() + 48);
    s.push_str(XML_PROLOG);
    s.push_str(open);
    s.push_str(&esc);
    s.push_str(close);
    s
}

/// A rendered refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// HTTP status.
    pub status: u16,
    /// XML body.
    pub body: String,
    /// `Retry-After` seconds, if any.
    pub retry_after: Option<u64>,
}

/// Renders a refusal for `mode` in the action's `envelope`.
pub fn render(refusal: &Refusal, envelope: Envelope, mode: ReplyMode) -> Rendered {
    Rendered {
        status: refusal.reason.status(mode),
        body: error_xml(envelope, &refusal.message()),
        retry_after: refusal.retry_after_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mor_shape_byte_for_byte() {
        assert_eq!(
            error_xml(Envelope::Status, "Incorrect hash"),
            r#"<?xml version="1.0" encoding="UTF-8"?><status><error>Incorrect hash</error></status>"#
        );
        assert_eq!(
            error_xml(Envelope::PageStatus, "Incorrect hash"),
            r#"<?xml version="1.0" encoding="UTF-8"?><page><status><error>Incorrect hash</error></status></page>"#
        );
        assert_eq!(
            error_xml(Envelope::Page, "Incorrect hash"),
            r#"<?xml version="1.0" encoding="UTF-8"?><page><error>Incorrect hash</error></page>"#
        );
        assert_eq!(
            error_xml(Envelope::Status, "a<b & \"c\""),
            r#"<?xml version="1.0" encoding="UTF-8"?><status><error>a&lt;b &amp; &quot;c&quot;</error></status>"#
        );
    }

    #[test]
    fn statuses_by_mode() {
        assert_eq!(Reason::BadHash.status(ReplyMode::Mor), 200);
        assert_eq!(Reason::BadHash.status(ReplyMode::Http), 403);
        assert_eq!(Reason::GetDisabled.status(ReplyMode::Http), 405);
        assert_eq!(Reason::Limited.status(ReplyMode::Mor), 200);
        assert_eq!(Reason::Limited.status(ReplyMode::Http), 429);
        assert_eq!(Reason::BodyTooLarge.status(ReplyMode::Mor), 413);
        assert_eq!(Reason::UpstreamError.status(ReplyMode::Mor), 502);
        assert_eq!(Reason::AddressOverloaded.status(ReplyMode::Mor), 429);
        assert_eq!(Reason::BodyTooSlow.status(ReplyMode::Mor), 408);
    }

    #[test]
    fn retry_after_rounds_up() {
        let mut r = Refusal::new(Reason::Limited);
        r.retry_after = Some(Duration::from_millis(1500));
        assert_eq!(r.retry_after_secs(), Some(2));
        r.retry_after = Some(Duration::from_millis(1));
        assert_eq!(r.retry_after_secs(), Some(1));
        r.retry_after = Some(Duration::from_secs(3));
        assert_eq!(r.retry_after_secs(), Some(3));
    }

    #[test]
    fn labels_unique() {
        let set: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(set.len(), Reason::ALL.len());
    }
}
