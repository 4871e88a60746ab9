//! `locality submit` (upload a file, submit its job, follow it to its result) and
//! `locality jobs list|get`: a tenant's jobs through the scheduler's HTTP API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::api::{Api, ApiArgs};
use crate::progress::RegionProgress;
use crate::Failed;

const POLL: Duration = Duration::from_millis(250);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long the first upload request holds its body back for the scheduler's answer
/// from the head (as curl waits for `100 Continue`): a 307 answered before any body was
/// written reaches the client; written into a connection the scheduler has closed, the
/// body ends the request in a broken pipe and the 307 is lost.
const HOLD_BODY_FOR_ANSWER: Duration = Duration::from_secs(1);
/// Statuses after which a job changes no more.
const FINISHED: [&str; 3] = ["succeeded", "failed", "refused"];

#[derive(clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The image to upload as the job's source.
    file: PathBuf,
    /// The tenant the API key belongs to.
    #[arg(long, env = "LOCALITY_TENANT")]
    tenant: String,
    /// The source's key in the tenant's area (default: the file's name).
    #[arg(long)]
    key: Option<String>,
    /// The data subject the source and its outputs belong to.
    #[arg(long)]
    subject: Option<String>,
    /// The asset grouping the source with its outputs (default: from the key).
    #[arg(long)]
    asset: Option<String>,
    /// The region to upload to and process in (default: the tenant's home region).
    #[arg(long)]
    region: Option<String>,
    /// One of the tenant's presets (a named list of outputs).
    #[arg(long, required_unless_present = "outputs")]
    preset: Option<String>,
    /// An output as comma-separated fields of the envelope's output object, e.g.
    /// `name=card,width=400,height=300,fit=cover,format=webp`; repeat for several.
    #[arg(long = "output", value_parser = parse_output)]
    outputs: Vec<Value>,
    /// Follow the job to its result and print it (exit 1 if it failed).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 2).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[derive(clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    what: JobsWhat,
}

#[derive(clap::Subcommand)]
enum JobsWhat {
    /// The tenant's jobs, oldest first, a page of the API at a time.
    List {
        /// Only jobs of this status (queued, running, succeeded, failed, refused).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs created at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// At most this many jobs (all of them: follow every page).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per job instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One job as the API shows it (JSON).
    Get { job_id: String },
}

/// `name=card,width=400,quality=82,lossless=true` as a JSON object: numbers and booleans
/// as such, everything else as text.
fn parse_output(text: &str) -> Result<Value, String> {
    let mut output = Map::new();
    for field in text.split(',').filter(|field| !field.is_empty()) {
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| format!("{field:?} is not NAME=VALUE"))?;
        let value = match value {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            number if number.parse::<u64>().is_ok() => json!(number.parse::<u64>().unwrap()),
            number if number.parse::<f64>().is_ok() => json!(number.parse::<f64>().unwrap()),
            text => Value::String(text.to_string()),
        };
        if output.insert(name.to_string(), value).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    if !output.contains_key("name") {
        return Err("an output needs name=...".to_string());
    }
    Ok(Value::Object(output))
}

pub fn submit(args: SubmitArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let api = Api::new(&args.api)?;
        let key = source_key(&args)?;
        let stored = upload(&api, &args, &key).await?;
        let region = stored["region"].as_str().map(str::to_string);
        eprintln!(
            "uploaded {} as {key} in {}",
            args.file.display(),
            region.as_deref().unwrap_or("?")
        );
        let mut envelope = json!({
            "v": 1,
            "tenant": args.tenant,
            "source": {"key": key},
        });
        if let Some(region) = &region {
            envelope["source"]["region"] = json!(region);
        }
        if let Some(subject) = &args.subject {
            envelope["subject"] = json!(subject);
        }
        if let Some(asset) = stored["asset"].as_str().or(args.asset.as_deref()) {
            envelope["asset"] = json!(asset);
        }
        if let Some(preset) = &args.preset {
            envelope["preset"] = json!(preset);
        }
        if !args.outputs.is_empty() {
            envelope["outputs"] = json!(args.outputs);
        }
        let accepted = api
            .send(
                api.http
                    .post(format!("{}/v1/jobs", api.url))
                    .json(&envelope),
            )
            .await?;
        let job_id = accepted["job_id"]
            .as_str()
            .context("the answer names no job")?
            .to_string();
        if !args.wait {
            println!("{}", serde_json::to_string_pretty(&accepted)?);
            return Ok(());
        }
        eprintln!("job {job_id} accepted");
        let job = follow(&api, &job_id, Duration::from_secs(args.timeout)).await?;
        println!("{}", serde_json::to_string_pretty(&job)?);
        if job["status"] != "succeeded" {
            return Err(Failed(format!(
                "job {job_id} {}: {}: {}",
                job["status"].as_str().unwrap_or("?"),
                job["error"]["code"].as_str().unwrap_or("?"),
                job["error"]["message"].as_str().unwrap_or("")
            ))
            .into());
        }
        Ok(())
    })
}

/// The key to upload under, checked as the scheduler checks it, so that it goes into
/// the URL's path as it is (a `..` segment would be resolved away by the URL, a `?` end
/// the path) and a refusal is explained before the file is sent.
fn source_key(args: &SubmitArgs) -> Result<String> {
    let key = match &args.key {
        Some(key) => key.clone(),
        None => file_name(&args.file)?,
    };
    locality_proto::keys::check_source_key(&key)
        .map_err(|reason| anyhow::anyhow!("the key {key:?} {reason}; give another with --key"))?;
    Ok(key)
}

fn file_name(file: &Path) -> Result<String> {
    file.file_name()
        .and_then(|name| name.to_str())
        .map(str::to_string)
        .with_context(|| {
            format!(
                "{} has no file name to use as its key; give --key",
                file.display()
            )
        })
}

/// PUTs the file as the job's source, to the scheduler, and where it answers 307 (the
/// distributed mode), to the region's ingest endpoint it names, with the same key.
async fn upload(api: &Api, args: &SubmitArgs, key: &str) -> Result<Value> {
    let mut query = Vec::new();
    for (name, value) in [
        ("subject", &args.subject),
        ("asset", &args.asset),
        ("region", &args.region),
    ] {
        if let Some(value) = value {
            query.push((name, value.as_str()));
        }
    }
    let mut url = reqwest::Url::parse(&format!("{}/v1/sources/{key}", api.url))
        .with_context(|| format!("{key} does not make a URL with {}", api.url))?;
    url.query_pairs_mut().extend_pairs(&query);
    for attempt in 0..2 {
        let file = tokio::fs::File::open(&args.file)
            .await
            .with_context(|| format!("opening {}", args.file.display()))?;
        let length = file.metadata().await?.len();
        let hold = if attempt == 0 {
            HOLD_BODY_FOR_ANSWER
        } else {
            Duration::ZERO
        };
        let body = futures::stream::once(async move {
            tokio::time::sleep(hold).await;
            tokio_util::io::ReaderStream::new(file)
        })
        .flatten();
        let response = api
            .http
            .put(url.clone())
            .bearer_auth(&api.api_key)
            // The client's 30 s is for API calls; a large file may take longer.
            .timeout(UPLOAD_TIMEOUT)
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .with_context(|| format!("uploading {} to {url}", args.file.display()))?;
        if response.status() == reqwest::StatusCode::TEMPORARY_REDIRECT {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|value| value.to_str().ok())
                .context("a 307 without a Location")?;
            url = url.join(location)?;
            continue;
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "the upload was refused with {status}: {}: {}",
                body["error"]["code"].as_str().unwrap_or(""),
                body["error"]["message"].as_str().unwrap_or("")
            );
        }
        return Ok(body);
    }
    bail!("the upload was redirected more than once ({url})")
}

/// Polls the job until it finishes, showing its status and how long it has taken.
async fn follow(api: &Api, job_id: &str, timeout: Duration) -> Result<Value> {
    let started = Instant::now();
    let mut job = api.get(&format!("/v1/jobs/{job_id}")).await?;
    let region = job["region"].as_str().unwrap_or("job").to_string();
    let mut progress = RegionProgress::new(std::iter::once(region.clone()));
    loop {
        let status = job["status"].as_str().unwrap_or("?").to_string();
        let done = FINISHED.contains(&status.as_str());
        let text = if done {
            format!("{status} after {:.1} s", started.elapsed().as_secs_f64())
        } else {
            format!("{status} ({} s)", started.elapsed().as_secs())
        };
        progress.update(&region, text, done);
        if done {
            return Ok(job);
        }
        if started.elapsed() > timeout {
            bail!("job {job_id} still {status} after {} s", timeout.as_secs());
        }
        tokio::time::sleep(POLL).await;
        job = api.get(&format!("/v1/jobs/{job_id}")).await?;
    }
}

pub fn jobs(args: JobsArgs) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let api = Api::new(&args.api)?;
        match args.what {
            JobsWhat::Get { job_id } => {
                let job = api.get(&format!("/v1/jobs/{job_id}")).await?;
                println!("{}", serde_json::to_string_pretty(&job)?);
            }
            JobsWhat::List {
                status,
                since,
                limit,
                json,
            } => {
                if !json {
                    println!(
                        "{:<36}  {:<9}  {:<6}  {:<24}  {:>7}  error",
                        "job", "status", "region", "created", "outputs"
                    );
                }
                let mut listed = 0;
                let mut cursor: Option<String> = None;
                while listed < limit {
                    let mut url = reqwest::Url::parse(&format!("{}/v1/jobs", api.url))?;
                    {
                        let mut query = url.query_pairs_mut();
                        query.append_pair("limit", &(limit - listed).min(1000).to_string());
                        for (name, value) in
                            [("status", &status), ("since", &since), ("cursor", &cursor)]
                        {
                            if let Some(value) = value {
                                query.append_pair(name, value);
                            }
                        }
                    }
                    let page = api.send(api.http.get(url)).await?;
                    let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
                    for job in &jobs {
                        if json {
                            println!("{}", serde_json::to_string(job)?);
                        } else {
                            println!(
                                "{:<36}  {:<9}  {:<6}  {:<24}  {:>7}  {}",
                                job["job_id"].as_str().unwrap_or(""),
                                job["status"].as_str().unwrap_or(""),
                                job["region"].as_str().unwrap_or(""),
                                job["created_at"].as_str().unwrap_or(""),
                                job["outputs"].as_array().map_or(0, Vec::len),
                                job["error"]["code"].as_str().unwrap_or("")
                            );
                        }
                    }
                    listed += jobs.len();
                    cursor = page["next_cursor"].as_str().map(str::to_string);
                    if cursor.is_none() || jobs.is_empty() {
                        break;
                    }
                }
                eprintln!("{listed} jobs");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_flag_becomes_the_envelopes_output_object() {
        let output = parse_output(
            "name=card,width=400,height=300,fit=cover,format=webp,quality=82.5,lossless=true",
        )
        .unwrap();
        assert_eq!(
            output,
            json!({"name": "card", "width": 400, "height": 300, "fit": "cover",
                   "format": "webp", "quality": 82.5, "lossless": true})
        );
        assert!(parse_output("width=400").unwrap_err().contains("name"));
        assert!(parse_output("name=a,name=b").unwrap_err().contains("twice"));
        assert!(parse_output("name=a,width")
            .unwrap_err()
            .contains("NAME=VALUE"));
    }

    #[derive(clap::Parser)]
    struct Submit {
        #[command(flatten)]
        args: SubmitArgs,
    }

    fn key_of(flags: &[&str]) -> Result<String> {
        let mut argv = vec!["submit", "--tenant", "demo-eu", "--preset", "web"];
        argv.extend_from_slice(flags);
        source_key(&<Submit as clap::Parser>::try_parse_from(argv).unwrap().args)
    }

    /// A key that would change on its way into the URL (`..` resolved away, `?` ending
    /// the path, a space) is refused before anything is sent, not uploaded elsewhere.
    #[test]
    fn a_key_that_the_url_would_change_is_refused_before_the_upload() {
        assert_eq!(key_of(&["beach.jpg"]).unwrap(), "beach.jpg");
        assert_eq!(
            key_of(&["--key", "holiday/beach.jpg", "/tmp/x.jpg"]).unwrap(),
            "holiday/beach.jpg"
        );
        for key in [
            "a/../../v1/jobs",
            "a?b.jpg",
            "a#b.jpg",
            "./a.jpg",
            "a//b.jpg",
        ] {
            let refused = key_of(&["--key", key, "x.jpg"]).unwrap_err().to_string();
            assert!(
                refused.contains("give another with --key"),
                "{key}: {refused}"
            );
        }
        let spaced = key_of(&["/tmp/my photo.jpg"]).unwrap_err().to_string();
        assert!(spaced.contains("' '"), "{spaced}");
    }
}
