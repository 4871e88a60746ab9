//! API key hashing and client IP pseudonymisation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Hex SHA-256 of an API key, as stored in the tenant config.
pub fn hash_api_key(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

/// Whether `api_key` hashes to `expected_sha256_hex`, compared in constant time.
pub fn api_key_matches(api_key: &str, expected_sha256_hex: &str) -> bool {
    let Ok(expected) = hex::decode(expected_sha256_hex) else {
        return false;
    };
    let actual = Sha256::digest(api_key.as_bytes());
    actual.as_slice().ct_eq(&expected).into()
}

/// The network an address belongs to, as far as Locality keeps it: IPv4 /24, IPv6 /48
/// (an IPv4 address mapped into IPv6 counts as IPv4).
pub fn truncate_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => truncate_ip(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
            }
        },
    }
}

/// Turns client IPs into pseudonyms for one rotation period: the address is truncated
/// to its network first, then keyed-hashed with the period's key. Pseudonyms of
/// different periods cannot be linked once a period's key is gone.
pub struct IpPseudonymiser {
    key: Vec<u8>,
    period: i64,
}

impl IpPseudonymiser {
    /// `secret` is the operator's pseudonymisation key, `period_key` the random key of
    /// rotation period `period`; both are needed to recompute a pseudonym.
    pub fn new(secret: &[u8], period: i64, period_key: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
        mac.update(&period.to_be_bytes());
        mac.update(period_key);
        Self {
            key: mac.finalize().into_bytes().to_vec(),
            period,
        }
    }

    /// The rotation period this pseudonymiser is for.
    pub fn period(&self) -> i64 {
        self.period
    }

    /// `ip2-PERIOD-HEX`: 128 bits of HMAC-SHA256 over the truncated address.
    pub fn pseudonym(&self, ip: IpAddr) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(truncate_ip(ip).to_string().as_bytes());
        format!(
            "ip2-{}-{}",
            self.period,
            hex::encode(&mac.finalize().into_bytes()[..16])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_hash_round_trips_and_rejects_others() {
        let hash = hash_api_key("demo-eu-key");
        assert!(api_key_matches("demo-eu-key", &hash));
        assert!(!api_key_matches("demo-ca-key", &hash));
        assert!(!api_key_matches("demo-eu-key", "not-hex"));
    }

    #[test]
    fn addresses_are_truncated_to_their_network() {
        let cases = [
            ("203.0.113.77", "203.0.113.0"),
            ("2001:db8:abcd:12:3456::1", "2001:db8:abcd::"),
            ("::ffff:198.51.100.9", "198.51.100.0"),
        ];
        for (ip, network) in cases {
            assert_eq!(
                truncate_ip(ip.parse().unwrap()).to_string(),
                network,
                "{ip}"
            );
        }
    }

    #[test]
    fn a_pseudonym_hides_the_address_keeps_the_network_and_changes_with_the_period() {
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        let same_network: IpAddr = "203.0.113.200".parse().unwrap();
        let other_network: IpAddr = "203.0.114.77".parse().unwrap();
        let today = IpPseudonymiser::new(b"secret", 20_000, b"period-key");
        let a = today.pseudonym(ip);
        assert!(a.starts_with("ip2-20000-"), "{a}");
        assert!(!a.contains("203.0.113"));
        assert_eq!(a, today.pseudonym(same_network));
        assert_ne!(a, today.pseudonym(other_network));
        let tomorrow = IpPseudonymiser::new(b"secret", 20_001, b"another-key");
        assert_ne!(
            a["ip2-20000-".len()..],
            tomorrow.pseudonym(ip)["ip2-20001-".len()..]
        );
        let other_secret = IpPseudonymiser::new(b"other", 20_000, b"period-key");
        assert_ne!(a, other_secret.pseudonym(ip));
    }
}
