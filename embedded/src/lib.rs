//! `locality up`: the scheduler and one worker per configured region in one process.
//!
//! The same control core ([`locality_scheduler::Control`]), job loop
//! ([`locality_worker::serve`]), pipeline and stores run here as in the distributed
//! mode; only the transport differs: each region's queue is in-process
//! ([`locality_worker::transport::in_process`]) and workers' events reach the control
//! core over a channel instead of a broker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use locality_http::ApiError;
use locality_proto::gdpr::RegionRequest;
use locality_proto::{Config, JobMessage, RegionId};
use locality_scheduler::store::StoreError as ControlStoreError;
use locality_scheduler::{Control, ControlStore, DispatchError, JobDispatch, Region, SourceStore};
use locality_worker::ingest::{downloads_openapi, downloads_router, Downloads, Uploads};
use locality_worker::rights::retention::run_periodically;
use locality_worker::rights::MissingKey;
use locality_worker::serve::serve;
use locality_worker::transport::in_process::{in_process_queue, ChannelEvents, InProcessQueue};
use locality_worker::{
    JobContext, RegionContext, RegionStores, RightsContext, StoreError, Worker, WorkerMetrics,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How `locality up` runs its workers.
#[derive(Debug, Clone)]
pub struct Options {
    /// One subfolder per region: the local store of every region whose config names no store.
    pub data_dir: PathBuf,
    /// Jobs each region's worker runs at once.
    pub jobs_per_region: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedError {
    #[error("opening the store of region {region}: {source}")]
    Store {
        region: RegionId,
        #[source]
        source: Box<StoreError>,
    },
    #[error("the control store in the data directory: {0}")]
    ControlStore(#[from] Box<ControlStoreError>),
    #[error(transparent)]
    MissingKey(#[from] MissingKey),
}

/// A region's in-process queue, as the control core's job dispatch.
struct InProcessDispatch {
    region: RegionId,
    queue: InProcessQueue,
}

impl JobDispatch for InProcessDispatch {
    fn dispatch(&self, job: JobMessage) -> BoxFuture<'_, Result<(), DispatchError>> {
        let result = self.queue.publish(job).map_err(|err| DispatchError {
            region: self.region.to_string(),
            reason: err.to_string(),
        });
        async move { result }.boxed()
    }

    fn send_request(&self, request: RegionRequest) -> BoxFuture<'_, Result<(), DispatchError>> {
        let result = self.queue.request(request).map_err(|err| DispatchError {
            region: self.region.to_string(),
            reason: err.to_string(),
        });
        async move { result }.boxed()
    }

    fn queue_depth(&self) -> (usize, usize) {
        self.queue.depth()
    }

    fn is_ready(&self) -> bool {
        true
    }
}

/// Uploads received straight into the region's stores, as its ingest endpoint would.
struct StoreUploads(Uploads);

impl SourceStore for StoreUploads {
    fn put_original<'a>(
        &'a self,
        object_key: &'a str,
        declared_length: Option<u64>,
        limit: u64,
        body: axum::body::Body,
    ) -> BoxFuture<'a, Result<u64, ApiError>> {
        self.0
            .receive(object_key, declared_length, limit, body)
            .boxed()
    }

    fn uploads_in_flight_since(&self, tenant: &locality_proto::TenantId, at_ms: i64) -> bool {
        self.0.in_flight_since(tenant, at_ms)
    }
}

/// Where one region's data lives, for people, and its queue.
#[derive(Clone)]
pub struct RegionInfo {
    pub region: RegionId,
    pub description: String,
    pub data: String,
    pub queue: InProcessQueue,
}

/// The running scheduler and workers.
pub struct Embedded {
    pub control: Arc<Control>,
    pub registry: prometheus::Registry,
    http_metrics: locality_http::HttpMetrics,
    pub regions: Vec<RegionInfo>,
    downloads: Downloads,
    tasks: Vec<JoinHandle<()>>,
}

fn region_data(config: &Config, region: &RegionId, data_dir: &Path) -> String {
    match &config.regions[region].store {
        Some(url) => url.clone(),
        None => data_dir.join(region.as_str()).display().to_string(),
    }
}

impl Embedded {
    /// Opens the control store (SQLite in the data directory) and every region's store,
    /// starts the workers, and sends again every job accepted before the last stop that
    /// did not finish. The workers stop taking work at `shutdown` and finish what they run.
    pub async fn start(
        config: Arc<Config>,
        options: &Options,
        cpu_pool: Arc<rayon::ThreadPool>,
        shutdown: CancellationToken,
    ) -> Result<Self, EmbeddedError> {
        std::fs::create_dir_all(&options.data_dir).map_err(|e| {
            EmbeddedError::ControlStore(Box::new(ControlStoreError::Corrupt {
                what: "data directory",
                reason: format!("{}: {e}", options.data_dir.display()),
            }))
        })?;
        let database = format!(
            "sqlite://{}?mode=rwc",
            options.data_dir.join("control.sqlite").display()
        );
        let store = ControlStore::open(&database).await.map_err(Box::new)?;
        let registry = prometheus::Registry::new();
        locality_http::register_process_metrics(&registry);
        let http_metrics = locality_http::HttpMetrics::register(&registry);
        let worker_metrics = WorkerMetrics::register(&registry);
        let mut event_sources = Vec::new();
        let mut regions = BTreeMap::new();
        let mut infos = Vec::new();
        let mut tasks = Vec::new();
        let mut every_store = Vec::new();
        for region in config.regions.keys() {
            let stores = RegionStores::open(&config, region, None, Some(&options.data_dir))
                .map_err(|source| EmbeddedError::Store {
                    region: region.clone(),
                    source: Box::new(source),
                })?;
            every_store.push(stores.clone());
            let (events, events_rx) = mpsc::unbounded_channel();
            event_sources.push((region.clone(), events_rx));
            let (queue, source) = in_process_queue();
            let region_context = RegionContext::new(stores.clone(), &config, &worker_metrics);
            let worker = Arc::new(Worker {
                jobs: JobContext::new(region_context.clone(), cpu_pool.clone()),
                rights: RightsContext::new(region_context.clone(), &config)?,
            });
            let sink = Arc::new(ChannelEvents(events.clone()));
            let (slots, stop) = (options.jobs_per_region, shutdown.clone());
            // One task per region sweeps it: no other process shares these stores.
            let sweep_events = events.clone();
            tasks.push(tokio::spawn(run_periodically(
                config.clone(),
                region_context,
                Duration::from_secs(config.retention.sweep_interval_seconds),
                shutdown.clone(),
                move || std::future::ready(Some(ChannelEvents(sweep_events.clone()))),
            )));
            tasks.push(tokio::spawn(async move {
                serve(worker, source, sink, slots, stop).await;
            }));
            let dispatch = Arc::new(InProcessDispatch {
                region: region.clone(),
                queue: queue.clone(),
            });
            let uploads = locality_scheduler::UploadRoute::Store(Arc::new(StoreUploads(
                Uploads::new(stores, &config),
            )));
            regions.insert(region.clone(), Region { dispatch, uploads });
            infos.push(RegionInfo {
                region: region.clone(),
                description: config.regions[region].description.clone(),
                data: region_data(&config, region, &options.data_dir),
                queue,
            });
        }
        let downloads = Downloads::new(&config, every_store);

        let control = Arc::new(Control::new(config, regions, store, &registry));
        let requeued = control.requeue_unfinished().await.map_err(Box::new)?;
        if requeued > 0 {
            tracing::info!(
                jobs = requeued,
                "jobs accepted before the last stop are queued again"
            );
        }
        // The same relay as the distributed mode's, one per region; each ends when the
        // region's worker and sweeper (its event senders) have stopped.
        for (region, mut events) in event_sources {
            let recorder = control.clone();
            tasks.push(tokio::spawn(async move {
                // Events still arriving after shutdown are applied: the workers finish
                // what they run, and its results must be recorded.
                let never = CancellationToken::new();
                while let Some(event) = events.recv().await {
                    recorder.relay_event(&region, &event, &never).await;
                }
            }));
        }
        let background = control.clone();
        tasks.push(tokio::spawn(async move {
            background.run_background(shutdown).await;
        }));
        Ok(Self {
            control,
            registry,
            http_metrics,
            regions: infos,
            downloads,
            tasks,
        })
    }

    /// The HTTP API of the embedded scheduler, and every region's export downloads (which
    /// in the distributed mode each region's ingest endpoint serves).
    pub fn router(&self) -> axum::Router {
        self.http_metrics.measured(
            locality_scheduler::http::router(self.control.clone(), self.registry.clone())
                .merge(downloads_router(self.downloads.clone())),
            "api",
        )
    }

    /// Health and metrics, for a listener of their own.
    pub fn admin_router(&self) -> axum::Router {
        self.http_metrics.measured(
            locality_scheduler::http::admin_router(self.control.clone(), self.registry.clone()),
            "admin",
        )
    }

    /// Waits until the workers have finished their jobs in flight (after `shutdown`).
    pub async fn finish(self) {
        for task in self.tasks {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "a task of the embedded mode failed");
            }
        }
    }
}

/// The OpenAPI description of everything `locality up` serves: the scheduler's API and
/// the export downloads, which in the distributed mode each region's endpoint serves.
/// `locality openapi` prints it; docs/openapi.yaml is it, checked by a test.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = locality_scheduler::http::openapi().merge_from(downloads_openapi());
    locality_http::openapi::finish(&mut openapi);
    openapi
}
