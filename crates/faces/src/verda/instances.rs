//! `/instances`: deploy, list, get, and actions for one instance or many.
//!
//! Statuses are Verda's, read from what the host really did: `ordered`
//! until the instance has a host, `provisioning` while the host creates or
//! starts it, `running`, `offline` once shut down, `deleting`, and
//! `discontinued` once deleted (`no_capacity` or `error` when creation
//! failed).

use super::Json;
use super::{
    Body, Caller, ErrorBody, OneOrMany, Path, Query, Result, VerdaError, bad_request, id_text,
    status_of, whole_gb,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tessera_app::instance_actions::{ActionOutcome, InstanceAction};
use tessera_app::instances::{CreateInstance, Instance, InstanceQuery, InstanceSpecInput};
use tessera_app::volumes::VolumeInput;
use tessera_app::{App, Error, Principal};
use tessera_core::status::{InstanceState, OperationKind, TerminationCause};
use utoipa::{IntoParams, ToSchema};

/// Verda's instance statuses.
pub const STATUSES: &[&str] = &[
    "running",
    "provisioning",
    "offline",
    "discontinued",
    "unknown",
    "ordered",
    "notfound",
    "new",
    "error",
    "deleting",
    "validating",
    "no_capacity",
    "installation_failed",
];

#[derive(Serialize, ToSchema)]
pub struct CountBody {
    pub description: String,
    pub number_of_cores: u32,
}

#[derive(Serialize, ToSchema)]
pub struct GpuCountBody {
    pub description: String,
    pub number_of_gpus: u32,
}

#[derive(Serialize, ToSchema)]
pub struct GigabytesBody {
    pub description: String,
    pub size_in_gigabytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct DescriptionBody {
    pub description: String,
}

#[derive(Serialize, ToSchema)]
pub struct InstanceBody {
    #[schema(example = "inst-0a1b2c3d4e5f6789")]
    pub id: String,
    /// Its address in the cloud's network, once it has one.
    pub ip: Option<String>,
    #[schema(example = "running")]
    pub status: String,
    pub created_at: String,
    pub created_by_user_id: String,
    pub cpu: CountBody,
    pub gpu: GpuCountBody,
    pub gpu_memory: GigabytesBody,
    pub memory: GigabytesBody,
    pub storage: DescriptionBody,
    pub hostname: String,
    pub description: String,
    #[schema(example = "FIN-01")]
    pub location: String,
    pub price_per_hour: f64,
    pub is_spot: bool,
    #[schema(example = "CPU.4V.16G")]
    pub instance_type: String,
    #[schema(example = "ubuntu-24.04")]
    pub image: String,
    pub os_name: String,
    pub startup_script_id: Option<String>,
    pub ssh_key_ids: Vec<String>,
    pub os_volume_id: Option<String>,
    pub jupyter_token: Option<String>,
    /// `LONG_TERM`, `PAY_AS_YOU_GO` or `SPOT`.
    pub contract: String,
    /// Always `FIXED_PRICE`.
    pub pricing: String,
    pub volume_ids: Vec<String>,
    pub tags: Vec<super::tags::TagBody>,
}

/// An instance's Verda status: `ordered` until it has a host, `offline`
/// when stopped, `deleting` while a delete stops it, and for a terminated
/// one, why it ended.
async fn status(app: &App, caller: &Principal, instance: &Instance) -> String {
    let status = match instance.state {
        InstanceState::Provisioning if instance.host_id.is_none() => "ordered",
        InstanceState::Provisioning => "provisioning",
        InstanceState::Running => "running",
        InstanceState::Stopped => "offline",
        InstanceState::Unknown => "unknown",
        InstanceState::Stopping => {
            let deleting = match &instance.operation_id {
                Some(op) => app
                    .operation(caller, op)
                    .await
                    .is_ok_and(|op| op.kind == OperationKind::InstanceDelete),
                None => false,
            };
            match deleting {
                true => "deleting",
                false => "running",
            }
        }
        InstanceState::Terminated => match instance.cause {
            Some(TerminationCause::NoCapacity) => "no_capacity",
            Some(TerminationCause::HostFailed) => "error",
            Some(
                TerminationCause::Deleted
                | TerminationCause::Cancelled
                | TerminationCause::Crashed
                | TerminationCause::Exited,
            )
            | None => "discontinued",
        },
    };
    status.to_string()
}

/// An instance as Verda shows it.
pub(crate) async fn instance_body(app: &App, caller: &Principal, i: Instance) -> InstanceBody {
    let volumes = app.instance_volumes(&i.id).await.unwrap_or_default();
    let tags = app
        .tags_of(tessera_app::tags::Tagged::Instance, &i.id)
        .await
        .unwrap_or_default();
    instance_body_with(app, caller, i, volumes, tags).await
}

/// [`instance_body`] with the instance's volumes and tags already read.
async fn instance_body_with(
    app: &App,
    caller: &Principal,
    i: Instance,
    volumes: Vec<tessera_app::volumes::Volume>,
    tags: Vec<tessera_app::tags::Tag>,
) -> InstanceBody {
    let spec = &i.spec;
    let catalog = app.catalog();
    let kind = catalog.instance_type(&spec.instance_type);
    let os_volume_id = volumes
        .iter()
        .find(|v| v.is_os_volume)
        .map(|v| v.id.to_string());
    // A container of the containers API is priced by its compute type.
    let price_per_hour = match kind {
        Some(k) => spec.hourly(k, os_volume_id.is_some()),
        None => catalog
            .compute_type(&spec.instance_type)
            .map_or(0.0, |c| c.price_per_hour),
    };
    let vcpus = spec.vcpus.unwrap_or(0);
    let memory_gb = spec.memory_mb.unwrap_or(0) / 1024;
    let status = status(app, caller, &i).await;
    InstanceBody {
        // One that never got a host never had its address.
        ip: (!i.private_ip.is_empty() && status != "no_capacity").then(|| i.private_ip.clone()),
        status,
        created_at: i.created_at.clone(),
        // Its maker's, not the caller's; empty when no user made it.
        created_by_user_id: i.created_by.clone().unwrap_or_default(),
        cpu: CountBody {
            description: format!("{vcpus} CPU"),
            number_of_cores: vcpus,
        },
        gpu: GpuCountBody {
            description: kind
                .filter(|k| k.gpus > 0)
                .map(|k| format!("{}x {}", k.gpus, k.gpu_name))
                .unwrap_or_default(),
            number_of_gpus: kind.map_or(0, |k| k.gpus),
        },
        gpu_memory: GigabytesBody {
            description: kind
                .filter(|k| k.gpu_memory_gb > 0)
                .map(|k| format!("{}GB GPU RAM", k.gpu_memory_gb))
                .unwrap_or_default(),
            size_in_gigabytes: kind.map_or(0, |k| k.gpu_memory_gb),
        },
        memory: GigabytesBody {
            description: format!("{memory_gb}GB RAM"),
            size_in_gigabytes: memory_gb,
        },
        storage: DescriptionBody {
            description: "dynamic".into(),
        },
        hostname: i.name.clone(),
        description: spec.description.clone().unwrap_or_default(),
        location: spec.location.clone().unwrap_or_default(),
        price_per_hour,
        is_spot: spec.is_spot,
        instance_type: spec.instance_type.clone(),
        os_name: catalog
            .image(&spec.image)
            .map(|img| img.name.clone())
            .unwrap_or_else(|| spec.image.clone()),
        image: spec.image.clone(),
        startup_script_id: spec.startup_script_id.clone(),
        ssh_key_ids: spec.ssh_key_ids.clone(),
        os_volume_id,
        jupyter_token: None,
        contract: spec.contract.clone().unwrap_or_else(|| {
            match spec.is_spot {
                true => "SPOT",
                false => "PAY_AS_YOU_GO",
            }
            .into()
        }),
        pricing: "FIXED_PRICE".into(),
        volume_ids: volumes.into_iter().map(|v| v.id.to_string()).collect(),
        tags: tags.into_iter().map(Into::into).collect(),
        id: i.id.to_string(),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only instances with this status.
    pub status: Option<String>,
    /// Accepted for compatibility; Tessera has no compute ids here.
    #[allow(dead_code)]
    #[serde(rename = "computeId")]
    #[param(rename = "computeId")]
    pub compute_id: Option<String>,
}

/// List the project's instances (deleted ones only when asked for by
/// status).
#[utoipa::path(get, path = "/v1/instances", tag = "Instances",
    params(ListQuery),
    responses(
        (status = 200, description = "Instances", body = Vec<InstanceBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn list_instances(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Response> {
    if let Some(wanted) = &query.status
        && !STATUSES.contains(&wanted.as_str())
    {
        return Err(bad_request(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let ended = matches!(
        query.status.as_deref(),
        Some("discontinued" | "no_capacity" | "error")
    );
    // Every attached volume in one read, rather than one per instance.
    let mut volumes_of: std::collections::HashMap<String, Vec<tessera_app::volumes::Volume>> =
        std::collections::HashMap::new();
    for volume in app.attached_volumes(&caller).await? {
        if let Some(instance) = volume.instance_id.clone() {
            volumes_of
                .entry(instance.to_string())
                .or_default()
                .push(volume);
        }
    }
    let tags_of = app
        .project_tags(&caller.project_id, tessera_app::tags::Tagged::Instance)
        .await?;
    let listing = Listing {
        app,
        caller,
        status: query.status,
        ended,
        volumes_of,
        tags_of,
        opened: false,
        listed: 0,
    };
    // The first page is read before answering, so that what fails early
    // fails with its status; the rest is written as it is read.
    let first = listing.page(None).await?;
    let pages =
        futures::stream::try_unfold((listing, Some(first)), |(mut listing, page)| async move {
            let Some(page) = page else {
                return Ok(None);
            };
            let mut chunk = listing.render(page.items).await;
            if !listing.opened {
                listing.opened = true;
                chunk.insert(0, b'[');
            }
            let next = match page.next_page_token {
                Some(token) => Some(listing.page(Some(token)).await?),
                None => {
                    chunk.push(b']');
                    None
                }
            };
            Ok::<_, VerdaError>(Some((chunk, (listing, next))))
        });
    let body = axum::body::Body::from_stream(futures::TryStreamExt::map_err(pages, |err| {
        tracing::warn!(error = %err.0, "GET /instances: the list broke off");
        std::io::Error::other(err.0.to_string())
    }));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// `GET /instances`' answer as it is written: Verda answers every instance
/// at once, with no pages, so the list is read a page at a time from the
/// store and each page written out before the next is read. A project's
/// 100,000 instances take the memory of one page, not of all of them.
struct Listing {
    app: App,
    caller: Principal,
    status: Option<String>,
    ended: bool,
    volumes_of: std::collections::HashMap<String, Vec<tessera_app::volumes::Volume>>,
    tags_of: std::collections::HashMap<String, Vec<tessera_app::tags::Tag>>,
    /// Whether the list's `[` was written.
    opened: bool,
    /// How many instances were written so far.
    listed: usize,
}

impl Listing {
    async fn page(
        &self,
        page_token: Option<String>,
    ) -> Result<tessera_app::operations::Page<Instance>> {
        Ok(self
            .app
            .instances(
                &self.caller,
                &InstanceQuery {
                    state: self.ended.then_some(InstanceState::Terminated),
                    limit: Some(500),
                    page_token,
                    ..InstanceQuery::default()
                },
            )
            .await?)
    }

    /// The page's instances as JSON array elements, each after a comma but
    /// the list's first.
    async fn render(&mut self, items: Vec<Instance>) -> Vec<u8> {
        let mut out = Vec::new();
        // Serverless replicas are their deployment's, as on Verda: listed
        // at `/container-deployments/{name}/replicas`, not here.
        for instance in items.into_iter().filter(|i| i.spec.workload.is_none()) {
            let volumes = self
                .volumes_of
                .remove(instance.id.as_str())
                .unwrap_or_default();
            let tags = self
                .tags_of
                .remove(instance.id.as_str())
                .unwrap_or_default();
            let body = instance_body_with(&self.app, &self.caller, instance, volumes, tags).await;
            if self.status.as_ref().is_some_and(|s| *s != body.status) {
                continue;
            }
            if self.listed > 0 {
                out.push(b',');
            }
            // An `InstanceBody` is strings and numbers: it always serializes.
            if serde_json::to_writer(&mut out, &body).is_ok() {
                self.listed += 1;
            }
        }
        out
    }
}

/// Get an instance.
#[utoipa::path(get, path = "/v1/instances/{instance_id}", tag = "Instances",
    params(("instance_id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "The instance", body = InstanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn get_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<InstanceBody>> {
    let instance = app.instance(&caller, &id).await?;
    // A serverless replica is its deployment's, as the list has it.
    if instance.spec.workload.is_some() {
        return Err(VerdaError(tessera_app::Error::NotFound(format!(
            "instance {id} not found"
        ))));
    }
    Ok(Json(instance_body(&app, &caller, instance).await))
}

#[derive(Deserialize, ToSchema)]
pub struct OsVolumeRequest {
    pub name: Option<String>,
    /// GB.
    pub size: Option<f64>,
    /// `keep_detached`, `move_to_trash` or `delete_permanently`.
    pub on_spot_discontinue: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct VolumeRequest {
    pub name: String,
    /// GB.
    pub size: f64,
    #[serde(rename = "type")]
    #[schema(example = "NVMe")]
    pub volume_type: String,
    pub on_spot_discontinue: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct DeployRequest {
    #[schema(example = "CPU.4V.16G")]
    pub instance_type: Option<String>,
    /// An image type from `GET /images`.
    #[schema(example = "ubuntu-24.04")]
    pub image: Option<String>,
    #[schema(value_type = Option<Vec<String>>)]
    pub ssh_key_ids: Option<OneOrMany>,
    pub startup_script_id: Option<String>,
    #[schema(example = "my-instance")]
    pub hostname: Option<String>,
    pub description: Option<String>,
    #[schema(example = "FIN-01")]
    pub location_code: Option<String>,
    pub os_volume: Option<OsVolumeRequest>,
    pub is_spot: Option<bool>,
    /// Tessera has no coupons: none (null or empty) is taken, any other is
    /// not valid.
    pub coupon: Option<String>,
    pub volumes: Option<Vec<VolumeRequest>>,
    pub existing_volumes: Option<Vec<String>>,
    /// `LONG_TERM`, `PAY_AS_YOU_GO` or `SPOT`.
    pub contract: Option<String>,
    /// Only `FIXED_PRICE`.
    pub pricing: Option<String>,
    /// Tags to put on it (at most 10).
    pub tags: Option<Vec<super::tags::TagRequest>>,
}

fn check_policy(field: &str, policy: &Option<String>) -> Result<()> {
    match policy.as_deref() {
        None | Some("keep_detached" | "move_to_trash" | "delete_permanently") => Ok(()),
        Some(other) => Err(bad_request(format!(
            "{field} must be keep_detached, move_to_trash or delete_permanently, not {:?}",
            other
        ))),
    }
}

/// Deploy an instance; answers its id as text. Poll `GET
/// /instances/{id}` until it is `running`.
#[utoipa::path(post, path = "/v1/instances", tag = "Instances", request_body = DeployRequest,
    responses(
        (status = 202, description = "The new instance's id", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "The balance does not cover an hour of it", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's quota", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
        (status = 503, description = "Not enough resources: no host has room for the type in the location now", body = ErrorBody),
    ))]
pub async fn deploy_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<DeployRequest>,
) -> Result<Response> {
    let instance_type = req
        .instance_type
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad_request("instance_type is required"))?;
    let image = req
        .image
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad_request("image is required"))?;
    let hostname = req
        .hostname
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad_request("hostname is required"))?;
    let location = req
        .location_code
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad_request("location_code is required"))?;
    app.check_location("location_code", &location)?;
    let catalog = app.catalog();
    let Some(kind) = catalog.instance_type(&instance_type) else {
        return Err(bad_request(format!(
            "unknown instance_type {:?}; see GET /instance-types",
            instance_type
        )));
    };
    if catalog.image(&image).is_none() {
        return Err(bad_request(format!(
            "unknown image {:?}: use an image_type from GET /images (booting from an existing OS volume is not supported)",
            image
        )));
    }
    if let Some(contract) = &req.contract
        && !matches!(contract.as_str(), "LONG_TERM" | "PAY_AS_YOU_GO" | "SPOT")
    {
        return Err(bad_request(
            "contract must be LONG_TERM, PAY_AS_YOU_GO or SPOT",
        ));
    }
    // Verda removed dynamic pricing: an instance asked for at a dynamic
    // price would be billed at the fixed one, so it is refused, not
    // answered as if taken.
    match req.pricing.as_deref() {
        None | Some("FIXED_PRICE") => {}
        Some("DYNAMIC_PRICE") => {
            return Err(bad_request(
                "pricing DYNAMIC_PRICE is no longer offered: only FIXED_PRICE",
            ));
        }
        Some(_) => return Err(bad_request("pricing must be FIXED_PRICE")),
    }
    // An instance asked for with a coupon would be billed in full: a
    // coupon is refused as one Verda does not know would be.
    if let Some(coupon) = req.coupon.as_deref().filter(|c| !c.trim().is_empty()) {
        return Err(bad_request(format!(
            "coupon {:?} is not valid: this cloud offers no coupons",
            coupon.chars().take(64).collect::<String>()
        )));
    }
    // A spot instance's contract is SPOT: one asked for as spot under
    // another contract would be shown under it at the spot price.
    if req.is_spot == Some(true)
        && let Some(contract) = req.contract.as_deref().filter(|c| *c != "SPOT")
    {
        return Err(bad_request(format!(
            "is_spot is true but contract is {contract}: a spot instance's contract is SPOT \
             (leave contract out, or set it to SPOT)"
        )));
    }
    let is_spot = req.is_spot.unwrap_or(false) || req.contract.as_deref() == Some("SPOT");
    let default_type = catalog
        .default_volume_type()
        .map(|t| t.name.clone())
        .unwrap_or_default();
    let os_volume = req.os_volume.unwrap_or(OsVolumeRequest {
        name: None,
        size: None,
        on_spot_discontinue: None,
    });
    check_policy(
        "os_volume.on_spot_discontinue",
        &os_volume.on_spot_discontinue,
    )?;
    let os_volume_input = VolumeInput {
        name: os_volume
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("OS-{hostname}")),
        size_gb: match os_volume.size {
            Some(size) => whole_gb("os_volume.size", size)?,
            None => kind.disk_gb,
        },
        volume_type: default_type,
    };
    let tags = super::tags::requested(req.tags)?;
    let mut volumes = Vec::new();
    for v in req.volumes.unwrap_or_default() {
        check_policy("volumes.on_spot_discontinue", &v.on_spot_discontinue)?;
        volumes.push(VolumeInput {
            name: v.name,
            size_gb: whole_gb("volumes.size", v.size)?,
            volume_type: v.volume_type,
        });
    }
    let instance = app
        .create_instance(
            &caller,
            CreateInstance {
                name: hostname,
                labels: Default::default(),
                spec: InstanceSpecInput {
                    instance_type,
                    image,
                    disk_gb: Some(os_volume_input.size_gb),
                    ssh_key_ids: req.ssh_key_ids.map(OneOrMany::into_vec).unwrap_or_default(),
                    location: Some(location),
                    is_spot,
                    contract: req.contract,
                    description: req.description,
                    startup_script_id: req.startup_script_id,
                    on_spot_discontinue: os_volume.on_spot_discontinue,
                    ..InstanceSpecInput::default()
                },
                os_volume: Some(os_volume_input),
                volumes,
                existing_volumes: req.existing_volumes.unwrap_or_default(),
                require_funds: true,
                require_room: true,
                tags,
            },
        )
        .await
        .map_err(|e| super::in_verda_names(e, DEPLOY_FIELDS))?;
    Ok(id_text(StatusCode::ACCEPTED, instance.id.to_string()))
}

/// The native request's fields a deploy fills, by the deploy's names.
const DEPLOY_FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "hostname"),
    ("spec.disk_gb", "os_volume.size"),
    ("disk_gb", "os_volume.size"),
    ("spec.ssh_key_ids", "ssh_key_ids"),
    ("spec.type", "instance_type"),
    ("spec.image", "image"),
    ("spec.location", "location_code"),
];

#[derive(Deserialize, ToSchema)]
pub struct ActionRequest {
    /// `boot`, `start`, `shutdown`, `force_shutdown`, `hibernate`,
    /// `delete`, `discontinue` or `delete_stuck`.
    #[schema(example = "shutdown")]
    pub action: Option<String>,
    /// One instance id or several.
    #[schema(value_type = Vec<String>)]
    pub id: Option<OneOrMany>,
    /// For `delete`: which of its volumes go too (absent: its OS volume;
    /// empty: none).
    pub volume_ids: Option<Vec<String>>,
    /// For `delete`: delete those volumes for good instead of moving them
    /// to the trash.
    pub delete_permanently: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ActionResultBody {
    #[serde(rename = "instanceId")]
    pub instance_id: String,
    pub action: String,
    /// `success` or `error`.
    pub status: String,
    pub error: Option<String>,
    #[serde(rename = "statusCode")]
    pub status_code: Option<u16>,
}

fn parse_action(req: &ActionRequest) -> Result<(String, InstanceAction)> {
    let name = req
        .action
        .clone()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad_request("action is required"))?;
    let action = match name.as_str() {
        "boot" | "start" => InstanceAction::Start,
        "shutdown" | "force_shutdown" => InstanceAction::Stop,
        "hibernate" => InstanceAction::Hibernate,
        "delete" | "discontinue" | "delete_stuck" => InstanceAction::Delete {
            volume_ids: req.volume_ids.clone(),
            permanently: req.delete_permanently.unwrap_or(false),
        },
        "configure_spot" | "deploy" | "transfer" => {
            return Err(bad_request(format!(
                "action {name} is not supported by Tessera"
            )));
        }
        other => {
            return Err(bad_request(format!(
                "unknown action {:?}: use boot, start, shutdown, force_shutdown, hibernate, delete, discontinue or delete_stuck",
                other
            )));
        }
    };
    Ok((name, action))
}

/// Act on one instance or many: 202 when every action started, 204 when a
/// single instance already was in the state asked for, 207 with each
/// instance's outcome when some failed.
#[utoipa::path(put, path = "/v1/instances", tag = "Instances", request_body = ActionRequest,
    responses(
        (status = 202, description = "Every action started", body = Vec<ActionResultBody>),
        (status = 204, description = "The instance already is in that state"),
        (status = 207, description = "Some actions failed", body = Vec<ActionResultBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A start the balance cannot cover for an hour, with what the project runs", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's quota", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn instance_actions(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<ActionRequest>,
) -> Result<Response> {
    let (name, action) = parse_action(&req)?;
    let ids = req
        .id
        .map(OneOrMany::into_vec)
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| bad_request("id is required: one instance id or a list of them"))?;
    if matches!(action, InstanceAction::Start) {
        app.check_start_funds(&caller, &ids).await?;
    }
    if let [id] = ids.as_slice() {
        return match app.instance_action(&caller, id, &action).await? {
            ActionOutcome::Already => Ok(StatusCode::NO_CONTENT.into_response()),
            ActionOutcome::Started => Ok((
                StatusCode::ACCEPTED,
                Json(vec![ActionResultBody {
                    instance_id: id.clone(),
                    action: name,
                    status: "success".into(),
                    error: None,
                    status_code: None,
                }]),
            )
                .into_response()),
        };
    }
    let mut results = Vec::new();
    let mut failed = false;
    let outcomes = app.instances_action(&caller, &ids, &action).await?;
    for (id, outcome) in ids.into_iter().zip(outcomes) {
        let (status, error, status_code) = match outcome {
            Ok(_) => ("success", None, None),
            Err(Error::Internal(source)) => return Err(VerdaError(Error::Internal(source))),
            Err(err) => {
                failed = true;
                let (code, _) = status_of(&err);
                ("error", Some(err.to_string()), Some(code.as_u16()))
            }
        };
        results.push(ActionResultBody {
            instance_id: id,
            action: name.clone(),
            status: status.into(),
            error,
            status_code,
        });
    }
    let status = match failed {
        true => StatusCode::MULTI_STATUS,
        false => StatusCode::ACCEPTED,
    };
    Ok((status, Json(results)).into_response())
}

/// Act on one instance or many (deprecated path).
#[utoipa::path(post, path = "/v1/instances/action", tag = "Instances", request_body = ActionRequest,
    responses(
        (status = 202, description = "Every action started", body = Vec<ActionResultBody>),
        (status = 204, description = "The instance already is in that state"),
        (status = 207, description = "Some actions failed", body = Vec<ActionResultBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A start the balance cannot cover for an hour, with what the project runs", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's quota", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn instance_action_deprecated(
    state: State<App>,
    caller: Caller,
    body: Body<ActionRequest>,
) -> Result<Response> {
    instance_actions(state, caller, body).await
}
