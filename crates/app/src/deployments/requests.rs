//! Requests made with `Prefer: respond-async`: the front door answers at
//! once with an id, the request waits in the queue and runs as any other,
//! and what became of it (and the replica's answer) is kept in the store
//! for an hour, so any control-plane process answers `status` and
//! `result` for it.

use super::jobs::StoredRequest;
use crate::App;
use crate::error::{Error, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tessera_store::InferenceRequestRecord;

/// The largest answer kept for an async request.
pub const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// How long an async request and its answer are kept once it has ended.
pub const KEEP_MS: i64 = 3_600_000;
/// The most async or job requests of one deployment that may wait or run
/// at once: past it, new ones are refused (429) until some end.
pub const MAX_OPEN_REQUESTS: i64 = 10_000;

/// Where an async request is, in Verda's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsyncStatus {
    Queue,
    Inference,
    Completed,
}

impl AsyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AsyncStatus::Queue => "Queue",
            AsyncStatus::Inference => "Inference",
            AsyncStatus::Completed => "Completed",
        }
    }
}

/// An async request, with its answer once it has one.
/// An async request taken over from a process that stopped, to send.
#[derive(Clone, Debug)]
pub struct RecoveredRequest {
    pub id: String,
    pub project_id: String,
    /// The deployment's name.
    pub deployment: String,
    pub request: StoredRequest,
}

/// How this process sends the requests it takes over.
pub type AsyncRunner = std::sync::Arc<dyn Fn(RecoveredRequest) + Send + Sync>;

/// A process that has not reported its front door's load for this long
/// (it reports every second while it holds requests) stopped: its async
/// requests are taken over.
const ORPHANED_AFTER_MS: i64 = 15_000;

#[derive(Clone, Debug)]
pub struct AsyncRequest {
    pub id: String,
    pub status: AsyncStatus,
    pub status_code: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl App {
    /// Records an async request for the deployment, as asked (so that
    /// another process can send it should this one stop first): its id.
    pub async fn begin_async_request(
        &self,
        project_id: &str,
        name: &str,
        request: &StoredRequest,
    ) -> Result<String> {
        let deployment = self.project_deployment(project_id, name).await?;
        self.record_request(
            &deployment,
            serde_json::to_string(request).unwrap_or_default(),
        )
        .await
    }

    /// Has `runner` send the async requests this process takes over from
    /// one that stopped (the front door's face registers it: it sends
    /// requests to replicas).
    pub fn run_recovered_requests_with(&self, runner: AsyncRunner) {
        let _ = self.front_door.runner.set(runner);
    }

    /// Takes over the async requests of processes that stopped before
    /// answering them (and this one's own from before it started), and
    /// has them sent again: a request is answered at least once.
    pub(crate) async fn recover_async_requests(&self) -> Result<()> {
        let Some(runner) = self.front_door.runner.get() else {
            return Ok(());
        };
        let now = tessera_store::now_ms();
        let started_ms = now - i64::try_from(self.started.elapsed().as_millis()).unwrap_or(0);
        let me = self.store.owner().to_string();
        for orphan in self
            .store
            .orphaned_requests(&me, started_ms, now - ORPHANED_AFTER_MS)
            .await?
        {
            let Some(deployment) = self.store.deployment_by_id(&orphan.deployment_id).await? else {
                continue;
            };
            let Ok(request) = serde_json::from_str::<StoredRequest>(&orphan.request) else {
                continue;
            };
            if self
                .store
                .claim_request(&orphan.id, &orphan.owner, &me, now)
                .await?
            {
                tracing::info!(request = %orphan.id, deployment = %deployment.name, from = %orphan.owner, "an async request whose process stopped is sent again");
                runner(RecoveredRequest {
                    id: orphan.id,
                    project_id: orphan.project_id,
                    deployment: deployment.name,
                    request,
                });
            }
        }
        Ok(())
    }

    /// Records a request to a deployment (a job's with what it asked, to
    /// send to its replica later): its id.
    pub(crate) async fn record_request(
        &self,
        deployment: &super::Deployment,
        request: String,
    ) -> Result<String> {
        let (project_id, name) = (deployment.project_id.as_str(), deployment.name.as_str());
        if deployment.deleting {
            return Err(Error::NotFound(format!("deployment {name} not found")));
        }
        if deployment.paused {
            return Err(Error::Unavailable(format!(
                "deployment {name} is paused; resume it to serve requests"
            )));
        }
        let now = tessera_store::now_ms();
        let id = uuid::Uuid::new_v4().to_string();
        let recorded = self
            .store
            .insert_inference_request(
                &InferenceRequestRecord {
                    id: id.clone(),
                    project_id: project_id.to_string(),
                    deployment_id: deployment.id.clone(),
                    status: AsyncStatus::Queue.as_str().into(),
                    status_code: 0,
                    content_type: String::new(),
                    body: String::new(),
                    created_ms: now,
                    updated_ms: now,
                    request,
                    instance_id: None,
                    deadline_ms: 0,
                    owner: self.store.owner().to_string(),
                },
                MAX_OPEN_REQUESTS,
            )
            .await?;
        if !recorded {
            return Err(Error::RateLimited {
                message: format!(
                    "deployment {name} already has {MAX_OPEN_REQUESTS} requests waiting or running; retry later"
                ),
                retry_after: 10,
            });
        }
        Ok(id)
    }

    /// Records that an async request is with a replica.
    pub async fn async_request_started(&self, id: &str) -> Result<()> {
        self.store
            .update_inference_request(
                id,
                AsyncStatus::Inference.as_str(),
                None,
                tessera_store::now_ms(),
                false,
            )
            .await?;
        Ok(())
    }

    /// Records an async request's answer (the replica's, or why there is
    /// none).
    pub async fn async_request_done(
        &self,
        id: &str,
        status_code: u16,
        content_type: &str,
        body: &[u8],
    ) -> Result<()> {
        self.request_answered(id, (status_code, content_type, body), false)
            .await
    }

    /// Keeps a request's answer: an async request's this process sends, or
    /// a `job`'s being ended.
    pub(crate) async fn request_answered(
        &self,
        id: &str,
        (status_code, content_type, body): (u16, &str, &[u8]),
        job: bool,
    ) -> Result<()> {
        self.store
            .update_inference_request(
                id,
                AsyncStatus::Completed.as_str(),
                Some((i64::from(status_code), content_type, &STANDARD.encode(body))),
                tessera_store::now_ms(),
                job,
            )
            .await?;
        Ok(())
    }

    /// One of the project's async requests to the deployment `name`.
    pub async fn async_request(
        &self,
        project_id: &str,
        name: &str,
        id: &str,
    ) -> Result<AsyncRequest> {
        let not_found = || Error::NotFound(format!("request {id} of deployment {name} not found"));
        let deployment = self
            .project_deployment_any(project_id, name)
            .await?
            .ok_or_else(not_found)?;
        let record = match crate::has_nul(id) {
            true => None,
            false => self.store.inference_request(project_id, id).await?,
        };
        let record = record
            .filter(|r| r.deployment_id == deployment.id)
            .ok_or_else(not_found)?;
        let status = match record.status.as_str() {
            "Queue" | "Starting" => AsyncStatus::Queue,
            "Inference" => AsyncStatus::Inference,
            _ => AsyncStatus::Completed,
        };
        Ok(AsyncRequest {
            id: record.id,
            status,
            status_code: u16::try_from(record.status_code).unwrap_or(0),
            content_type: record.content_type,
            body: STANDARD
                .decode(record.body)
                .map_err(|e| Error::corrupt(format!("async request {id}'s answer: {e}")))?,
        })
    }

    /// Forgets async requests older than [`KEEP_MS`].
    pub(crate) async fn prune_async_requests(&self) -> Result<()> {
        // The longest a request can wait (a day) and run (a week), and an
        // hour to read its answer.
        let longest = 86_400_000 + i64::from(super::MAX_DEADLINE_S) * 1000 + KEEP_MS;
        let now = tessera_store::now_ms();
        self.store
            .prune_inference_requests(now - KEEP_MS, now - longest)
            .await?;
        Ok(())
    }
}
