//! `/v1/servers`: the fleet's hosts.

use super::operations::OperationBody;
use super::{Body, Caller, ErrorBody, Path, Query, Result, operation_location};
use crate::kit::RawBody;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::hosts::Host;
use tessera_app::servers::CreateServer;
use tessera_core::status::HostStatus;
use utoipa::{IntoParams, ToSchema};

#[derive(Serialize, ToSchema)]
pub struct ServerBody {
    pub id: String,
    pub hostname: String,
    pub provider: String,
    pub plan: String,
    pub zone: String,
    pub ip_address: String,
    /// `initializing`, `running`, `unreachable` (its agent misses its heartbeats),
    /// `draining`, `drained`, `failed`, `decommissioning`,
    /// `decommissioned` or `decommission_failed`.
    pub status: String,
    pub created_at: String,
    pub region: String,
    /// The server's CPUs (Linux list).
    pub cpus: String,
    /// Kloigos ranges, for a server carved into compute units.
    pub cpu_ranges: Vec<String>,
    pub memory_mb: i64,
    pub tags: Vec<String>,
    /// Its CPU architecture: `amd64` or `arm64`.
    pub arch: String,
    /// What isolation its agent gives instances, as it last said:
    /// `unprivileged: ...` (a user namespace, seccomp filter and firewall
    /// per instance), `privileged: why; ...` (the operator allowed instances
    /// as the host's root) or `none: why; this host refuses to run
    /// instances`. Absent for simulated hosts and hosts without an agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn status_name(status: HostStatus) -> &'static str {
    match status {
        HostStatus::Initializing => "initializing",
        HostStatus::Ready => "running",
        HostStatus::Draining => "draining",
        HostStatus::Drained => "drained",
        HostStatus::InitFail => "failed",
        HostStatus::Decommissioning => "decommissioning",
        HostStatus::Decommissioned => "decommissioned",
        HostStatus::DecommissionFail => "decommission_failed",
    }
}

impl From<Host> for ServerBody {
    fn from(h: Host) -> Self {
        let plan = h
            .plan
            .clone()
            .unwrap_or_else(|| format!("{}xCPU-{}GB", h.cpus.len(), h.memory_mb / 1024));
        ServerBody {
            provider: h.provider.clone().unwrap_or_else(|| "kloigos".into()),
            plan,
            status: match (h.status, h.reachable) {
                (HostStatus::Ready, false) => "unreachable".into(),
                (status, _) => status_name(status).into(),
            },
            message: h.status_detail,
            id: h.id.to_string(),
            hostname: h.hostname,
            zone: h.zone,
            ip_address: h.ip,
            created_at: h.created_at,
            region: h.region,
            cpus: h.cpus.to_string(),
            cpu_ranges: h.cpu_ranges,
            memory_mb: i64::try_from(h.memory_mb).unwrap_or(i64::MAX),
            tags: h.tags,
            arch: h.arch,
            isolation: h.isolation,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServerRequest {
    pub workspace: Option<String>,
    /// Free text; `tessera` by default.
    pub provider: Option<String>,
    /// `NxCPU-MGB`: gives the CPUs (0..N-1) when `cpus` is absent.
    #[schema(example = "16xCPU-64GB")]
    pub plan: Option<String>,
    #[schema(example = "web-01")]
    pub hostname: String,
    /// Where it is reached; when absent, the address its agent reports
    /// when it joins.
    #[schema(example = "10.0.0.1")]
    pub ip_address: Option<String>,
    #[schema(example = "de-fra1")]
    pub zone: String,
    /// Tessera extension: the region; the zone by default.
    pub region: Option<String>,
    /// Tessera extension: the CPU pool in Linux list format.
    #[schema(example = "0-15")]
    pub cpus: Option<String>,
    /// Tessera extension: carve the server into Kloigos units instead.
    pub cpu_ranges: Option<Vec<String>>,
    /// Tessera extension: each NUMA node's CPUs in Linux list format.
    pub numa_nodes: Option<Vec<String>>,
    #[serde(default)]
    pub check_mode: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tessera extension: the CPU architecture, `amd64` (the default) or
    /// `arm64`; a joining agent reports its own.
    #[schema(example = "amd64")]
    pub arch: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteServerRequest {
    pub workspace: Option<String>,
    pub server_id: Option<String>,
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Take back the server's compute units first.
    pub force: Option<bool>,
}

type Started = ([(header::HeaderName, String); 1], Json<OperationBody>);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListServersParams {
    /// At most this many (1 to 1000, default 100), in hostname order; the
    /// next page's token is in the `X-Next-Page-Token` header.
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

/// List servers.
#[utoipa::path(get, path = "/v1/servers", tag = "servers", params(ListServersParams),
    responses(
        (status = 200, description = "Servers", body = Vec<ServerBody>,
            headers(("X-Next-Page-Token" = String, description = "Token of the next page, if any"))),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_servers(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(params): Query<ListServersParams>,
) -> Result<(HeaderMap, Json<Vec<ServerBody>>)> {
    let page = app
        .servers(&caller, params.limit, params.page_token.as_deref())
        .await?;
    Ok((
        super::next_page_headers(page.next_page_token),
        Json(page.items.into_iter().map(ServerBody::from).collect()),
    ))
}

/// Register a server; its agent prepares it. Answers the operation.
#[utoipa::path(post, path = "/v1/servers/create", tag = "servers", request_body = CreateServerRequest,
    responses(
        (status = 200, description = "Registering; follow the operation", body = OperationBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The hostname is registered", body = ErrorBody),
    ))]
pub async fn create_server(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateServerRequest>,
) -> Result<Started> {
    let op = app
        .create_server(
            &caller,
            CreateServer {
                workspace: req.workspace,
                hostname: req.hostname,
                ip_address: req.ip_address.unwrap_or_default(),
                provider: req.provider,
                plan: req.plan,
                region: req.region,
                zone: req.zone,
                cpus: req.cpus,
                cpu_ranges: req.cpu_ranges.unwrap_or_default(),
                numa_nodes: req.numa_nodes.unwrap_or_default(),
                tags: req.tags,
                check_mode: req.check_mode,
                arch: req.arch,
                server_id: String::new(),
            },
        )
        .await?;
    Ok((operation_location(&op.id), Json(op.into())))
}

/// Delete a server. Refused while instances run on it or compute units are
/// held there (`force` takes the units back). Answers the operation.
#[utoipa::path(delete, path = "/v1/servers/{id}", tag = "servers",
    params(("id" = String, Path, description = "Server id or hostname"), DeleteParams),
    request_body(content = Option<DeleteServerRequest>, description = "Optional, as the provisioning API sends it"),
    responses(
        (status = 200, description = "Deleting; follow the operation", body = OperationBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Server not found", body = ErrorBody),
        (status = 409, description = "Instances or units are on it", body = ErrorBody),
    ))]
pub async fn delete_server(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(params): Query<DeleteParams>,
    RawBody(body): RawBody,
) -> Result<Started> {
    let req: DeleteServerRequest = super::optional_body(&body)?;
    // The path and the body may name one server two ways (its id, its
    // hostname): compared as servers, not as text.
    if let Some(named) = &req.server_id
        && *named != id
    {
        let path_names = app.server(&caller, &id).await?.id;
        let same = match app.server(&caller, named).await {
            Ok(server) => server.id == path_names,
            Err(tessera_app::Error::NotFound(_)) => false,
            Err(other) => return Err(other.into()),
        };
        if !same {
            return Err(tessera_app::Error::invalid(
                "server_id",
                format!("server_id {named:?} does not match the path's {id:?}"),
            )
            .into());
        }
    }
    let force = req.force || params.force.unwrap_or(false);
    let op = app
        .delete_server(&caller, &id, force, req.workspace.as_deref())
        .await?;
    Ok((operation_location(&op.id), Json(op.into())))
}

/// Get a server's status.
#[utoipa::path(get, path = "/v1/servers/{id}/status", tag = "servers",
    params(("id" = String, Path, description = "Server id or hostname")),
    responses(
        (status = 200, description = "The server", body = ServerBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Server not found", body = ErrorBody),
    ))]
pub async fn server_status(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ServerBody>> {
    Ok(Json(app.server(&caller, &id).await?.into()))
}
