//! Where a tenant's webhook may point. A webhook is a request the control plane makes
//! on a tenant's behalf, so a URL that reaches the operator's own network (loopback,
//! private, link-local and cloud metadata addresses, CGNAT, multicast and other
//! special ranges) is refused unless the operator allows that network explicitly
//! (`scheduler.webhook_allowed_networks`). The URL is parsed, never prefix-matched: a
//! host given in any of the forms URL parsers accept (`0x7f.1`, `[::ffff:127.0.0.1]`)
//! is judged by the address it is, user info (`https://good@10.0.0.5`) is refused, and
//! plain `http://` only reaches an allowed network. A host name is judged by what it
//! resolves to when it is called (see the scheduler's resolver).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// Why a webhook URL or address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("is not a URL: {0}")]
    Unparsable(String),
    #[error("must be https:// (plain http:// only to an allowed network)")]
    Scheme,
    #[error("must not carry a user name or password")]
    UserInfo,
    #[error("has no host")]
    NoHost,
    #[error("points to {0}, an internal address (loopback, private, link-local, metadata or special); allow its network in scheduler.webhook_allowed_networks to use it")]
    Internal(IpAddr),
    #[error("scheduler.webhook_allowed_networks: {0:?} is not a network (CIDR)")]
    Network(String),
}

/// The networks an operator allows webhooks to reach although they are internal.
#[derive(Debug, Clone, Default)]
pub struct AllowedNetworks(Vec<IpNet>);

impl AllowedNetworks {
    pub fn parse(networks: &[String]) -> Result<Self, TargetError> {
        networks
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| TargetError::Network(text.clone()))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(&ip))
    }

    /// Whether a webhook may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> Result<(), TargetError> {
        if is_internal(ip) && !self.contains(canonical(ip)) && !self.contains(ip) {
            return Err(TargetError::Internal(ip));
        }
        Ok(())
    }

    /// Checks a webhook URL as far as it can be checked without resolving it.
    pub fn check_url(&self, text: &str) -> Result<Url, TargetError> {
        let url = Url::parse(text).map_err(|e| TargetError::Unparsable(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::UserInfo);
        }
        let literal = match url.host() {
            None => return Err(TargetError::NoHost),
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(Host::Domain(_)) => None,
        };
        if let Some(ip) = literal {
            self.permits(ip)?;
        }
        match url.scheme() {
            "https" => Ok(url),
            "http" if literal.is_some_and(|ip| self.contains(canonical(ip))) => Ok(url),
            _ => Err(TargetError::Scheme),
        }
    }
}

/// An IPv4 address carried in an IPv6 one (mapped, NAT64, 6to4) as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form (::a.b.c.d).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0, 0, _, _] => Some(tail()),
        // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Whether `ip` is anything but a public unicast address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_internal_v4(v4),
            None => is_internal_v6(v6),
        },
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata services live here
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relays
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local() // fc00::/7, where fd00:ec2::254 (a metadata service) is
        || ip.is_unicast_link_local()
        || (first & 0xffc0) == 0xfec0 // site-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || (first == 0x2001 && ip.segments()[1] == 0) // Teredo
        || (first == 0x0100 && ip.segments()[1..4] == [0, 0, 0]) // discard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> AllowedNetworks {
        AllowedNetworks::default()
    }

    #[test]
    fn every_ssrf_form_is_refused() {
        for url in [
            // A name that looks local is not resolved here, and plain http is refused.
            "http://localhost.evil/hook",
            // User info: the host is 10.0.0.5, whatever the prefix suggests.
            "https://127.0.0.1@10.0.0.5/hook",
            "http://127.0.0.1@10.0.0.5/hook",
            "https://10.0.0.5/hook",
            "https://172.16.3.4/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/",
            "https://100.64.0.1/",
            "https://127.0.0.1/",
            "https://0x7f.1/",
            "https://2130706433/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://[64:ff9b::a00:5]/",
            "https://[2002:a00:5::]/",
            "https://[fe80::1]/",
            "https://224.0.0.1/",
            "https://0.0.0.0/",
            "https://255.255.255.255/",
            "ftp://example.com/",
            "http://example.com/hook",
            "not a url",
        ] {
            assert!(none().check_url(url).is_err(), "{url} must be refused");
        }
    }

    #[test]
    fn public_https_passes_and_an_allowed_network_opens_http_to_it() {
        assert!(none().check_url("https://hooks.example.com/x").is_ok());
        assert!(none().check_url("https://93.184.216.34/x").is_ok());
        assert!(none().check_url("https://[2606:2800:220:1::1]/x").is_ok());
        let loopback = AllowedNetworks::parse(&["127.0.0.0/8".into()]).unwrap();
        assert!(loopback.check_url("http://127.0.0.1:9000/x").is_ok());
        assert!(loopback
            .check_url("http://[::ffff:127.0.0.1]:9000/x")
            .is_ok());
        assert!(loopback.check_url("http://10.0.0.5/x").is_err());
        // Allowing a network does not allow plain http to a name.
        assert!(loopback.check_url("http://localhost:9000/x").is_err());
        assert!(AllowedNetworks::parse(&["nonsense".into()]).is_err());
    }

    #[test]
    fn resolved_addresses_are_judged_the_same_way() {
        let none = none();
        assert!(none.permits("127.0.0.1".parse().unwrap()).is_err());
        assert!(none.permits("::ffff:10.1.2.3".parse().unwrap()).is_err());
        assert!(none.permits("8.8.8.8".parse().unwrap()).is_ok());
    }
}
