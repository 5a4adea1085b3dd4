//! Job deployments (Verda's "scaled jobs"): every request runs on a
//! replica of its own. A request is kept as it was asked (always
//! asynchronously: the caller gets an id); when fewer than
//! `max_replica_count` jobs run, the oldest waiting one gets a replica,
//! which is sent the request once its health check answers. The job ends
//! when its process exits (its replica is not started again: it *ran
//! once*) or when its `deadline_seconds` pass (its replica is deleted);
//! its answer is kept as an async request's is. A request that waits past
//! `queue_message_ttl_seconds` is dropped.
//!
//! Each step is a compare-and-set on the request's status in the store
//! (`Queue` -> `Starting` -> `Inference` -> `Completed`), so the scalers of
//! several control-plane processes never start or send one twice.

use super::front_door::probe;
use super::requests::MAX_ANSWER_BYTES;
use super::{Deployment, DeploymentKind};
use crate::App;
use crate::error::Result;
use crate::identity::Principal;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tessera_core::status::InstanceState;
use tessera_store::{InferenceRequestRecord, ReplicaRecord};

/// How long a request may wait for its replica to be recorded before the
/// replica is taken for lost.
const STARTING_GRACE_MS: i64 = 30_000;

/// A request as it was asked, kept to be sent to its job's replica.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StoredRequest {
    pub method: String,
    /// The path below the deployment, with its query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Base64.
    pub body: String,
}

/// Where a job deployment is, as Verda's clients read it. (Verda's
/// document also lists `ready`, which its Python SDK cannot read: a job
/// deployment that takes requests is `running`, busy or not.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatus {
    Paused,
    Terminating,
    Running,
}

/// Whether a request's deadline has passed.
fn overdue(request: &InferenceRequestRecord, now_ms: i64) -> bool {
    request.deadline_ms > 0 && now_ms > request.deadline_ms
}

/// An answer the front door would give, kept as a job's result.
fn error_answer(code: &str, message: String) -> (u16, String, Vec<u8>) {
    let status = match code {
        "deadline_exceeded" | "queue_timeout" => 504,
        "purged" => 409,
        _ => 502,
    };
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    (status, "application/json".into(), body.into_bytes())
}

impl App {
    /// Records a request for a job deployment: its id.
    pub async fn begin_job_request(
        &self,
        project_id: &str,
        name: &str,
        request: &StoredRequest,
    ) -> Result<String> {
        let deployment = self
            .project_deployment_of(project_id, DeploymentKind::Job, name)
            .await?;
        let id = self
            .record_request(
                &deployment,
                serde_json::to_string(request).unwrap_or_default(),
            )
            .await?;
        self.poke_scaler();
        Ok(id)
    }

    /// Where a job deployment is.
    pub async fn job_status(&self, caller: &Principal, name: &str) -> Result<JobStatus> {
        let job = self.deployment(caller, DeploymentKind::Job, name).await?;
        if job.deleting {
            return Ok(JobStatus::Terminating);
        }
        Ok(match job.paused {
            true => JobStatus::Paused,
            false => JobStatus::Running,
        })
    }

    /// Drops a job deployment's waiting requests.
    pub(crate) async fn purge_jobs(&self, job: &Deployment) -> Result<()> {
        for request in self.store.job_requests(&job.id, &["Queue"]).await? {
            self.end_job(
                &request,
                "Queue",
                error_answer("purged", "the job was dropped: its queue was purged".into()),
            )
            .await?;
        }
        Ok(())
    }

    /// Ends a request that is still `from`, with `answer`.
    async fn end_job(
        &self,
        request: &InferenceRequestRecord,
        from: &str,
        (code, content_type, body): (u16, String, Vec<u8>),
    ) -> Result<()> {
        // Completed only from where it was, so a late step never
        // overwrites an answer.
        if self
            .store
            .move_job_request(&request.id, from, "Ending", None, None)
            .await?
        {
            self.request_answered(&request.id, (code, &content_type, &body), true)
                .await?;
        }
        Ok(())
    }

    /// Ends a request that ran past its deadline, from where it is.
    async fn end_overdue_job(
        &self,
        job: &Deployment,
        request: &InferenceRequestRecord,
    ) -> Result<()> {
        let why = format!(
            "the job ran past its deadline_seconds ({} s) and was stopped",
            job.scaling.deadline_s.unwrap_or(super::MAX_DEADLINE_S)
        );
        self.end_job(
            request,
            &request.status,
            error_answer("deadline_exceeded", why),
        )
        .await
    }

    /// One pass over a job deployment: ends what is done or overdue, sends
    /// waiting requests to replicas that are up, and starts replicas for
    /// the oldest requests while there is room.
    pub(crate) async fn dispatch_jobs(
        &self,
        job: &Deployment,
        caller: &Principal,
        replicas: &[ReplicaRecord],
        now_ms: i64,
    ) -> Result<()> {
        // Replicas whose job is over: their process ended, their deadline
        // passed, or their request is gone. An overdue job is answered
        // before its replica is stopped: stopping it ends the request under
        // way, and that broken answer must not be taken for the job's.
        for replica in replicas {
            let request = self.store.job_request_of(&replica.instance_id).await?;
            let over = match &request {
                None => true,
                Some(r) if overdue(r, now_ms) => {
                    if matches!(r.status.as_str(), "Starting" | "Inference") {
                        self.end_overdue_job(job, r).await?;
                    }
                    true
                }
                Some(r) => {
                    r.status == "Completed" && replica.state == InstanceState::Stopped.as_str()
                }
            };
            if over {
                self.retire_replica(caller, replica).await;
            }
        }
        let running = self
            .store
            .job_requests(&job.id, &["Starting", "Inference"])
            .await?;
        let mut busy = 0u32;
        // Every replica not terminated holds a place, whatever its request
        // is (one stopping after its job, one another process just made).
        let live = replicas.len() as u32;
        for request in &running {
            let replica = request
                .instance_id
                .as_ref()
                .and_then(|id| replicas.iter().find(|r| &r.instance_id == id));
            if overdue(request, now_ms) {
                self.end_overdue_job(job, request).await?;
                continue;
            }
            match replica {
                None if now_ms - request.updated_ms < STARTING_GRACE_MS => busy += 1,
                None => {
                    let why = "the job's replica ended before it answered".to_string();
                    self.end_job(
                        request,
                        &request.status,
                        error_answer("replica_failed", why),
                    )
                    .await?;
                }
                Some(r) if r.state == InstanceState::Stopped.as_str() => {
                    let why = format!(
                        "the job's process ended before it answered ({})",
                        r.state_detail.as_deref().unwrap_or("no detail")
                    );
                    self.end_job(
                        request,
                        &request.status,
                        error_answer("replica_failed", why),
                    )
                    .await?;
                }
                Some(r) => {
                    busy += 1;
                    if request.status == "Starting" && r.state == InstanceState::Running.as_str() {
                        self.send_job_when_up(job, request, r).await?;
                    }
                }
            }
        }
        if job.paused {
            return Ok(());
        }
        let mut busy = busy.max(live);
        let max = job.scaling.max_replicas;
        let ttl_ms = i64::from(job.scaling.queue_message_ttl_s) * 1000;
        let deadline_ms = i64::from(job.scaling.deadline_s.unwrap_or(super::MAX_DEADLINE_S)) * 1000;
        for request in self.store.job_requests(&job.id, &["Queue"]).await? {
            if now_ms - request.created_ms > ttl_ms {
                let why = format!(
                    "no replica took the job within its queue_message_ttl_seconds ({} s)",
                    job.scaling.queue_message_ttl_s
                );
                self.end_job(&request, "Queue", error_answer("queue_timeout", why))
                    .await?;
                continue;
            }
            if busy >= max {
                break;
            }
            let id = crate::new_id("inst");
            if !self
                .store
                .move_job_request(
                    &request.id,
                    "Queue",
                    "Starting",
                    Some(&id),
                    Some(now_ms + deadline_ms),
                )
                .await?
            {
                continue;
            }
            busy += 1;
            match self.create_replica(caller, job, id, max).await {
                Ok(()) => {}
                // No room now (a replica still going, the quota, the
                // fleet): it waits again, until its time in the queue ends.
                Err(
                    err @ (crate::Error::Conflict(_)
                    | crate::Error::QuotaExceeded(_)
                    | crate::Error::Forbidden(_)
                    | crate::Error::NoCapacity(_)),
                ) => {
                    tracing::debug!(job = %job.name, request = %request.id, error = %err, "no room for a job yet");
                    self.store
                        .move_job_request(&request.id, "Starting", "Queue", None, None)
                        .await?;
                    break;
                }
                Err(err) => {
                    tracing::warn!(job = %job.name, request = %request.id, error = %err, "a job's replica could not be made");
                    let why = format!("the job's replica could not be made: {err}");
                    self.end_job(&request, "Starting", error_answer("replica_failed", why))
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Sends a job's request to its replica once its health check answers,
    /// in the background; its answer is kept as the job's result.
    async fn send_job_when_up(
        &self,
        job: &Deployment,
        request: &InferenceRequestRecord,
        replica: &ReplicaRecord,
    ) -> Result<()> {
        let Some(container) = job.spec.containers.first() else {
            return Ok(());
        };
        let Ok(ip) = replica.private_ip.parse::<std::net::Ipv4Addr>() else {
            return Ok(());
        };
        let addr = SocketAddr::new(ip.into(), container.exposed_port);
        let health = container.healthcheck.enabled.then(|| {
            (
                container.healthcheck.port,
                container.healthcheck.path.clone(),
            )
        });
        if !probe(addr, health).await {
            return Ok(());
        }
        if !self
            .store
            .move_job_request(&request.id, "Starting", "Inference", None, None)
            .await?
        {
            return Ok(());
        }
        let full = self
            .store
            .inference_request(&request.project_id, &request.id)
            .await?;
        let asked: StoredRequest = full
            .and_then(|r| serde_json::from_str(&r.request).ok())
            .unwrap_or_default();
        let left = Duration::from_millis(
            u64::try_from(request.deadline_ms - tessera_store::now_ms()).unwrap_or(0),
        );
        let (app, record) = (self.clone(), request.clone());
        self.tasks.spawn(async move {
            let answer = send_job(addr, &asked, left).await;
            if let Err(err) = app.end_job(&record, "Inference", answer).await {
                tracing::warn!(request = %record.id, error = %err, "a job's answer was not kept");
            }
            app.poke_scaler();
        });
        Ok(())
    }
}

/// Sends a job's request to its replica: the replica's answer, or why
/// there is none.
async fn send_job(
    addr: SocketAddr,
    asked: &StoredRequest,
    within: Duration,
) -> (u16, String, Vec<u8>) {
    // A redirect is the replica's answer, never followed: the control
    // plane fetches nothing a tenant's code points it at.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(within)
        .build()
    {
        Ok(client) => client,
        Err(err) => return error_answer("replica_failed", err.to_string()),
    };
    let method =
        reqwest::Method::from_bytes(asked.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut request = client
        .request(method, format!("http://{addr}{}", asked.path))
        .body(STANDARD.decode(&asked.body).unwrap_or_default());
    for (name, value) in &asked.headers {
        request = request.header(name, value);
    }
    let response = match request.send().await {
        Ok(response) => response,
        // Its deadline came first: the scaler stops its replica.
        Err(err) if err.is_timeout() => {
            return error_answer(
                "deadline_exceeded",
                format!(
                    "the job ran past its deadline_seconds ({} s) and was stopped",
                    within.as_secs_f64().ceil()
                ),
            );
        }
        Err(err) => {
            return error_answer(
                "replica_failed",
                format!("the job's replica did not answer: {err}"),
            );
        }
    };
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    // Read up to the limit, never more.
    let mut response = response;
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                body.extend_from_slice(&chunk);
            }
            Ok(Some(_)) => {
                return error_answer(
                    "replica_failed",
                    format!("the job's answer is larger than {MAX_ANSWER_BYTES} bytes"),
                );
            }
            Ok(None) => return (status, content_type, body),
            Err(err) => {
                return error_answer("replica_failed", format!("reading the job's answer: {err}"));
            }
        }
    }
}
