//! Time as Locality's messages and records carry it: Unix milliseconds, shown as
//! RFC 3339 (UTC, milliseconds).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    millis_of(SystemTime::now())
}

pub fn millis_of(time: SystemTime) -> Millis {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| {
        Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
    })
}

/// `at` as RFC 3339, UTC, with milliseconds; times before the epoch show as the epoch.
pub fn rfc3339(at: Millis) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// An RFC 3339 time (`2026-11-29T12:00:00Z`, fractions and offsets allowed) in Unix ms.
pub fn parse_rfc3339(text: &str) -> Result<Millis, String> {
    humantime::parse_rfc3339_weak(text)
        .map(millis_of)
        .map_err(|err| format!("{text:?} is not an RFC 3339 time: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_show_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_996_728_323), "2026-11-29T23:58:48.323Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339("2026-11-29T23:58:48.323Z"),
            Ok(1_795_996_728_323)
        );
        assert!(parse_rfc3339("yesterday").is_err());
        let now = now_millis();
        assert!(now > 1_795_000_000_000, "{now}");
    }
}
