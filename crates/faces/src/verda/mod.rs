//! The Verda Cloud (ex DataCrunch) public API at `/verda/v1`, so that code
//! written for Verda (its Python SDK, its Terraform provider, curl scripts)
//! runs against Tessera with only the base URL changed.
//!
//! Errors are always `{"code": ..., "message": ...}` with Verda's codes,
//! including for unknown paths and unreadable JSON. Callers authenticate
//! with an OAuth2 access token from `POST /oauth2/token`; the catalog's
//! public endpoints need none. Authenticated requests are rate limited per
//! project ([`ratelimit`]) and carry the `RateLimit-Policy` and `RateLimit`
//! headers. Bodies are read as JSON whatever their content type, an empty
//! body is an empty object, and unknown keys are ignored, as the SDK needs.

mod balance;
mod catalog;
mod deployments;
mod instances;
mod jobs;
mod oauth;
mod scripts;
mod secrets;
mod ssh_keys;
mod tags;
mod volumes;

use crate::BearerAuth;
use crate::kit::{self, BodyRule, Face, FaceState};
use axum::Router;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tessera_app::{App, Error, Principal, RateLimits};
use utoipa::{OpenApi, ToSchema};

pub(crate) use crate::kit::{Body, Caller, Path, Query};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera: Verda Cloud compatible API",
        version = "1.0.0",
        description = "Verda Cloud's public API (OAuth2, catalog, instances, volumes, SSH keys, startup scripts, balance, container and job deployments, secrets, registry credentials) over Tessera. Rate limits, pagination and errors as Verda documents them."
    ),
    servers((url = "/verda")),
    paths(
        oauth::token,
        balance::balance,
        catalog::locations,
        catalog::instance_types,
        catalog::instance_type,
        catalog::instance_types_deprecated,
        catalog::price_history,
        catalog::images,
        catalog::cluster_images,
        catalog::volume_types,
        catalog::long_term_periods,
        catalog::long_term_periods_instances,
        catalog::long_term_periods_clusters,
        catalog::container_types,
        catalog::cluster_types,
        catalog::availabilities,
        catalog::availability,
        catalog::availability_deprecated,
        catalog::cluster_availabilities,
        catalog::cluster_availability,
        instances::list_instances,
        instances::get_instance,
        instances::deploy_instance,
        instances::instance_actions,
        instances::instance_action_deprecated,
        volumes::list_volumes,
        volumes::list_trash,
        volumes::get_volume,
        volumes::create_volume,
        volumes::volume_actions,
        volumes::delete_volume,
        ssh_keys::list_keys,
        ssh_keys::add_key,
        ssh_keys::delete_keys,
        ssh_keys::get_key,
        ssh_keys::delete_key,
        ssh_keys::list_keys_alias,
        ssh_keys::add_key_alias,
        ssh_keys::delete_keys_alias,
        ssh_keys::get_key_alias,
        ssh_keys::delete_key_alias,
        scripts::list_scripts,
        scripts::add_script,
        scripts::delete_scripts,
        scripts::get_script,
        scripts::delete_script,
        tags::add_instance_tag,
        tags::delete_instance_tag,
        tags::add_volume_tag,
        tags::delete_volume_tag,
        deployments::list_deployments,
        deployments::create_deployment,
        deployments::get_deployment,
        deployments::patch_deployment,
        deployments::delete_deployment,
        deployments::deployment_status,
        deployments::restart_deployment,
        deployments::get_scaling,
        deployments::patch_scaling,
        deployments::replicas,
        deployments::purge_queue,
        deployments::pause,
        deployments::resume,
        deployments::get_env,
        deployments::add_env,
        deployments::set_env,
        deployments::delete_env,
        deployments::compute_resources,
        jobs::list_jobs,
        jobs::create_job,
        jobs::get_job,
        jobs::patch_job,
        jobs::delete_job,
        jobs::get_job_scaling,
        jobs::job_status,
        jobs::purge_jobs,
        jobs::pause_job,
        jobs::resume_job,
        secrets::list_secrets,
        secrets::create_secret,
        secrets::delete_secret,
        secrets::list_file_secrets,
        secrets::create_file_secret,
        secrets::delete_file_secret,
        secrets::list_registry_credentials,
        secrets::create_registry_credential,
        secrets::delete_registry_credential,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct VerdaApi;

/// The Verda face, for the kit: Verda's error body, OAuth access tokens,
/// JSON bodies whatever their content type, Verda's rate limits.
pub struct Verda;

impl Face for Verda {
    type Error = VerdaError;

    const BODY: BodyRule = BodyRule::Lenient;

    async fn authenticate(app: &App, bearer: Option<&str>) -> Result<Principal, Error> {
        app.authenticate_oauth(bearer).await
    }

    fn rate_limits(app: &App) -> Option<&RateLimits> {
        Some(app.rate_limits())
    }

    fn not_found(method: &Method, path: &str) -> Response {
        error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{method} {path} is not a path of this API"),
        )
    }

    fn method_not_allowed(method: &Method, path: &str) -> Response {
        error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "not_found",
            format!("{method} is not allowed on {path}"),
        )
    }
}

/// The face's router state.
pub type VerdaState = FaceState<Verda>;

pub fn router(app: App) -> Router {
    let state = VerdaState::new(app);
    let public = Router::new()
        .route("/oauth2/token", post(oauth::token))
        .route("/instance-types", get(catalog::instance_types))
        .route("/instance-types/price-history", get(catalog::price_history))
        .route(
            "/instance-types/{instance_type}",
            get(catalog::instance_type),
        )
        .route("/volume-types", get(catalog::volume_types))
        .route("/long-term/periods", get(catalog::long_term_periods))
        .route(
            "/long-term/periods/instances",
            get(catalog::long_term_periods_instances),
        )
        .route(
            "/long-term/periods/clusters",
            get(catalog::long_term_periods_clusters),
        )
        .route("/container-types", get(catalog::container_types))
        .route("/cluster-types", get(catalog::cluster_types));
    let private = Router::new()
        .route("/balance", get(balance::balance))
        .route("/locations", get(catalog::locations))
        .route("/images", get(catalog::images))
        .route("/images/cluster", get(catalog::cluster_images))
        .route("/instance-availability", get(catalog::availabilities))
        .route(
            "/cluster-availability",
            get(catalog::cluster_availabilities),
        )
        .route(
            "/cluster-availability/{cluster_type}",
            get(catalog::cluster_availability),
        )
        .route(
            "/instance-availability/{instance_type}",
            get(catalog::availability),
        )
        .route(
            "/instances",
            get(instances::list_instances)
                .post(instances::deploy_instance)
                .put(instances::instance_actions),
        )
        .route("/instances/types", get(catalog::instance_types_deprecated))
        .route(
            "/instances/availability/{instanceType}",
            get(catalog::availability_deprecated),
        )
        .route(
            "/instances/action",
            post(instances::instance_action_deprecated),
        )
        .route("/instances/{instance_id}", get(instances::get_instance))
        .route(
            "/instances/{instance_id}/tags",
            post(tags::add_instance_tag),
        )
        .route(
            "/instances/{instance_id}/tags/{key}",
            axum::routing::delete(tags::delete_instance_tag),
        )
        .route("/volumes/{volume_id}/tags", post(tags::add_volume_tag))
        .route(
            "/volumes/{volume_id}/tags/{key}",
            axum::routing::delete(tags::delete_volume_tag),
        )
        .route(
            "/volumes",
            get(volumes::list_volumes)
                .post(volumes::create_volume)
                .put(volumes::volume_actions),
        )
        .route("/volumes/trash", get(volumes::list_trash))
        .route(
            "/volumes/{volume_id}",
            get(volumes::get_volume).delete(volumes::delete_volume),
        )
        .route(
            "/sshkeys",
            get(ssh_keys::list_keys)
                .post(ssh_keys::add_key)
                .delete(ssh_keys::delete_keys),
        )
        .route(
            "/sshkeys/{sshKeyId}",
            get(ssh_keys::get_key).delete(ssh_keys::delete_key),
        )
        .route(
            "/ssh-keys",
            get(ssh_keys::list_keys_alias)
                .post(ssh_keys::add_key_alias)
                .delete(ssh_keys::delete_keys_alias),
        )
        .route(
            "/ssh-keys/{sshKeyId}",
            get(ssh_keys::get_key_alias).delete(ssh_keys::delete_key_alias),
        )
        .route(
            "/scripts",
            get(scripts::list_scripts)
                .post(scripts::add_script)
                .delete(scripts::delete_scripts),
        )
        .route(
            "/scripts/{scriptId}",
            get(scripts::get_script).delete(scripts::delete_script),
        )
        .route(
            "/container-deployments",
            get(deployments::list_deployments).post(deployments::create_deployment),
        )
        .route(
            "/container-deployments/{deployment_name}",
            get(deployments::get_deployment)
                .patch(deployments::patch_deployment)
                .delete(deployments::delete_deployment),
        )
        .route(
            "/container-deployments/{deployment_name}/status",
            get(deployments::deployment_status),
        )
        .route(
            "/container-deployments/{deployment_name}/restart",
            post(deployments::restart_deployment),
        )
        .route(
            "/container-deployments/{deployment_name}/scaling",
            get(deployments::get_scaling).patch(deployments::patch_scaling),
        )
        .route(
            "/container-deployments/{deployment_name}/replicas",
            get(deployments::replicas),
        )
        .route(
            "/container-deployments/{deployment_name}/purge-queue",
            post(deployments::purge_queue),
        )
        .route(
            "/container-deployments/{deployment_name}/pause",
            post(deployments::pause),
        )
        .route(
            "/container-deployments/{deployment_name}/resume",
            post(deployments::resume),
        )
        .route(
            "/container-deployments/{deployment_name}/environment-variables",
            get(deployments::get_env)
                .post(deployments::add_env)
                .patch(deployments::set_env)
                .delete(deployments::delete_env),
        )
        .route(
            "/serverless-compute-resources",
            get(deployments::compute_resources),
        )
        .route(
            "/job-deployments",
            get(jobs::list_jobs).post(jobs::create_job),
        )
        .route(
            "/job-deployments/{jobName}",
            get(jobs::get_job)
                .patch(jobs::patch_job)
                .delete(jobs::delete_job),
        )
        .route(
            "/job-deployments/{jobName}/scaling",
            get(jobs::get_job_scaling),
        )
        .route("/job-deployments/{jobName}/status", get(jobs::job_status))
        .route(
            "/job-deployments/{jobName}/purge-queue",
            post(jobs::purge_jobs),
        )
        .route("/job-deployments/{jobName}/pause", post(jobs::pause_job))
        .route("/job-deployments/{jobName}/resume", post(jobs::resume_job))
        .route(
            "/secrets",
            get(secrets::list_secrets).post(secrets::create_secret),
        )
        .route(
            "/secrets/{secret_name}",
            axum::routing::delete(secrets::delete_secret),
        )
        .route(
            "/file-secrets",
            get(secrets::list_file_secrets).post(secrets::create_file_secret),
        )
        .route(
            "/file-secrets/{secret_name}",
            axum::routing::delete(secrets::delete_file_secret),
        )
        .route(
            "/container-registry-credentials",
            get(secrets::list_registry_credentials).post(secrets::create_registry_credential),
        )
        .route(
            "/container-registry-credentials/{credentials_name}",
            axum::routing::delete(secrets::delete_registry_credential),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.app.clone(),
            kit::limits::deadline::<VerdaError>,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            kit::authenticate::<Verda>,
        ));
    let public = public.route_layer(axum::middleware::from_fn_with_state(
        state.app.clone(),
        kit::limits::deadline::<VerdaError>,
    ));
    Router::new()
        .merge(public)
        .merge(private)
        .fallback(kit::not_found::<Verda>)
        .method_not_allowed_fallback(kit::method_not_allowed::<Verda>)
        .with_state(state)
}

/// A JSON answer written as Verda's (JavaScript) service writes JSON: a
/// number with no fraction is an integer (`50`, never `50.0`), whatever
/// Rust type held it. Every answer of this face goes through it, so clients
/// that decode strictly into integer types (Verda's Go SDK, its CLI and
/// Terraform provider) read every whole number.
pub struct Json<T>(pub T);

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.0) {
            Ok(mut value) => {
                as_javascript_numbers(&mut value);
                axum::Json(value).into_response()
            }
            Err(err) => VerdaError(Error::Unavailable(format!(
                "cannot write the answer: {err}"
            )))
            .into_response(),
        }
    }
}

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Rewrites every whole floating-point number in `value` as an integer.
pub(crate) fn as_javascript_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64())
                && f.fract() == 0.0
                && f.abs() <= MAX_SAFE_INTEGER
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(as_javascript_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(as_javascript_numbers),
        _ => {}
    }
}

/// Verda's error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// `invalid_request`, `unauthorized_request`, `insufficient_funds`,
    /// `forbidden_action`, `not_found`, `conflict`, `rate_limit_exceeded`,
    /// `server_error` or `service_unavailable`.
    #[schema(example = "invalid_request")]
    pub code: String,
    pub message: String,
}

/// Every failure of this face.
#[derive(Debug)]
pub struct VerdaError(pub Error);

impl From<Error> for VerdaError {
    fn from(err: Error) -> Self {
        VerdaError(err)
    }
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody {
        code: code.to_string(),
        message,
    };
    (status, Json(body)).into_response()
}

/// The status and code of an app error, as Verda answers it.
pub(crate) fn status_of(err: &Error) -> (StatusCode, &'static str) {
    match err {
        Error::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthorized_request"),
        Error::InsufficientFunds(_) => (StatusCode::PAYMENT_REQUIRED, "insufficient_funds"),
        Error::Forbidden(_) | Error::QuotaExceeded(_) => {
            (StatusCode::FORBIDDEN, "forbidden_action")
        }
        Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        Error::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded"),
        Error::NoCapacity(_)
        | Error::HostFailed(_)
        | Error::HostTimeout(_)
        | Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
        Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

impl IntoResponse for VerdaError {
    fn into_response(self) -> Response {
        let (status, code) = status_of(&self.0);
        kit::answer(&self.0, status, |message| {
            Json(ErrorBody {
                code: code.to_string(),
                message,
            })
        })
    }
}

/// An app error about its own request's fields told in Verda's names:
/// `names` pairs the native field (`metadata.name`) with the field of
/// Verda's request it came from (`hostname`), longest native names first.
pub(crate) fn in_verda_names(err: Error, names: &[(&str, &'static str)]) -> Error {
    match err {
        Error::Invalid { field, message } => {
            let message = names
                .iter()
                .fold(message, |m, (native, verda)| m.replace(native, verda));
            let field = field.map(|f| {
                names
                    .iter()
                    .find(|(native, _)| *native == f)
                    .map_or(f, |(_, verda)| *verda)
            });
            Error::Invalid { field, message }
        }
        other => other,
    }
}

pub(crate) fn bad_request(message: impl Into<String>) -> VerdaError {
    VerdaError(Error::Invalid {
        field: None,
        message: message.into(),
    })
}

/// An id answered as bare text, as Verda answers new ids.
pub(crate) fn id_text(status: StatusCode, id: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        id,
    )
        .into_response()
}

/// Pagination headers of a page.
pub(crate) fn page_headers(page: u32, page_size: u32, total: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("x-page", i64::from(page)),
        ("x-page-size", i64::from(page_size)),
        ("x-total-count", total),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    headers
}

/// A size in whole GB, as Verda's numbers carry it.
pub(crate) fn whole_gb(field: &str, size: f64) -> Result<u64> {
    if size.fract() != 0.0 || !(1.0..=1e12).contains(&size) {
        return Err(bad_request(format!(
            "{field} must be a whole number of GB, at least 1"
        )));
    }
    Ok(size as u64)
}

/// A request's bare `true`/`false` JSON answer.
pub(crate) fn json_bool(value: bool) -> Response {
    Json(value).into_response()
}

/// A value as Verda lists it: one id, or several.
#[derive(Clone, Debug, serde::Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(id) => vec![id],
            OneOrMany::Many(ids) => ids,
        }
    }
}

type Result<T, E = VerdaError> = std::result::Result<T, E>;

/// Serde readers for the face's nested objects. serde's derived structs
/// also read JSON arrays (`[null, 80]` as their fields in order), which no
/// client sends and no schema of this face allows: these read objects
/// only (and `null` as absent where the field is optional).
pub(crate) mod objects {
    use serde::Deserialize;
    use serde::de::{DeserializeOwned, Deserializer, Error};
    use serde_json::Value;

    fn from<T: DeserializeOwned, E: Error>(value: Value) -> Result<T, E> {
        match value {
            Value::Object(_) => serde_json::from_value(value).map_err(E::custom),
            other => Err(E::custom(format!("expected an object, not {other}"))),
        }
    }

    fn all<T: DeserializeOwned, E: Error>(value: Value) -> Result<Vec<T>, E> {
        match value {
            Value::Array(items) => items.into_iter().map(from).collect(),
            other => Err(E::custom(format!(
                "expected a list of objects, not {other}"
            ))),
        }
    }

    /// An optional object.
    pub fn optional<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(value) => from(value).map(Some),
        }
    }

    /// A required object.
    pub fn required<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
        from(Value::deserialize(d)?)
    }

    /// An optional list of objects.
    pub fn optional_list<'de, D: Deserializer<'de>, T: DeserializeOwned>(
        d: D,
    ) -> Result<Option<Vec<T>>, D::Error> {
        match Option::<Value>::deserialize(d)? {
            None | Some(Value::Null) => Ok(None),
            Some(value) => all(value).map(Some),
        }
    }

    /// A required list of objects.
    pub fn list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
        all(Value::deserialize(d)?)
    }
}
