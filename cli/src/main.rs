//! `locality`: region-pinned image processing.
//!
//! main stays thin: parse flags, load config, hand over to the chosen mode.
//!
//! Exit codes: 0 done; 1 the command ran and its answer is a failure ([`Failed`]: a
//! check found discrepancies, a receipt does not verify, part of a sweep failed); 2 it
//! could not run (flags, config, a service out of reach).

mod api;
mod config;
mod distributed;
mod embedded;
mod jobs;
mod progress;
mod report;
mod rights;
mod shutdown;
mod sweep;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use config::Source;

#[derive(Parser)]
#[command(
    name = "locality",
    version,
    about = "Region-pinned image processing: every image is processed and stored only in its tenant's region."
)]
struct Cli {
    /// Configuration file (TOML). `locality up` and `print-config` default to the shipped
    /// example config (public demo tenants); `scheduler` and `worker` need this, or the
    /// whole configuration in LOCALITY__* variables. Any value can be overridden by
    /// environment variables such as LOCALITY__SCHEDULER__LISTEN.
    #[arg(long, global = true, env = "LOCALITY_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text for people, or one JSON object per line for a log pipeline.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOCALITY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, filtered by RUST_LOG (default info). JSON lines carry the current
/// span and its parents (a job's span: job id, tenant, region, attempt).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The command ran to its end and its answer is a failure (exit 1, not 2).
#[derive(Debug)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

#[derive(Subcommand)]
enum Command {
    /// Embedded all-in-one: the scheduler plus one worker per configured region in one
    /// process, with an in-process queue and a local directory per region.
    Up(embedded::UpArgs),
    /// Distributed mode, control plane: HTTP API and `locality.submit`, routing jobs to
    /// each region's broker (regions.ID.amqp_url), relaying results to `locality.results`.
    Scheduler(distributed::SchedulerArgs),
    /// Distributed mode, data plane of one region: consumes that region's queues, reads
    /// and writes that region's store only, and serves the region's upload endpoint.
    Worker(distributed::WorkerArgs),
    /// Erase a data subject, an asset or (operators) a tenant in every region it is
    /// pinned to, through a running scheduler, following each region's progress.
    Erase(rights::EraseArgs),
    /// List (and with --download, archive and fetch) every object of a data subject in
    /// every region, through a running scheduler.
    Export(rights::ExportArgs),
    /// Check an erasure receipt offline against the regions' public keys.
    VerifyReceipt(rights::VerifyArgs),
    /// Delete what has outlived its tenant's retention in one region's store, announcing
    /// each key as a purge event (`--dry-run`: list only). Workers also sweep on their
    /// own every retention.sweep_interval_seconds; one sweep per region runs at a time.
    Sweep(sweep::SweepArgs),
    /// Reports from the regions' records of processing: `report residency --tenant T
    /// --since DATE` says where a tenant's data was processed and stored, per day, and
    /// checks every job was recorded exactly once, in its own region.
    Report(report::ReportArgs),
    /// Print fresh receipt and download keys for a region, as TOML.
    Keygen(rights::KeygenArgs),
    /// Print the resolved configuration (defaults, file and environment merged) as TOML,
    /// with every secret replaced by ***.
    PrintConfig,
    /// Upload an image and submit its job through a running scheduler; with --wait,
    /// follow it and print its result.
    Submit(jobs::SubmitArgs),
    /// A tenant's jobs through a running scheduler: `jobs list`, `jobs get ID`.
    Jobs(jobs::JobsArgs),
    /// Print a shell completion script: `locality completions bash > /etc/bash_completion.d/locality`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `locality man > locality.1 && man ./locality.1`.
    Man,
    /// Print the OpenAPI 3.1 description of the HTTP API (YAML), generated from the code;
    /// docs/openapi.yaml is its output.
    Openapi,
}

fn main() -> std::process::ExitCode {
    let outcome = run(Cli::parse());
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:?}");
            let ran = error.downcast_ref::<Failed>().is_some();
            std::process::ExitCode::from(if ran { 1 } else { 2 })
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    init_logging(cli.log_format);
    locality_http::install_tls_provider();
    let path = cli.config.as_deref();
    if matches!(cli.command, Command::Up(_) | Command::Worker(_)) {
        locality_worker::pipeline::check_cpu()?;
    }
    match cli.command {
        Command::Up(args) => embedded::run(config::load(path, Source::FileOrExample)?, args),
        Command::Scheduler(args) => {
            let config = config::load(path, Source::FileOrEnvironment)?;
            config::refuse_demo_secrets(&config, args.demo, "scheduler")?;
            distributed::run_scheduler(config, args)
        }
        Command::Worker(args) => {
            let config = config::load(path, Source::FileOrEnvironment)?;
            // Only what this region's worker holds counts (no scheduler secrets).
            let region = locality_proto::RegionId::new(&args.region)
                .map_err(|reason| anyhow::anyhow!("--region {}: {reason}", args.region))?;
            config::refuse_demo_secrets(&config.for_region(&region), args.demo, "worker")?;
            distributed::run_worker(config, args)
        }
        Command::Erase(args) => rights::erase(args),
        Command::Export(args) => rights::export(args),
        Command::VerifyReceipt(args) => {
            let config = match path {
                Some(_) => Some(config::load(path, Source::FileOrExample)?),
                None => None,
            };
            rights::verify_receipt(args, config.as_ref())
        }
        Command::Keygen(args) => rights::keygen(args),
        Command::Sweep(args) => sweep::run(config::load(path, Source::FileOrEnvironment)?, args),
        Command::Report(args) => report::run(config::load(path, Source::FileOrExample)?, args),
        Command::Submit(args) => jobs::submit(args),
        Command::Jobs(args) => jobs::jobs(args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "locality", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Openapi => {
            print!("{}", locality_embedded::openapi().to_yaml()?);
            Ok(())
        }
        Command::PrintConfig => {
            let config = config::load(path, Source::FileOrExample)?;
            print!("{}", toml::to_string_pretty(&config.redacted())?);
            Ok(())
        }
    }
}

/// The address to listen on: the flag, or scheduler.listen from the config.
fn listen_address(
    config: &locality_proto::Config,
    flag: Option<std::net::SocketAddr>,
) -> Result<std::net::SocketAddr> {
    use anyhow::Context;
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

/// Serves health and metrics on their own listener, when an address is given (the
/// flag, or scheduler.admin_listen), apart from the API's clients.
async fn serve_admin(
    address: Option<std::net::SocketAddr>,
    router: axum::Router,
    limits: &locality_proto::Limits,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    use anyhow::Context;
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} (admin)"))?;
    println!("  health and metrics on http://{}", listener.local_addr()?);
    Ok(Some(tokio::spawn(locality_http::serve(
        listener,
        router,
        locality_http::ServeLimits::from(limits),
        shutdown,
    ))))
}

/// The admin address: the flag, or scheduler.admin_listen from the config.
fn admin_address(
    config: &locality_proto::Config,
    flag: Option<std::net::SocketAddr>,
) -> Result<Option<std::net::SocketAddr>> {
    use anyhow::Context;
    match (flag, &config.scheduler.admin_listen) {
        (Some(address), _) => Ok(Some(address)),
        (None, Some(text)) => text
            .parse()
            .map(Some)
            .with_context(|| format!("scheduler.admin_listen {text:?} is not an address")),
        (None, None) => Ok(None),
    }
}

/// Threads for image work: the flag, or the CPU count.
fn threads(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

/// The rayon pool all image work runs on; tokio threads never decode or encode.
fn image_pool(threads: usize) -> Result<std::sync::Arc<rayon::ThreadPool>> {
    use anyhow::Context;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("locality-image-{i}"))
        .build()
        .context("starting the image thread pool")?;
    Ok(std::sync::Arc::new(pool))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command's arguments only when that command is parsed; this
    /// checks every subcommand's at once (a misnamed `required_unless` panics here).
    #[test]
    fn every_subcommands_arguments_are_consistent() {
        super::Cli::command().debug_assert();
    }
}
