//! What every duty of a region's worker shares: the region's stores, the tenants pinned
//! to it, its limits, metrics and record of processing. Jobs ([`crate::job`]) add an
//! image pool and a memory budget; rights ([`crate::rights`]) add the region's keys; a
//! sweep needs nothing more than this.

use std::collections::BTreeSet;
use std::sync::Arc;

use locality_proto::time::Millis;
use locality_proto::{Config, Limits, RegionId, TenantId};

use crate::audit::AuditLog;
use crate::metrics::{RegionMetrics, WorkerMetrics};
use crate::store::RegionStores;

/// One region, as its worker sees it.
pub struct RegionContext {
    stores: RegionStores,
    /// Tenants pinned to this region: the only ones whose work runs here.
    tenants: BTreeSet<TenantId>,
    pub limits: Limits,
    /// How old a job message may be (`jobs.retention_days`): older ones are not run,
    /// since the control plane has forgotten them.
    pub max_job_age_ms: Millis,
    pub metrics: RegionMetrics,
    /// The region's record of processing.
    pub audit: AuditLog,
}

impl RegionContext {
    /// The region is the store's: a worker cannot be pointed at another region's store.
    pub fn new(stores: RegionStores, config: &Config, metrics: &WorkerMetrics) -> Arc<Self> {
        let tenants = config
            .tenants
            .iter()
            .filter(|(_, tenant)| tenant.regions.contains(stores.region()))
            .map(|(id, _)| id.clone())
            .collect();
        Arc::new(Self {
            audit: AuditLog::new(&stores, config),
            metrics: metrics.for_region(stores.region()),
            stores,
            tenants,
            limits: config.limits,
            max_job_age_ms: Millis::from(config.jobs.retention_days) * 86_400_000,
        })
    }

    pub fn region(&self) -> &RegionId {
        self.stores.region()
    }

    pub fn stores(&self) -> &RegionStores {
        &self.stores
    }

    /// Whether `tenant` is pinned to this region.
    pub fn serves(&self, tenant: &TenantId) -> bool {
        self.tenants.contains(tenant)
    }

    pub fn tenants(&self) -> &BTreeSet<TenantId> {
        &self.tenants
    }
}
