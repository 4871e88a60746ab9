//! What every Locality process exports about itself: its build, its process (CPU,
//! resident memory, file descriptors: `process_resident_memory_bytes` is how the memory
//! bound is watched in production) and the HTTP requests each of its listeners served.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::Router;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Registers `locality_build_info` and the process collector in a process's registry.
pub fn register_process_metrics(registry: &Registry) {
    crate::register_build_info(registry);
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process collector is registered once per registry");
}

/// Requests served, per listener, method, route and status; their durations per
/// listener and route. Routes are the router's patterns (`/v1/jobs/{id}`), never the
/// path a client sent, and methods outside the standard ones count as `other`, so no
/// client can grow the label sets.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "locality_http_requests_total",
                "HTTP requests answered, per listener, method, route pattern and status",
            ),
            &["listener", "method", "route", "status"],
        )
        .expect("valid metric");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "locality_http_request_duration_seconds",
                "From a request's head to its response's head, per listener and route pattern",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["listener", "route"],
        )
        .expect("valid metric");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
        ] {
            registry
                .register(metric)
                .expect("HTTP metrics are registered once per registry");
        }
        Self {
            requests,
            durations,
        }
    }

    /// `router` with each request it answers counted under `listener`.
    pub fn measured(&self, router: Router, listener: &'static str) -> Router {
        let metrics = self.clone();
        router.layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let metrics = metrics.clone();
                async move {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", MatchedPath::as_str)
                        .to_owned();
                    let method = method_label(request.method());
                    let started = Instant::now();
                    let response = next.run(request).await;
                    metrics
                        .requests
                        .with_label_values(&[listener, method, &route, response.status().as_str()])
                        .inc();
                    metrics
                        .durations
                        .with_label_values(&[listener, &route])
                        .observe(started.elapsed().as_secs_f64());
                    response
                }
            },
        ))
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
