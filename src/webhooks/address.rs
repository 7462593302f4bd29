//! Which addresses a webhook may be sent to: never private, link-local, loopback or otherwise
//! internal ones (SSRF), unless the host is listed in `eventstore.webhook_allowed_hosts`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether an address is internal: loopback, private, link-local, unspecified, CGNAT,
/// multicast, broadcast, documentation or unique-local.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0) // NAT64 well-known prefix base
        }
    }
}

fn internal_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT 100.64.0.0/10
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
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

    #[test]
    fn internal_ranges() {
        for internal in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "::1", "fe80::1", "fd00::1", "::ffff:127.0.0.1"] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
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
