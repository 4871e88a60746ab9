//! `locality sweep`: one retention sweep of a region's store, from the command line,
//! with progress. A real sweep takes the region's sweep lock on its broker (so it never
//! runs beside a worker's periodic sweep or another `locality sweep`) and announces
//! every deleted key; a dry run only reads the store.

use anyhow::{Context, Result};
use locality_proto::time::{now_millis, rfc3339, Millis};
use locality_proto::{Config, RegionId};
use locality_worker::rights::retention::{sweep, DryRun, SweepOptions, SweepProgress, SweepReport};
use locality_worker::transport::amqp::SweepLock;
use locality_worker::{RegionContext, RegionStores, WorkerMetrics};

use crate::progress::RegionProgress;

#[derive(clap::Args)]
pub struct SweepArgs {
    /// The region whose store is swept.
    #[arg(long)]
    region: String,
    /// List what has expired, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// List every object of every tenant instead of reading the region's day index:
    /// once after upgrading from a release without the index, or for objects put into
    /// the store by hand. Its requests grow with everything stored.
    #[arg(long)]
    full: bool,
    /// Sweep as if it were this time (RFC 3339), e.g. to preview what expires by then.
    #[arg(long, value_parser = locality_proto::time::parse_rfc3339)]
    as_of: Option<Millis>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

/// How many objects the sweep has taken, and what it did with them.
fn tally(report: &SweepReport) -> (u64, &'static str) {
    if report.dry_run {
        (report.expired, "expired (dry run, nothing deleted)")
    } else {
        (report.deleted, "deleted")
    }
}

fn progress_text(progress: &SweepProgress<'_>) -> String {
    let report = progress.report;
    let (count, verb) = tally(report);
    format!(
        "tenant {} ({}/{}): {} index entries read, {} objects examined, {count} {verb}",
        progress.tenant,
        progress.tenants_done,
        progress.tenants,
        report.index_entries,
        report.examined
    )
}

pub fn run(config: Config, args: SweepArgs) -> Result<()> {
    let region = RegionId::new(&args.region)
        .map_err(|reason| anyhow::anyhow!("--region {}: {reason}", args.region))?;
    config
        .region(region.as_str())
        .with_context(|| format!("region {region} is not in the configuration"))?;
    let config = config.for_region(&region);
    let stores = RegionStores::open(&config, &region, None, None)
        .with_context(|| format!("opening the store of region {region}"))?;
    let amqp_url = config.regions[&region].amqp_url.clone();
    let as_of = args.as_of.unwrap_or_else(now_millis);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let context = RegionContext::new(stores, &config, &WorkerMetrics::register(&registry));
        let mut bars = RegionProgress::new(std::iter::once(region.to_string()));
        let lock = if args.dry_run {
            None
        } else {
            let url = amqp_url.with_context(|| {
                format!("regions.{region}.amqp_url is needed to take the region's sweep lock and announce purges")
            })?;
            let keys = config.regions[&region].message_keys().with_context(|| {
                format!("regions.{region}.message_keys are needed to sign the purge events")
            })?;
            match SweepLock::take(&url, &region, &keys, &config.limits).await? {
                Some(lock) => Some(lock),
                None => {
                    let text = "another sweeper holds this region's sweep; nothing done";
                    bars.update(region.as_str(), text.into(), true);
                    return Ok(());
                }
            }
        };
        let mut show = |progress: &SweepProgress<'_>| {
            bars.update(region.as_str(), progress_text(progress), false);
        };
        let options = SweepOptions {
            dry_run: args.dry_run,
            full: args.full,
        };
        let report: SweepReport = match &lock {
            None => sweep(&config, &context, &DryRun, as_of, options, &mut show).await,
            Some(lock) => sweep(&config, &context, lock, as_of, options, &mut show).await,
        };
        drop(lock);
        let (count, verb) = tally(&report);
        bars.update(
            region.as_str(),
            format!(
                "done as of {}: {} objects examined, {count} {verb}, {}",
                rfc3339(as_of),
                report.examined,
                mib(report.expired_bytes)
            ),
            true,
        );
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        }
        for failure in &report.failed {
            eprintln!("tenant {}: its part of the sweep failed: {}", failure.tenant, failure.error);
        }
        if !report.failed.is_empty() {
            return Err(crate::Failed(format!(
                "the sweep of {} of the region's tenants failed; the others were swept",
                report.failed.len()
            ))
            .into());
        }
        Ok::<_, anyhow::Error>(())
    })
}
