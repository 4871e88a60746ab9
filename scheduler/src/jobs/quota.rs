//! Per-tenant limits on submissions: a rate with a burst (a GCRA token bucket per
//! tenant, in each scheduler) and a ceiling on jobs accepted and not yet finished (in
//! the control store, so shared by every scheduler).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use locality_proto::config::TenantQuota;
use locality_proto::TenantId;

/// Each tenant's bucket, made at its first submission, and made again when its
/// configured rate changes.
#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<TenantId, (TenantQuota, DefaultDirectRateLimiter)>>,
}

fn bucket(quota: &TenantQuota) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(quota.submissions_per_second.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(quota.submission_burst.max(1)).expect("at least 1");
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

impl Quotas {
    /// Takes one submission from the tenant's bucket; when it is empty, how long until
    /// it has one again.
    pub fn take(&self, tenant: &TenantId, quota: &TenantQuota) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("quota lock");
        let entry = buckets
            .entry(tenant.clone())
            .or_insert_with(|| (*quota, bucket(quota)));
        if entry.0 != *quota {
            *entry = (*quota, bucket(quota));
        }
        entry
            .1
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_past_its_burst_waits_and_another_tenant_does_not() {
        let quotas = Quotas::default();
        let quota = TenantQuota {
            submissions_per_second: 2,
            submission_burst: 3,
            ..TenantQuota::default()
        };
        let (busy, quiet) = (
            TenantId::new("busy").unwrap(),
            TenantId::new("quiet").unwrap(),
        );
        for _ in 0..3 {
            assert_eq!(quotas.take(&busy, &quota), Ok(()));
        }
        let wait = quotas.take(&busy, &quota).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(quotas.take(&quiet, &quota), Ok(()));
    }
}
