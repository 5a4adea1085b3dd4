//! The HTTP faces over the app services: routing, wire shapes, and each
//! face's own error format and auth flavour. No business logic lives here:
//! a handler parses, calls one app function and shapes the answer.
//!
//! Faces: [`native`] at `/v1`; [`kloigos`] at `/api`; [`verda`] at
//! `/verda/v1`; [`compute`] (the containers API) at `/compute`; the
//! [`front_door`] of serverless deployments at `/inference`; [`system`]
//! (`/health`). Every face publishes
//! an OpenAPI document built from this code ([`openapi_documents`]).

pub mod compute;
pub mod front_door;
pub mod kit;
pub mod kloigos;
pub mod metrics;
pub mod native;
pub mod serve;
pub mod system;
pub mod verda;

use axum::Router;
use tessera_app::App;
use tower_http::trace::TraceLayer;

/// Every face, mounted at its path.
pub fn router(app: App) -> Router {
    let http = std::sync::Arc::new(metrics::HttpMetrics::default());
    let scrape = Router::new()
        .route("/metrics", axum::routing::get(metrics::scrape))
        .with_state(metrics::MetricsState {
            app: app.clone(),
            http: http.clone(),
        });
    Router::new()
        .merge(system::router(app.clone()))
        .merge(scrape)
        .nest("/api", kloigos::router(app.clone()))
        .nest("/verda/v1", verda::router(app.clone()))
        .nest("/compute", compute::router(app.clone()))
        .nest("/inference", front_door::router(app.clone()))
        .nest("/v1", native::router(app))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            kit::extract::BODY_LIMIT,
        ))
        .layer(axum::middleware::from_fn_with_state(http, metrics::track))
        // The span names the path only: a query may carry a credential
        // (`/v1/events?access_token=`).
        .layer(TraceLayer::new_for_http().make_span_with(
            |request: &axum::http::Request<axum::body::Body>| {
                tracing::debug_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                )
            },
        ))
}

/// A path no face's router took (`/compute/`, `/nowhere`): the 404 of the
/// face its prefix names (the front door's is Verda's), else the native
/// API's, as JSON.
async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    let path = request.uri().path();
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/compute") {
        kit::not_found::<compute::Compute>(request).await
    } else if under("/api") {
        kit::not_found::<kloigos::Kloigos>(request).await
    } else if under("/verda") || under("/inference") {
        kit::not_found::<verda::Verda>(request).await
    } else {
        kit::not_found::<native::Native>(request).await
    }
}

/// Declares the `bearer` security scheme the faces' documents refer to.
pub(crate) struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `(file name, document)` of every face's OpenAPI document, as checked in
/// under `openapi/`.
pub fn openapi_documents() -> Vec<(&'static str, String)> {
    use utoipa::OpenApi;
    let pretty = |doc: utoipa::openapi::OpenApi| {
        let mut text = doc.to_pretty_json().unwrap_or_default();
        text.push('\n');
        text
    };
    vec![
        ("compute.json", pretty(compute::ComputeApi::openapi())),
        ("kloigos.json", pretty(kloigos::KloigosApi::openapi())),
        ("native.json", pretty(native::NativeApi::openapi())),
        ("system.json", pretty(system::SystemApi::openapi())),
        ("verda.json", pretty(verda::VerdaApi::openapi())),
    ]
}
