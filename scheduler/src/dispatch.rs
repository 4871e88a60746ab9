//! Sharing a region between its tenants. The control plane keeps a window of jobs sent
//! to each region and not finished: `regions.ID.dispatch_window` at the least, and
//! twice the jobs the region's workers run at once, so it grows with an autoscaled
//! pool. What does not fit waits in the control store; as room frees, the dispatcher
//! fills it by deficit round-robin between the tenants with jobs waiting, each getting
//! a share in proportion to `quota.weight`, so a tenant's backlog delays another
//! tenant's jobs by at most one window. Within a tenant, interactive jobs go first;
//! while other tenants wait, one tenant's interactive jobs take at most
//! `quota.interactive_share` of the window.
//!
//! One scheduler dispatches at a time (the `dispatch` lease); any scheduler sends a
//! new job at once when its region has room and nothing waits there. A region that
//! cannot be reached keeps its jobs waiting; after `jobs.dispatch_deadline_seconds`
//! of it unreachable, the jobs that have waited that long fail with
//! `region_unavailable`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use locality_proto::{JobMessage, Priority, RegionId, TenantId};

use crate::control::Control;
use crate::store::{now_millis, InFlight, Millis, StoreError, Waiting};

/// Jobs failed per round when their region stays unreachable.
const FAIL_BATCH: u32 = 500;
/// Rights parts sent per round.
const REQUEST_BATCH: u32 = 200;
pub(crate) const DISPATCH_LEASE: Duration = Duration::from_secs(10);

/// What the dispatcher remembers between rounds.
#[derive(Debug, Default)]
pub(crate) struct DispatchState {
    /// Deficit round-robin: jobs each tenant may still send in a region.
    deficits: BTreeMap<(RegionId, TenantId), f64>,
    /// Where each region's round starts, so that no tenant is always first.
    rotation: BTreeMap<RegionId, usize>,
    /// Since when a region could not be reached (as this scheduler saw it).
    unreachable_since: BTreeMap<RegionId, Millis>,
}

/// A region's window: how many jobs it may have sent and not finished.
fn window_size(floor: u32, in_flight: &InFlight) -> u64 {
    u64::from(floor.max(1)).max(in_flight.running.saturating_mul(2))
}

impl Control {
    /// Jobs older than this that are still in flight were lost with their queue or
    /// worker: they no longer hold room.
    fn stale_before(&self, now: Millis) -> Millis {
        let limits = &self.config.limits;
        let life = limits.job_timeout_seconds * u64::from(limits.delivery_limit.max(1)) + 600;
        now - (life as Millis) * 1000
    }

    async fn window(&self, region: &RegionId, now: Millis) -> Result<(InFlight, u64), StoreError> {
        let in_flight = self.store.in_flight(region, self.stale_before(now)).await?;
        let floor = self
            .config
            .regions
            .get(region)
            .map_or(16, |region| region.dispatch_window);
        let size = window_size(floor, &in_flight);
        Ok((in_flight, size))
    }

    /// Whether a new job for `region` may be sent at once: the region can be reached,
    /// its window has room, and no job waits there (it would be overtaken).
    pub(crate) async fn has_room_now(&self, region: &RegionId) -> Result<bool, StoreError> {
        let ready = self
            .regions
            .get(region)
            .is_some_and(|link| link.dispatch.is_ready());
        if !ready || self.store.anything_waiting(region).await? {
            return Ok(false);
        }
        let (in_flight, window) = self.window(region, now_millis()).await?;
        Ok(in_flight.total < window)
    }

    /// Sends a job this scheduler holds to its region; if the region cannot take it
    /// now, it waits in the store. Returns whether the region's queue holds it.
    pub(crate) async fn send_job(&self, message: JobMessage) -> bool {
        let job_id = message.job_id;
        let region = message.region.clone();
        let sent = match self.regions.get(&region) {
            Some(link) => link.dispatch.dispatch(message).await.map_err(|e| e.reason),
            None => Err("no worker pool is configured for it".to_string()),
        };
        let now = now_millis();
        let ok = sent.is_ok();
        let recorded = match sent {
            Ok(()) => self.store.mark_dispatched(&job_id, now).await,
            Err(reason) => {
                tracing::warn!(%job_id, %region, %reason, "region unavailable; the job waits for it");
                self.store.release_dispatch(&job_id, now).await
            }
        };
        if let Err(err) = recorded {
            // The claim lapses and the dispatcher sends it (again): at least once.
            tracing::warn!(%job_id, error = %err, "could not record a dispatch");
        }
        ok
    }

    /// One round of the dispatcher, by the holder of the `dispatch` lease: every
    /// region's window filled fairly, jobs of long-unreachable regions failed, rights
    /// parts that wait sent.
    pub(crate) async fn dispatch_round(&self, state: &mut DispatchState) -> Result<(), StoreError> {
        let now = now_millis();
        if !self
            .store
            .take_lease("dispatch", &self.identity, DISPATCH_LEASE, now)
            .await?
        {
            return Ok(());
        }
        for region in self.regions.keys() {
            self.fill_window(region, state).await?;
        }
        for request in self
            .store
            .claim_unsent_requests(&self.identity, now_millis(), REQUEST_BATCH)
            .await?
        {
            self.send_request(request).await;
        }
        Ok(())
    }

    async fn fill_window(
        &self,
        region: &RegionId,
        state: &mut DispatchState,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        if !self.regions[region].dispatch.is_ready() {
            return self.unreachable(region, state, now).await;
        }
        let (in_flight, window) = self.window(region, now).await?;
        let mut room = window.saturating_sub(in_flight.total);
        if room == 0 {
            // Full of jobs the region took: it is reachable.
            state.unreachable_since.remove(region);
            return Ok(());
        }
        let mut tenants: Vec<&TenantId> = self
            .config
            .tenants
            .iter()
            .filter(|(_, tenant)| tenant.regions.contains(region))
            .map(|(id, _)| id)
            .collect();
        if tenants.is_empty() {
            return Ok(());
        }
        let start = state.rotation.entry(region.clone()).or_default();
        *start = (*start + 1) % tenants.len();
        tenants.rotate_left(*start);

        // Each tenant's next jobs, interactive first, at most what fits now.
        let mut queues: Vec<(&TenantId, VecDeque<Waiting>, usize)> = Vec::new();
        for tenant in tenants {
            let interactive = self
                .store
                .waiting(region, tenant, Priority::Interactive, now, room)
                .await?;
            let batch = self
                .store
                .waiting(region, tenant, Priority::Batch, now, room)
                .await?;
            if interactive.is_empty() && batch.is_empty() {
                state.deficits.remove(&(region.clone(), tenant.clone()));
                continue;
            }
            let interactive_count = interactive.len();
            let queue: VecDeque<Waiting> = interactive.into_iter().chain(batch).collect();
            queues.push((tenant, queue, interactive_count));
        }
        if queues.is_empty() {
            state.unreachable_since.remove(region);
            return Ok(());
        }
        if queues.len() > 1 {
            // Under contention, interactive jobs past the tenant's share wait with its
            // batch work.
            for (tenant, queue, interactive) in &mut queues {
                let share = self.config.tenants[*tenant].quota.interactive_share;
                let allowed = ((share.clamp(0.0, 1.0) * window as f64).floor() as u64)
                    .saturating_sub(in_flight.by_tenant.get(*tenant).map_or(0, |t| t.1))
                    as usize;
                if *interactive > allowed {
                    let over: Vec<Waiting> = queue.drain(allowed..*interactive).collect();
                    queue.extend(over);
                }
            }
        }
        while room > 0 && queues.iter().any(|(_, queue, _)| !queue.is_empty()) {
            for (tenant, queue, _) in &mut queues {
                if room == 0 || queue.is_empty() {
                    continue;
                }
                let weight = f64::from(self.config.tenants[*tenant].quota.weight.max(1));
                let deficit = state
                    .deficits
                    .entry((region.clone(), (*tenant).clone()))
                    .or_default();
                *deficit += weight;
                while *deficit >= 1.0 && room > 0 {
                    let Some(job) = queue.pop_front() else { break };
                    if !self
                        .store
                        .claim_for_dispatch(&job.message.job_id, &self.identity, now_millis())
                        .await?
                    {
                        continue;
                    }
                    if !self.send_job(job.message).await {
                        // The region went away mid-round: the rest waits for it.
                        return self.unreachable(region, state, now_millis()).await;
                    }
                    state.unreachable_since.remove(region);
                    *deficit -= 1.0;
                    room -= 1;
                }
                if queue.is_empty() {
                    // No credit is banked by a tenant that has nothing more waiting.
                    *deficit = 0.0;
                }
            }
        }
        Ok(())
    }

    /// The region cannot be reached now: once it has not been for the dispatch
    /// deadline, the jobs that have waited that long for it fail.
    async fn unreachable(
        &self,
        region: &RegionId,
        state: &mut DispatchState,
        now: Millis,
    ) -> Result<(), StoreError> {
        let since = *state.unreachable_since.entry(region.clone()).or_insert(now);
        let deadline_s = self.config.jobs.dispatch_deadline_seconds;
        let deadline = deadline_s as Millis * 1000;
        if now - since < deadline {
            return Ok(());
        }
        let results = self
            .store
            .fail_waiting(
                region,
                now - deadline,
                deadline_s,
                &self.identity,
                now,
                FAIL_BATCH,
            )
            .await?;
        for result in results {
            tracing::warn!(job_id = %result.job_id, %region, "the job's region stayed unreachable past its deadline");
            self.relay(&result).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_floor_or_twice_what_runs() {
        let running = |running| InFlight {
            running,
            ..InFlight::default()
        };
        assert_eq!(window_size(16, &running(0)), 16);
        assert_eq!(window_size(16, &running(8)), 16);
        assert_eq!(window_size(16, &running(40)), 80);
        assert_eq!(window_size(0, &running(0)), 1);
    }
}
