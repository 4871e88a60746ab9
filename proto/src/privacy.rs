//! API key hashing and client IP pseudonymisation.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
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

/// Keyed pseudonym of an IP address: stable for one key, unlinkable without it.
///
/// The raw address is never stored; rotating the key unlinks old pseudonyms.
pub fn pseudonymise_ip(ip: IpAddr, key: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(ip.to_string().as_bytes());
    format!("ip1-{}", hex::encode(&mac.finalize().into_bytes()[..16]))
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
    fn pseudonym_hides_the_address_and_depends_on_the_key() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let a = pseudonymise_ip(ip, b"key-one");
        assert_eq!(a, pseudonymise_ip(ip, b"key-one"));
        assert_ne!(a, pseudonymise_ip(ip, b"key-two"));
        assert!(!a.contains("203.0.113"));
    }
}
