//! The simulator's XML: MOR's prolog, escaping, and the three error
//! envelopes. Documents are the prolog immediately followed by the root
//! element, with no whitespace anywhere.

use super::rules::Envelope;

/// The XML prolog MOR sends.
pub const PROLOG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// Content type of every XML answer.
pub const CONTENT_TYPE: &str = "application/xml; charset=utf-8";

/// Escapes `& < > " '` (as `&amp; &lt; &gt; &quot; &apos;`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Appends `<name>text</name>` (text escaped).
pub fn el(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&escape(text));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// The prolog followed by `body`.
pub fn doc(body: &str) -> String {
    let mut s = String::with_capacity(PROLOG.len() + body.len());
    s.push_str(PROLOG);
    s.push_str(body);
    s
}

/// An error document in `envelope`.
pub fn error_doc(envelope: Envelope, message: &str) -> String {
    let mut e = String::new();
    el(&mut e, "error", message);
    doc(&match envelope {
        Envelope::Status => format!("<status>{e}</status>"),
        Envelope::PageStatus => format!("<page><status>{e}</status></page>"),
        Envelope::Page => format!("<page>{e}</page>"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_byte_for_byte() {
        assert_eq!(
            error_doc(Envelope::Status, "Incorrect hash"),
            r#"<?xml version="1.0" encoding="UTF-8"?><status><error>Incorrect hash</error></status>"#
        );
        assert_eq!(
            error_doc(Envelope::PageStatus, "Access Denied"),
            r#"<?xml version="1.0" encoding="UTF-8"?><page><status><error>Access Denied</error></status></page>"#
        );
        assert_eq!(
            error_doc(Envelope::Page, "a<b & \"c\" 'd'"),
            r#"<?xml version="1.0" encoding="UTF-8"?><page><error>a&lt;b &amp; &quot;c&quot; &apos;d&apos;</error></page>"#
        );
    }
}
