//! Which addresses a webhook may be sent to: never private, link-local, loopback or otherwise
//! internal ones (SSRF), unless the host is listed in `eventstore.webhook_allowed_hosts`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IANA special-purpose address registries (IPv4 and IPv6), plus multicast: every block a
/// webhook must not reach. An IPv6 form that carries an IPv4 address (IPv4-mapped and
/// -compatible, NAT64, 6to4, Teredo) is refused whole, whatever address it carries.
const DENIED_V4: [(Ipv4Addr, u8); 20] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),        // "this network"
    (Ipv4Addr::new(10, 0, 0, 0), 8),       // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),    // shared address space (carrier-grade NAT)
    (Ipv4Addr::new(127, 0, 0, 0), 8),      // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),   // link-local
    (Ipv4Addr::new(172, 16, 0, 0), 12),    // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),     // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),     // documentation (TEST-NET-1)
    (Ipv4Addr::new(192, 31, 196, 0), 24),  // AS112-v4
    (Ipv4Addr::new(192, 52, 193, 0), 24),  // AMT
    (Ipv4Addr::new(192, 88, 99, 0), 24),   // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),   // private
    (Ipv4Addr::new(192, 175, 48, 0), 24),  // direct delegation AS112 service
    (Ipv4Addr::new(198, 18, 0, 0), 15),    // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24),  // documentation (TEST-NET-2)
    (Ipv4Addr::new(203, 0, 113, 0), 24),   // documentation (TEST-NET-3)
    (Ipv4Addr::new(224, 0, 0, 0), 4),      // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),      // reserved
    (Ipv4Addr::new(255, 255, 255, 255), 32), // limited broadcast
    (Ipv4Addr::new(127, 0, 53, 53), 32),   // name collision occurrence (inside loopback; listed for completeness)
];

const DENIED_V6: [(Ipv6Addr, u8); 17] = [
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96),              // unspecified, loopback, IPv4-compatible ::a.b.c.d
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),         // IPv4-mapped ::ffff:a.b.c.d
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96),         // IPv4-translated ::ffff:0:a.b.c.d
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),      // NAT64 well-known prefix
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),      // NAT64 local-use prefix
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),          // discard-only
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),         // IETF protocol assignments (Teredo 2001::/32 among them)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),     // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),         // 6to4
    (Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0), 48), // direct delegation AS112 service
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),         // documentation
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16),         // segment routing (SRv6) SIDs
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),          // unique-local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),         // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),         // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),          // multicast
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),             // loopback (inside ::/96; listed for completeness)
];

fn in_block(address: u128, network: u128, prefix: u8, bits: u32) -> bool {
    let mask = if prefix == 0 { 0 } else { u128::MAX << (bits - prefix as u32) } & (u128::MAX >> (128 - bits));
    address & mask == network & mask
}

/// Whether a webhook must not reach `ip`: it is in a special-purpose block (loopback, private,
/// link-local, CGNAT, documentation, benchmarking, reserved, broadcast, multicast, unique- and
/// site-local, and every IPv6 form that embeds an IPv4 address).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let address = u32::from(v4) as u128;
            DENIED_V4.iter().any(|(net, prefix)| in_block(address, u32::from(*net) as u128, *prefix, 32))
        }
        IpAddr::V6(v6) => {
            let address = u128::from(v6);
            DENIED_V6.iter().any(|(net, prefix)| in_block(address, u128::from(*net), *prefix, 128))
        }
    }
}

/// Whether `host` (a name or an address literal) is in the comma-separated allow list.
pub fn allowed(host: &str, allow_list: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    allow_list.split(',').map(str::trim).any(|a| !a.is_empty() && a.eq_ignore_ascii_case(host))
}

/// A URL's scheme, host and port, for http and https only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// Parses an absolute http(s) URL far enough to check where it goes.
pub fn target(url: &str) -> Result<Target, String> {
    let (scheme, rest) = url.split_once("://").ok_or("the URL has no scheme")?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        other => return Err(format!("the scheme \"{other}\" is not allowed; use http or https")),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL has no valid host".into());
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| format!("the port \"{p}\" is not valid"))?,
        None if https => 443,
        None => 80,
    };
    Ok(Target { https, host: host.to_ascii_lowercase(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (address, refused?) over every block of the registries and their edges.
    const ADDRESSES: &[(&str, bool)] = &[
        ("0.0.0.0", true), ("0.255.255.255", true), ("1.0.0.0", false),
        ("10.1.2.3", true), ("9.255.255.255", false), ("11.0.0.0", false),
        ("100.64.0.1", true), ("100.127.255.255", true), ("100.63.255.255", false), ("100.128.0.0", false),
        ("127.0.0.1", true), ("127.255.255.254", true),
        ("169.254.169.254", true), ("169.253.0.1", false),
        ("172.16.0.1", true), ("172.31.255.255", true), ("172.15.255.255", false), ("172.32.0.0", false),
        ("192.0.0.8", true), ("192.0.0.255", true), ("192.0.1.0", false),
        ("192.0.2.1", true), ("192.31.196.1", true), ("192.52.193.1", true), ("192.88.99.1", true),
        ("192.168.1.1", true), ("192.169.0.1", false), ("192.175.48.1", true),
        ("198.18.0.1", true), ("198.19.255.255", true), ("198.17.255.255", false), ("198.20.0.0", false),
        ("198.51.100.7", true), ("203.0.113.9", true), ("203.0.114.0", false),
        ("224.0.0.1", true), ("239.255.255.255", true), ("240.0.0.1", true), ("255.255.255.255", true),
        ("93.184.216.34", false), ("8.8.8.8", false), ("1.1.1.1", false), ("223.255.255.255", false),
        ("::", true), ("::1", true), ("::127.0.0.1", true), ("::8.8.8.8", true),
        ("::ffff:127.0.0.1", true), ("::ffff:8.8.8.8", true), ("::ffff:0:7f00:1", true),
        ("64:ff9b::7f00:1", true), ("64:ff9b::808:808", true), ("64:ff9b:1::1", true), ("64:ff9b:2::1", false),
        ("100::1", true), ("100:0:0:1::1", false),
        ("2001::1", true), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", true), ("2001:1ff::1", true), ("2001:200::1", false),
        ("2001:db8::1", true), ("2002:7f00:1::1", true), ("2002::", true), ("2003::1", false),
        ("2620:4f:8000::1", true), ("3fff::1", true), ("3fff:1000::1", false), ("5f00::1", true),
        ("fc00::1", true), ("fd00::1", true), ("fe80::1", true), ("febf::1", true), ("fec0::1", true), ("feff::1", true),
        ("ff02::1", true), ("ff0e::1", true),
        ("2606:4700::1111", false), ("2a00:1450:4001::1", false), ("2001:4860:4860::8888", false),
    ];

    #[test]
    fn special_purpose_addresses_are_refused() {
        for (address, refused) in ADDRESSES {
            assert_eq!(is_internal(address.parse().unwrap()), *refused, "{address}");
        }
    }

    #[test]
    fn allow_list() {
        assert!(allowed("127.0.0.1", "127.0.0.1"));
        assert!(allowed("LOCALHOST", "example.com, localhost"));
        assert!(!allowed("127.0.0.2", "127.0.0.1"));
        assert!(!allowed("x", ""));
    }

    #[test]
    fn targets() {
        assert_eq!(target("http://127.0.0.1:8080/hook?a=1").unwrap(), Target { https: false, host: "127.0.0.1".into(), port: 8080 });
        assert_eq!(target("https://Example.com/x").unwrap(), Target { https: true, host: "example.com".into(), port: 443 });
        assert_eq!(target("http://[::1]:9/").unwrap().host, "::1");
        assert!(target("ftp://example.com").unwrap_err().contains("scheme"));
        assert!(target("example.com").is_err());
        assert!(target("http://user:pw@example.com/").is_err());
        assert!(target("http://example.com:99999/").is_err());
        assert!(target("http:///x").is_err());
    }
}
