//! A listener on `locality.results` that collects everything published there,
//! through broker restarts: a durable queue of its own keeps results published
//! while it reconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use locality_proto::gdpr::PurgeBatch;
use locality_proto::topology::RESULTS_EXCHANGE;
use locality_proto::JobResult;

use super::broker::Broker;

pub const TEST_RESULTS_QUEUE: &str = "test.results";

/// One result as the listener saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub result: JobResult,
    pub routing_key: String,
    pub correlation_id: Option<String>,
    /// The broker redelivered it to the listener (after a reconnect): not a new result.
    pub redelivered: bool,
    /// When the listener received it.
    pub at: Instant,
}

pub struct ResultsListener {
    seen: Arc<Mutex<Vec<Seen>>>,
    purges: Arc<Mutex<Vec<PurgeBatch>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ResultsListener {
    pub async fn start(broker: &Broker) -> Self {
        let url = broker.url("scheduler");
        // Declare and bind once before returning, so nothing published after this is missed.
        bind_results_queue(&url).await.expect("results queue");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let purges = Arc::new(Mutex::new(Vec::new()));
        let (sink, purge_sink) = (seen.clone(), purges.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Err(err) = listen(&url, &sink, &purge_sink).await {
                    eprintln!("results listener: {err}; reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { seen, purges, task }
    }

    /// Purge batches announced on `TENANT.purged` (first deliveries only).
    pub fn purges(&self) -> Vec<PurgeBatch> {
        self.purges.lock().unwrap().clone()
    }

    /// First deliveries only: one per result the scheduler published.
    pub fn published(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|seen| !seen.redelivered)
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the results published so far.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Seen]) -> bool,
    ) -> Vec<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let published = self.published();
            if done(&published) {
                return published;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; {} results so far: {:#?}",
                published.len(),
                published.iter().rev().take(5).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many results were published per job id, for the given jobs.
    pub fn count_per_job(&self, job_ids: &BTreeSet<String>) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for seen in self.published() {
            let id = seen.result.job_id.to_string();
            if job_ids.contains(&id) {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }
}

/// Whether every job in `job_ids` has a result among `published`.
pub fn all_reported(published: &[Seen], job_ids: &BTreeSet<String>) -> bool {
    let finished: BTreeSet<String> = published
        .iter()
        .map(|seen| seen.result.job_id.to_string())
        .filter(|id| job_ids.contains(id))
        .collect();
    finished.len() == job_ids.len()
}

impl Drop for ResultsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn bind_results_queue(url: &str) -> Result<lapin::Connection, String> {
    let connection = locality_broker::connect(url, "test-results")
        .await
        .map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .exchange_declare(
            RESULTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    // A quorum queue, as Locality's own: a classic queue lives on one node, and results
    // published while that node is down would be dropped.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            TEST_RESULTS_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|e| e.to_string())?;
    channel
        .queue_bind(
            TEST_RESULTS_QUEUE.into(),
            RESULTS_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(connection)
}

async fn listen(
    url: &str,
    sink: &Mutex<Vec<Seen>>,
    purges: &Mutex<Vec<PurgeBatch>>,
) -> Result<(), String> {
    let connection = bind_results_queue(url).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = channel
        .basic_consume(
            TEST_RESULTS_QUEUE.into(),
            "test-results".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| e.to_string())?;
        if delivery.routing_key.as_str().ends_with(".purged") {
            let batch: PurgeBatch = serde_json::from_slice(&delivery.data)
                .unwrap_or_else(|e| panic!("a purge event that is not a PurgeBatch: {e}"));
            if !delivery.redelivered {
                purges.lock().unwrap().push(batch);
            }
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            continue;
        }
        let result: JobResult = serde_json::from_slice(&delivery.data)
            .unwrap_or_else(|e| panic!("a result that is not a JobResult: {e}"));
        sink.lock().unwrap().push(Seen {
            result,
            routing_key: delivery.routing_key.to_string(),
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string()),
            redelivered: delivery.redelivered,
            at: Instant::now(),
        });
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Err("consumer ended".into())
}
