//! `locality up`: scheduler and one worker per region in one process.
//!
//! The same routing, pipeline, stores and job code run here as in the distributed
//! mode; only the transport differs (tokio channels instead of a broker).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use locality_proto::{Config, JobMessage, RegionId};
use locality_scheduler::{AppState, GatewayError, RegionGateway};
use locality_worker::runtime::{in_process_queue, run_in_process, InProcessQueue};
use locality_worker::{RegionStores, WorkerContext};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Address for the HTTP API; scheduler.listen from the config when absent
    /// (127.0.0.1:8080 by default). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory holding one subfolder per region: the local object store of every
    /// region whose config names no `store` URL.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Threads for image work (shared by all regions' workers). Defaults to the CPU count.
    #[arg(long)]
    threads: Option<usize>,
    /// Jobs each region's worker runs at once (memory is bounded by the pixel budget too).
    #[arg(long, default_value_t = 4)]
    jobs_per_region: usize,
}

/// A region reached in-process: its queue, and its own store for uploads of originals.
struct InProcessRegion {
    region: RegionId,
    queue: InProcessQueue,
    stores: RegionStores,
}

impl RegionGateway for InProcessRegion {
    fn dispatch(&self, job: JobMessage) -> BoxFuture<'_, Result<(), GatewayError>> {
        let result = self
            .queue
            .publish(job)
            .map_err(|e| GatewayError::Unavailable {
                region: self.region.to_string(),
                reason: e.to_string(),
            });
        async move { result }.boxed()
    }

    fn put_source(
        &self,
        object_key: String,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<(), GatewayError>> {
        crate::store_original(&self.stores, object_key, bytes).boxed()
    }

    fn queue_depth(&self) -> (usize, usize) {
        self.queue.depth()
    }

    fn is_ready(&self) -> bool {
        true
    }
}

pub fn run(config: Config, args: UpArgs) -> Result<()> {
    let cpu_pool = crate::image_pool(crate::threads(args.threads))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config, args, cpu_pool))
}

async fn serve(config: Config, args: UpArgs, cpu_pool: Arc<rayon::ThreadPool>) -> Result<()> {
    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    crate::shutdown::on_signal(shutdown.clone());

    let (events, mut events_rx) = mpsc::unbounded_channel();
    let mut gateways: BTreeMap<RegionId, Arc<dyn RegionGateway>> = BTreeMap::new();
    let mut workers = Vec::new();
    let mut data_dirs = Vec::new();
    for region in config.regions.keys() {
        let stores = RegionStores::open(&config, region, None, Some(&args.data_dir))
            .with_context(|| format!("opening the store of region {region}"))?;
        let location = match &config.regions[region].store {
            Some(url) => url.clone(),
            None => args.data_dir.join(region.as_str()).display().to_string(),
        };
        let (queue, consumer) = in_process_queue();
        let context = Arc::new(WorkerContext::new(
            stores.clone(),
            config.limits,
            cpu_pool.clone(),
        ));
        workers.push(tokio::spawn(run_in_process(
            context,
            consumer,
            events.clone(),
            args.jobs_per_region,
            shutdown.clone(),
        )));
        gateways.insert(
            region.clone(),
            Arc::new(InProcessRegion {
                region: region.clone(),
                queue,
                stores,
            }),
        );
        data_dirs.push((region.clone(), location));
    }
    drop(events);

    let state = AppState::new(config.clone(), gateways);
    let recorder = state.clone();
    let event_loop = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            recorder.record_event(event);
        }
    });

    let listen = match args.listen {
        Some(address) => address,
        None => config.scheduler.listen.parse().with_context(|| {
            format!(
                "scheduler.listen {:?} is not an address",
                config.scheduler.listen
            )
        })?,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    println!("locality up: listening on http://{address}");
    for (region, directory) in &data_dirs {
        let description = &config.regions[region].description;
        println!("  region {region} ({description}): data in {directory}");
    }
    println!("  press Ctrl-C to drain and stop");

    let http_shutdown = shutdown.clone();
    axum::serve(listener, locality_scheduler::router(state))
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
        .context("serving HTTP")?;
    for worker in workers {
        worker.await.context("a worker task failed")?;
    }
    event_loop.await.context("the result recorder failed")?;
    println!("locality up: stopped");
    Ok(())
}
