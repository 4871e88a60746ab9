//! The distributed mode: `locality scheduler` and `locality worker --region ID` as
//! separate processes talking through RabbitMQ (one vhost or broker per region).
//! Parse, compose, run: the parts are `locality_scheduler` and `locality_worker`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use locality_http::ServeLimits;
use locality_proto::{Config, RegionConfig, RegionId};
use locality_scheduler::amqp::{AmqpRegion, AmqpResults};
use locality_scheduler::{Control, ControlStore, Region, UploadRoute};
use locality_worker::ingest::{Downloads, IngestState, Uploads};
use locality_worker::rights::retention::run_periodically;
use locality_worker::transport::amqp::{run_amqp, SweepLock};
use locality_worker::{
    JobContext, RegionContext, RegionStores, RightsContext, Worker, WorkerMetrics,
};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct SchedulerArgs {
    /// Address for the HTTP API; scheduler.listen from the config when absent.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address for /healthz, /readyz and /metrics apart from the API (also on the API):
    /// point probes and scrapes here. scheduler.admin_listen from the config when absent.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Accept the public demo secrets of the example config (demo tenants' API keys,
    /// the demo pseudonymisation key). Never in production.
    #[arg(long)]
    pub demo: bool,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The one region this worker serves; it reads that region's queues and store only.
    #[arg(long)]
    pub region: String,
    /// Address of this region's ingest endpoint (uploads of originals into the region's
    /// store, /healthz, /readyz, /metrics). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics apart from the ingest endpoint.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Threads for image work. Defaults to the CPU count.
    #[arg(long)]
    threads: Option<usize>,
    /// Jobs run at once, and each queue's prefetch. Defaults to twice the threads, so
    /// the next job's fetch overlaps this one's CPU work; memory is bounded by
    /// limits.worker_memory_budget whatever this is.
    #[arg(long)]
    jobs: Option<usize>,
    /// Store URL instead of regions.REGION.store (same options). Refused when it is
    /// the store of another region.
    #[arg(long)]
    store: Option<String>,
    /// Accept the public demo secrets of the example config. Never in production.
    #[arg(long)]
    pub demo: bool,
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
    let database_url = config
        .scheduler
        .database_url
        .clone()
        .context("scheduler.database_url (PostgreSQL) is required by `locality scheduler`")?;
    let store = ControlStore::open(&database_url)
        .await
        .context("opening the control store")?;
    let mut links = Vec::new();
    let mut regions: BTreeMap<RegionId, Region> = BTreeMap::new();
    for (id, region) in &config.regions {
        let url = region.amqp_url.clone().with_context(|| {
            format!("regions.{id}.amqp_url is required by `locality scheduler`")
        })?;
        let keys = region.message_keys().with_context(|| {
            format!("regions.{id}.message_keys and message_key_id are required by `locality scheduler`: it signs what it sends the region and verifies what the region reports")
        })?;
        let link = AmqpRegion::new(id.clone(), url, keys);
        let uploads = match &region.ingest_url {
            Some(ingest_url) => UploadRoute::Redirect {
                ingest_url: ingest_url.clone(),
            },
            None => UploadRoute::InRegionOnly,
        };
        regions.insert(
            id.clone(),
            Region {
                dispatch: link.clone(),
                uploads,
            },
        );
        links.push(link);
    }
    let listen = crate::listen_address(&config, args.listen)?;
    let admin = crate::admin_address(&config, args.admin_listen)?;
    let limits = config.limits;
    let shutdown = CancellationToken::new();
    crate::shutdown::on_signal(shutdown.clone());

    let registry = prometheus::Registry::new();
    locality_http::register_process_metrics(&registry);
    let http_metrics = locality_http::HttpMetrics::register(&registry);
    let connected = Arc::new(AtomicBool::new(false));
    let results = AmqpResults::default();
    let control = Arc::new(
        // The regions' receipt and download keys stay in the regions.
        Control::new(
            Arc::new(config.for_control_plane()),
            regions,
            store,
            &registry,
        )
        .with_link("scheduler-broker", connected.clone())
        .with_results(Arc::new(results.clone())),
    );
    let broker = tokio::spawn(locality_scheduler::amqp::run(
        control.clone(),
        scheduler_url,
        connected,
        links,
        results,
        shutdown.clone(),
    ));
    let background = tokio::spawn({
        let (control, shutdown) = (control.clone(), shutdown.clone());
        async move { control.run_background(shutdown).await }
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!(
        "locality scheduler: listening on http://{}",
        listener.local_addr()?
    );
    let admin_router = http_metrics.measured(
        locality_scheduler::http::admin_router(control.clone(), registry.clone()),
        "admin",
    );
    let admin = crate::serve_admin(admin, admin_router, &limits, shutdown.clone()).await?;
    locality_http::serve(
        listener,
        http_metrics.measured(locality_scheduler::http::router(control, registry), "api"),
        ServeLimits::from(&limits),
        shutdown,
    )
    .await
    .context("serving HTTP")?;
    if let Some(admin) = admin {
        admin.await.context("the admin listener failed")??;
    }
    broker.await.context("the broker links failed")?;
    background
        .await
        .context("the background dispatcher failed")?;
    println!("locality scheduler: stopped");
    Ok(())
}

pub fn run_worker(config: Config, args: WorkerArgs) -> Result<()> {
    let (region, _) = config
        .region(&args.region)
        .with_context(|| format!("region {:?} is not in the configuration", args.region))?;
    let region = region.clone();
    // The worker keeps its own region's credentials and nobody else's.
    let config = config.for_region(&region);
    let own = &config.regions[&region];
    let url = own
        .amqp_url
        .clone()
        .with_context(|| format!("regions.{region}.amqp_url is required by `locality worker`"))?;
    let store_override = args.store.as_ref().map(|store| RegionConfig {
        store: Some(store.clone()),
        ..own.clone()
    });
    let keys = own.message_keys().with_context(|| {
        format!("regions.{region}.message_keys and message_key_id are required by `locality worker`: it acts only on messages signed with them")
    })?;
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
        let registry = prometheus::Registry::new();
        locality_http::register_process_metrics(&registry);
        let http_metrics = locality_http::HttpMetrics::register(&registry);
        let metrics = WorkerMetrics::register(&registry);
        let config = Arc::new(config);
        let config_for_sweep = config.clone();
        let region_context = RegionContext::new(stores.clone(), &config, &metrics);
        // A region that cannot sign its receipts and links serves no rights: refused now,
        // not at the first erasure.
        let worker = Arc::new(Worker {
            jobs: JobContext::new(region_context.clone(), cpu_pool),
            rights: RightsContext::new(region_context.clone(), &config)?,
        });
        let shutdown = CancellationToken::new();
        crate::shutdown::on_signal(shutdown.clone());
        let connected = Arc::new(AtomicBool::new(false));
        let limits = config.limits;
        let state = IngestState {
            downloads: Downloads::new(&config, [stores.clone()]),
            uploads: Uploads::new(stores, &config),
            config,
            connected: connected.clone(),
            registry,
        };
        let admin = http_metrics.measured(locality_worker::ingest::admin_router(state.clone()), "admin");
        let ingest = http_metrics.measured(locality_worker::ingest::router(state), "ingest");
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        println!(
            "locality worker {region}: ingest on http://{}, {threads} threads, {slots} jobs at once",
            listener.local_addr()?
        );
        let admin = crate::serve_admin(args.admin_listen, admin, &limits, shutdown.clone()).await?;
        let http = tokio::spawn(locality_http::serve(
            listener,
            ingest,
            ServeLimits::from(&limits),
            shutdown.clone(),
        ));
        // The region's retention sweep, by whichever of its workers holds the lock.
        let sweeper = {
            let (config, context, url) = (config_for_sweep, region_context, url.clone());
            let interval = Duration::from_secs(config.retention.sweep_interval_seconds);
            let (limits, region, keys) = (config.limits, region.clone(), keys.clone());
            tokio::spawn(run_periodically(
                config,
                context,
                interval,
                shutdown.clone(),
                move || {
                    let (url, region, keys) = (url.clone(), region.clone(), keys.clone());
                    async move {
                        SweepLock::take(&url, &region, &keys, &limits)
                            .await
                            .unwrap_or_else(|err| {
                                tracing::warn!(error = %err, "could not try the sweep lock");
                                None
                            })
                    }
                },
            ))
        };
        run_amqp(worker, url, keys, slots, connected, shutdown).await;
        sweeper.await.context("the retention sweeper failed")?;
        http.await.context("the ingest endpoint failed")??;
        if let Some(admin) = admin {
            admin.await.context("the admin listener failed")??;
        }
        println!("locality worker {region}: stopped");
        Ok(())
    })
}
