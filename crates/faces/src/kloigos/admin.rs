//! `/api/admin`: register and retire servers.

use super::validation::{BodyReader, ValidationError, parse_bool_text, query_error, value_errors};
use super::{Detail, KloigosError};
use crate::kit::Path;
use crate::kit::RawBody;
use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Map, Value};
use tessera_app::App;
use tessera_app::hosts::InitServer;
use utoipa::ToSchema;

/// `POST /api/admin/init_server`'s body.
#[derive(ToSchema)]
pub struct InitServerRequest {
    /// The server's address: an IP address or a DNS name.
    #[schema(min_length = 1, max_length = 253)]
    pub ip: String,
    #[schema(min_length = 1, max_length = 64)]
    pub region: String,
    #[schema(min_length = 1, max_length = 64)]
    pub zone: String,
    /// One compute unit per range, in `start-end[:step]` syntax
    /// (`"0-7:2"` is CPUs 0, 2, 4, 6). Ranges may not overlap.
    #[schema(min_items = 1, inline, value_type = Vec<CpuRangeText>)]
    pub cpu_ranges: Vec<String>,
    /// A DNS name: letters, digits, inner hyphens, dots.
    #[schema(
        max_length = 253,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
    )]
    pub hostname: String,
    /// Tessera extension: each NUMA node's CPUs in Linux list format
    /// (`"0-31,64-95"`), as `/sys/devices/system/node/node*/cpulist` shows.
    #[schema(nullable, inline, value_type = Option<Vec<CpuListText>>)]
    pub numa_nodes: Option<Vec<String>>,
}

impl From<InitServerRequest> for InitServer {
    fn from(req: InitServerRequest) -> Self {
        InitServer {
            hostname: req.hostname,
            ip: req.ip,
            region: req.region,
            zone: req.zone,
            cpu_ranges: req.cpu_ranges,
            numa_nodes: req.numa_nodes.unwrap_or_default(),
        }
    }
}

/// A CPU range in Kloigos syntax.
#[derive(ToSchema)]
#[schema(
    pattern = r"^(0|[1-9][0-9]*)-(0|[1-9][0-9]*)(:[1-9][0-9]*)?$",
    example = "0-7:2"
)]
pub struct CpuRangeText(#[allow(dead_code)] String);

/// CPUs in Linux list format.
#[derive(ToSchema)]
#[schema(
    pattern = r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$",
    example = "0-31,64-95"
)]
pub struct CpuListText(#[allow(dead_code)] String);

fn parse_init(body: &[u8]) -> Result<InitServerRequest, Vec<ValidationError>> {
    let mut reader = BodyReader::parse(body)?;
    let ip = reader.required_string("ip");
    let region = reader.required_string("region");
    let zone = reader.required_string("zone");
    let cpu_ranges = reader.required_string_list("cpu_ranges");
    let hostname = reader.required_string("hostname");
    let numa_nodes = reader.optional_string_list("numa_nodes");
    reader.finish()?;
    Ok(InitServerRequest {
        ip,
        region,
        zone,
        cpu_ranges,
        hostname,
        numa_nodes: Some(numa_nodes),
    })
}

/// Register a server and carve it into compute units, one per CPU range.
///
/// Answers at once; the units are UNAVAILABLE until the host side is done,
/// then FREE (or the server goes INIT_FAIL).
#[utoipa::path(
    post,
    path = "/api/admin/init_server",
    tag = "admin",
    request_body = InitServerRequest,
    responses(
        (status = 200, description = "Registered; preparation under way", body = Object),
        (status = 401, description = "Missing or invalid token", body = Detail),
        (status = 403, description = "Not allowed: the caller's roles, or the project's quota", body = Detail),
        (status = 409, description = "The hostname is already registered", body = Detail),
        (status = 422, description = "Validation Error", body = super::HttpValidationError),
    )
)]
pub async fn init_server(
    State(app): State<App>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, KloigosError> {
    let request: InitServer = parse_init(&body).map_err(KloigosError::Validation)?.into();
    // Every problem at once, as FastAPI reports them.
    let problems = value_errors(tessera_app::hosts::host_problems(&request));
    if !problems.is_empty() {
        return Err(KloigosError::Validation(problems));
    }
    app.init_server(request).await?;
    Ok(Json(Value::Object(Map::new())))
}

/// Retire a server and its units.
///
/// Refused with 409 while units are allocated, unless `force=true`, which
/// deallocates them first. Answers once the server takes no new units; the
/// host-side work finishes in the background.
#[utoipa::path(
    delete,
    path = "/api/admin/decommission_server/{hostname}",
    tag = "admin",
    params(
        ("hostname" = String, Path, description = "The server"),
        ("force" = Option<bool>, Query, description = "Deallocate allocated units first"),
    ),
    responses(
        (status = 200, description = "Decommissioning", body = Object),
        (status = 401, description = "Missing or invalid token", body = Detail),
        (status = 403, description = "Not allowed: the caller's roles, or the project's quota", body = Detail),
        (status = 404, description = "No such server", body = Detail),
        (status = 409, description = "The server has allocated units", body = Detail),
        (status = 422, description = "Validation Error", body = super::HttpValidationError),
    )
)]
pub async fn decommission_server(
    State(app): State<App>,
    Path(hostname): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, KloigosError> {
    let mut force = false;
    for (name, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if name == "force" {
            force = parse_bool_text(&value).ok_or_else(|| {
                KloigosError::Validation(vec![query_error(
                    "force",
                    "bool_parsing",
                    "Input should be a valid boolean, unable to interpret input",
                    &value,
                )])
            })?;
        }
    }
    app.decommission_server(&hostname, force).await?;
    Ok(Json(Value::Object(Map::new())))
}
