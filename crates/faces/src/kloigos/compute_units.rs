//! `/api/compute_units`: allocate, deallocate, list.

use super::validation::{
    BodyReader, ValidationError, parse_int_text, query_error, value_error, value_errors,
};
use super::{Detail, KloigosError};
use crate::kit::Caller;
use crate::kit::Path;
use crate::kit::RawBody;
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tessera_app::App;
use tessera_app::units::{AllocateUnit, ComputeUnit, UnitQuery, UnitReach};
use tessera_core::Permission;
use tessera_core::status::UnitStatus;
use utoipa::{IntoParams, ToSchema};

/// `POST /api/compute_units/allocate`'s body.
#[derive(ToSchema)]
pub struct ComputeUnitRequest {
    /// CPUs of the unit; a free unit of exactly this size is taken.
    #[schema(default = 4, nullable, minimum = 1)]
    pub cpu_count: Option<i64>,
    #[schema(nullable)]
    pub region: Option<String>,
    #[schema(nullable)]
    pub zone: Option<String>,
    /// The OpenSSH public key installed for the unit's user, one line.
    #[schema(
        pattern = r"^(ssh-ed25519|ssh-rsa|ssh-dss|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}( [^\n]*)?$"
    )]
    pub ssh_public_key: String,
    /// Free-form labels; `deployment_id` is what the list filters on.
    #[schema(value_type = Option<Object>, required)]
    pub tags: Option<Map<String, Value>>,
}

/// Every field is always present, as the seed's schema requires; some are
/// `null`.
#[derive(Serialize, ToSchema)]
pub struct ComputeUnitResponse {
    #[schema(required)]
    pub started_at: Option<String>,
    pub ip: String,
    #[schema(required)]
    pub ports_range: Option<String>,
    pub cpu_range: String,
    #[schema(value_type = Option<Object>, required)]
    pub tags: Option<Value>,
    pub compute_id: String,
    pub region: String,
    pub zone: String,
    pub cpu_list: String,
    pub hostname: String,
    /// FREE, ALLOCATING, ALLOCATED, ALLOCATION_FAIL, DEALLOCATING,
    /// DEALLOCATION_FAIL or UNAVAILABLE.
    pub status: String,
    pub cpu_count: i64,
}

impl From<ComputeUnit> for ComputeUnitResponse {
    fn from(unit: ComputeUnit) -> Self {
        ComputeUnitResponse {
            started_at: unit.started_at,
            ip: unit.ip,
            ports_range: Some(unit.ports_range),
            cpu_range: unit.cpu_range,
            tags: unit.tags,
            compute_id: unit.compute_id.to_string(),
            region: unit.region,
            zone: unit.zone,
            cpu_list: unit.cpu_list,
            hostname: unit.hostname,
            status: unit.status.to_string(),
            cpu_count: i64::from(unit.cpu_count),
        }
    }
}

const DEFAULT_CPU_COUNT: i64 = 4;

impl From<ComputeUnitRequest> for AllocateUnit {
    fn from(req: ComputeUnitRequest) -> Self {
        AllocateUnit {
            cpu_count: req
                .cpu_count
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            region: req.region,
            zone: req.zone,
            ssh_public_key: req.ssh_public_key,
            tags: req.tags.map(Value::Object),
            project_id: String::new(),
        }
    }
}

fn parse_allocate(body: &[u8]) -> Result<ComputeUnitRequest, Vec<ValidationError>> {
    let mut reader = BodyReader::parse(body)?;
    let ssh_public_key = reader.required_string("ssh_public_key");
    let tags = reader.required_nullable_object("tags");
    let cpu_count = reader.optional_int("cpu_count");
    let region = reader.optional_string("region");
    let zone = reader.optional_string("zone");
    // The key's value here too, so that its problem is listed with the
    // others (an empty one is the app's to refuse).
    if !ssh_public_key.is_empty()
        && let Err(tessera_app::Error::Invalid { field, message }) =
            tessera_app::ssh_keys::check_public_key("ssh_public_key", &ssh_public_key)
    {
        reader.errors.push(value_error(field, &message));
    }
    let cpu_count = cpu_count.unwrap_or(DEFAULT_CPU_COUNT);
    let most = i64::from(tessera_core::cpuset::MAX_CPU_ID) + 1;
    if cpu_count <= 0 {
        reader.errors.push(ValidationError::new(
            "greater_than",
            vec!["body".into(), "cpu_count".into()],
            "Input should be greater than 0",
            Some(cpu_count.into()),
        ));
    } else if cpu_count > most {
        reader.errors.push(ValidationError::new(
            "less_than_equal",
            vec!["body".into(), "cpu_count".into()],
            format!("Input should be less than or equal to {most}"),
            Some(cpu_count.into()),
        ));
    }
    reader.finish()?;
    Ok(ComputeUnitRequest {
        cpu_count: Some(cpu_count),
        region,
        zone,
        ssh_public_key,
        tags: tags.and_then(|t| match t {
            Value::Object(map) => Some(map),
            _ => None,
        }),
    })
}

/// Allocate a free compute unit of `cpu_count` CPUs and install the key.
///
/// Answers once the host side is done, with the unit in the state it is
/// really in: ALLOCATED, or ALLOCATION_FAIL when the host failed or timed out.
#[utoipa::path(
    post,
    path = "/api/compute_units/allocate",
    tag = "compute_units",
    request_body = ComputeUnitRequest,
    responses(
        (status = 200, description = "The allocated unit", body = ComputeUnitResponse),
        (status = 401, description = "Missing or invalid token", body = Detail),
        (status = 403, description = "Not allowed: the caller's roles, or the project's quota", body = Detail),
        (status = 422, description = "Validation Error", body = super::HttpValidationError),
        (status = 460, description = "No free Compute Unit found to match your request", body = Detail),
        (status = 503, description = "Too many concurrent allocations; try again", body = Detail),
        (status = 504, description = "The allocation did not finish in time and was undone; try again", body = Detail),
    )
)]
pub async fn allocate(
    State(app): State<App>,
    Caller(caller): Caller,
    RawBody(body): RawBody,
) -> Result<Json<ComputeUnitResponse>, KloigosError> {
    let request = parse_allocate(&body).map_err(KloigosError::Validation)?;
    let mut request: AllocateUnit = request.into();
    request.project_id = caller.project_id;
    // Every problem at once, as FastAPI reports them.
    let problems = value_errors(tessera_app::units::allocation_problems(&request));
    if !problems.is_empty() {
        return Err(KloigosError::Validation(problems));
    }
    let unit = app.allocate_unit(request).await?;
    Ok(Json(unit.into()))
}

/// Deallocate a compute unit: remove the key, stop its processes, wipe it.
///
/// Answers `{}` once the unit is FREE again; deallocating a unit that is not
/// allocated changes nothing.
#[utoipa::path(
    delete,
    path = "/api/compute_units/deallocate/{compute_id}",
    tag = "compute_units",
    params(("compute_id" = String, Path, description = "The unit, e.g. host1_c0-3")),
    responses(
        (status = 200, description = "Deallocated", body = Object),
        (status = 401, description = "Missing or invalid token", body = Detail),
        (status = 403, description = "Not allowed: the caller's roles, or the project's quota", body = Detail),
        (status = 404, description = "No such compute unit", body = Detail),
        (status = 409, description = "The unit is still being allocated", body = Detail),
        (status = 422, description = "Validation Error", body = super::HttpValidationError),
        (status = 502, description = "The host failed to wipe the unit (now DEALLOCATION_FAIL)", body = Detail),
        (status = 504, description = "The host did not finish in time; retried in the background", body = Detail),
    )
)]
pub async fn deallocate(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(compute_id): Path<String>,
) -> Result<Json<Value>, KloigosError> {
    // Tenants deallocate their own units; the fleet's operators any.
    let project = caller.project_id.as_str();
    let reach = match (
        caller.can(Permission::ServerDelete),
        caller.can(Permission::ServerRead),
    ) {
        (true, _) => UnitReach::Every,
        (false, true) => UnitReach::SeeEvery(project),
        (false, false) => UnitReach::Own(project),
    };
    app.deallocate_unit(&compute_id, reach).await?;
    Ok(Json(Value::Object(Map::new())))
}

/// The list filters; each one given must match.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    compute_id: Option<String>,
    hostname: Option<String>,
    region: Option<String>,
    zone: Option<String>,
    cpu_count: Option<i64>,
    /// Matches `tags.deployment_id`.
    deployment_id: Option<String>,
    /// A unit status, in any case (`free` or `FREE`).
    #[param(inline, value_type = Option<StatusFilter>)]
    status: Option<String>,
}

/// The statuses the list filters on; any case is accepted.
#[derive(ToSchema)]
#[allow(dead_code, non_camel_case_types, clippy::upper_case_acronyms)]
pub enum StatusFilter {
    FREE,
    ALLOCATING,
    ALLOCATED,
    ALLOCATION_FAIL,
    DEALLOCATING,
    DEALLOCATION_FAIL,
    UNAVAILABLE,
    free,
    allocating,
    allocated,
    allocation_fail,
    deallocating,
    deallocation_fail,
    unavailable,
}

fn parse_list_query(query: Option<&str>) -> Result<UnitQuery, Vec<ValidationError>> {
    let mut filter = UnitQuery::default();
    let mut errors = Vec::new();
    let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes());
    for (name, value) in pairs {
        let value = value.into_owned();
        match name.as_ref() {
            "compute_id" => filter.compute_id = Some(value),
            "hostname" => filter.hostname = Some(value),
            "region" => filter.region = Some(value),
            "zone" => filter.zone = Some(value),
            "deployment_id" => filter.deployment_id = Some(value),
            "cpu_count" => match parse_int_text(&value) {
                Ok(n) => filter.cpu_count = Some(n),
                Err((kind, msg)) => errors.push(query_error("cpu_count", kind, msg, &value)),
            },
            "status" => match value.parse::<UnitStatus>() {
                Ok(status) => filter.statuses = vec![status],
                Err(_) => {
                    let expected: Vec<String> =
                        UnitStatus::ALL.iter().map(|s| format!("'{s}'")).collect();
                    errors.push(query_error(
                        "status",
                        "enum",
                        format!("Input should be {} (in any case)", expected.join(", ")),
                        &value,
                    ));
                }
            },
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(filter)
    } else {
        Err(errors)
    }
}

/// List compute units, optionally filtered.
#[utoipa::path(
    get,
    path = "/api/compute_units/",
    tag = "compute_units",
    params(ListParams),
    responses(
        (status = 200, description = "The matching units", body = Vec<ComputeUnitResponse>),
        (status = 401, description = "Missing or invalid token", body = Detail),
        (status = 422, description = "Validation Error", body = super::HttpValidationError),
    )
)]
pub async fn list_compute_units(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<ComputeUnitResponse>>, KloigosError> {
    let mut filter = parse_list_query(query.as_deref()).map_err(KloigosError::Validation)?;
    // Tenants see their own units; the fleet's operators every unit.
    if !caller.can(Permission::ServerRead) {
        filter.project_id = Some(caller.project_id);
    }
    let units = app.compute_units(&filter).await?;
    Ok(Json(units.into_iter().map(Into::into).collect()))
}
