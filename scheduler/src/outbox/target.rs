//! The webhook client: no proxies, no redirects, and a resolver that refuses a host
//! name resolving to an internal address (the address it connects to is the one it
//! checked, so a name cannot be pointed elsewhere between the check and the call).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use locality_proto::webhook_target::AllowedNetworks;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Time for one delivery: connecting, sending, and the tenant's answer.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

struct GuardedResolver {
    allowed: AllowedNetworks,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| allowed.permits(addr.ip()).is_ok())
                .collect();
            if permitted.is_empty() {
                let refused = resolved
                    .first()
                    .map(|addr| allowed.permits(addr.ip()))
                    .and_then(Result::err)
                    .map_or_else(
                        || format!("{host} resolves to no address"),
                        |e| e.to_string(),
                    );
                return Err(refused.into());
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The client every webhook delivery goes through.
pub fn client(allowed: AllowedNetworks) -> reqwest::Client {
    locality_http::install_tls_provider();
    reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .connect_timeout(DELIVERY_TIMEOUT / 2)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allowed }))
        .build()
        .expect("an HTTP client for webhooks")
}
