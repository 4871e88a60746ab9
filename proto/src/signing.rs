//! Signed messages between the scheduler and a region's workers: job messages and
//! requests one way, results and reports the other. Broker credentials alone let
//! someone publish to a region's queues; only the region's message key makes a
//! message a worker or the scheduler acts on.
//!
//! The signature is `KEY_ID:HEX` in the `locality-signature` header: HMAC-SHA256 over
//! `locality-message-v2`, then the message's direction (`to-region`, `to-scheduler`),
//! its kind (`job`, `request`, `event`), its routing key, its attempt and its tenant
//! header, each followed by a newline, then the body. A signed job cannot be replayed as
//! an event, onto another queue, or as another attempt.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const DOMAIN: &[u8] = b"locality-message-v2\n";
const MIN_KEY_BYTES: usize = 32;

/// Why a message's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the message is not signed")]
    Missing,
    #[error("the signature is not KEY_ID:HEX")]
    Malformed,
    #[error("the signature names key {0:?}, which this region does not have")]
    UnknownKey(String),
    #[error("the signature does not match the message (tampered, or signed by another key)")]
    Mismatch,
}

/// A region's message keys: the current one signs, every one verifies.
#[derive(Clone)]
pub struct MessageKeys {
    signing_id: String,
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKeys")
            .field("signing_id", &self.signing_id)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the scheduler (or a region's worker, retrying) to a region's workers.
    ToRegion,
    /// From a region's workers to the scheduler.
    ToScheduler,
}

/// What a signature binds besides the body: where and how the message travels.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub direction: Direction,
    /// `job`, `request` or `event`.
    pub kind: &'a str,
    pub routing_key: &'a str,
    /// The `locality-attempt` header (1 when absent).
    pub attempt: u32,
    /// The `locality-tenant` header.
    pub tenant: &'a str,
}

fn mac(key: &[u8], context: &Context<'_>, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    let direction = match context.direction {
        Direction::ToRegion => "to-region",
        Direction::ToScheduler => "to-scheduler",
    };
    for part in [
        direction,
        context.kind,
        context.routing_key,
        &context.attempt.to_string(),
        context.tenant,
    ] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    mac.update(body);
    mac
}

impl MessageKeys {
    /// Checks a region's `message_keys` and `message_key_id` (none at all is allowed
    /// here; the distributed commands require them).
    pub fn check(
        keys: &BTreeMap<String, SecretString>,
        signing_id: Option<&str>,
    ) -> Result<(), String> {
        for (id, key) in keys {
            if id.is_empty() || id.contains(':') {
                return Err(format!("key id {id:?} must be non-empty and without ':'"));
            }
            if !hex::decode(key.expose_secret()).is_ok_and(|key| key.len() >= MIN_KEY_BYTES) {
                return Err(format!(
                    "key {id:?} must be at least {MIN_KEY_BYTES} bytes as hex (`locality keygen` makes one)"
                ));
            }
        }
        match signing_id {
            Some(id) if !keys.contains_key(id) => {
                Err(format!("message_key_id {id:?} is not one of message_keys"))
            }
            None if !keys.is_empty() => Err("message_key_id must name the key that signs".into()),
            _ => Ok(()),
        }
    }

    /// The keys (`regions.ID.message_keys`, hex) with the one that signs, if any.
    pub fn new(keys: &BTreeMap<String, SecretString>, signing_id: Option<&str>) -> Option<Self> {
        let signing_id = signing_id?.to_string();
        let keys: BTreeMap<String, Vec<u8>> = keys
            .iter()
            .filter_map(|(id, key)| Some((id.clone(), hex::decode(key.expose_secret()).ok()?)))
            .collect();
        keys.contains_key(&signing_id)
            .then_some(Self { signing_id, keys })
    }

    /// The `locality-signature` header of a message with this context and body.
    pub fn sign(&self, context: &Context<'_>, body: &[u8]) -> String {
        let key = &self.keys[&self.signing_id];
        let tag = mac(key, context, body).finalize().into_bytes();
        format!("{}:{}", self.signing_id, hex::encode(tag))
    }

    /// Whether `header` is a valid signature of this message by one of the keys.
    pub fn verify(
        &self,
        header: Option<&str>,
        context: &Context<'_>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let (id, tag) = header.split_once(':').ok_or(SignatureError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| SignatureError::Malformed)?;
        let key = self
            .keys
            .get(id)
            .ok_or_else(|| SignatureError::UnknownKey(id.to_string()))?;
        mac(key, context, body)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(keys: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
        keys.iter()
            .map(|(id, key)| (id.to_string(), SecretString::from(*key)))
            .collect()
    }

    const K1: &str = "0101010101010101010101010101010101010101010101010101010101010101";
    const K2: &str = "0202020202020202020202020202020202020202020202020202020202020202";

    fn job<'a>(tenant: &'a str, attempt: u32) -> Context<'a> {
        Context {
            direction: Direction::ToRegion,
            kind: "job",
            routing_key: "interactive",
            attempt,
            tenant,
        }
    }

    #[test]
    fn a_signed_message_verifies_and_any_change_is_refused() {
        let keys = MessageKeys::new(&keys(&[("k1", K1)]), Some("k1")).unwrap();
        let body = br#"{"job_id":"1"}"#;
        let signature = keys.sign(&job("acme", 1), body);
        assert!(signature.starts_with("k1:"));
        assert_eq!(keys.verify(Some(&signature), &job("acme", 1), body), Ok(()));
        assert_eq!(
            keys.verify(None, &job("acme", 1), body),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            keys.verify(Some(&signature), &job("other", 1), body),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = body.to_vec();
        flipped[3] ^= 1;
        assert_eq!(
            keys.verify(Some(&signature), &job("acme", 1), &flipped),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            keys.verify(Some("k9:00"), &job("acme", 1), body),
            Err(SignatureError::UnknownKey("k9".into()))
        );
        assert_eq!(
            keys.verify(Some("nonsense"), &job("acme", 1), body),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn a_signature_binds_direction_kind_routing_key_and_attempt() {
        let keys = MessageKeys::new(&keys(&[("k1", K1)]), Some("k1")).unwrap();
        let body = b"{}";
        let signed = job("acme", 1);
        let signature = keys.sign(&signed, body);
        let elsewhere = [
            Context {
                direction: Direction::ToScheduler,
                ..signed
            },
            Context {
                kind: "event",
                ..signed
            },
            Context {
                routing_key: "batch",
                ..signed
            },
            Context {
                attempt: 5,
                ..signed
            },
        ];
        for context in elsewhere {
            assert_eq!(
                keys.verify(Some(&signature), &context, body),
                Err(SignatureError::Mismatch),
                "{context:?}"
            );
        }
    }

    #[test]
    fn during_a_rotation_both_keys_verify_and_the_current_one_signs() {
        let old = MessageKeys::new(&keys(&[("k1", K1)]), Some("k1")).unwrap();
        let rotating = MessageKeys::new(&keys(&[("k1", K1), ("k2", K2)]), Some("k2")).unwrap();
        let body = b"body";
        let context = job("t", 1);
        assert_eq!(
            rotating.verify(Some(&old.sign(&context, body)), &context, body),
            Ok(())
        );
        assert!(rotating.sign(&context, body).starts_with("k2:"));
        assert!(MessageKeys::check(&keys(&[("k1", "abcd")]), Some("k1")).is_err());
        assert!(MessageKeys::check(&keys(&[("k1", K1)]), Some("k2")).is_err());
        assert!(MessageKeys::check(&keys(&[("k1", K1)]), None).is_err());
        assert!(MessageKeys::check(&keys(&[("k1", K1)]), Some("k1")).is_ok());
    }
}
