//! `locality report residency`: where a tenant's data was processed and stored, from
//! each region's own record of processing (counts per day, never object contents),
//! cross-checked against the control plane's job records: every job that finished in
//! its region is audited exactly once, in that region.
//!
//! It reads what an operator's configuration reaches: every configured region's store
//! (its `.audit/` area only) and the control store (`scheduler.database_url`, or the
//! SQLite file of `locality up --data-dir`). Exit status 1 when the cross-check fails.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use locality_proto::audit::{
    cross_check, day_of, AuditKind, ControlJob, Counts, Discrepancy, RegionSummary,
};
use locality_proto::time::{now_millis, parse_rfc3339, rfc3339, Millis};
use locality_proto::{Config, RegionId, TenantId};
use locality_scheduler::store::JobFilter;
use locality_scheduler::ControlStore;
use locality_worker::audit::{filed_before_ms, summarise};
use locality_worker::RegionStores;
use serde::Serialize;

use crate::progress::RegionProgress;

const DAY_MS: Millis = 86_400_000;
/// Job records read per page from the control store.
const PAGE: u32 = 500;

#[derive(clap::Args)]
pub struct ReportArgs {
    #[command(subcommand)]
    what: ReportWhat,
}

#[derive(clap::Subcommand)]
enum ReportWhat {
    /// In which regions a tenant's data was processed and stored, per day, checked
    /// against the control plane's job records.
    Residency(ResidencyArgs),
}

#[derive(clap::Args)]
struct ResidencyArgs {
    #[arg(long)]
    tenant: String,
    /// First day covered (`YYYY-MM-DD`, UTC) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    since: Millis,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// The control store; default scheduler.database_url, else `DATA_DIR/control.sqlite`.
    #[arg(long, env = "LOCALITY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// `locality up`'s data directory: its control store, and the store of every
    /// region whose config names none.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

fn parse_since(text: &str) -> Result<Millis, String> {
    if text.len() == 10 {
        parse_rfc3339(&format!("{text}T00:00:00Z"))
    } else {
        parse_rfc3339(text)
    }
}

/// One region's part of the report.
#[derive(Serialize)]
struct RegionReport {
    region: RegionId,
    /// Whether the tenant is pinned to this region.
    pinned: bool,
    /// Whether the record shows any processing or storing of the tenant's data here.
    used: bool,
    totals: BTreeMap<AuditKind, Counts>,
    days: BTreeMap<String, BTreeMap<AuditKind, Counts>>,
}

#[derive(Serialize)]
struct ControlPlaneJobs {
    /// Jobs created in the window.
    jobs: usize,
    /// Of those, the ones a worker of their region finished: each must be audited once.
    finished_in_region: usize,
    by_region: BTreeMap<RegionId, usize>,
}

#[derive(Serialize)]
struct CrossCheck {
    ok: bool,
    /// From when audited jobs are checked: the control plane keeps job records only
    /// `jobs.retention_days`.
    checked_from: String,
    jobs_audited: usize,
    /// Audited jobs whose control-plane records were removed by an erasure since.
    jobs_erased_since: usize,
    discrepancies: Vec<Discrepancy>,
}

#[derive(Serialize)]
struct ResidencyReport {
    tenant: TenantId,
    since: String,
    as_of: String,
    pinned_regions: Vec<RegionId>,
    /// Regions whose record shows the tenant's data processed or stored.
    used_regions: Vec<RegionId>,
    regions: Vec<RegionReport>,
    control_plane: ControlPlaneJobs,
    cross_check: CrossCheck,
}

pub fn run(config: Config, args: ReportArgs) -> Result<()> {
    match args.what {
        ReportWhat::Residency(args) => residency(config, args),
    }
}

fn control_store_url(config: &Config, args: &ResidencyArgs) -> Result<String> {
    if let Some(url) = args
        .database_url
        .as_ref()
        .or(config.scheduler.database_url.as_ref())
    {
        return Ok(url.clone());
    }
    let file = args.data_dir.join("control.sqlite");
    if !file.exists() {
        bail!(
            "no control store: give --database-url, set scheduler.database_url, or point --data-dir at `locality up`'s data directory ({} does not exist)",
            file.display()
        );
    }
    Ok(format!("sqlite://{}?mode=rw", file.display()))
}

fn residency(config: Config, args: ResidencyArgs) -> Result<()> {
    let tenant = TenantId::new(&args.tenant)
        .map_err(|reason| anyhow::anyhow!("--tenant {}: {reason}", args.tenant))?;
    let pinned = config
        .tenants
        .get(&tenant)
        .with_context(|| format!("tenant {tenant} is not in the configuration"))?
        .regions
        .clone();
    let database = control_store_url(&config, &args)?;
    let as_of = now_millis();
    let retention_start = as_of - Millis::from(config.jobs.retention_days) * DAY_MS;
    let checked_from = args.since.max(retention_start);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (mut summaries, unavailable, control) = runtime.block_on(async {
        let (summaries, unavailable) = summarise_regions(&config, &args, &tenant).await;
        let control = control_jobs(&database, &tenant, checked_from).await?;
        Ok::<_, anyhow::Error>((summaries, unavailable, control))
    })?;

    let regions: Vec<RegionReport> = summaries
        .iter()
        .map(|summary| RegionReport {
            region: summary.region.clone(),
            pinned: pinned.contains(&summary.region),
            used: !summary.is_empty(),
            totals: AuditKind::ALL
                .iter()
                .map(|kind| (*kind, summary.total(*kind)))
                .collect(),
            days: summary.days.clone(),
        })
        .collect();
    // Audited jobs from before the control plane's records begin cannot be checked.
    for summary in &mut summaries {
        summary
            .jobs
            .retain(|_, job| job.first_at_ms >= checked_from);
    }
    let checked = cross_check(&summaries, &unavailable, &control);
    let mut by_region = BTreeMap::new();
    for job in control.iter().filter(|job| job.finished_in_region) {
        *by_region.entry(job.region.clone()).or_default() += 1;
    }
    let report = ResidencyReport {
        since: day_of(args.since),
        as_of: rfc3339(as_of),
        pinned_regions: pinned.into_iter().collect(),
        used_regions: regions
            .iter()
            .filter(|r| r.used)
            .map(|r| r.region.clone())
            .collect(),
        control_plane: ControlPlaneJobs {
            jobs: control.len(),
            finished_in_region: control.iter().filter(|j| j.finished_in_region).count(),
            by_region,
        },
        cross_check: CrossCheck {
            ok: checked.discrepancies.is_empty(),
            checked_from: rfc3339(checked_from),
            jobs_audited: summaries.iter().map(|s| s.jobs.len()).sum(),
            jobs_erased_since: checked.erased_jobs.len(),
            discrepancies: checked.discrepancies,
        },
        regions,
        tenant,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if !report.cross_check.ok {
        return Err(crate::Failed(format!(
            "the cross-check failed: {} discrepancies between the regions' records and the control plane",
            report.cross_check.discrepancies.len()
        ))
        .into());
    }
    Ok(())
}

/// Every configured region's summary (or why it could not be read), with progress.
async fn summarise_regions(
    config: &Config,
    args: &ResidencyArgs,
    tenant: &TenantId,
) -> (Vec<RegionSummary>, Vec<(RegionId, String)>) {
    let regions: Vec<RegionId> = config.regions.keys().cloned().collect();
    let mut bars = RegionProgress::new(regions.iter().map(ToString::to_string));
    let (mut summaries, mut unavailable) = (Vec::new(), Vec::new());
    for region in regions {
        let name = region.to_string();
        let stores = match RegionStores::open(config, &region, None, Some(&args.data_dir)) {
            Ok(stores) => stores,
            Err(err) => {
                bars.update(&name, format!("unavailable: {err}"), true);
                unavailable.push((region, err.to_string()));
                continue;
            }
        };
        let filed_before = filed_before_ms(config);
        let read = summarise(
            stores.own(),
            tenant,
            args.since,
            filed_before,
            |read, total| {
                bars.update(&name, format!("{read}/{total} records read"), false);
            },
        )
        .await;
        match read {
            Ok(summary) => {
                let jobs = summary.total(AuditKind::JobProcessed).records;
                bars.update(&name, format!("done: {jobs} jobs recorded"), true);
                summaries.push(summary);
            }
            Err(err) => {
                bars.update(&name, format!("unavailable: {err}"), true);
                unavailable.push((region, err.to_string()));
            }
        }
    }
    (summaries, unavailable)
}

/// The tenant's jobs created from a day before `from` (so jobs audited just after
/// `from` are known); only those created from `from` on must be audited.
async fn control_jobs(database: &str, tenant: &TenantId, from: Millis) -> Result<Vec<ControlJob>> {
    let store = ControlStore::open(database)
        .await
        .context("opening the control store")?;
    let mut filter = JobFilter {
        since: Some(from - DAY_MS),
        limit: PAGE,
        ..JobFilter::default()
    };
    let mut jobs = Vec::new();
    loop {
        let page = store
            .list(tenant, &filter)
            .await
            .context("reading job records")?;
        let Some(last) = page.last() else { break };
        filter.after = Some((last.created_at_millis, last.job_id));
        for record in &page {
            jobs.push(ControlJob {
                job_id: record.job_id.to_string(),
                region: record.region.clone(),
                finished_in_region: record.finished_in_region() && record.created_at_millis >= from,
            });
        }
    }
    Ok(jobs)
}

fn print_table(report: &ResidencyReport) {
    let pinned: Vec<String> = report
        .pinned_regions
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "Residency of tenant {} since {} (as of {}); pinned to: {}",
        report.tenant,
        report.since,
        report.as_of,
        pinned.join(", ")
    );
    println!();
    println!(
        "{:<8} {:<10} {:>6} {:>8} {:>10} {:>9} {:>8} {:>8} {:>9}",
        "region", "day", "jobs", "outputs", "MiB out", "originals", "erased", "expired", "exported"
    );
    let count =
        |day: &BTreeMap<AuditKind, Counts>, kind| day.get(&kind).copied().unwrap_or_default();
    for region in &report.regions {
        if region.days.is_empty() {
            println!(
                "{:<8} {:<10} no record of the tenant",
                region.region.as_str(),
                "-"
            );
        }
        for (day, kinds) in &region.days {
            let jobs = count(kinds, AuditKind::JobProcessed);
            println!(
                "{:<8} {:<10} {:>6} {:>8} {:>10.2} {:>9} {:>8} {:>8} {:>9}",
                region.region.as_str(),
                day,
                jobs.records,
                jobs.objects,
                jobs.bytes as f64 / 1_048_576.0,
                count(kinds, AuditKind::OriginalStored).records,
                count(kinds, AuditKind::Erased).objects,
                count(kinds, AuditKind::Expired).objects,
                count(kinds, AuditKind::Exported).records,
            );
        }
    }
    println!();
    let used: Vec<String> = report
        .used_regions
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "Processed or stored in: {}",
        if used.is_empty() {
            "nowhere".to_string()
        } else {
            used.join(", ")
        }
    );
    let check = &report.cross_check;
    if check.ok {
        println!(
            "Cross-check with the control plane (jobs since {}): {} jobs finished in their region, each recorded exactly once, in its own region ({} more recorded, of erased data): OK",
            check.checked_from, report.control_plane.finished_in_region, check.jobs_erased_since
        );
    } else {
        println!(
            "Cross-check with the control plane (jobs since {}): FAILED, {} discrepancies:",
            check.checked_from,
            check.discrepancies.len()
        );
        for problem in &check.discrepancies {
            println!("  {}", serde_json::to_string(problem).unwrap_or_default());
        }
    }
}
