//! `/sshkeys` and its alias `/ssh-keys`: the project's SSH public keys (the
//! same keys the native API's `/v1/ssh-keys` lists).

use super::Json;
use super::{Body, Caller, ErrorBody, Path, Result, id_text};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::ssh_keys::{CreateSshKey, KeyCheck, SshKey};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct KeyBody {
    #[schema(example = "key-0a1b2c3d4e5f6789")]
    pub id: String,
    #[schema(example = "my-key")]
    pub name: String,
    /// The OpenSSH public key line.
    #[schema(
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVsmRr3wG4Xd2hHjGqhp7I9z6T4z8ZmWbRkKq0aHcFs you@laptop"
    )]
    pub key: String,
    /// OpenSSH's SHA-256 fingerprint of the key, as `ssh-keygen -l` prints it.
    #[schema(example = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU")]
    pub fingerprint: String,
    #[schema(example = "2026-01-15T10:30:00Z")]
    pub created_at: String,
}

impl From<SshKey> for KeyBody {
    fn from(k: SshKey) -> Self {
        KeyBody {
            id: k.id,
            name: k.name,
            key: k.public_key,
            fingerprint: k.fingerprint,
            created_at: k.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct AddKeyRequest {
    #[schema(example = "my-key")]
    pub name: String,
    /// One OpenSSH public key line.
    #[schema(
        example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVsmRr3wG4Xd2hHjGqhp7I9z6T4z8ZmWbRkKq0aHcFs you@laptop"
    )]
    pub key: String,
}

#[derive(Deserialize, ToSchema)]
pub struct DeleteKeysRequest {
    /// The ids of the keys to delete.
    pub keys: Vec<String>,
}

/// List the project's SSH keys.
#[utoipa::path(get, path = "/v1/sshkeys", tag = "SSH Keys",
    responses(
        (status = 200, description = "Keys", body = Vec<KeyBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn list_keys(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<KeyBody>>> {
    let keys = app.ssh_keys(&caller).await?;
    Ok(Json(keys.into_iter().map(KeyBody::from).collect()))
}

/// Add an SSH key; answers its id as text.
#[utoipa::path(post, path = "/v1/sshkeys", tag = "SSH Keys", request_body = AddKeyRequest,
    responses(
        (status = 201, description = "The new key's id", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's key quota", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn add_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<AddKeyRequest>,
) -> Result<Response> {
    let key = app
        .create_ssh_key(
            &caller,
            CreateSshKey {
                name: req.name,
                public_key: req.key,
                check: KeyCheck::AsVerda,
            },
        )
        .await
        .map_err(|e| super::in_verda_names(e, &[("public_key", "key")]))?;
    Ok(id_text(StatusCode::CREATED, key.id))
}

/// Delete several SSH keys: all or none.
#[utoipa::path(delete, path = "/v1/sshkeys", tag = "SSH Keys", request_body = DeleteKeysRequest,
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "A key is not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_keys(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<DeleteKeysRequest>,
) -> Result<StatusCode> {
    for id in &req.keys {
        app.ssh_key(&caller, id).await?;
    }
    for id in &req.keys {
        app.delete_ssh_key(&caller, id).await?;
    }
    Ok(StatusCode::OK)
}

/// Get an SSH key: a list of one, as Verda answers.
#[utoipa::path(get, path = "/v1/sshkeys/{sshKeyId}", tag = "SSH Keys",
    params(("sshKeyId" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, in a list of one", body = Vec<KeyBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn get_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<KeyBody>>> {
    Ok(Json(vec![app.ssh_key(&caller, &id).await?.into()]))
}

/// Delete an SSH key (instances that have it keep it).
#[utoipa::path(delete, path = "/v1/sshkeys/{sshKeyId}", tag = "SSH Keys",
    params(("sshKeyId" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_ssh_key(&caller, &id).await?;
    Ok(StatusCode::OK)
}

/// List the project's SSH keys.
#[utoipa::path(get, path = "/v1/ssh-keys", tag = "SSH Keys",
    responses(
        (status = 200, description = "Keys", body = Vec<KeyBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn list_keys_alias(state: State<App>, caller: Caller) -> Result<Json<Vec<KeyBody>>> {
    list_keys(state, caller).await
}

/// Add an SSH key; answers its id as text.
#[utoipa::path(post, path = "/v1/ssh-keys", tag = "SSH Keys", request_body = AddKeyRequest,
    responses(
        (status = 201, description = "The new key's id", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's key quota", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn add_key_alias(
    state: State<App>,
    caller: Caller,
    body: Body<AddKeyRequest>,
) -> Result<Response> {
    add_key(state, caller, body).await
}

/// Delete several SSH keys: all or none.
#[utoipa::path(delete, path = "/v1/ssh-keys", tag = "SSH Keys", request_body = DeleteKeysRequest,
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "A key is not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_keys_alias(
    state: State<App>,
    caller: Caller,
    body: Body<DeleteKeysRequest>,
) -> Result<StatusCode> {
    delete_keys(state, caller, body).await
}

/// Get an SSH key: a list of one, as Verda answers.
#[utoipa::path(get, path = "/v1/ssh-keys/{sshKeyId}", tag = "SSH Keys",
    params(("sshKeyId" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, in a list of one", body = Vec<KeyBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn get_key_alias(
    state: State<App>,
    caller: Caller,
    path: Path<String>,
) -> Result<Json<Vec<KeyBody>>> {
    get_key(state, caller, path).await
}

/// Delete an SSH key (instances that have it keep it).
#[utoipa::path(delete, path = "/v1/ssh-keys/{sshKeyId}", tag = "SSH Keys",
    params(("sshKeyId" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_key_alias(
    state: State<App>,
    caller: Caller,
    path: Path<String>,
) -> Result<StatusCode> {
    delete_key(state, caller, path).await
}
