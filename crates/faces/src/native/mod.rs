//! The native API at `/v1`: the provisioning API (identity, workspaces,
//! servers, operations, metrics) merged with the instances API.
//!
//! Errors are the provisioning API's body, `{"error": "CODE", "message":
//! "...", "code": "400"}`, for every failure including unreadable JSON and
//! unknown routes. Callers authenticate with a bearer credential: a JWT from
//! `POST /v1/auth/login` or an API token; each handler checks the one
//! permission its action needs.

mod agent;
mod agent_channel;
mod auth;
mod credentials;
mod events;
mod inference_keys;
mod instances;
mod join_tokens;
mod networks;
mod operations;
mod policies;
mod quotas;
mod servers;
mod ssh_keys;
mod system;
mod taskservs;
mod tokens;
mod users;
mod workflows;
mod workspaces;

use crate::BearerAuth;
use crate::kit::{self, BodyRule, Face, FaceState};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tessera_app::{App, Error, Principal, RateLimits};
use utoipa::{OpenApi, ToSchema};

pub(crate) use crate::kit::{Body, Caller, Path, Query};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera native API",
        version = "1.0.0",
        description = "Identity, workspaces, balances, OAuth credentials, servers, instances, SSH keys, private networks (VPCs, subnets, security groups), operations, workflows and taskservs."
    ),
    paths(
        auth::login,
        auth::refresh,
        users::list_users,
        users::create_user,
        users::get_user,
        users::update_user,
        users::delete_user,
        tokens::list_tokens,
        tokens::create_token,
        tokens::revoke_token,
        workspaces::list_workspaces,
        workspaces::create_workspace,
        workspaces::activate_workspace,
        credentials::create_credential,
        credentials::list_credentials,
        credentials::revoke_credential,
        credentials::get_balance,
        credentials::top_up,
        quotas::get_quota,
        quotas::set_quota,
        policies::get_policy,
        policies::set_policy,
        servers::list_servers,
        servers::create_server,
        servers::delete_server,
        servers::server_status,
        join_tokens::list_join_tokens,
        join_tokens::create_join_token,
        join_tokens::revoke_join_token,
        instances::create_instance,
        instances::list_instances,
        instances::get_instance,
        instances::delete_instance,
        instances::start_instance,
        instances::stop_instance,
        instances::add_tag,
        instances::delete_tag,
        ssh_keys::list_ssh_keys,
        ssh_keys::create_ssh_key,
        ssh_keys::get_ssh_key,
        ssh_keys::delete_ssh_key,
        inference_keys::list_keys,
        inference_keys::create_key,
        inference_keys::revoke_key,
        networks::list_vpcs,
        networks::create_vpc,
        networks::get_vpc,
        networks::delete_vpc,
        networks::list_subnets,
        networks::create_subnet,
        networks::get_subnet,
        networks::delete_subnet,
        networks::list_security_groups,
        networks::create_security_group,
        networks::get_security_group,
        networks::set_security_group,
        networks::delete_security_group,
        operations::list_operations,
        operations::get_operation,
        operations::wait_operation,
        operations::cancel_operation,
        taskservs::list_taskservs,
        taskservs::catalog,
        taskservs::get_taskserv,
        taskservs::create_taskserv,
        taskservs::delete_taskserv,
        workflows::submit_workflow,
        workflows::get_workflow,
        workflows::cancel_workflow,
        system::metrics,
        events::events,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &RateLimited),
    security(("bearer" = [])),
)]
pub struct NativeApi;

/// Adds the 429 every rate-limited operation may answer to the document.
struct RateLimited;

impl utoipa::Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/v1/agent/") || path == "/v1/events" {
                continue;
            }
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let limited = ResponseBuilder::new()
                    .description(
                        "Too many requests: over a rate limit (see the Retry-After, \
                         RateLimit-Policy and RateLimit headers)",
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build();
                operation
                    .responses
                    .responses
                    .entry("429".into())
                    .or_insert(RefOr::T(limited));
            }
        }
    }
}

/// The native face, for the kit: the provisioning API's error body, bearer
/// JWTs and API tokens, JSON bodies sent as JSON, the native rate limits.
pub struct Native;

impl Face for Native {
    type Error = NativeError;

    const BODY: BodyRule = BodyRule::Strict;

    async fn authenticate(app: &App, bearer: Option<&str>) -> Result<Principal, Error> {
        app.authenticate(bearer).await
    }

    fn rate_limits(app: &App) -> Option<&RateLimits> {
        Some(app.native_rate_limits())
    }

    fn not_found(_: &Method, _: &str) -> Response {
        error_response(StatusCode::NOT_FOUND, "NOT_FOUND", "Not Found".into())
    }

    fn method_not_allowed(_: &Method, _: &str) -> Response {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Method Not Allowed".into(),
        )
    }
}

/// The face's router state.
pub type NativeState = FaceState<Native>;

/// The face's routes. Authenticated requests are rate limited per project,
/// endpoint and credential ([`kit::authenticate`]) and answered within the request
/// timeout; the long-poll (`/operations/{id}/wait`), the event WebSocket and
/// the agents' protocol keep their own bounds, and login and refresh count
/// per client address and user.
pub fn router(app: App) -> Router {
    let state = NativeState::new(app.clone());
    let credentials = Router::new()
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            kit::limits::deadline::<NativeError>,
        ));
    let private = Router::new()
        .route("/users", get(users::list_users).post(users::create_user))
        .route(
            "/users/{id}",
            get(users::get_user)
                .patch(users::update_user)
                .delete(users::delete_user),
        )
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke_token))
        .route("/workspaces", get(workspaces::list_workspaces))
        .route("/workspaces/create", post(workspaces::create_workspace))
        .route(
            "/workspaces/{name}/activate",
            post(workspaces::activate_workspace),
        )
        .route("/workspaces/{name}/balance", get(credentials::get_balance))
        .route(
            "/workspaces/{name}/balance/top-ups",
            post(credentials::top_up),
        )
        .route(
            "/workspaces/{name}/quota",
            get(quotas::get_quota).put(quotas::set_quota),
        )
        .route(
            "/workspaces/{name}/policy",
            get(policies::get_policy).put(policies::set_policy),
        )
        .route(
            "/credentials",
            get(credentials::list_credentials).post(credentials::create_credential),
        )
        .route(
            "/credentials/{client_id}",
            axum::routing::delete(credentials::revoke_credential),
        )
        .route("/servers", get(servers::list_servers))
        .route("/servers/create", post(servers::create_server))
        .route(
            "/servers/join-tokens",
            get(join_tokens::list_join_tokens).post(join_tokens::create_join_token),
        )
        .route(
            "/servers/join-tokens/{id}",
            axum::routing::delete(join_tokens::revoke_join_token),
        )
        .route(
            "/servers/{id}",
            axum::routing::delete(servers::delete_server),
        )
        .route("/servers/{id}/status", get(servers::server_status))
        .route(
            "/instances",
            get(instances::list_instances).post(instances::create_instance),
        )
        .route(
            "/instances/{id}",
            get(instances::get_instance).delete(instances::delete_instance),
        )
        .route("/instances/{id}/start", post(instances::start_instance))
        .route("/instances/{id}/stop", post(instances::stop_instance))
        .route("/instances/{id}/tags", post(instances::add_tag))
        .route(
            "/instances/{id}/tags/{key}",
            axum::routing::delete(instances::delete_tag),
        )
        .route(
            "/ssh-keys",
            get(ssh_keys::list_ssh_keys).post(ssh_keys::create_ssh_key),
        )
        .route(
            "/ssh-keys/{id}",
            get(ssh_keys::get_ssh_key).delete(ssh_keys::delete_ssh_key),
        )
        .route(
            "/inference-keys",
            get(inference_keys::list_keys).post(inference_keys::create_key),
        )
        .route(
            "/inference-keys/{id}",
            axum::routing::delete(inference_keys::revoke_key),
        )
        .route("/vpcs", get(networks::list_vpcs).post(networks::create_vpc))
        .route(
            "/vpcs/{id}",
            get(networks::get_vpc).delete(networks::delete_vpc),
        )
        .route(
            "/subnets",
            get(networks::list_subnets).post(networks::create_subnet),
        )
        .route(
            "/subnets/{id}",
            get(networks::get_subnet).delete(networks::delete_subnet),
        )
        .route(
            "/security-groups",
            get(networks::list_security_groups).post(networks::create_security_group),
        )
        .route(
            "/security-groups/{id}",
            get(networks::get_security_group)
                .put(networks::set_security_group)
                .delete(networks::delete_security_group),
        )
        .route("/operations", get(operations::list_operations))
        .route("/operations/{id}", get(operations::get_operation))
        .route(
            "/operations/{id}/cancel",
            post(operations::cancel_operation),
        )
        .route("/taskservs", get(taskservs::list_taskservs))
        .route("/taskservs/catalog", get(taskservs::catalog))
        .route("/taskservs/create", post(taskservs::create_taskserv))
        .route(
            "/taskservs/{id}",
            get(taskservs::get_taskserv).delete(taskservs::delete_taskserv),
        )
        .route("/workflows/submit", post(workflows::submit_workflow))
        .route("/workflows/{id}", get(workflows::get_workflow))
        .route("/workflows/{id}/cancel", post(workflows::cancel_workflow))
        .route("/metrics", get(system::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            kit::limits::deadline::<NativeError>,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            kit::authenticate::<Native>,
        ));
    let long = Router::new()
        .route("/operations/{id}/wait", get(operations::wait_operation))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            kit::authenticate::<Native>,
        ))
        .route("/events", get(events::events));
    Router::new()
        .merge(credentials)
        .merge(private)
        .merge(long)
        .nest("/agent", agent::router())
        .fallback(kit::not_found::<Native>)
        .method_not_allowed_fallback(kit::method_not_allowed::<Native>)
        .with_state(state)
}

/// The provisioning API's error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// A machine-readable code such as `NOT_FOUND`.
    #[schema(example = "NOT_FOUND")]
    pub error: String,
    pub message: String,
    /// The HTTP status, as a string.
    #[schema(example = "404")]
    pub code: String,
}

/// Every failure of this face.
#[derive(Debug)]
pub struct NativeError(pub Error);

impl From<Error> for NativeError {
    fn from(err: Error) -> Self {
        NativeError(err)
    }
}

fn error_response(status: StatusCode, error: &str, message: String) -> Response {
    let body = ErrorBody {
        error: error.to_string(),
        message,
        code: status.as_u16().to_string(),
    };
    (status, Json(body)).into_response()
}

impl IntoResponse for NativeError {
    fn into_response(self) -> Response {
        let (status, code) = match &self.0 {
            Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "INVALID_REQUEST"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            Error::NoCapacity(_) => (StatusCode::CONFLICT, "INSUFFICIENT_CAPACITY"),
            Error::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "QUOTA_EXCEEDED"),
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
            Error::InsufficientFunds(_) => (StatusCode::PAYMENT_REQUIRED, "INSUFFICIENT_FUNDS"),
            Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            Error::HostFailed(_) => (StatusCode::BAD_GATEWAY, "HOST_FAILED"),
            Error::HostTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "HOST_TIMEOUT"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        kit::answer(&self.0, status, |message| {
            Json(ErrorBody {
                error: code.to_string(),
                message,
                code: status.as_u16().to_string(),
            })
        })
    }
}

pub(crate) fn bad_request(message: String) -> NativeError {
    NativeError(Error::Invalid {
        field: None,
        message,
    })
}

/// A JSON body that may be absent (DELETE requests the provisioning API
/// sends with one).
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(bad_request("the body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| bad_request(format!("invalid JSON body: {e}")))
}

/// A query parameter that names one of a closed set of words (a state, a
/// kind): `None` when absent, a 400 that lists the words when unknown.
pub(crate) fn one_of<T>(field: &'static str, value: Option<&str>, all: &[T]) -> Result<Option<T>>
where
    T: Copy + std::str::FromStr + std::fmt::Display,
{
    let Some(value) = value else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| {
        let known: Vec<String> = all.iter().map(ToString::to_string).collect();
        Error::invalid(
            field,
            format!("unknown {field} {:?}; one of {}", value, known.join(", ")),
        )
        .into()
    })
}

/// `Location` of an operation, for answers that start one.
/// The headers of a page whose answer is the documented array: the next
/// page's token, if there is one, in `X-Next-Page-Token`.
pub(crate) fn next_page_headers(next_page_token: Option<String>) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(token) = next_page_token.and_then(|t| axum::http::HeaderValue::from_str(&t).ok()) {
        headers.insert("x-next-page-token", token);
    }
    headers
}

fn operation_location(id: &str) -> [(header::HeaderName, String); 1] {
    [(header::LOCATION, format!("/v1/operations/{id}"))]
}

type Result<T, E = NativeError> = std::result::Result<T, E>;
