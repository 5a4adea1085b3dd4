//! `/scripts`: startup scripts, paginated with `page` and `pageSize` (the
//! counts in `X-Page`, `X-Page-Size` and `X-Total-Count`), under the
//! project's quota.

use super::Json;
use super::{Body, Caller, ErrorBody, Path, Query, Result, bad_request, id_text, page_headers};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::scripts::Script;
use utoipa::{IntoParams, ToSchema};

/// The largest page.
const MAX_PAGE_SIZE: u32 = 100;

#[derive(Serialize, ToSchema)]
pub struct ScriptBody {
    #[schema(example = "aa65d5ef-8550-4c45-bbb2-b83e2169696f")]
    pub id: String,
    #[schema(example = "My startup script")]
    pub name: String,
    #[schema(example = "#!/bin/bash\n\necho hello world")]
    pub script: String,
    #[schema(example = "2026-01-15T10:30:00Z")]
    pub created_at: String,
}

impl From<Script> for ScriptBody {
    fn from(s: Script) -> Self {
        ScriptBody {
            id: s.id,
            name: s.name,
            script: s.script,
            created_at: s.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct AddScriptRequest {
    #[schema(example = "My startup script")]
    pub name: String,
    #[schema(example = "#!/bin/bash\n\necho hello world")]
    pub script: String,
}

#[derive(Deserialize, ToSchema)]
pub struct DeleteScriptsRequest {
    /// The ids of the scripts to delete.
    pub scripts: Vec<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScriptQuery {
    /// The page, from 1.
    pub page: Option<String>,
    /// Scripts per page, 1 to 100 (10 when only `page` is given).
    #[serde(rename = "pageSize")]
    #[param(rename = "pageSize")]
    pub page_size: Option<String>,
    /// Only scripts whose name contains this.
    pub name: Option<String>,
}

fn number(field: &str, value: &str, max: u32) -> Result<u32> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad_request(format!(
            "{field} must be a whole number from 1 to {max}, not {:?}",
            value
        ))),
    }
}

/// List the project's startup scripts.
#[utoipa::path(get, path = "/v1/scripts", tag = "Startup Scripts",
    params(ScriptQuery),
    responses(
        (status = 200, description = "Scripts",
            headers(
                ("X-Page" = u32, description = "This page"),
                ("X-Page-Size" = u32, description = "The page size"),
                ("X-Total-Count" = u32, description = "Scripts in all"),
            ),
            body = Vec<ScriptBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn list_scripts(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(query): Query<ScriptQuery>,
) -> Result<Response> {
    let paged = query.page.is_some() || query.page_size.is_some();
    let page = match &query.page {
        Some(p) => number("page", p, u32::MAX)?,
        None => 1,
    };
    let page_size = match &query.page_size {
        Some(s) => number("pageSize", s, MAX_PAGE_SIZE)?,
        None if paged => 10,
        // Unpaged, as before pagination existed: every script.
        None => tessera_app::scripts::MAX_SCRIPT_QUOTA,
    };
    let found = match &query.name {
        // A name filter pages over the matching scripts.
        Some(name) => {
            let all = app
                .scripts(&caller, 1, tessera_app::scripts::MAX_SCRIPT_QUOTA)
                .await?;
            let matching: Vec<Script> = all
                .items
                .into_iter()
                .filter(|s| s.name.contains(name.as_str()))
                .collect();
            let total = matching.len() as i64;
            let start = (page as usize - 1).saturating_mul(page_size as usize);
            let items = matching
                .into_iter()
                .skip(start)
                .take(page_size as usize)
                .collect();
            tessera_app::scripts::ScriptPage { items, total }
        }
        None => app.scripts(&caller, page, page_size).await?,
    };
    let shown_size = match paged {
        true => page_size,
        false => u32::try_from(found.total).unwrap_or(u32::MAX).max(1),
    };
    let body: Vec<ScriptBody> = found.items.into_iter().map(ScriptBody::from).collect();
    Ok((page_headers(page, shown_size, found.total), Json(body)).into_response())
}

/// Add a startup script; answers its id as text.
#[utoipa::path(post, path = "/v1/scripts", tag = "Startup Scripts", request_body = AddScriptRequest,
    responses(
        (status = 201, description = "The new script's id", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "The project's script quota is reached", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn add_script(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<AddScriptRequest>,
) -> Result<Response> {
    let script = app.create_script(&caller, &req.name, &req.script).await?;
    Ok(id_text(StatusCode::CREATED, script.id))
}

/// Delete several startup scripts: all or none.
#[utoipa::path(delete, path = "/v1/scripts", tag = "Startup Scripts", request_body = DeleteScriptsRequest,
    responses(
        (status = 200, description = "Deleted"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "A script is not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_scripts(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<DeleteScriptsRequest>,
) -> Result<StatusCode> {
    app.delete_scripts(&caller, &req.scripts).await?;
    Ok(StatusCode::OK)
}

/// Get a startup script: a list of one, as Verda answers.
#[utoipa::path(get, path = "/v1/scripts/{scriptId}", tag = "Startup Scripts",
    params(("scriptId" = String, Path, description = "Script id")),
    responses(
        (status = 200, description = "The script, in a list of one", body = Vec<ScriptBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn get_script(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<ScriptBody>>> {
    Ok(Json(vec![app.script(&caller, &id).await?.into()]))
}

/// Delete a startup script.
#[utoipa::path(delete, path = "/v1/scripts/{scriptId}", tag = "Startup Scripts",
    params(("scriptId" = String, Path, description = "Script id")),
    responses(
        (status = 200, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_script(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_scripts(&caller, std::slice::from_ref(&id))
        .await?;
    Ok(StatusCode::OK)
}
