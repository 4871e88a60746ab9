//! The command-line side of data subjects' rights: `locality erase` and `locality
//! export` ask a running scheduler over its HTTP API and follow each region's progress;
//! `locality verify-receipt` checks a receipt offline against the regions' public keys;
//! `locality keygen` makes a region's keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use locality_proto::gdpr::ErasureReceipt;
use locality_proto::Config;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::api::{Api, ApiArgs};
use crate::progress::RegionProgress;

const POLL: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub struct EraseArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    what: EraseWhat,
    /// Return once the erasure is recorded, without following the regions.
    #[arg(long)]
    no_wait: bool,
    /// Write the erasure (every region's signed receipt) to this file, as JSON.
    #[arg(long)]
    receipt: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum EraseWhat {
    /// Everything of one data subject.
    Subject { subject: String },
    /// One asset: its original and every output.
    Asset {
        asset: String,
        /// The asset's subject (none: an asset uploaded without one).
        #[arg(long)]
        subject: Option<String>,
    },
    /// Everything of a tenant (the operators' key).
    Tenant { tenant: String },
    /// List the erasures not done yet (the tenant's own; every tenant's with the
    /// operators' key), each region's state, phase and last error.
    Status,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The data subject whose objects are listed.
    subject: String,
    /// Also archive the files in each region and download the archives into this
    /// directory (from each region's own endpoint).
    #[arg(long)]
    download: Option<PathBuf>,
    /// Write the manifest (every object, in every region) to this file, as JSON.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// A receipt: `locality erase --receipt`'s file, the body of `GET /v1/erasures/ID`,
    /// or one region's receipt.
    file: PathBuf,
    /// A region's public key, as REGION=HEX (repeatable). Without any, the keys of
    /// regions.ID.receipt_public_key in the configuration.
    #[arg(long = "public-key", value_name = "REGION=HEX")]
    public_keys: Vec<String>,
}

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// The region the keys are for.
    #[arg(long)]
    region: String,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn region_text(part: &Value, what: &str) -> String {
    let error = match (
        part["error"]["code"].as_str(),
        part["error"]["message"].as_str(),
    ) {
        (Some(code), Some(message)) => format!(" (last error: {code}: {message})"),
        _ => String::new(),
    };
    let text = match part["status"].as_str().unwrap_or("") {
        "waiting" => {
            "waiting: the region has not been reached; its part runs when it is back".to_string()
        }
        "sent" => "sent; the region's workers have not reported yet".to_string(),
        "failed" if part["error"]["code"] == "message_expired" => {
            "failed for good: its deadline passed".to_string()
        }
        "failed" => format!(
            "failed; sent again until its deadline, {}",
            part["deadline"].as_str().unwrap_or("?")
        ),
        status => format!(
            "{status}: {} objects, {} {what}{}{}",
            part["objects_deleted"].as_u64().unwrap_or(0),
            mib(part["bytes_deleted"].as_u64().unwrap_or(0)),
            match part["phase"].as_str() {
                Some("complete") | None => String::new(),
                Some(phase) => format!(" ({phase})"),
            },
            match part["objects_kept_newer"].as_u64() {
                Some(kept) if kept > 0 => format!(", {kept} newer kept"),
                _ => String::new(),
            },
        ),
    };
    format!("{text}{error}")
}

/// Follows a request until every region is done, drawing each region's progress.
async fn follow(api: &Api, path: &str, text: impl Fn(&Value) -> String) -> Result<Value> {
    let mut view = api.get(path).await?;
    let regions: Vec<String> = view["regions"]
        .as_object()
        .map(|regions| regions.keys().cloned().collect())
        .unwrap_or_default();
    let mut progress = RegionProgress::new(regions.into_iter());
    loop {
        if let Some(regions) = view["regions"].as_object() {
            for (region, part) in regions {
                progress.update(region, text(part), part["status"] == "done");
            }
        }
        if view["status"] == "done" {
            return Ok(view);
        }
        tokio::time::sleep(POLL).await;
        view = api.get(path).await?;
    }
}

pub fn erase(args: EraseArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let api = Api::new(&args.api)?;
        let (path, what) = match &args.what {
            EraseWhat::Subject { subject } => (
                format!("/v1/subjects/{subject}"),
                format!("subject {subject}"),
            ),
            EraseWhat::Asset { asset, subject } => {
                let query = subject
                    .as_ref()
                    .map(|s| format!("?subject={s}"))
                    .unwrap_or_default();
                (
                    format!("/v1/assets/{asset}{query}"),
                    format!("asset {asset}"),
                )
            }
            EraseWhat::Tenant { tenant } => {
                (format!("/v1/tenants/{tenant}"), format!("tenant {tenant}"))
            }
            EraseWhat::Status => return print_open_erasures(&api).await,
        };
        let accepted = api
            .send(api.http.delete(format!("{}{path}", api.url)))
            .await?;
        let erasure_id = accepted["erasure_id"]
            .as_str()
            .context("the answer names no erasure")?;
        println!("erasure {erasure_id} of {what} recorded");
        if args.no_wait {
            return Ok(());
        }
        let view = follow(&api, &format!("/v1/erasures/{erasure_id}"), |part| {
            region_text(part, "deleted")
        })
        .await?;
        println!(
            "erasure {erasure_id} done: {} objects, {} deleted in {} regions",
            view["objects_deleted"],
            mib(view["bytes_deleted"].as_u64().unwrap_or(0)),
            view["regions"].as_object().map_or(0, |r| r.len())
        );
        if let Some(file) = &args.receipt {
            std::fs::write(file, serde_json::to_vec_pretty(&view)?)
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "receipt written to {} (check it with `locality verify-receipt`)",
                file.display()
            );
        }
        Ok(())
    })
}

/// `locality erase status`: every erasure not done, with each region's part.
async fn print_open_erasures(api: &Api) -> Result<()> {
    let listing = api.get("/v1/erasures?status=open&limit=1000").await?;
    let erasures = listing["erasures"].as_array().cloned().unwrap_or_default();
    if erasures.is_empty() {
        println!("no erasure is open");
        return Ok(());
    }
    for erasure in &erasures {
        println!(
            "erasure {} of {} ({}), requested {}: {}",
            erasure["erasure_id"].as_str().unwrap_or("?"),
            erasure["tenant"].as_str().unwrap_or("?"),
            erasure["scope"],
            erasure["requested_at"].as_str().unwrap_or("?"),
            erasure["status"].as_str().unwrap_or("?"),
        );
        for (region, part) in erasure["regions"].as_object().into_iter().flatten() {
            println!("  {region}: {}", region_text(part, "deleted"));
        }
    }
    println!("{} erasures open", erasures.len());
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let api = Api::new(&args.api)?;
        let archive = args.download.is_some();
        let request = api
            .http
            .post(format!("{}/v1/subjects/{}/exports", api.url, args.subject))
            .json(&serde_json::json!({ "archive": archive }));
        let accepted = api.send(request).await?;
        let export_id = accepted["export_id"]
            .as_str()
            .context("the answer names no export")?;
        println!("export {export_id} of subject {} recorded", args.subject);
        let view = follow(
            &api,
            &format!("/v1/exports/{export_id}"),
            |part| match part["status"].as_str().unwrap_or("") {
                "done" => format!("done: {} objects", part["objects"].as_u64().unwrap_or(0)),
                "waiting" => {
                    "waiting: the region has not been reached; its part runs when it is back".into()
                }
                status => format!("{status}: listing"),
            },
        )
        .await?;
        println!(
            "export {export_id}: {} objects, {}",
            view["objects"],
            mib(view["bytes"].as_u64().unwrap_or(0))
        );
        let absolute = |url: &str| {
            if url.starts_with('/') {
                format!("{}{url}", api.url)
            } else {
                url.to_string()
            }
        };
        // Each region's manifest stays in the region: fetched from its endpoint.
        let mut manifest: Vec<Value> = Vec::new();
        for part in view["regions"]
            .as_object()
            .into_iter()
            .flat_map(|r| r.values())
        {
            let Some(url) = part["manifest"]["download_url"].as_str() else {
                continue;
            };
            let response = api
                .http
                .get(absolute(url))
                .send()
                .await
                .context("downloading a region's manifest")?;
            if !response.status().is_success() {
                bail!("a region answered {} for its manifest", response.status());
            }
            let text = response.text().await?;
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                manifest.push(serde_json::from_str(line).context("a manifest line")?);
            }
        }
        if let Some(file) = &args.manifest {
            std::fs::write(file, serde_json::to_vec_pretty(&manifest)?)
                .with_context(|| format!("writing {}", file.display()))?;
            println!("manifest written to {}", file.display());
        }
        if let Some(directory) = &args.download {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("creating {}", directory.display()))?;
            for (region, part) in view["regions"].as_object().into_iter().flatten() {
                let Some(url) = part["archive"]["download_url"].as_str() else {
                    continue;
                };
                let url = absolute(url);
                let file = directory.join(format!("{export_id}-{region}.tar"));
                download(&api.http, &url, &file).await?;
                println!("{region}: archive written to {}", file.display());
            }
        }
        Ok(())
    })
}

/// Streams an archive to a file with a byte progress bar (the link is signed; no key is sent).
async fn download(http: &reqwest::Client, url: &str, file: &std::path::Path) -> Result<()> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .with_context(|| format!("downloading {}", file.display()))?;
    if !response.status().is_success() {
        bail!(
            "the region answered {} for {}",
            response.status(),
            file.display()
        );
    }
    let bar =
        ProgressBar::with_draw_target(response.content_length(), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template("{bytes}/{total_bytes} {wide_bar} {eta}")
                    .expect("a valid template"),
            );
    let mut out = tokio::fs::File::create(file)
        .await
        .with_context(|| format!("creating {}", file.display()))?;
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.with_context(|| format!("downloading {}", file.display()))?;
        out.write_all(&chunk).await?;
        bar.inc(chunk.len() as u64);
    }
    out.flush().await?;
    bar.finish_and_clear();
    Ok(())
}

/// Checks every region's receipt in the file; fails unless each verifies against its
/// region's public key.
pub fn verify_receipt(args: VerifyArgs, config: Option<&Config>) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let value: Value = serde_json::from_str(&text).context("the receipt is not JSON")?;
    let receipts: Vec<ErasureReceipt> = if value.get("signature").is_some() {
        vec![serde_json::from_value(value).context("not a receipt")?]
    } else {
        value["regions"]
            .as_object()
            .context("neither a receipt nor an erasure with regions")?
            .values()
            .map(|part| serde_json::from_value(part["receipt"].clone()))
            .collect::<Result<_, _>>()
            .context("a region's part has no receipt yet (is the erasure done?)")?
    };
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for pair in &args.public_keys {
        let (region, key) = pair
            .split_once('=')
            .with_context(|| format!("--public-key {pair:?} is not REGION=HEX"))?;
        keys.insert(region.to_string(), key.to_string());
    }
    if keys.is_empty() {
        for (region, settings) in config.map(|c| &c.regions).into_iter().flatten() {
            if let Some(key) = &settings.receipt_public_key {
                keys.insert(region.to_string(), key.clone());
            }
        }
    }
    if keys.is_empty() {
        bail!("no public key to verify against: give --public-key REGION=HEX, or a --config whose regions have receipt_public_key (a receipt's own key proves nothing)");
    }
    let mut failed = 0;
    for receipt in &receipts {
        let region = receipt.region.as_str();
        let verdict = match keys.get(region) {
            None => Err(format!(
                "no public key for region {region} (--public-key {region}=HEX)"
            )),
            Some(key) => receipt.verify(key).map_err(|e| e.to_string()),
        };
        match verdict {
            Ok(()) => println!(
                "{region}: valid, signed by {}: erasure {} of {} requested {}, {} objects, {} bytes deleted, {} newer objects kept",
                receipt.public_key,
                receipt.erasure_id,
                receipt.tenant,
                locality_proto::time::rfc3339(receipt.requested_at_ms),
                receipt.objects_deleted,
                receipt.bytes_deleted,
                receipt.objects_kept_newer
            ),
            Err(reason) => {
                failed += 1;
                println!("{region}: NOT VALID: {reason}");
            }
        }
    }
    if failed > 0 {
        return Err(crate::Failed(format!(
            "{failed} of {} receipts do not verify",
            receipts.len()
        ))
        .into());
    }
    Ok(())
}

/// Prints fresh keys for a region, as TOML.
pub fn keygen(args: KeygenArgs) -> Result<()> {
    let region = locality_proto::RegionId::new(args.region.clone())
        .map_err(|e| anyhow::anyhow!("--region: {e}"))?;
    let mut seed = [0u8; 32];
    let mut download = [0u8; 32];
    let mut message = [0u8; 32];
    for secret in [&mut seed, &mut download, &mut message] {
        getrandom::fill(secret).context("reading the system's randomness")?;
    }
    // Named by the day it was made, so a rotation's keys have distinct ids.
    let key_id = format!("k{}", locality_proto::time::now_millis() / 86_400_000);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    println!("[regions.{region}]");
    println!("# Secret, for this region's workers only.");
    println!("receipt_key = \"{}\"", hex::encode(seed));
    println!("download_key = \"{}\"", hex::encode(download));
    println!("# Secret, for this region's workers and the scheduler: signs their messages.");
    println!(
        "message_keys = {{ {key_id} = \"{}\" }}",
        hex::encode(message)
    );
    println!("message_key_id = \"{key_id}\"");
    println!("# Public: the scheduler's configuration, and whoever checks receipts.");
    println!(
        "receipt_public_key = \"{}\"",
        hex::encode(key.verifying_key().as_bytes())
    );
    Ok(())
}
