//! The one event relay, for both modes: what a region's workers report (jobs started
//! and finished, erasure progress and receipts, export reports, purges) is applied to
//! the control store, and each job's first final result is relayed (queued for the
//! tenant's webhook, published to `locality.results`) once, across every scheduler and
//! restart.
//!
//! The scheduler that records a result relays it at once and marks it relayed. One
//! that dies between the broker's confirm and that mark leaves a result that was
//! published and looks unpublished; so every publish is also kept in the results ledger
//! (`locality.results.ledger`, bound to `locality.results`), and the relay duty (one
//! scheduler at a time, under the `relay` lease) first reads the ledger to its end,
//! marking what it holds, and only then relays the results nobody holds and nobody
//! marked. A relay publishes within a third of its claim, so whatever it published is
//! in the ledger before its claim can lapse.

use std::time::Duration;

use futures::future::BoxFuture;
use locality_proto::gdpr::PurgeBatch;
use locality_proto::{ErrorCode, JobResult, RegionId, WorkerEvent};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::control::Control;
use crate::retry::until_done;
use crate::store::{now_millis, Recorded, StoreError, CLAIM};

/// Why a worker's event could not be applied now; the door tries again later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the result could not be published: {0}")]
    Publish(String),
}

/// A page of the results ledger: the jobs whose results were published, and how to
/// let the ledger forget them (once they are marked relayed).
pub struct LedgerPage {
    pub job_ids: Vec<Uuid>,
    pub forget: Box<dyn FnOnce() -> BoxFuture<'static, Result<(), String>> + Send>,
}

/// Where results and purge events go once recorded: `locality.results` in the
/// distributed mode (routing keys `TENANT.OUTCOME` and `TENANT.purged`).
pub trait ResultSink: Send + Sync + 'static {
    /// Returns once the result is safely published (and in the ledger).
    fn publish<'a>(&'a self, result: &'a JobResult) -> BoxFuture<'a, Result<(), String>>;
    /// Returns once the purge event is safely published.
    fn publish_purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), String>>;
    /// The ledger's next page of at most `max` results, oldest first; `None` once it
    /// has been read to its end.
    fn read_ledger(&self, max: usize) -> BoxFuture<'_, Result<Option<LedgerPage>, String>>;
}

/// What became of a worker's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    Applied,
    /// It names another region or a tenant not configured: dropped.
    Refused,
    /// Shutdown came before it could be applied: give it back.
    Interrupted,
}

/// Results claimed per round of the relay duty, and ledger entries read per page.
const RELAY_BATCH: u32 = 200;
const LEDGER_PAGE: usize = 500;
const RELAY_LEASE: Duration = Duration::from_secs(15);

impl Control {
    /// Applies an event from `region`'s workers (whose signature the door checked),
    /// trying again with backoff while the store cannot take it, until `shutdown`.
    pub async fn relay_event(
        &self,
        region: &RegionId,
        event: &WorkerEvent,
        shutdown: &CancellationToken,
    ) -> Relayed {
        // A region reports on its own jobs and configured tenants only.
        let (tenant, event_region) = event.tenant_and_region();
        if event_region != region || !self.has_tenant(tenant) {
            tracing::warn!(%region, "an event naming another region or an unknown tenant dropped");
            self.count_refusal(ErrorCode::ResultNotRouted);
            return Relayed::Refused;
        }
        let what = format!("job event from region {region}");
        if until_done(&what, shutdown, || self.record_event(event)).await {
            Relayed::Applied
        } else {
            Relayed::Interrupted
        }
    }

    /// Applies a worker's event once. An error means: nothing settled, try again.
    pub async fn record_event(&self, event: &WorkerEvent) -> Result<(), RelayError> {
        match event {
            WorkerEvent::Started { job_id, .. } => {
                self.store.record_started(job_id, now_millis()).await?;
                Ok(())
            }
            WorkerEvent::Finished(result) => self.finish(result).await,
            WorkerEvent::Purged(batch) => self.relay_purge(batch).await,
            WorkerEvent::Erasing(progress) => self.record_progress(progress).await,
            WorkerEvent::Erased(receipt) => self.record_receipt(receipt).await,
            WorkerEvent::Exporting(progress) => self.record_export_progress(progress).await,
            WorkerEvent::Exported(report) => self.record_export(report).await,
            WorkerEvent::RequestFailed(failure) => self.record_failure(failure).await,
        }
    }

    async fn finish(&self, result: &JobResult) -> Result<(), RelayError> {
        match self
            .store
            .record_finished(result, &self.identity, now_millis())
            .await?
        {
            Recorded::First => {
                self.relay(result).await;
                // Room in the region's window.
                self.dispatch_wanted.notify_one();
            }
            Recorded::Done => {}
            Recorded::NotRouted => {
                tracing::warn!(job_id = %result.job_id, region = %result.region, "a report on a job this control plane did not route that way: not relayed");
                self.count_refusal(ErrorCode::ResultNotRouted);
            }
        }
        Ok(())
    }

    /// Relays a result this scheduler holds: to the webhook outbox, then to the result
    /// sink, then marks it relayed. What fails is left to the relay duty. Returns
    /// whether it was published.
    pub(crate) async fn relay(&self, result: &JobResult) -> bool {
        let published = async {
            self.notify(&result.tenant, "result", result, false).await?;
            if let Some(sink) = &self.results {
                match tokio::time::timeout(CLAIM / 3, sink.publish(result)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => return Err(RelayError::Publish(reason)),
                    Err(_) => return Err(RelayError::Publish("no confirm in time".into())),
                }
            }
            Ok::<(), RelayError>(())
        }
        .await;
        if let Err(err) = published {
            tracing::warn!(job_id = %result.job_id, error = %err, "a result could not be relayed now; the relay duty will");
            if let Err(err) = self.store.release_relay(&result.job_id).await {
                tracing::warn!(job_id = %result.job_id, error = %err, "could not release a relay; its claim lapses");
            }
            return false;
        }
        if let Err(err) = self.store.mark_relayed(&result.job_id, now_millis()).await {
            // The ledger holds it: the relay duty marks it without publishing again.
            tracing::warn!(job_id = %result.job_id, error = %err, "a relayed result could not be marked; the ledger will");
        }
        self.metrics
            .jobs_finished
            .with_label_values(&[result.region.as_str(), result.outcome.as_str()])
            .inc();
        if let Some(finished) = result.finished_at_ms {
            let lag_ms = (now_millis() - finished).max(0);
            self.metrics
                .result_relay_lag
                .observe(lag_ms as f64 / 1000.0);
        }
        true
    }

    /// Announces purged keys on `locality.results` and to the tenant's webhook. A
    /// purge of erased keys is delivered, then its body is forgotten.
    pub(crate) async fn relay_purge(&self, batch: &PurgeBatch) -> Result<(), RelayError> {
        if let Some(sink) = &self.results {
            sink.publish_purge(batch)
                .await
                .map_err(RelayError::Publish)?;
        }
        let erased = batch.reason == locality_proto::gdpr::PurgeReason::Erased;
        self.notify(&batch.tenant, "purge", batch, erased).await?;
        Ok(())
    }

    /// One round of the relay duty, by the holder of the `relay` lease: the ledger read
    /// to its end, then the results nobody holds and nobody marked relayed.
    pub(crate) async fn relay_round(&self) -> Result<(), RelayError> {
        if !self
            .store
            .take_lease("relay", &self.identity, RELAY_LEASE, now_millis())
            .await?
        {
            return Ok(());
        }
        if let Some(sink) = &self.results {
            while let Some(page) = sink
                .read_ledger(LEDGER_PAGE)
                .await
                .map_err(RelayError::Publish)?
            {
                let marked = self
                    .store
                    .mark_relayed_many(&page.job_ids, now_millis())
                    .await?;
                if marked > 0 {
                    tracing::info!(results = marked, "results published by a relay that did not mark them: marked from the ledger, not published again");
                }
                (page.forget)().await.map_err(RelayError::Publish)?;
            }
        }
        for unrelayed in self
            .store
            .claim_unrelayed(&self.identity, now_millis(), RELAY_BATCH)
            .await?
        {
            self.relay(&unrelayed.result).await;
        }
        Ok(())
    }
}
