//! `/secrets`, `/file-secrets` and `/container-registry-credentials`: what
//! a project's deployments use, sealed at rest. Lists show names, kinds,
//! file names and times; no answer carries a value.

use super::Json;
use super::{Body, Caller, ErrorBody, Path, Query, Result, bad_request};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::secrets::registry::{RegistryCredential, RegistryCredentialInput};
use tessera_app::secrets::{Secret, SecretKind};
use utoipa::{IntoParams, ToSchema};

/// A secret, without its value.
#[derive(Serialize, ToSchema)]
pub struct SecretBody {
    #[schema(example = "api-token")]
    pub name: String,
    #[schema(example = "2020-08-12T12:00:00.000Z")]
    pub created_at: String,
    /// `generic` (a value) or `file-secret` (files).
    #[schema(example = "generic")]
    pub secret_type: String,
}

fn secret_type(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Generic => "generic",
        SecretKind::Files => "file-secret",
    }
}

impl From<Secret> for SecretBody {
    fn from(s: Secret) -> Self {
        SecretBody {
            name: s.name,
            created_at: s.created_at,
            secret_type: secret_type(s.kind).to_string(),
        }
    }
}

/// A file secret, without its files' contents.
#[derive(Serialize, ToSchema)]
pub struct FileSecretBody {
    #[schema(example = "secret-files")]
    pub name: String,
    #[schema(example = "2020-08-12T12:00:00.000Z")]
    pub created_at: String,
    #[schema(example = "file-secret")]
    pub secret_type: String,
    #[schema(example = json!(["tokens.txt", "config.json"]))]
    pub file_names: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateSecretRequest {
    #[schema(example = "api-token")]
    pub name: String,
    #[schema(example = "tk_1234567890-secret")]
    pub value: String,
}

#[derive(Deserialize, ToSchema)]
pub struct SecretFile {
    #[schema(example = "file.txt")]
    pub file_name: String,
    /// The file's content, base64.
    #[schema(example = "dGVzdCBmaWxl")]
    pub base64_content: String,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateFileSecretRequest {
    #[schema(example = "secret-files")]
    pub name: String,
    #[serde(deserialize_with = "super::objects::list")]
    pub files: Vec<SecretFile>,
}

/// Registry credentials, without what they hold.
#[derive(Serialize, ToSchema)]
pub struct RegistryCredentialBody {
    #[schema(example = "dockerhub-credentials")]
    pub name: String,
    #[schema(example = "2020-08-12T12:00:00.000Z")]
    pub created_at: String,
}

impl From<RegistryCredential> for RegistryCredentialBody {
    fn from(c: RegistryCredential) -> Self {
        RegistryCredentialBody {
            name: c.name,
            created_at: c.created_at,
        }
    }
}

/// Credentials for a private registry. Which fields are needed depends on
/// `type`: `dockerhub`, `ghcr` and `verda` take `username` and
/// `access_token`; `gcr` a `service_account_key`; `scaleway`
/// `scaleway_domain` and `scaleway_uuid`; `aws-ecr` `access_key_id`,
/// `secret_access_key`, `region` and `ecr_repo`; `custom` a
/// `docker_config_json`.
#[derive(Deserialize, ToSchema)]
pub struct CreateRegistryCredentialRequest {
    #[schema(example = "dockerhub-credentials")]
    pub name: String,
    #[serde(rename = "type")]
    #[schema(example = "dockerhub")]
    pub kind: String,
    pub username: Option<String>,
    pub access_token: Option<String>,
    pub service_account_key: Option<String>,
    pub docker_config_json: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
    pub ecr_repo: Option<String>,
    pub scaleway_domain: Option<String>,
    pub scaleway_uuid: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Delete even what a deployment uses.
    pub force: Option<String>,
}

impl ForceQuery {
    fn force(&self) -> Result<bool> {
        match self.force.as_deref().map(str::trim) {
            None | Some("") | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(bad_request(format!(
                "force must be true or false, not {:?}",
                other
            ))),
        }
    }
}

/// List the project's secrets of both kinds.
#[utoipa::path(get, path = "/v1/secrets", tag = "Secrets",
    responses(
        (status = 200, description = "A list of secrets", body = Vec<SecretBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
    ))]
pub async fn list_secrets(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<SecretBody>>> {
    let secrets = app.secrets(&caller, None).await?;
    Ok(Json(secrets.into_iter().map(SecretBody::from).collect()))
}

/// Create a secret: its value is sealed and never answered.
#[utoipa::path(post, path = "/v1/secrets", tag = "Secrets", request_body = CreateSecretRequest,
    responses(
        (status = 201, description = "Created"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed, or the project has too many", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_secret(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateSecretRequest>,
) -> Result<StatusCode> {
    app.create_secret(&caller, &req.name, &req.value).await?;
    Ok(StatusCode::CREATED)
}

/// Delete a secret (of either kind); one a deployment uses only with
/// `force=true`.
#[utoipa::path(delete, path = "/v1/secrets/{secret_name}", tag = "Secrets",
    params(("secret_name" = String, Path, description = "The secret's name"), ForceQuery),
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A deployment uses it", body = ErrorBody),
    ))]
pub async fn delete_secret(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<ForceQuery>,
) -> Result<StatusCode> {
    app.delete_secret(&caller, &name, None, query.force()?)
        .await?;
    Ok(StatusCode::OK)
}

/// List the project's file secrets, with their files' names.
#[utoipa::path(get, path = "/v1/file-secrets", tag = "Secrets",
    responses(
        (status = 200, description = "A list of file secrets", body = Vec<FileSecretBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
    ))]
pub async fn list_file_secrets(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<FileSecretBody>>> {
    let secrets = app.secrets(&caller, Some(SecretKind::Files)).await?;
    Ok(Json(
        secrets
            .into_iter()
            .map(|s| FileSecretBody {
                secret_type: secret_type(s.kind).to_string(),
                name: s.name,
                created_at: s.created_at,
                file_names: s.file_names,
            })
            .collect(),
    ))
}

/// Create a file secret: files a deployment mounts as a directory.
#[utoipa::path(post, path = "/v1/file-secrets", tag = "Secrets", request_body = CreateFileSecretRequest,
    responses(
        (status = 201, description = "Created"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed, or the project has too many", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_file_secret(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateFileSecretRequest>,
) -> Result<StatusCode> {
    let files: Vec<(String, String)> = req
        .files
        .into_iter()
        .map(|f| (f.file_name, f.base64_content))
        .collect();
    app.create_file_secret(&caller, &req.name, &files).await?;
    Ok(StatusCode::CREATED)
}

/// Delete a file secret; one a deployment uses only with `force=true`.
#[utoipa::path(delete, path = "/v1/file-secrets/{secret_name}", tag = "Secrets",
    params(("secret_name" = String, Path, description = "The file secret's name"), ForceQuery),
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A deployment uses it", body = ErrorBody),
    ))]
pub async fn delete_file_secret(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<ForceQuery>,
) -> Result<StatusCode> {
    app.delete_secret(&caller, &name, Some(SecretKind::Files), query.force()?)
        .await?;
    Ok(StatusCode::OK)
}

/// List the project's registry credentials.
#[utoipa::path(get, path = "/v1/container-registry-credentials", tag = "Container registry credentials",
    responses(
        (status = 200, description = "A list of registry credentials", body = Vec<RegistryCredentialBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
    ))]
pub async fn list_registry_credentials(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<RegistryCredentialBody>>> {
    let found = app.registry_credentials(&caller).await?;
    Ok(Json(
        found
            .into_iter()
            .map(RegistryCredentialBody::from)
            .collect(),
    ))
}

/// Add credentials for a private registry.
#[utoipa::path(post, path = "/v1/container-registry-credentials", tag = "Container registry credentials",
    request_body = CreateRegistryCredentialRequest,
    responses(
        (status = 201, description = "Created"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed, or the project has too many", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_registry_credential(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateRegistryCredentialRequest>,
) -> Result<StatusCode> {
    let input = RegistryCredentialInput {
        name: req.name,
        kind: req.kind,
        username: req.username,
        access_token: req.access_token,
        service_account_key: req.service_account_key,
        docker_config_json: req.docker_config_json,
        access_key_id: req.access_key_id,
        secret_access_key: req.secret_access_key,
        region: req.region,
        ecr_repo: req.ecr_repo,
        scaleway_domain: req.scaleway_domain,
        scaleway_uuid: req.scaleway_uuid,
    };
    app.create_registry_credential(&caller, &input).await?;
    Ok(StatusCode::CREATED)
}

/// Delete registry credentials; ones a deployment uses only with
/// `force=true`.
#[utoipa::path(delete, path = "/v1/container-registry-credentials/{credentials_name}",
    tag = "Container registry credentials",
    params(("credentials_name" = String, Path, description = "The credentials' name"), ForceQuery),
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A deployment uses them", body = ErrorBody),
    ))]
pub async fn delete_registry_credential(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<ForceQuery>,
) -> Result<StatusCode> {
    app.delete_registry_credential(&caller, &name, query.force()?)
        .await?;
    Ok(StatusCode::OK)
}
