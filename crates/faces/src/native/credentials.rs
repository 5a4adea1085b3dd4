//! `/v1/credentials`: OAuth2 client credentials for the Verda face, and
//! `/v1/workspaces/{name}/balance`: a project's balance and its top-ups.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::billing::Balance;
use tessera_app::oauth::{CreateCredential, Credential};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateCredentialRequest {
    /// The project (workspace) it acts in; yours by default. Only an
    /// install admin may name another.
    #[schema(example = "research")]
    pub project: Option<String>,
    /// `admin`, `operator`, `member` or `viewer`: at most your own role
    /// (`member` when an admin does not say). It acts with your current
    /// role in the project, never more.
    pub role: Option<String>,
    pub description: Option<String>,
    /// Install admins: the credential keeps `role` whatever becomes of you
    /// (it acts for no user). Otherwise it acts with your current role.
    #[serde(default)]
    pub fixed_role: bool,
}

#[derive(Serialize, ToSchema)]
pub struct NewCredentialBody {
    #[schema(example = "6a51jsgnISg6JOyE7wYZh")]
    pub client_id: String,
    /// Shown once; only its hash is kept.
    pub client_secret: String,
    pub project: String,
    pub role: String,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct CredentialBody {
    pub client_id: String,
    pub project: String,
    pub role: String,
    pub description: String,
    pub created_at: String,
    pub revoked: bool,
    /// The user whose current membership and role it acts with (gone with
    /// that user); `null` for a fixed role an install admin gave it.
    pub user_id: Option<String>,
    /// The permissions it is limited to (those of the scoped token it was
    /// made with); `null` for all of its role's.
    pub scopes: Option<Vec<String>>,
}

impl From<Credential> for CredentialBody {
    fn from(c: Credential) -> Self {
        CredentialBody {
            client_id: c.client_id,
            project: c.project,
            role: c.role,
            description: c.description,
            created_at: c.created_at,
            revoked: c.revoked_at.is_some(),
            user_id: c.acts_as,
            scopes: c.scopes,
        }
    }
}

/// Create OAuth2 client credentials for the Verda face.
#[utoipa::path(post, path = "/v1/credentials", tag = "credentials",
    request_body = CreateCredentialRequest,
    responses(
        (status = 201, description = "Created; the secret is shown once", body = NewCredentialBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such project", body = ErrorBody),
    ))]
pub async fn create_credential(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateCredentialRequest>,
) -> Result<(StatusCode, Json<NewCredentialBody>)> {
    let created = app
        .create_credential(
            &caller,
            CreateCredential {
                project: req.project,
                role: req.role,
                description: req.description,
                fixed_role: req.fixed_role,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewCredentialBody {
            client_id: created.client_id,
            client_secret: created.client_secret,
            project: created.project,
            role: created.role.as_str().into(),
            created_at: created.created_at,
        }),
    ))
}

/// List the credentials you manage: yours; your workspace's with `credential_admin`; all for an install admin.
#[utoipa::path(get, path = "/v1/credentials", tag = "credentials",
    responses(
        (status = 200, description = "Credentials", body = Vec<CredentialBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_credentials(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<CredentialBody>>> {
    let list = app.credentials(&caller).await?;
    Ok(Json(list.into_iter().map(CredentialBody::from).collect()))
}

/// Revoke a credential: its tokens stop working.
#[utoipa::path(delete, path = "/v1/credentials/{client_id}", tag = "credentials",
    params(("client_id" = String, Path, description = "Client id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn revoke_credential(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(client_id): Path<String>,
) -> Result<StatusCode> {
    app.revoke_credential(&caller, &client_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct BalanceBody {
    pub project: String,
    /// Money put in less what the project's instances and volumes have
    /// cost up to now.
    pub amount: f64,
    #[schema(example = "usd")]
    pub currency: String,
}

impl From<Balance> for BalanceBody {
    fn from(b: Balance) -> Self {
        BalanceBody {
            project: b.project,
            amount: b.amount,
            currency: b.currency,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    /// How much to add, in the catalog's currency.
    #[schema(example = 100)]
    pub amount: f64,
}

/// A project's balance.
#[utoipa::path(get, path = "/v1/workspaces/{name}/balance", tag = "billing",
    params(("name" = String, Path, description = "Workspace (project) name")),
    responses(
        (status = 200, description = "The balance", body = BalanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_balance(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<BalanceBody>> {
    Ok(Json(app.balance_of(&caller, &name).await?.into()))
}

/// Add money to a project's balance (admins).
#[utoipa::path(post, path = "/v1/workspaces/{name}/balance/top-ups", tag = "billing",
    params(("name" = String, Path, description = "Workspace (project) name")),
    request_body = TopUpRequest,
    responses(
        (status = 201, description = "The new balance", body = BalanceBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn top_up(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<TopUpRequest>,
) -> Result<(StatusCode, Json<BalanceBody>)> {
    let balance = app.top_up(&caller, &name, req.amount).await?;
    Ok((StatusCode::CREATED, Json(balance.into())))
}
