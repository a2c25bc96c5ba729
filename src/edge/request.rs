//! How the gateway reads a request's head: the client's address, the view
//! the decision core gets, the path as logs show it.

use std::net::{IpAddr, Ipv4Addr};

use http::header;
use pingora::proxy::Session;

use crate::config::Settings;
use crate::core::decision::Head;
use crate::core::route::redact_path;
use crate::edge::phase;
use crate::edge::state::Shared;

/// The client's address: the peer (the PROXY protocol's client, when the
/// connection began with a PROXY header), or behind a trusted balancer the
/// right-most untrusted `X-Forwarded-For` address ([`crate::core::client`]).
pub(crate) fn client_ip(session: &Session, settings: &Settings) -> IpAddr {
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let xff = session
        .req_header()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.as_bytes());
    crate::core::client::address(
        peer,
        xff,
        &settings.client.trusted_proxies,
        phase::proxy_protocol_used(),
    )
}

/// The request head as the decision core reads it.
pub(crate) fn head_of(session: &Session, ip: IpAddr) -> Head<'_> {
    let req = session.req_header();
    Head {
        method: req.method.as_str(),
        path: req.uri.path(),
        query: req.uri.query(),
        content_type: req
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        client_ip: ip,
    }
}

/// A path as logs show it, and whether its action's id is a secret (then
/// its `id` query values are redacted too).
pub(crate) fn shown_path<'a>(shared: &Shared, path: &'a str) -> (std::borrow::Cow<'a, str>, bool) {
    let st = shared.state.load();
    let p = &st.settings.policy;
    let shown = redact_path(path, &p.prefix, &p.catalog);
    let pre = p.prefix.split('/').filter(|s| !s.is_empty()).count();
    let secret = path
        .split('/')
        .filter(|s| !s.is_empty())
        .nth(pre)
        .is_some_and(|a| crate::core::route::secret_action(a, &p.catalog));
    (shown, secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::testing::session_of;
    use std::collections::HashMap;

    fn settings(tables: &str) -> Settings {
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:1\"]\n[secrets]\nadmin_key_env = \"K\"\n{tables}"
        );
        Settings::from_toml(&text, None, &HashMap::from([("K", "k")])).unwrap()
    }

    #[tokio::test]
    async fn the_client_address_comes_from_the_peer_unless_it_is_a_trusted_balancer() {
        let raw = b"GET /billing/api/x HTTP/1.1\r\nHost: m\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 203.0.113.9, 10.0.0.5\r\n\r\n";
        // A mock peer has no address: 0.0.0.0, which is not trusted here,
        // so X-Forwarded-For is not believed.
        let s = session_of(raw).await;
        assert_eq!(
            client_ip(&s, &settings("")),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        );
        // Trusted (with the balancer in front of it): every header line is
        // read, right to left, and the first untrusted address is the client.
        let trusted = "[client]\ntrusted_proxies = [\"0.0.0.0/32\", \"10.0.0.0/8\"]\n";
        assert_eq!(
            client_ip(&s, &settings(trusted)),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }
}
