//! Who the client is. Behind a trusted balancer the connection's peer is the
//! balancer, and the client is the right-most `X-Forwarded-For` address that
//! is not itself a trusted balancer; from any other peer, and on a
//! connection whose PROXY protocol header named (or declined to name) the
//! client, headers claiming an address are ignored. Per-address decisions
//! group IPv6 clients by network prefix ([`group`]). Pure: addresses in, an
//! address out.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// An IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The key of per-address decisions (connection caps, the body budget's
/// share, per-IP limits, lockouts): an IPv4 address itself, an IPv6 address
/// masked to its first `v6_prefix` bits (one /64 is one customer's LAN, not
/// 2^64 clients).
pub fn group(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.1:80`, `[2001:db8::1]:443`), surrounded by optional spaces.
fn entry(e: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(e.trim_ascii()).ok()?;
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(canonical)
}

/// The client address of a connection from `peer` that carried the
/// `X-Forwarded-For` header lines `xff` (in order, as received bytes).
/// `proxy_protocol`: the connection began with a PROXY protocol header,
/// which alone names the client (`peer` is what it named; LOCAL and UNKNOWN
/// leave the balancer itself). Otherwise walks the entries from the right
/// while each is a trusted balancer; the walk stops at the first entry that
/// is not an address, keeping the last trusted hop (a line with a bad entry
/// still gives the entries to its right).
pub fn address<'a>(
    peer: IpAddr,
    xff: impl IntoIterator<Item = &'a [u8]>,
    trusted: &[IpNet],
    proxy_protocol: bool,
) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if proxy_protocol || !is_trusted(&peer) {
        return peer;
    }
    let lines: Vec<&[u8]> = xff.into_iter().collect();
    let mut current = peer;
    for e in lines.iter().rev().flat_map(|l| l.rsplit(|&b| b == b',')) {
        match entry(e) {
            Some(ip) => {
                current = ip;
                if !is_trusted(&current) {
                    break;
                }
            }
            None => break,
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

    fn addr(peer: &str, xff: &[&str], t: &[IpNet]) -> IpAddr {
        address(ip(peer), xff.iter().map(|l| l.as_bytes()), t, false)
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let t = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(addr("203.0.113.9", &["6.6.6.6"], &t), ip("203.0.113.9"));
        assert_eq!(addr("203.0.113.9", &["6.6.6.6"], &[]), ip("203.0.113.9"));
    }

    #[test]
    fn right_most_untrusted_address_behind_trusted_balancers() {
        let t = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap().into(),
        ];
        assert_eq!(
            addr("10.0.0.1", &["6.6.6.6, 198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            addr("10.0.0.1", &["6.6.6.6", "198.51.100.7, 10.1.1.1"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            addr("10.0.0.1", &["10.2.2.2, 10.3.3.3"], &t),
            ip("10.2.2.2")
        );
        assert_eq!(addr("10.0.0.1", &["garbage, 10.3.3.3"], &t), ip("10.3.3.3"));
        assert_eq!(addr("10.0.0.1", &[], &t), ip("10.0.0.1"));
        assert_eq!(
            addr("::ffff:10.0.0.1", &["::ffff:198.51.100.7"], &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            addr("10.0.0.1", &["198.51.100.7:4711", "[2001:db8::1]:443"], &t),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn a_bad_entry_stops_the_walk_not_the_line() {
        let t = vec!["10.0.0.0/8".parse().unwrap()];
        // nginx appends the client's address to the client's own header, on
        // one line: a non-ASCII byte in the client's part must not make the
        // balancer the client.
        let line = b"6.6.6.\xff6, 198.51.100.7".as_slice();
        assert_eq!(
            address(ip("10.0.0.1"), [line], &t, false),
            ip("198.51.100.7")
        );
        let line = b"198.51.100.7, 10.0.0.2, \xc3\xa9".as_slice();
        assert_eq!(address(ip("10.0.0.1"), [line], &t, false), ip("10.0.0.1"));
        let line = b"203.0.113.5, junk, 10.0.0.2".as_slice();
        assert_eq!(address(ip("10.0.0.1"), [line], &t, false), ip("10.0.0.2"));
    }

    #[test]
    fn after_a_proxy_protocol_header_no_header_is_believed() {
        let t = vec!["10.0.0.0/8".parse().unwrap()];
        // LOCAL / UNKNOWN leave the balancer as the peer: still not believed.
        let xff = [b"6.6.6.6".as_slice()];
        assert_eq!(address(ip("10.0.0.1"), xff, &t, true), ip("10.0.0.1"));
        assert_eq!(
            address(ip("198.51.100.7"), xff, &t, true),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1"), 64), ip("2001:db8:1:2::"));
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1"), 48), ip("2001:db8:1::"));
        assert_eq!(
            group(ip("2001:db8:1:2:aaaa::1"), 128),
            ip("2001:db8:1:2:aaaa::1")
        );
        assert_eq!(group(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(group(ip("198.51.100.7"), 64), ip("198.51.100.7"));
        assert_eq!(group(ip("::ffff:198.51.100.7"), 64), ip("198.51.100.7"));
    }
}
