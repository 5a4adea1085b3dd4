//! `/v1/workspaces/{name}/policy`: what a project's instances may do beyond
//! its quota (egress) and whether they run privileged; set by install
//! admins.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::policies::{ProjectPolicy, SetPolicy};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct PolicyBody {
    pub workspace: String,
    /// Its instances reach beyond their host and their project, through
    /// their host's NAT. Off, they reach only their project's instances and
    /// their host's DNS forwarder. A change reaches running instances at
    /// once.
    pub egress: bool,
    /// Its new instances run as their host's root, without a user namespace
    /// of their own: only for projects whose instances are all trusted. An
    /// instance keeps what it was made with.
    pub privileged: bool,
    /// Its instances and containers need its balance to cover an hour of
    /// them (with all it runs), on every face, as Verda's deploys and every
    /// volume always do: `402` otherwise. Off, only those do.
    pub prepaid: bool,
}

impl From<ProjectPolicy> for PolicyBody {
    fn from(p: ProjectPolicy) -> Self {
        PolicyBody {
            workspace: p.project,
            egress: p.egress,
            privileged: p.privileged,
            prepaid: p.prepaid,
        }
    }
}

/// Changes to a policy; an absent field keeps what there is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPolicyRequest {
    #[schema(example = false)]
    pub egress: Option<bool>,
    #[schema(example = false)]
    pub privileged: Option<bool>,
    #[schema(example = true)]
    pub prepaid: Option<bool>,
}

/// A project's policy: your workspace's, or any for an install admin.
#[utoipa::path(get, path = "/v1/workspaces/{name}/policy", tag = "quotas",
    params(("name" = String, Path, description = "Workspace (project) name")),
    responses(
        (status = 200, description = "The policy", body = PolicyBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_policy(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<PolicyBody>> {
    Ok(Json(app.project_policy(&caller, &name).await?.into()))
}

/// Set a project's egress, privilege and prepayment (`quota_admin`: install admins).
#[utoipa::path(put, path = "/v1/workspaces/{name}/policy", tag = "quotas",
    params(("name" = String, Path, description = "Workspace (project) name")),
    request_body = SetPolicyRequest,
    responses(
        (status = 200, description = "The new policy", body = PolicyBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn set_policy(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<SetPolicyRequest>,
) -> Result<Json<PolicyBody>> {
    let set = SetPolicy {
        egress: req.egress,
        privileged: req.privileged,
        prepaid: req.prepaid,
    };
    Ok(Json(
        app.set_project_policy(&caller, &name, set).await?.into(),
    ))
}
