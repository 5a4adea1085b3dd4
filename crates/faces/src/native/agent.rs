//! `/v1/agent/*`: the agent protocol ([`tessera_agent_api::protocol`]),
//! spoken by `tessera agent` and nothing else. Not part of the public
//! document: its types are the agent crate's, versioned with the binary.

use super::{Body, NativeError, Query, Result};
use axum::extract::{FromRef, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::{Json, Router};
use serde::Deserialize;
use std::time::Duration;
use tessera_agent_api::protocol::{
    DesiredPage, Heartbeat, Observed, RegisterRequest, RegisterResponse,
};
use tessera_app::App;
use tessera_app::agents::AgentCaller;

pub fn router() -> Router<super::NativeState> {
    use axum::routing::{get, post};
    Router::new()
        .route("/register", post(register))
        .route("/heartbeat", post(heartbeat))
        .route("/desired", get(desired))
        .route("/observed", post(observed))
        .route("/channel", get(super::agent_channel::channel))
        .route("/sessions/{id}", get(super::agent_channel::session))
}

/// The agent a request comes from, by its host credential.
pub struct Agent(pub AgentCaller);

impl<S> FromRequestParts<S> for Agent
where
    App: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = NativeError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = App::from_ref(state);
        Ok(Agent(
            app.authenticate_agent(crate::kit::bearer(&parts.headers))
                .await?,
        ))
    }
}

async fn register(
    State(app): State<App>,
    Body(body): Body<serde_json::Value>,
) -> Result<(StatusCode, Json<RegisterResponse>)> {
    // The join token first: a caller without one has nothing more read (a
    // host's inventory, its CPU sets above all, is what costs to read).
    let token = body.get("join_token").and_then(|t| t.as_str());
    app.check_join_token(token.unwrap_or_default()).await?;
    let req: RegisterRequest = serde_path_to_error::deserialize(body).map_err(|e| {
        tessera_app::Error::invalid(
            "body",
            format!("invalid JSON body: {}: {}", e.path(), e.inner()),
        )
    })?;
    let registered = app.register_agent(req).await?;
    Ok((StatusCode::CREATED, Json(registered)))
}

async fn heartbeat(
    State(app): State<App>,
    Agent(agent): Agent,
    Body(beat): Body<Heartbeat>,
) -> Result<StatusCode> {
    app.agent_heartbeat(&agent, beat).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct DesiredQuery {
    #[serde(default)]
    after: i64,
    /// Seconds to wait for a change (at most 20).
    #[serde(default)]
    wait: u64,
}

async fn desired(
    State(app): State<App>,
    Agent(agent): Agent,
    Query(query): Query<DesiredQuery>,
) -> Result<Json<DesiredPage>> {
    let page = app
        .agent_desired(&agent, query.after, Duration::from_secs(query.wait))
        .await?;
    Ok(Json(page))
}

async fn observed(
    State(app): State<App>,
    Agent(agent): Agent,
    Body(report): Body<Observed>,
) -> Result<StatusCode> {
    app.agent_observed(&agent, report).await?;
    Ok(StatusCode::NO_CONTENT)
}
