//! `GET /metrics`: Prometheus (OpenMetrics text) metrics of this process
//! and the fleet.
//!
//! HTTP requests are counted and timed per method, route template
//! (`/v1/instances/{id}`, never the raw path) and status. Every label value
//! comes from a fixed set, whatever clients send: a method that is not one
//! of HTTP's is `OTHER`, a path no route matches is `unmatched`, so made-up
//! methods and ids never create new series. Fleet
//! gauges (operations by status, hosts by status, instances by state, free
//! CPUs) are read from the store and the placement view at each scrape.
//! Scraping needs a bearer token with `system_metrics`.

use crate::native::NativeError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;
use tessera_app::App;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

type Latencies = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// This process's HTTP metrics. Cheap to clone (the families are shared).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Latencies,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            // 0.25 ms to about 4 s.
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
        }
        HttpMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(histogram),
        }
    }
}

/// Counts and times every routed request.
pub async fn track(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(request.method()).to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = RouteLabels { method, route };
    metrics
        .latency
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: labels.method,
            route: labels.route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// A request method as a label: one of HTTP's, or `OTHER`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[derive(Clone)]
pub struct MetricsState {
    pub app: App,
    pub http: Arc<HttpMetrics>,
}

impl axum::extract::FromRef<MetricsState> for App {
    fn from_ref(state: &MetricsState) -> App {
        state.app.clone()
    }
}

fn gauge_family(name: &str, help: &str, registry: &mut Registry, values: &[(String, i64)]) {
    let family: Family<StateLabels, Gauge> = Family::default();
    for (state, n) in values {
        family
            .get_or_create(&StateLabels {
                state: state.to_lowercase(),
            })
            .set(*n);
    }
    registry.register(name, help, family);
}

/// The reconciler's tasks: passes, failures and their time, by task.
fn background_passes(registry: &mut Registry, app: &App) {
    use std::sync::atomic::AtomicU64;
    let passes: Family<TaskLabels, Counter> = Family::default();
    let failed: Family<TaskLabels, Counter> = Family::default();
    let seconds: Family<TaskLabels, Counter<f64, AtomicU64>> = Family::default();
    let longest: Family<TaskLabels, Gauge<f64, AtomicU64>> = Family::default();
    for (task, stats) in app.background_passes() {
        let labels = TaskLabels { task: task.into() };
        passes.get_or_create(&labels).inc_by(stats.passes);
        failed.get_or_create(&labels).inc_by(stats.failed);
        seconds
            .get_or_create(&labels)
            .inc_by(stats.total.as_secs_f64());
        longest
            .get_or_create(&labels)
            .set(stats.longest.as_secs_f64());
    }
    registry.register(
        "background_passes",
        "Passes of each background task (the reconciler's) finished in this process",
        passes,
    );
    registry.register(
        "background_pass_failures",
        "Of those, passes that failed (logged; the task runs again)",
        failed,
    );
    registry.register(
        "background_pass_seconds",
        "Time spent in each background task's passes",
        seconds,
    );
    registry.register(
        "background_pass_longest_seconds",
        "The longest pass of each background task since this process started",
        longest,
    );
}

/// The metrics in OpenMetrics text, for a caller of the native face.
pub async fn scrape(
    State(state): State<MetricsState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, NativeError> {
    let caller = state.app.authenticate(crate::kit::bearer(&headers)).await?;
    let counts = state.app.system_counts(&caller).await?;
    let mut registry = Registry::with_prefix("tessera");
    registry.register(
        "http_requests",
        "HTTP requests by method, route and status",
        state.http.requests.clone(),
    );
    registry.register(
        "http_request_duration_seconds",
        "HTTP request latency by method and route",
        state.http.latency.clone(),
    );
    gauge_family(
        "operations",
        "Operations by status",
        &mut registry,
        &counts.operations,
    );
    gauge_family("hosts", "Hosts by status", &mut registry, &counts.hosts);
    gauge_family(
        "instances",
        "Instances by state",
        &mut registry,
        &counts.instances,
    );
    let cpus: Gauge = Gauge::default();
    cpus.set(i64::try_from(counts.cpus_total).unwrap_or(i64::MAX));
    registry.register("cpus", "CPUs of hosts that take work", cpus);
    let free: Gauge = Gauge::default();
    free.set(i64::try_from(counts.cpus_free).unwrap_or(i64::MAX));
    registry.register("cpus_free", "Of those, CPUs nobody holds", free);
    let uptime: Gauge = Gauge::default();
    uptime.set(i64::try_from(state.app.uptime().as_secs()).unwrap_or(i64::MAX));
    registry.register(
        "uptime_seconds",
        "Seconds since this process started",
        uptime,
    );
    let (listening, lost) = state.app.agent_listener();
    let heard: Gauge = Gauge::default();
    heard.set(i64::from(listening));
    registry.register(
        "agent_changes_heard",
        "1 while every change to agents reaches this process (PostgreSQL: the store's notifications; SQLite: while no other process writes the file); 0 while it polls the store for them",
        heard,
    );
    let losses: Counter = Counter::default();
    losses.inc_by(lost);
    registry.register(
        "agent_changes_listener_lost",
        "Times the listener for those notifications was lost (closed, or silent: its echo not heard) and made again",
        losses,
    );
    background_passes(&mut registry, &state.app);
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        return Err(NativeError(tessera_app::Error::Unavailable(
            "cannot encode the metrics".into(),
        )));
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}
