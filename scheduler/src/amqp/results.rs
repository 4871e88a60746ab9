//! `locality.results` on the scheduler's vhost, as the control core's result sink, and
//! its ledger (`locality.results.ledger`), read by the relay duty.

use futures::future::BoxFuture;
use futures::FutureExt;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use locality_broker::{json_properties, publish_confirmed, with_text_header, BrokerError};
use locality_proto::gdpr::PurgeBatch;
use locality_proto::topology::{
    DEAD_LETTER_EXCHANGE, RESULTS_EXCHANGE, RESULTS_LEDGER_QUEUE, TENANT_HEADER,
};
use locality_proto::{JobResult, ENVELOPE_VERSION};
use uuid::Uuid;

use super::{job_properties, PublishSlot};
use crate::relay::{LedgerPage, ResultSink};

/// The scheduler's publishing channel (confirm mode) and the channel it reads the
/// ledger on, both replaced on every reconnect.
#[derive(Clone, Default)]
pub struct AmqpResults {
    pub(super) publish: PublishSlot,
    pub(super) ledger: PublishSlot,
}

impl AmqpResults {
    pub(super) async fn publish_now(&self, result: &JobResult) -> Result<(), BrokerError> {
        let channel = self.publish.get()?;
        let payload = serde_json::to_vec(result).expect("results serialise");
        let properties = job_properties(
            &result.tenant,
            &result.job_id,
            result.correlation_id.as_deref(),
        );
        publish_confirmed(
            &channel,
            RESULTS_EXCHANGE,
            &result.routing_key(),
            &payload,
            properties,
        )
        .await
    }

    /// Keeps a note of a submission that could not be taken, in `locality.submit.dead`.
    pub(super) async fn dead_letter_note(
        &self,
        note: &impl serde::Serialize,
    ) -> Result<(), BrokerError> {
        let channel = self.publish.get()?;
        let payload = serde_json::to_vec(note).expect("notes serialise");
        publish_confirmed(
            &channel,
            DEAD_LETTER_EXCHANGE,
            "",
            &payload,
            json_properties(ENVELOPE_VERSION),
        )
        .await
    }

    async fn next_ledger_page(&self, max: usize) -> Result<Option<LedgerPage>, BrokerError> {
        let channel = self.ledger.get()?;
        let mut job_ids = Vec::new();
        let mut last = None;
        while job_ids.len() < max {
            let Some(message) = channel
                .basic_get(
                    RESULTS_LEDGER_QUEUE.into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?
            else {
                break;
            };
            let delivery = message.delivery;
            #[derive(serde::Deserialize)]
            struct JobIdOnly {
                job_id: Uuid,
            }
            match serde_json::from_slice::<JobIdOnly>(&delivery.data) {
                Ok(entry) => job_ids.push(entry.job_id),
                Err(err) => {
                    tracing::warn!(error = %err, "an unreadable entry in the results ledger: skipped")
                }
            }
            last = Some(delivery);
        }
        let Some(last) = last else {
            return Ok(None);
        };
        let forget = move || {
            async move {
                last.acker
                    .ack(BasicAckOptions { multiple: true })
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            .boxed()
        };
        Ok(Some(LedgerPage {
            job_ids,
            forget: Box::new(forget),
        }))
    }
}

impl ResultSink for AmqpResults {
    fn publish<'a>(&'a self, result: &'a JobResult) -> BoxFuture<'a, Result<(), String>> {
        async move { self.publish_now(result).await.map_err(|e| e.to_string()) }.boxed()
    }

    fn publish_purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let channel = self.publish.get().map_err(|e| e.to_string())?;
            let payload = serde_json::to_vec(batch).expect("purge batches serialise");
            let properties = with_text_header(
                json_properties(ENVELOPE_VERSION),
                TENANT_HEADER,
                batch.tenant.as_str(),
            );
            match publish_confirmed(
                &channel,
                RESULTS_EXCHANGE,
                &batch.routing_key(),
                &payload,
                properties,
            )
            .await
            {
                // Nobody has to listen to purge events.
                Err(BrokerError::Unroutable { .. }) | Ok(()) => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        }
        .boxed()
    }

    fn read_ledger(&self, max: usize) -> BoxFuture<'_, Result<Option<LedgerPage>, String>> {
        async move { self.next_ledger_page(max).await.map_err(|e| e.to_string()) }.boxed()
    }
}
