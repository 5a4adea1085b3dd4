//! `/v1/ssh-keys`: the workspace's SSH public keys.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::ssh_keys::{CreateSshKey, KeyCheck, SshKey};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct SshKeyBody {
    #[schema(example = "key-001")]
    pub id: String,
    pub name: String,
    pub public_key: String,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub created_at: String,
}

impl From<SshKey> for SshKeyBody {
    fn from(k: SshKey) -> Self {
        SshKeyBody {
            id: k.id,
            name: k.name,
            public_key: k.public_key,
            fingerprint: k.fingerprint,
            created_at: k.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSshKeyRequest {
    pub name: String,
    /// One OpenSSH public key line.
    #[schema(
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVsmRr3wG4Xd2hHjGqhp7I9z6T4z8ZmWbRkKq0aHcFs you@laptop"
    )]
    pub public_key: String,
}

/// List the workspace's SSH keys.
#[utoipa::path(get, path = "/v1/ssh-keys", tag = "ssh-keys",
    responses(
        (status = 200, description = "Keys", body = Vec<SshKeyBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_ssh_keys(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<SshKeyBody>>> {
    let keys = app.ssh_keys(&caller).await?;
    Ok(Json(keys.into_iter().map(SshKeyBody::from).collect()))
}

/// Add an SSH key.
#[utoipa::path(post, path = "/v1/ssh-keys", tag = "ssh-keys", request_body = CreateSshKeyRequest,
    responses(
        (status = 201, description = "Created", body = SshKeyBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_ssh_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateSshKeyRequest>,
) -> Result<(StatusCode, Json<SshKeyBody>)> {
    let key = app
        .create_ssh_key(
            &caller,
            CreateSshKey {
                name: req.name,
                public_key: req.public_key,
                check: KeyCheck::Whole,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(key.into())))
}

/// Get an SSH key.
#[utoipa::path(get, path = "/v1/ssh-keys/{id}", tag = "ssh-keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = SshKeyBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_ssh_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<SshKeyBody>> {
    Ok(Json(app.ssh_key(&caller, &id).await?.into()))
}

/// Delete an SSH key (instances that have it keep it).
#[utoipa::path(delete, path = "/v1/ssh-keys/{id}", tag = "ssh-keys",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn delete_ssh_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_ssh_key(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
