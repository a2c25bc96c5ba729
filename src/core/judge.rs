//! MOR as the judge: what MOR answered a forwarded call, read from the
//! start of its answer. MOR answers every call it receives with data or with
//! one of its own error texts, in the envelope of the action (`<status>`,
//! `<page><status>`, `<page>`, a bare `<Error>`, plain text for the balance
//! actions, a failed `<action>` for login). The class tells a rollout
//! whether MOR agreed with the gateway.

use quick_xml::events::Event;
use quick_xml::Reader;

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
}

impl MorAnswer {
    /// Every class, for metric pre-registration.
    pub const ALL: [MorAnswer; 11] = [
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

/// Classifies MOR's answer from its status and the first bytes of its body
/// (at most [`PEEK_BYTES`] are looked at).
pub fn classify(status: u16, body: &[u8]) -> MorAnswer {
    if status >= 400 {
        return MorAnswer::HttpError;
    }
    let body = &body[..body.len().min(PEEK_BYTES)];
    let text = String::from_utf8_lossy(body);
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
/// only through `page` and `status` elements, or a login `action` whose
/// status is `failed`. Anything else is data.
fn xml_answer(xml: &str) -> MorAnswer {
    let mut reader = Reader::from_str(xml);
    // Element names from the root down to the current element.
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut in_error = false;
    let mut error_text = String::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let name = e.name().as_ref().to_ascii_lowercase();
                let envelope = path.iter().all(|n| n == b"page" || n == b"status");
                if name == b"error" && envelope {
                    in_error = true;
                } else if path.is_empty()
                    && !matches!(name.as_slice(), b"page" | b"status" | b"action")
                {
                    // A document whose root is data.
                    return MorAnswer::Served;
                }
                path.push(name);
                if path.len() > 4 && !in_error {
                    return MorAnswer::Served;
                }
            }
            Ok(Event::Empty(e)) => {
                let name = e.name().as_ref().to_ascii_lowercase();
                if path.is_empty() && name != b"error" {
                    return MorAnswer::Served;
                }
                if name == b"error" && path.iter().all(|n| n == b"page" || n == b"status") {
                    return MorAnswer::OtherError;
                }
            }
            Ok(Event::Text(t)) if in_error => {
                error_text.push_str(&String::from_utf8_lossy(&t));
            }
            Ok(Event::Text(t)) => {
                // <action><name>login</name><status>failed</status>…
                let failed = path.len() == 2
                    && path[0] == b"action"
                    && path[1] == b"status"
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

    #[test]
    fn labels_are_distinct() {
        let mut l: Vec<_> = MorAnswer::ALL.iter().map(|a| a.label()).collect();
        l.sort_unstable();
        l.dedup();
        assert_eq!(l.len(), MorAnswer::ALL.len());
    }
}
