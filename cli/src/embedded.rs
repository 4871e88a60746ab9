//! `locality up`: parse, compose, run. The wiring itself is `locality_embedded`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use locality_embedded::{Embedded, Options};
use locality_proto::Config;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Address for the HTTP API; scheduler.listen from the config when absent
    /// (127.0.0.1:8080 by default). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address for /healthz, /readyz and /metrics apart from the API (also on the API);
    /// scheduler.admin_listen from the config when absent.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
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

pub fn run(config: Config, args: UpArgs) -> Result<()> {
    let cpu_pool = crate::image_pool(crate::threads(args.threads))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config, args, cpu_pool))
}

async fn serve(config: Config, args: UpArgs, cpu_pool: Arc<rayon::ThreadPool>) -> Result<()> {
    let listen = crate::listen_address(&config, args.listen)?;
    let admin = crate::admin_address(&config, args.admin_listen)?;
    let limits = locality_http::ServeLimits::from(&config.limits);
    let config_limits = config.limits;
    let shutdown = CancellationToken::new();
    crate::shutdown::on_signal(shutdown.clone());
    let options = Options {
        data_dir: args.data_dir,
        jobs_per_region: args.jobs_per_region,
    };
    let embedded = Embedded::start(Arc::new(config), &options, cpu_pool, shutdown.clone()).await?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!(
        "locality up: listening on http://{}",
        listener.local_addr()?
    );
    for region in &embedded.regions {
        println!(
            "  region {} ({}): data in {}",
            region.region, region.description, region.data
        );
    }
    let admin = crate::serve_admin(
        admin,
        embedded.admin_router(),
        &config_limits,
        shutdown.clone(),
    )
    .await?;
    println!("  press Ctrl-C to drain and stop");

    locality_http::serve(listener, embedded.router(), limits, shutdown)
        .await
        .context("serving HTTP")?;
    if let Some(admin) = admin {
        admin.await.context("the admin listener failed")??;
    }
    embedded.finish().await;
    println!("locality up: stopped");
    Ok(())
}
