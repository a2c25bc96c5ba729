//! Who the client is. Behind a trusted balancer the connection's peer is the
//! balancer, and the client is the right-most `X-Forwarded-For` address that
//! is not itself a trusted balancer; from any other peer, headers claiming
//! an address are ignored. Pure: addresses in, an address out.

use std::net::IpAddr;

use ipnet::IpNet;

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The client address of a connection from `peer` that carried the
/// `X-Forwarded-For` header lines `xff` (in order). Walks the list from the
/// right while each hop is trusted; an entry that does not parse stops the
/// walk at the last trusted hop.
pub fn address<'a>(
    peer: IpAddr,
    xff: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let entries: Vec<&str> = xff.into_iter().flat_map(|l| l.split(',')).collect();
    let mut current = peer;
    for e in entries.iter().rev() {
        match e.trim().parse::<IpAddr>() {
            Ok(ip) => {
                current = canonical(ip);
                if !is_trusted(&current) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let t = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            address(ip("203.0.113.9"), ["6.6.6.6"], &t),
            ip("203.0.113.9")
        );
        assert_eq!(
            address(ip("203.0.113.9"), ["6.6.6.6"], &[]),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn right_most_untrusted_address_behind_trusted_balancers() {
        let t = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap().into(),
        ];
        assert_eq!(
            address(ip("10.0.0.1"), ["6.6.6.6, 198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            address(ip("10.0.0.1"), ["6.6.6.6", "198.51.100.7, 10.1.1.1"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            address(ip("10.0.0.1"), ["10.2.2.2, 10.3.3.3"], &t),
            ip("10.2.2.2")
        );
        assert_eq!(
            address(ip("10.0.0.1"), ["garbage, 10.3.3.3"], &t),
            ip("10.3.3.3")
        );
        assert_eq!(
            address(ip("10.0.0.1"), std::iter::empty(), &t),
            ip("10.0.0.1")
        );
        assert_eq!(
            address(ip("::ffff:10.0.0.1"), ["::ffff:198.51.100.7"], &t),
            ip("198.51.100.7")
        );
    }
}
