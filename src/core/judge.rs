//! MOR as the judge: what MOR answered a forwarded call, read from the
//! start of its answer. MOR answers every call it receives with data or with
//! one of its own error texts, in the envelope of the action (`<status>`,
//! `<page><status>`, `<page>`, a bare `<Error>`, plain text for the balance
//! actions, a failed `<action>` for login). The class tells a rollout
//! whether MOR agreed with the gateway.

use bytes::Bytes;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::core::decision::{CallInfo, Forward, Signer};

/// How much of MOR's answer is read to classify it: MOR's error documents
/// are a few dozen bytes, and a served document never starts with an error.
pub const PEEK_BYTES: usize = 4096;

/// MOR's answer to a forwarded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MorAnswer {
    /// Data: no error where MOR puts its errors.
    Served,
    /// `Incorrect hash`.
    IncorrectHash,
    /// `API Requests are disabled` (the owner's Allow API is off).
    ApiDisabled,
    /// `GET Requests are disabled` (Allow GET API is off).
    GetDisabled,
    /// `API must have Secret Key` (Allow API on, no key).
    NoSecretKey,
    /// `Access Denied` (the caller may not call this action).
    AccessDenied,
    /// `Bad login`, or a failed login action.
    BadLogin,
    /// `User was not found` / `User not found`.
    UserNotFound,
    /// `Feature disabled` (balance over HTTP off).
    FeatureDisabled,
    /// Another of MOR's error texts (about the call's data, not its
    /// authentication).
    OtherError,
    /// Not an answer of MOR's API: an HTTP error status (a 404 page, a
    /// crashed Rails, a proxy's 502).
    HttpError,
    /// Not read: MOR compressed its answer (a `Content-Encoding` other than
    /// `identity`) and its status is not an error. The gateway classifies
    /// identity-encoded answers only; it never decompresses what it relays.
    Encoded,
}

impl MorAnswer {
    /// Every class, for metric pre-registration.
    pub const ALL: [MorAnswer; 12] = [
        MorAnswer::Served,
        MorAnswer::IncorrectHash,
        MorAnswer::ApiDisabled,
        MorAnswer::GetDisabled,
        MorAnswer::NoSecretKey,
        MorAnswer::AccessDenied,
        MorAnswer::BadLogin,
        MorAnswer::UserNotFound,
        MorAnswer::FeatureDisabled,
        MorAnswer::OtherError,
        MorAnswer::HttpError,
        MorAnswer::Encoded,
    ];

    /// The metric label and access-log value.
    pub fn label(self) -> &'static str {
        match self {
            MorAnswer::Served => "served",
            MorAnswer::IncorrectHash => "incorrect_hash",
            MorAnswer::ApiDisabled => "api_disabled",
            MorAnswer::GetDisabled => "get_disabled",
            MorAnswer::NoSecretKey => "no_secret_key",
            MorAnswer::AccessDenied => "access_denied",
            MorAnswer::BadLogin => "bad_login",
            MorAnswer::UserNotFound => "user_not_found",
            MorAnswer::FeatureDisabled => "feature_disabled",
            MorAnswer::OtherError => "other_error",
            MorAnswer::HttpError => "http_error",
            MorAnswer::Encoded => "encoded",
        }
    }

    /// True when MOR refused the call for who signed it or for an API
    /// switch: what the gateway's own checks decide too.
    pub fn is_auth_refusal(self) -> bool {
        matches!(
            self,
            MorAnswer::IncorrectHash
                | MorAnswer::ApiDisabled
                | MorAnswer::GetDisabled
                | MorAnswer::NoSecretKey
                | MorAnswer::AccessDenied
                | MorAnswer::BadLogin
        )
    }

    /// True when MOR refused the call for its hash, its key or an API
    /// switch: exactly what the gateway's hash check and its Allow API /
    /// Allow GET mirror decide (not MOR's per-action permissions, not the
    /// call's data).
    pub fn refuses_key_or_switch(self) -> bool {
        matches!(
            self,
            MorAnswer::IncorrectHash
                | MorAnswer::ApiDisabled
                | MorAnswer::GetDisabled
                | MorAnswer::NoSecretKey
        )
    }

    /// The class of an answer whose body is not read (MOR compressed it):
    /// an HTTP error status still says [`MorAnswer::HttpError`].
    pub fn unread(status: u16) -> MorAnswer {
        if status >= 400 {
            MorAnswer::HttpError
        } else {
            MorAnswer::Encoded
        }
    }

    /// The class of one of MOR's error texts.
    fn of_text(text: &str) -> MorAnswer {
        let t = text.trim();
        let is = |s: &str| t.eq_ignore_ascii_case(s);
        if is("Incorrect hash") {
            MorAnswer::IncorrectHash
        } else if is("API Requests are disabled") {
            MorAnswer::ApiDisabled
        } else if is("GET Requests are disabled") {
            MorAnswer::GetDisabled
        } else if is("API must have Secret Key") {
            MorAnswer::NoSecretKey
        } else if is("Access Denied") {
            MorAnswer::AccessDenied
        } else if is("Bad login") {
            MorAnswer::BadLogin
        } else if is("User was not found") || is("User not found") {
            MorAnswer::UserNotFound
        } else if is("Feature disabled") {
            MorAnswer::FeatureDisabled
        } else {
            MorAnswer::OtherError
        }
    }
}

/// The gateway's side of a forwarded API call, as the judge counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Judged {
    /// The gateway checked the hash with the owner's key and it matched.
    Verified,
    /// Forwarded without the gateway's own hash check
    /// ([`Signer::Unchecked`], with or without [`Forward::skipped`]): MOR
    /// is the only check.
    Unchecked,
    /// A layer in report-only mode would have refused the call; it was
    /// forwarded anyway.
    WouldRefuse,
}

impl Judged {
    /// Every value, for metric pre-registration.
    pub const ALL: [Judged; 3] = [Judged::Verified, Judged::Unchecked, Judged::WouldRefuse];

    /// The metric label (`gateway`).
    pub fn label(self) -> &'static str {
        match self {
            Judged::Verified => "verified",
            Judged::Unchecked => "unchecked",
            Judged::WouldRefuse => "would_refuse",
        }
    }

    /// The gateway's side of a forwarded call; None for a pass-through path
    /// (not an API call: not judged). The one place a forwarded call gets
    /// its label.
    pub fn of(f: &Forward, info: &CallInfo) -> Option<Judged> {
        match f.signer {
            Signer::PassThrough => None,
            // A call a reporting layer would have refused, whoever signed it.
            _ if !info.would_refuse.is_empty() => Some(Judged::WouldRefuse),
            Signer::Admin | Signer::Reseller(_) => Some(Judged::Verified),
            Signer::Unchecked => Some(Judged::Unchecked),
        }
    }
}

/// Where the gateway and MOR disagree about a forwarded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disagreement {
    /// "would refuse, MOR served": a report-only layer would have refused
    /// a call MOR served; enforcing that layer would break this client.
    WouldBreak,
    /// "forwarded, MOR refused it for its hash or API switch", on a call the
    /// gateway verified: the gateway's copy of keys or switches drifted
    /// from MOR's (a rotated key, a switch changed in MOR).
    Drift,
    /// The same refusal on a call forwarded unchecked: the client was wrong
    /// and MOR caught it.
    MorCaught,
}

impl Disagreement {
    /// Every kind, for metric pre-registration.
    pub const ALL: [Disagreement; 3] = [
        Disagreement::WouldBreak,
        Disagreement::Drift,
        Disagreement::MorCaught,
    ];

    /// The metric label (`kind`) and the access log's `disagreement`.
    pub fn label(self) -> &'static str {
        match self {
            Disagreement::WouldBreak => "would_break",
            Disagreement::Drift => "drift",
            Disagreement::MorCaught => "mor_caught",
        }
    }
}

/// A forwarded API call judged: the gateway's side and MOR's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Judgement {
    /// What the gateway made of the call.
    pub gateway: Judged,
    /// What MOR answered.
    pub mor: MorAnswer,
}

impl Judgement {
    /// Where the two disagree, if they do: a call a reporting layer would
    /// refuse that MOR served; a verified or unchecked call MOR refused for
    /// its hash, key or API switch ([`MorAnswer::refuses_key_or_switch`]).
    pub fn disagreement(self) -> Option<Disagreement> {
        match (self.gateway, self.mor) {
            (Judged::WouldRefuse, MorAnswer::Served) => Some(Disagreement::WouldBreak),
            (Judged::Verified, m) if m.refuses_key_or_switch() => Some(Disagreement::Drift),
            (Judged::Unchecked, m) if m.refuses_key_or_switch() => Some(Disagreement::MorCaught),
            _ => None,
        }
    }
}

/// True when an answer with this `Content-Encoding` (None: no header) can
/// be read as MOR wrote it: no encoding, or `identity`.
pub fn readable(content_encoding: Option<&[u8]>) -> bool {
    content_encoding.is_none_or(|v| {
        let v = v.trim_ascii();
        v.is_empty() || v.eq_ignore_ascii_case(b"identity")
    })
}

/// The first [`PEEK_BYTES`] of an answer as it is relayed, chunk by chunk:
/// every chunk goes on at once; the peek keeps a reference to the first
/// chunk, and copies (at most [`PEEK_BYTES`], once) only when the start of
/// the answer spans chunks.
#[derive(Debug, Default)]
pub struct Peek {
    /// The start of the first chunk, while it is all there is.
    first: Bytes,
    /// Everything peeked, once a second chunk was needed.
    more: Vec<u8>,
}

impl Peek {
    /// Takes what is still needed of `chunk`, the next part of the body.
    pub fn add(&mut self, chunk: &Bytes) {
        let have = self.bytes().len();
        if have >= PEEK_BYTES || chunk.is_empty() {
            return;
        }
        let take = chunk.len().min(PEEK_BYTES - have);
        if have == 0 {
            self.first = chunk.slice(..take);
            return;
        }
        if self.more.is_empty() {
            self.more.reserve_exact(PEEK_BYTES);
            self.more.extend_from_slice(&self.first);
            self.first = Bytes::new();
        }
        self.more.extend_from_slice(&chunk[..take]);
    }

    /// What was peeked so far.
    pub fn bytes(&self) -> &[u8] {
        if self.more.is_empty() {
            &self.first
        } else {
            &self.more
        }
    }

    /// The class of the answer from its `status` and what was peeked.
    pub fn classify(&self, status: u16) -> MorAnswer {
        classify(status, self.bytes())
    }
}

/// Classifies MOR's answer from its status and the first bytes of its body
/// (at most [`PEEK_BYTES`] are looked at).
pub fn classify(status: u16, body: &[u8]) -> MorAnswer {
    if status >= 400 {
        return MorAnswer::HttpError;
    }
    let body = &body[..body.len().min(PEEK_BYTES)];
    // Valid UTF-8 (the usual answer) is checked by std's fast path; the
    // lossy walk only for the rest.
    let text = match std::str::from_utf8(body) {
        Ok(t) => std::borrow::Cow::Borrowed(t),
        Err(_) => String::from_utf8_lossy(body),
    };
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if !trimmed.starts_with('<') {
        // Plain text: the balance actions' numbers, or their two errors.
        return match MorAnswer::of_text(trimmed) {
            MorAnswer::UserNotFound => MorAnswer::UserNotFound,
            MorAnswer::FeatureDisabled => MorAnswer::FeatureDisabled,
            _ => MorAnswer::Served,
        };
    }
    xml_answer(trimmed)
}

/// The error of an XML answer: an `error` element (either case) reached
/// only through `page` and `status` elements before any data element there,
/// or a login `action` whose status is `failed`. Anything else is data.
fn xml_answer(xml: &str) -> MorAnswer {
    let mut reader = Reader::from_str(xml);
    // The elements from the root down to the current one, as tags (no
    // allocation per element: a served answer is parsed up to PEEK_BYTES).
    let mut path: Vec<Tag> = Vec::with_capacity(MAX_DEPTH + 1);
    let envelope = |path: &[Tag]| path.iter().all(|t| matches!(t, Tag::Page | Tag::Status));
    let mut in_error = false;
    let mut error_text = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let tag = Tag::of(e.name().as_ref());
                if tag == Tag::Error && envelope(&path) {
                    in_error = true;
                } else if tag == Tag::Other && envelope(&path) {
                    // Data where MOR puts its error (a root that is data,
                    // or data in `page`/`status`): MOR's error documents
                    // hold the error first and nothing else, so the rest of
                    // a served answer is not parsed.
                    return MorAnswer::Served;
                }
                path.push(tag);
                if path.len() > MAX_DEPTH && !in_error {
                    return MorAnswer::Served;
                }
            }
            Ok(Event::Empty(e)) => {
                let tag = Tag::of(e.name().as_ref());
                if path.is_empty() && tag != Tag::Error {
                    return MorAnswer::Served;
                }
                if tag == Tag::Error && envelope(&path) {
                    return MorAnswer::OtherError;
                }
            }
            Ok(Event::Text(t)) if in_error => {
                error_text.push_str(&String::from_utf8_lossy(&t));
            }
            Ok(Event::Text(t)) => {
                // <action><name>login</name><status>failed</status>…
                let failed = path == [Tag::Action, Tag::Status]
                    && <[u8]>::trim_ascii(&t).eq_ignore_ascii_case(b"failed");
                if failed {
                    return MorAnswer::BadLogin;
                }
            }
            Ok(Event::GeneralRef(r)) if in_error => {
                let name: &[u8] = &r;
                let s = match name {
                    b"amp" => "&",
                    b"lt" => "<",
                    b"gt" => ">",
                    b"quot" => "\"",
                    b"apos" => "'",
                    _ => "",
                };
                error_text.push_str(s);
            }
            Ok(Event::End(_)) => {
                if in_error {
                    return MorAnswer::of_text(&error_text);
                }
                path.pop();
            }
            // The end of what was read (a long answer cut at PEEK_BYTES, or
            // the whole of a short one) with no error seen: data.
            Ok(Event::Eof) => return MorAnswer::Served,
            // Not well formed within what was read: not one of MOR's error
            // documents, which are small and well formed.
            Err(_) => return MorAnswer::Served,
            Ok(_) => {}
        }
    }
}

/// Deeper than this, an element is data (MOR's envelopes are shallow).
const MAX_DEPTH: usize = 4;

/// An element's name as the classifier sees it (ASCII case ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Page,
    Status,
    Action,
    Error,
    Other,
}

impl Tag {
    fn of(name: &[u8]) -> Tag {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        if is(b"page") {
            Tag::Page
        } else if is(b"status") {
            Tag::Status
        } else if is(b"action") {
            Tag::Action
        } else if is(b"error") {
            Tag::Error
        } else {
            Tag::Other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROLOG: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

    #[test]
    fn every_envelope_of_an_error_is_read() {
        for doc in [
            format!("{PROLOG}<status><error>Incorrect hash</error></status>"),
            format!("{PROLOG}\n<page><status><error>Incorrect hash</error></status></page>"),
            format!("{PROLOG}<page><error>Incorrect hash</error></page>"),
            "<error>Incorrect hash</error>".to_string(),
            format!("{PROLOG}<Error>Incorrect hash</Error>"),
            "\u{feff}  <status>\n  <error> Incorrect hash </error>\n</status>\n".to_string(),
        ] {
            assert_eq!(
                classify(200, doc.as_bytes()),
                MorAnswer::IncorrectHash,
                "{doc}"
            );
        }
    }

    #[test]
    fn mors_texts_have_their_classes() {
        let cases = [
            ("API Requests are disabled", MorAnswer::ApiDisabled),
            ("GET Requests are disabled", MorAnswer::GetDisabled),
            ("API must have Secret Key", MorAnswer::NoSecretKey),
            ("Access Denied", MorAnswer::AccessDenied),
            ("Bad login", MorAnswer::BadLogin),
            ("User was not found", MorAnswer::UserNotFound),
            ("user not found", MorAnswer::UserNotFound),
            ("Tariff not found", MorAnswer::OtherError),
            ("Don&apos;t be so smart", MorAnswer::OtherError),
        ];
        for (text, class) in cases {
            let doc = format!("{PROLOG}<status><error>{text}</error></status>");
            assert_eq!(classify(200, doc.as_bytes()), class, "{text}");
        }
        // Plain-text answers of the balance actions.
        assert_eq!(classify(200, b"User not found"), MorAnswer::UserNotFound);
        assert_eq!(
            classify(200, b"Feature disabled\n"),
            MorAnswer::FeatureDisabled
        );
        assert_eq!(classify(200, b"12.5"), MorAnswer::Served);
        // A failed login.
        let login = "<action><name>login</name><status>failed</status><status_message>Login failed</status_message></action>";
        assert_eq!(classify(200, login.as_bytes()), MorAnswer::BadLogin);
        let ok = "<action><name>login</name><status>ok</status></action>";
        assert_eq!(classify(200, ok.as_bytes()), MorAnswer::Served);
    }

    #[test]
    fn data_is_served_even_with_an_error_field_inside() {
        for doc in [
            format!("{PROLOG}<page><user><id>5</id><error>none</error></user></page>"),
            format!("{PROLOG}<status><status>ok</status></status>"),
            format!("{PROLOG}<calls><call><error>Incorrect hash</error></call></calls>"),
            format!("{PROLOG}<page><status>ok</status><users><user><error>x</error></user></users></page>"),
            String::new(),
            "<not xml".to_string(),
        ] {
            assert_eq!(classify(200, doc.as_bytes()), MorAnswer::Served, "{doc}");
        }
    }

    #[test]
    fn data_first_is_served_without_reading_the_rest() {
        // MOR's error documents hold the error and nothing before it.
        let doc = format!(
            "{PROLOG}<page><users><user><id>1</id></user></users><error>Incorrect hash</error></page>"
        );
        assert_eq!(classify(200, doc.as_bytes()), MorAnswer::Served);
        let doc = format!("{PROLOG}<page><status>ok</status><calls/></page>");
        assert_eq!(classify(200, doc.as_bytes()), MorAnswer::Served);
        // The login action's status follows its name.
        let login = "<action><name>login</name><status>failed</status></action>";
        assert_eq!(classify(200, login.as_bytes()), MorAnswer::BadLogin);
    }

    #[test]
    fn only_the_first_bytes_are_read_and_http_errors_are_not_mors_answers() {
        let mut long = format!("{PROLOG}<page><users>");
        while long.len() < 3 * PEEK_BYTES {
            long.push_str("<user><id>1</id></user>");
        }
        long.push_str("</users><error>Incorrect hash</error></page>");
        assert_eq!(classify(200, long.as_bytes()), MorAnswer::Served);
        assert_eq!(
            classify(502, b"<html>Bad Gateway</html>"),
            MorAnswer::HttpError
        );
        assert_eq!(classify(404, b""), MorAnswer::HttpError);
    }

    fn forward(signer: Signer) -> Forward {
        Forward {
            path_and_query: "/billing/api/x".parse().unwrap(),
            signer,
            skipped: None,
            allowance: None,
        }
    }

    #[test]
    fn the_gateway_side_of_a_forwarded_call() {
        let none = CallInfo::default();
        let of = |s| Judged::of(&forward(s), &none);
        assert_eq!(of(Signer::Admin), Some(Judged::Verified));
        assert_eq!(of(Signer::Reseller("r".into())), Some(Judged::Verified));
        assert_eq!(of(Signer::Unchecked), Some(Judged::Unchecked));
        let mut skipped = forward(Signer::Unchecked);
        skipped.skipped = Some(crate::core::decision::Skipped::HashCheckingOff);
        assert_eq!(Judged::of(&skipped, &none), Some(Judged::Unchecked));
        // Not an API call: not judged.
        assert_eq!(of(Signer::PassThrough), None);
        // A layer set to report would have refused it: whoever signed.
        let mut reported = CallInfo::default();
        reported.would_refuse.push(
            crate::core::layers::Guard::Hash,
            crate::core::reply::Reason::BadHash,
        );
        for s in [Signer::Admin, Signer::Unchecked] {
            assert_eq!(
                Judged::of(&forward(s), &reported),
                Some(Judged::WouldRefuse)
            );
        }
        assert_eq!(Judged::of(&forward(Signer::PassThrough), &reported), None);
    }

    #[test]
    fn disagreements_are_exactly_the_two_kinds_of_the_rollout() {
        let kind = |gateway, mor| Judgement { gateway, mor }.disagreement();
        for mor in MorAnswer::ALL {
            let key_or_switch = matches!(
                mor,
                MorAnswer::IncorrectHash
                    | MorAnswer::ApiDisabled
                    | MorAnswer::GetDisabled
                    | MorAnswer::NoSecretKey
            );
            assert_eq!(mor.refuses_key_or_switch(), key_or_switch, "{mor:?}");
            assert_eq!(
                kind(Judged::Verified, mor),
                key_or_switch.then_some(Disagreement::Drift),
                "{mor:?}"
            );
            assert_eq!(
                kind(Judged::Unchecked, mor),
                key_or_switch.then_some(Disagreement::MorCaught),
                "{mor:?}"
            );
            assert_eq!(
                kind(Judged::WouldRefuse, mor),
                (mor == MorAnswer::Served).then_some(Disagreement::WouldBreak),
                "{mor:?}"
            );
        }
        // MOR refusing for the call's data or the caller's rights is not a
        // disagreement about keys or switches.
        assert_eq!(kind(Judged::Verified, MorAnswer::AccessDenied), None);
        assert_eq!(kind(Judged::Verified, MorAnswer::OtherError), None);
    }

    #[test]
    fn only_identity_encoded_answers_are_read() {
        assert!(readable(None));
        assert!(readable(Some(b"identity")));
        assert!(readable(Some(b" Identity ")));
        assert!(readable(Some(b"")));
        assert!(!readable(Some(b"gzip")));
        assert!(!readable(Some(b"br")));
        assert!(!readable(Some(b"identity, gzip")));
        assert_eq!(MorAnswer::unread(200), MorAnswer::Encoded);
        assert_eq!(MorAnswer::unread(502), MorAnswer::HttpError);
    }

    #[test]
    fn the_peek_spans_chunks_and_stops_at_its_limit() {
        let doc = format!("{PROLOG}<status><error>Incorrect hash</error></status>");
        // One chunk: no copy, the chunk's own bytes.
        let mut p = Peek::default();
        let one = Bytes::from(doc.clone());
        p.add(&one);
        assert_eq!(p.bytes().as_ptr(), one.as_ptr());
        assert_eq!(p.classify(200), MorAnswer::IncorrectHash);
        // An error split over many chunks (chunked transfer), empty ones too.
        let mut p = Peek::default();
        for part in doc.as_bytes().chunks(7) {
            p.add(&Bytes::new());
            p.add(&Bytes::copy_from_slice(part));
        }
        assert_eq!(p.bytes(), doc.as_bytes());
        assert_eq!(p.classify(200), MorAnswer::IncorrectHash);
        // Never more than PEEK_BYTES, whatever comes.
        let mut p = Peek::default();
        p.add(&Bytes::from(vec![b'a'; 100]));
        for _ in 0..10 {
            p.add(&Bytes::from(vec![b'b'; 1000]));
            assert!(p.bytes().len() <= PEEK_BYTES);
        }
        assert_eq!(p.bytes().len(), PEEK_BYTES);
        assert!(p.more.capacity() <= PEEK_BYTES);
        let mut p = Peek::default();
        p.add(&Bytes::from(vec![b'c'; 3 * PEEK_BYTES]));
        assert_eq!(p.bytes().len(), PEEK_BYTES);
        assert_eq!(p.classify(200), MorAnswer::Served);
        assert_eq!(Peek::default().classify(502), MorAnswer::HttpError);
    }

    #[test]
    fn labels_are_distinct() {
        for labels in [
            Judged::ALL.iter().map(|j| j.label()).collect::<Vec<_>>(),
            Disagreement::ALL.iter().map(|d| d.label()).collect(),
        ] {
            let mut l = labels.clone();
            l.sort_unstable();
            l.dedup();
            assert_eq!(l.len(), labels.len());
        }
        let mut l: Vec<_> = MorAnswer::ALL.iter().map(|a| a.label()).collect();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), MorAnswer::ALL.len());
    }
}
