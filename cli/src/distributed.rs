//! The distributed mode: `locality scheduler` and `locality worker --region ID` as
//! separate processes talking through RabbitMQ (one vhost or broker per region).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use locality_proto::{Config, JobMessage, RegionConfig, RegionId};
use locality_scheduler::amqp::AmqpRegion;
use locality_scheduler::{AppState, GatewayError, RegionGateway};
use locality_worker::amqp::{run_amqp, AmqpWorker};
use locality_worker::{RegionStores, WorkerContext};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Address for the HTTP API; scheduler.listen from the config when absent.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The one region this worker serves; it reads that region's queues and store only.
    #[arg(long)]
    region: String,
    /// Address of this region's ingest endpoint (uploads of originals into the region's
    /// store, /healthz, /readyz, /metrics). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Threads for image work. Defaults to the CPU count.
    #[arg(long)]
    threads: Option<usize>,
    /// Jobs run at once, and each queue's prefetch. Defaults to twice the threads, so
    /// the next job's fetch overlaps this one's CPU work; memory is bounded by
    /// limits.worker_pixel_budget whatever this is.
    #[arg(long)]
    jobs: Option<usize>,
    /// Store URL instead of regions.REGION.store (same options). Refused when it is
    /// the store of another region.
    #[arg(long)]
    store: Option<String>,
}

fn listen_address(config: &Config, flag: Option<SocketAddr>) -> Result<SocketAddr> {
    match flag {
        Some(address) => Ok(address),
        None => config.scheduler.listen.parse().with_context(|| {
            format!(
                "scheduler.listen {:?} is not an address",
                config.scheduler.listen
            )
        }),
    }
}

pub fn run_scheduler(config: Config, args: SchedulerArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve_scheduler(config, args))
}

async fn serve_scheduler(config: Config, args: SchedulerArgs) -> Result<()> {
    let scheduler_url = config
        .scheduler
        .amqp_url
        .clone()
        .context("scheduler.amqp_url is required by `locality scheduler`")?;
    let mut regions = Vec::new();
    let mut gateways: BTreeMap<RegionId, Arc<dyn RegionGateway>> = BTreeMap::new();
    for (id, region) in &config.regions {
        let url = region.amqp_url.clone().with_context(|| {
            format!("regions.{id}.amqp_url is required by `locality scheduler`")
        })?;
        let gateway = AmqpRegion::new(id.clone(), url, region.ingest_url.clone());
        gateways.insert(id.clone(), gateway.clone());
        regions.push(gateway);
    }
    let shutdown = CancellationToken::new();
    crate::shutdown::on_signal(shutdown.clone());

    let connected = Arc::new(AtomicBool::new(false));
    let config = Arc::new(config);
    let state =
        AppState::new(config.clone(), gateways).with_link("scheduler-broker", connected.clone());
    let links = tokio::spawn(locality_scheduler::amqp::run(
        state.clone(),
        scheduler_url,
        connected,
        regions,
        shutdown.clone(),
    ));

    let listen = listen_address(&config, args.listen)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!(
        "locality scheduler: listening on http://{}",
        listener.local_addr()?
    );
    let http_shutdown = shutdown.clone();
    axum::serve(listener, locality_scheduler::router(state))
        .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
        .await
        .context("serving HTTP")?;
    links.await.context("the broker links failed")?;
    println!("locality scheduler: stopped");
    Ok(())
}

/// A worker's ingest endpoint writes originals into its own region's store.
struct RegionIngest {
    stores: RegionStores,
    connected: Arc<AtomicBool>,
}

impl RegionGateway for RegionIngest {
    fn dispatch(&self, _job: JobMessage) -> BoxFuture<'_, Result<(), GatewayError>> {
        let error = GatewayError::Rejected {
            region: self.stores.region().to_string(),
            reason: "jobs are submitted to the scheduler, not to a worker".into(),
        };
        async move { Err(error) }.boxed()
    }

    fn put_source(
        &self,
        object_key: String,
        bytes: Bytes,
    ) -> BoxFuture<'_, Result<(), GatewayError>> {
        crate::store_original(&self.stores, object_key, bytes).boxed()
    }

    fn queue_depth(&self) -> (usize, usize) {
        (0, 0)
    }

    fn is_ready(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
}

pub fn run_worker(config: Config, args: WorkerArgs) -> Result<()> {
    let (region, _) = config
        .region(&args.region)
        .with_context(|| format!("region {:?} is not in the configuration", args.region))?;
    let region = region.clone();
    let own = &config.regions[&region];
    let url = own
        .amqp_url
        .clone()
        .with_context(|| format!("regions.{region}.amqp_url is required by `locality worker`"))?;
    let store_override = args.store.as_ref().map(|store| RegionConfig {
        store: Some(store.clone()),
        ..own.clone()
    });
    if store_override.is_none() && own.store.is_none() {
        bail!("regions.{region}.store is required by `locality worker` (or give --store)");
    }
    let stores = RegionStores::open(&config, &region, store_override.as_ref(), None)
        .with_context(|| format!("opening the store of region {region}"))?;
    let threads = crate::threads(args.threads);
    let cpu_pool = crate::image_pool(threads)?;
    let slots = args.jobs.unwrap_or(threads * 2);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let context = Arc::new(WorkerContext::new(stores.clone(), config.limits, cpu_pool));
        let shutdown = CancellationToken::new();
        crate::shutdown::on_signal(shutdown.clone());
        let connected = Arc::new(AtomicBool::new(false));

        let mut gateways: BTreeMap<RegionId, Arc<dyn RegionGateway>> = BTreeMap::new();
        gateways.insert(
            region.clone(),
            Arc::new(RegionIngest {
                stores,
                connected: connected.clone(),
            }),
        );
        let state = AppState::new(Arc::new(config), gateways);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        println!(
            "locality worker {region}: ingest on http://{}, {threads} threads, {slots} jobs at once",
            listener.local_addr()?
        );
        let http_shutdown = shutdown.clone();
        let router = locality_scheduler::ingest_router(state);
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await
        });
        run_amqp(context, AmqpWorker { url, slots }, connected, shutdown).await;
        http.await.context("the ingest endpoint failed")??;
        println!("locality worker {region}: stopped");
        Ok(())
    })
}
