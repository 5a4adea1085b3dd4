//! `/compute/ssh-keys`: the project's SSH keys, by their integer ids (the
//! same keys the other faces show by their string ids).

use super::containers::StatusOk;
use super::{Body, Caller, ErrorBody, Path, Result, bad_request};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::ssh_keys::{CreateSshKey, KeyCheck, SshKey};
use utoipa::ToSchema;

/// The key types this API accepts.
const KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
];

#[derive(Serialize, ToSchema)]
pub struct KeyBody {
    #[schema(example = 1)]
    pub id: i64,
    pub name: String,
    pub public_key: String,
    pub created_at: String,
}

impl From<SshKey> for KeyBody {
    fn from(k: SshKey) -> Self {
        KeyBody {
            id: k.number,
            name: k.name,
            public_key: k.public_key,
            created_at: k.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    pub ssh_keys: Vec<KeyBody>,
}

#[derive(Deserialize, ToSchema)]
pub struct AddKeyRequest {
    #[schema(example = "laptop")]
    pub name: Option<String>,
    /// An OpenSSH public key: `ssh-rsa`, `ssh-ed25519` or
    /// `ecdsa-sha2-nistp256/384/521`.
    pub public_key: Option<String>,
}

/// List your SSH keys.
#[utoipa::path(get, path = "/compute/ssh-keys", tag = "ssh-keys",
    responses(
        (status = 200, description = "Keys", body = KeyList),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ))]
pub async fn list_keys(State(app): State<App>, Caller(caller): Caller) -> Result<Json<KeyList>> {
    let mut keys = app.ssh_keys(&caller).await?;
    keys.sort_by_key(|k| k.number);
    Ok(Json(KeyList {
        ssh_keys: keys.into_iter().map(Into::into).collect(),
    }))
}

/// Add an SSH key.
#[utoipa::path(post, path = "/compute/ssh-keys", tag = "ssh-keys",
    request_body = AddKeyRequest,
    responses(
        (status = 200, description = "The key", body = KeyBody),
        (status = 400, description = "Invalid request, or the key limit reached", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 409, description = "A key of that name exists", body = ErrorBody),
    ))]
pub async fn add_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<AddKeyRequest>,
) -> Result<Json<KeyBody>> {
    let name = req.name.ok_or_else(|| bad_request("name is required"))?;
    let public_key = req
        .public_key
        .ok_or_else(|| bad_request("public_key is required"))?;
    let kind = public_key.split_whitespace().next().unwrap_or("");
    if !KEY_TYPES.contains(&kind) {
        return Err(bad_request(format!(
            "public_key must be an OpenSSH key of type {}",
            KEY_TYPES.join(", ")
        )));
    }
    let key = app
        .create_ssh_key(
            &caller,
            CreateSshKey {
                name,
                public_key,
                check: KeyCheck::Whole,
            },
        )
        .await?;
    Ok(Json(key.into()))
}

/// Delete an SSH key.
#[utoipa::path(delete, path = "/compute/ssh-keys/{id}", tag = "ssh-keys",
    params(("id" = i64, Path, description = "SSH key id")),
    responses(
        (status = 200, description = "Deleted", body = StatusOk),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn delete_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<i64>,
) -> Result<Json<StatusOk>> {
    app.delete_ssh_key_numbered(&caller, id).await?;
    Ok(Json(StatusOk {
        status: "ok".into(),
    }))
}
