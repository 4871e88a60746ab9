//! The signature on every webhook POST: `Locality-Signature: t=UNIX_SECONDS,v1=HEX`,
//! where HEX is the HMAC-SHA256, keyed with the webhook's secret, of `UNIX_SECONDS.`
//! followed by the request body exactly as sent. [`verify_signature`] is the check a
//! receiver makes.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const SIGNATURE_HEADER: &str = "locality-signature";

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    mac
}

/// The `Locality-Signature` value of `body` sent at `timestamp` (Unix seconds).
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = hex::encode(mac(secret, timestamp, body).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

/// A receiver's check: the signature matches the body and the secret, and it was made
/// within `tolerance` of `now` (Unix seconds), so an old delivery cannot be replayed.
pub fn verify_signature(secret: &str, header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signature = hex::decode(value).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return false;
    };
    (now - timestamp).abs() <= tolerance
        && mac(secret, timestamp, body)
            .verify_slice(&signature)
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_tampering_fails() {
        let header = signature_header("whsec-0123456789abcdef", 1000, b"{\"a\":1}");
        assert!(verify_signature(
            "whsec-0123456789abcdef",
            &header,
            b"{\"a\":1}",
            1010,
            300
        ));
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &header,
            b"{\"a\":2}",
            1010,
            300
        ));
        assert!(!verify_signature(
            "another-secret-0000000",
            &header,
            b"{\"a\":1}",
            1010,
            300
        ));
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &header,
            b"{\"a\":1}",
            5000,
            300
        ));
        let forged = header.replace("v1=", "v1=00");
        assert!(!verify_signature(
            "whsec-0123456789abcdef",
            &forged,
            b"{\"a\":1}",
            1010,
            300
        ));
    }
}
