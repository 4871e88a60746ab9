//! The scheduler's HTTP API as the commands for people use it (erase, export, submit,
//! jobs): one client, the key as a bearer token, errors as the API's code and message.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(clap::Args)]
pub struct ApiArgs {
    /// The scheduler's URL.
    #[arg(
        long,
        env = "LOCALITY_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// A tenant's API key (the operators' key for `erase tenant`).
    // Global, so it may follow a subcommand (`locality jobs list --api-key …`); clap
    // cannot require a global argument, so a missing key is refused by `Api::new`.
    #[arg(long, env = "LOCALITY_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

/// A client of one scheduler with one key.
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub api_key: String,
}

impl Api {
    pub fn new(args: &ApiArgs) -> Result<Self> {
        // Redirects are followed by hand (an upload's 307 to its region's ingest): a
        // client following them itself would drop the key, or send it where it should not.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        let Some(api_key) = args.api_key.clone() else {
            bail!("needs an API key: --api-key KEY or LOCALITY_API_KEY");
        };
        Ok(Self {
            http,
            url: args.url.trim_end_matches('/').to_string(),
            api_key,
        })
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = request
            .bearer_auth(&self.api_key)
            .send()
            .await
            .with_context(|| format!("reaching the scheduler at {}", self.url))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("");
            let message = body["error"]["message"].as_str().unwrap_or("");
            bail!("the scheduler answered {status}: {code}: {message}");
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }
}
