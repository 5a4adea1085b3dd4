//! `/job-deployments`: Verda's job deployments, where every request to
//! the front door (`/inference/<job>`, always answered at once with an id)
//! runs on a replica of its own until its process exits or its deadline
//! passes. The containers, registry settings and compute are a
//! deployment's; scaling is `max_replica_count` (jobs at once),
//! `queue_message_ttl_seconds` and `deadline_seconds`.

use super::Json;
use super::deployments::{
    ComputeBody, ContainerBody, ContainerRequest, DeleteQuery, RegistrySettingsBody, compute,
    container_input, deployment_body, registry, whole,
};
use super::{Body, Caller, ErrorBody, Path, Query, Result, bad_request};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::deployments::jobs::JobStatus;
use tessera_app::deployments::{CreateDeployment, Deployment, DeploymentKind, PatchDeployment};
use tessera_core::serverless::Scaling;
use utoipa::ToSchema;

const JOB: DeploymentKind = DeploymentKind::Job;

/// A job deployment's scaling options.
#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct JobScalingBody {
    /// Jobs that run at once.
    #[schema(value_type = Option<u32>, example = 1)]
    pub max_replica_count: Option<f64>,
    #[schema(value_type = Option<u32>, example = 300)]
    pub queue_message_ttl_seconds: Option<f64>,
    /// How long a job may run before its replica is stopped.
    #[schema(value_type = Option<u32>, example = 3600)]
    pub deadline_seconds: Option<f64>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateJobRequest {
    #[schema(example = "flux-training")]
    pub name: String,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub container_registry_settings: Option<RegistrySettingsBody>,
    #[serde(deserialize_with = "super::objects::list")]
    pub containers: Vec<ContainerRequest>,
    #[serde(deserialize_with = "super::objects::required")]
    pub compute: ComputeBody,
    #[serde(deserialize_with = "super::objects::required")]
    pub scaling: JobScalingBody,
}

#[derive(Deserialize, ToSchema)]
pub struct PatchJobRequest {
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub container_registry_settings: Option<RegistrySettingsBody>,
    #[serde(default, deserialize_with = "super::objects::optional_list")]
    pub containers: Option<Vec<ContainerRequest>>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub compute: Option<ComputeBody>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub scaling: Option<JobScalingBody>,
}

#[derive(Serialize, ToSchema)]
pub struct JobBody {
    #[schema(example = "flux-training")]
    pub name: String,
    pub containers: Vec<ContainerBody>,
    /// Where its front door takes requests (always answered at once).
    pub endpoint_base_url: String,
    pub created_at: String,
    pub created_by_user_id: String,
    pub compute: ComputeBody,
    pub container_registry_settings: RegistrySettingsBody,
    pub scaling: JobScalingBody,
}

#[derive(Serialize, ToSchema)]
pub struct JobShortBody {
    #[schema(example = "flux-training")]
    pub name: String,
    pub created_at: String,
    pub created_by_user_id: String,
    pub compute: ComputeBody,
}

#[derive(Serialize, ToSchema)]
pub struct JobStatusBody {
    /// `paused`, `terminating` or `running` (taking requests).
    #[schema(example = "running")]
    pub status: String,
}

/// Job scaling over `base`: what the body gives replaces what it has.
fn job_scaling(body: &JobScalingBody, base: &Scaling) -> Result<Scaling> {
    let mut s = base.clone();
    s.min_replicas = 0;
    if let Some(v) = body.max_replica_count {
        s.max_replicas = whole("scaling.max_replica_count", v, 1, 100)? as u32;
    }
    if let Some(v) = body.queue_message_ttl_seconds {
        s.queue_message_ttl_s = whole("scaling.queue_message_ttl_seconds", v, 1, 86_400)? as u32;
    }
    if let Some(v) = body.deadline_seconds {
        s.deadline_s = Some(whole("scaling.deadline_seconds", v, 1, 604_800)? as u32);
    }
    Ok(s)
}

fn job_scaling_body(s: &Scaling) -> JobScalingBody {
    JobScalingBody {
        max_replica_count: Some(f64::from(s.max_replicas)),
        queue_message_ttl_seconds: Some(f64::from(s.queue_message_ttl_s)),
        deadline_seconds: s.deadline_s.map(f64::from),
    }
}

fn job_body(app: &App, job: Deployment) -> JobBody {
    let created_by = job.spec.created_by.clone();
    let scaling = job_scaling_body(&job.scaling);
    let d = deployment_body(app, job);
    JobBody {
        name: d.name,
        containers: d.containers,
        endpoint_base_url: d.endpoint_base_url,
        created_at: d.created_at,
        created_by_user_id: created_by,
        compute: d.compute,
        container_registry_settings: d.container_registry_settings,
        scaling,
    }
}

/// List the project's job deployments.
#[utoipa::path(get, path = "/v1/job-deployments", tag = "Jobs",
    responses(
        (status = 200, description = "Job deployments", body = Vec<JobShortBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ))]
pub async fn list_jobs(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<JobShortBody>>> {
    let found = app.deployments(&caller, JOB).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|j| JobShortBody {
                name: j.name,
                created_at: j.created_at,
                created_by_user_id: j.spec.created_by,
                compute: ComputeBody {
                    name: j.spec.compute.name,
                    size: Some(f64::from(j.spec.compute.size)),
                },
            })
            .collect(),
    ))
}

/// Create a job deployment.
#[utoipa::path(post, path = "/v1/job-deployments", tag = "Jobs", request_body = CreateJobRequest,
    responses(
        (status = 201, description = "The job deployment", body = JobBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed, or too many deployments", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_job(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateJobRequest>,
) -> Result<(StatusCode, Json<JobBody>)> {
    let containers = req
        .containers
        .iter()
        .map(container_input)
        .collect::<Result<Vec<_>>>()?;
    let base = Scaling {
        min_replicas: 0,
        ..Scaling::default()
    };
    let created = app
        .create_deployment(
            &caller,
            CreateDeployment {
                kind: JOB,
                name: req.name,
                containers,
                registry: req
                    .container_registry_settings
                    .as_ref()
                    .map(registry)
                    .unwrap_or_default(),
                compute: compute(&req.compute)?,
                is_spot: false,
                scaling: job_scaling(&req.scaling, &base)?,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(job_body(&app, created))))
}

/// Get a job deployment.
#[utoipa::path(get, path = "/v1/job-deployments/{jobName}", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    responses(
        (status = 200, description = "The job deployment", body = JobBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_job(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<JobBody>> {
    let found = app.deployment(&caller, JOB, &name).await?;
    Ok(Json(job_body(&app, found)))
}

/// Change a job deployment (jobs running keep what they started with).
#[utoipa::path(patch, path = "/v1/job-deployments/{jobName}", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    request_body = PatchJobRequest,
    responses(
        (status = 200, description = "The job deployment", body = JobBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn patch_job(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<PatchJobRequest>,
) -> Result<Json<JobBody>> {
    let current = app.deployment(&caller, JOB, &name).await?;
    if req.containers.is_none()
        && req.container_registry_settings.is_none()
        && req.compute.is_none()
        && req.scaling.is_none()
    {
        return Err(bad_request(
            "nothing to change: give containers, container_registry_settings, compute or scaling",
        ));
    }
    let patch = PatchDeployment {
        containers: req
            .containers
            .as_ref()
            .map(|cs| cs.iter().map(container_input).collect::<Result<Vec<_>>>())
            .transpose()?,
        registry: req.container_registry_settings.as_ref().map(registry),
        compute: req.compute.as_ref().map(compute).transpose()?,
        is_spot: None,
        scaling: req
            .scaling
            .as_ref()
            .map(|s| job_scaling(s, &current.scaling))
            .transpose()?,
    };
    let changed = app.patch_deployment(&caller, JOB, &name, patch).await?;
    Ok(Json(job_body(&app, changed)))
}

/// Delete a job deployment: its running jobs are stopped.
#[utoipa::path(delete, path = "/v1/job-deployments/{jobName}", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted, or being deleted after the timeout"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn delete_job(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode> {
    app.delete_deployment(&caller, JOB, &name, query.wait()?)
        .await?;
    Ok(StatusCode::OK)
}

/// A job deployment's scaling options.
#[utoipa::path(get, path = "/v1/job-deployments/{jobName}/scaling", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    responses(
        (status = 200, description = "Its scaling options", body = JobScalingBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_job_scaling(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<JobScalingBody>> {
    let found = app.deployment(&caller, JOB, &name).await?;
    Ok(Json(job_scaling_body(&found.scaling)))
}

/// Where a job deployment is.
#[utoipa::path(get, path = "/v1/job-deployments/{jobName}/status", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    responses(
        (status = 200, description = "Its status", body = JobStatusBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn job_status(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<JobStatusBody>> {
    let status = match app.job_status(&caller, &name).await? {
        JobStatus::Paused => "paused",
        JobStatus::Terminating => "terminating",
        JobStatus::Running => "running",
    };
    Ok(Json(JobStatusBody {
        status: status.into(),
    }))
}

/// Drop the jobs waiting for a replica.
#[utoipa::path(post, path = "/v1/job-deployments/{jobName}/purge-queue", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    responses(
        (status = 201, description = "Purged"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn purge_jobs(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.purge_deployment_queue(&caller, JOB, &name).await?;
    Ok(StatusCode::CREATED)
}

/// Pause a job deployment: no new job starts, new requests are refused.
#[utoipa::path(post, path = "/v1/job-deployments/{jobName}/pause", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    responses(
        (status = 201, description = "Paused"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn pause_job(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.pause_deployment(&caller, JOB, &name, true).await?;
    Ok(StatusCode::CREATED)
}

/// Resume a paused job deployment.
#[utoipa::path(post, path = "/v1/job-deployments/{jobName}/resume", tag = "Jobs",
    params(("jobName" = String, Path, description = "Name of the job deployment")),
    responses(
        (status = 201, description = "Resumed"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn resume_job(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.pause_deployment(&caller, JOB, &name, false).await?;
    Ok(StatusCode::CREATED)
}
