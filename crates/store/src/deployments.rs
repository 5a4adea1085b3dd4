//! Serverless deployments, their replicas (instances recorded with the
//! generation they run), the load front doors measure, and inference keys.

use crate::db::{Arg, Conn, DbError};
use crate::secrets::Recorded;
use crate::writer::Commit;
use crate::{Result, Store, now};
use std::sync::Arc;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeploymentRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// `container` or `job`.
    pub kind: String,
    /// JSON: what the app keeps of its containers, registry settings and
    /// compute.
    pub spec: String,
    /// JSON: `tessera_core::serverless::Scaling`.
    pub scaling: String,
    pub paused: i64,
    pub generation: i64,
    /// The scaler's target.
    pub replicas: i64,
    /// JSON: `Option<tessera_core::serverless::Pending>`.
    pub pending: String,
    pub deleting: i64,
    pub created_at: String,
    pub updated_at: String,
    /// How many times its queue was purged.
    pub purges: i64,
}

const DEPLOYMENT_COLUMNS: &str = "id, project_id, name, kind, spec, scaling, paused, generation, \
     replicas, pending, deleting, created_at, updated_at, purges";

/// A replica of a deployment, with its instance's state.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ReplicaRecord {
    pub instance_id: String,
    pub generation: i64,
    pub created_at: String,
    /// The instance's state (`provisioning`, `running`, ...).
    pub state: String,
    pub state_detail: Option<String>,
    pub private_ip: String,
    pub host_id: Option<String>,
    /// Since when (ms) it is let go: no new requests; 0: it serves.
    pub draining_ms: i64,
}

/// A replica to record with its instance: refused when its deployment
/// already has `limit` replicas that are not terminated, or is going.
#[derive(Clone, Debug)]
pub struct NewReplica {
    pub deployment_id: String,
    pub generation: i64,
    pub limit: i64,
}

/// What a change of a deployment writes; `None` keeps what is there.
#[derive(Clone, Debug, Default)]
pub struct DeploymentChange {
    pub spec: Option<String>,
    pub scaling: Option<String>,
    pub paused: Option<bool>,
    /// Starts a new generation: its replicas are replaced.
    pub new_generation: bool,
    /// Changes only a deployment still at this generation: a change made
    /// from what was read then, which another change since would undo.
    pub if_generation: Option<i64>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InferenceKeyRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub hash: String,
    /// The key's first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: String,
}

const KEY_COLUMNS: &str = "id, project_id, name, hash, prefix, created_at";

/// Replicas whose instance is not terminated.
const LIVE_REPLICAS: &str = "SELECT CAST(COUNT(*) AS BIGINT) FROM deployment_replicas r \
     JOIN instances i ON i.id = r.instance_id \
     WHERE r.deployment_id = $1 AND i.state <> 'terminated'";

/// Records a replica in the transaction that records its instance, unless
/// its deployment has enough or is going (its row held first, so that two
/// scalers cannot both add the last one): whether it was recorded.
pub(crate) async fn insert_replica(
    conn: &mut Conn<'_>,
    instance_id: &str,
    replica: &NewReplica,
) -> Result<bool, DbError> {
    let lock = match conn.is_postgres() {
        true => " FOR UPDATE",
        false => "",
    };
    let open = conn
        .fetch_int(
            &format!("SELECT deleting FROM deployments WHERE id = $1{lock}"),
            &[(&replica.deployment_id).into()],
        )
        .await?;
    if open != Some(0) {
        return Ok(false);
    }
    let live = conn
        .fetch_int(
            &format!("{LIVE_REPLICAS} AND r.generation = $2"),
            &[(&replica.deployment_id).into(), replica.generation.into()],
        )
        .await?
        .unwrap_or(0);
    if live >= replica.limit {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO deployment_replicas (instance_id, deployment_id, generation, created_at) \
         VALUES ($1, $2, $3, $4)",
        &[
            instance_id.into(),
            (&replica.deployment_id).into(),
            replica.generation.into(),
            now().into(),
        ],
    )
    .await?;
    Ok(true)
}

impl Store {
    /// Records a deployment unless its name is taken in its project or the
    /// project has `limit` deployments.
    pub async fn insert_deployment(
        &self,
        deployment: &DeploymentRecord,
        limit: i64,
    ) -> Result<Recorded> {
        let d = deployment;
        let args: Vec<Arg> = vec![
            (&d.id).into(),
            (&d.project_id).into(),
            (&d.name).into(),
            (&d.kind).into(),
            (&d.spec).into(),
            (&d.scaling).into(),
            d.paused.into(),
            d.generation.into(),
            d.replicas.into(),
            (&d.pending).into(),
            d.deleting.into(),
            (&d.created_at).into(),
            (&d.updated_at).into(),
            limit.into(),
            d.purges.into(),
        ];
        let counts = self
            .run_statements_locked(
                "insert_deployment",
                (crate::quotas::LOCK_PROJECT, d.project_id.clone()),
                vec![(
                    format!(
                        "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) \
                                                  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15 \
                         WHERE (SELECT COUNT(*) FROM deployments WHERE project_id = $2) < $14 \
                         ON CONFLICT DO NOTHING"
                    ),
                    args,
                )],
                |_| true,
            )
            .await?;
        if counts[0] == 1 {
            return Ok(Recorded::Added);
        }
        Ok(
            match self.deployment(&d.project_id, &d.name).await?.is_some() {
                true => Recorded::NameTaken,
                false => Recorded::Full,
            },
        )
    }

    /// The project's deployments of `kind`, oldest first.
    pub async fn deployments(&self, project_id: &str, kind: &str) -> Result<Vec<DeploymentRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments \
                 WHERE project_id = $1 AND kind = $2 ORDER BY created_at, id"
            ),
            &[project_id.into(), kind.into()],
        )
        .await
    }

    /// Every deployment of the install, for the scaler.
    pub async fn all_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        self.fetch_all(
            &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY id"),
            &[],
        )
        .await
    }

    pub async fn deployment(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<Option<DeploymentRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE project_id = $1 AND name = $2"
            ),
            &[project_id.into(), name.into()],
        )
        .await
    }

    pub async fn deployment_by_id(&self, id: &str) -> Result<Option<DeploymentRecord>> {
        self.fetch_optional(
            &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    /// Changes a deployment that is not going (and, if asked, still at a
    /// generation): whether it did.
    pub async fn change_deployment(&self, id: &str, change: &DeploymentChange) -> Result<bool> {
        let mut sets = vec!["updated_at = $2".to_string()];
        let mut args: Vec<Arg> = vec![id.into(), now().into()];
        for (column, value) in [("spec", &change.spec), ("scaling", &change.scaling)] {
            if let Some(value) = value {
                args.push(value.into());
                sets.push(format!("{column} = ${}", args.len()));
            }
        }
        if let Some(paused) = change.paused {
            args.push(i64::from(paused).into());
            sets.push(format!("paused = ${}", args.len()));
        }
        if change.new_generation {
            sets.push("generation = generation + 1".into());
        }
        let mut only = String::new();
        if let Some(generation) = change.if_generation {
            args.push(generation.into());
            only = format!(" AND generation = ${}", args.len());
        }
        let counts = self
            .run_statements(
                "change_deployment",
                vec![(
                    format!(
                        "UPDATE deployments SET {} WHERE id = $1 AND deleting = 0{only}",
                        sets.join(", ")
                    ),
                    args,
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Counts a purge of a deployment's queue, for every process to see.
    pub async fn count_purge(&self, id: &str) -> Result<()> {
        self.run_statements(
            "count_purge",
            vec![(
                "UPDATE deployments SET purges = purges + 1 WHERE id = $1".to_string(),
                vec![id.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Records the scaler's decision.
    pub async fn set_deployment_scale(&self, id: &str, replicas: i64, pending: &str) -> Result<()> {
        self.run_statements(
            "set_deployment_scale",
            vec![(
                "UPDATE deployments SET replicas = $2, pending = $3 WHERE id = $1".to_string(),
                vec![id.into(), replicas.into(), pending.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Marks a deployment as going: it gets no new replicas, and its name
    /// is free once it is gone. Whether it was there.
    pub async fn mark_deployment_deleting(&self, id: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "mark_deployment_deleting",
                vec![(
                    "UPDATE deployments SET deleting = 1, replicas = 0 WHERE id = $1".to_string(),
                    vec![id.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Removes a going deployment once none of its replicas is left
    /// running: whether it went.
    pub async fn remove_deployment(&self, id: &str) -> Result<bool> {
        let id = Arc::new(id.to_string());
        self.write("remove_deployment", move |mut conn| {
            let id = id.clone();
            Box::pin(async move {
                let live = conn
                    .fetch_int(LIVE_REPLICAS, &[id.as_str().into()])
                    .await?
                    .unwrap_or(0);
                if live > 0 {
                    return Ok(Commit::Keep(false));
                }
                for sql in [
                    "DELETE FROM deployment_replicas WHERE deployment_id = $1",
                    "DELETE FROM deployment_load WHERE deployment_id = $1",
                ] {
                    conn.execute(sql, &[id.as_str().into()]).await?;
                }
                let gone = conn
                    .execute(
                        "DELETE FROM deployments WHERE id = $1 AND deleting = 1",
                        &[id.as_str().into()],
                    )
                    .await?;
                Ok(Commit::Keep(gone == 1))
            })
        })
        .await
    }

    /// A deployment's replicas whose instances are not terminated, oldest
    /// first.
    pub async fn deployment_replicas(&self, deployment_id: &str) -> Result<Vec<ReplicaRecord>> {
        self.fetch_all(
            "SELECT r.instance_id, r.generation, r.created_at, i.state, i.state_detail, \
             i.private_ip, i.host_id, r.draining_ms FROM deployment_replicas r \
             JOIN instances i ON i.id = r.instance_id \
             WHERE r.deployment_id = $1 AND i.state <> 'terminated' \
             ORDER BY r.created_at, r.instance_id",
            &[deployment_id.into()],
        )
        .await
    }

    /// How many replicas of a deployment's generation ended other than by
    /// being deleted, and when the last of them did.
    pub async fn deployment_failures(
        &self,
        deployment_id: &str,
        generation: i64,
    ) -> Result<(i64, Option<String>)> {
        #[derive(sqlx::FromRow)]
        struct Row {
            n: i64,
            last: Option<String>,
        }
        let row: Option<Row> = self
            .fetch_optional(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n, MAX(i.updated_at) AS last \
                 FROM deployment_replicas r JOIN instances i ON i.id = r.instance_id \
                 WHERE r.deployment_id = $1 AND r.generation = $2 AND i.state = 'terminated' \
                 AND COALESCE(i.end_cause, '') <> 'deleted'",
                &[deployment_id.into(), generation.into()],
            )
            .await?;
        Ok(row.map_or((0, None), |r| (r.n, r.last)))
    }

    /// How busy each running replica of a deployment's generation was
    /// (percent of its CPUs), as its host observed since `since`.
    pub async fn replicas_cpu(
        &self,
        deployment_id: &str,
        generation: i64,
        since: &str,
    ) -> Result<Vec<u32>> {
        let rows: Vec<(i64,)> = self
            .fetch_all(
                "SELECT u.cpu_percent FROM deployment_replicas r \
                 JOIN instances i ON i.id = r.instance_id \
                 JOIN instance_usage u ON u.instance_id = r.instance_id \
                 WHERE r.deployment_id = $1 AND r.generation = $2 AND r.draining_ms = 0 \
                 AND i.state = 'running' AND u.running = 1 AND u.cpu_percent IS NOT NULL \
                 AND u.observed_at >= $3",
                &[deployment_id.into(), generation.into(), since.into()],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(p,)| u32::try_from(p).unwrap_or(0))
            .collect())
    }

    /// The deployment a replica instance serves, if it is one.
    pub async fn replica_deployment(&self, instance_id: &str) -> Result<Option<String>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            deployment_id: String,
        }
        let row: Option<Row> = self
            .fetch_optional(
                "SELECT deployment_id FROM deployment_replicas WHERE instance_id = $1",
                &[instance_id.into()],
            )
            .await?;
        Ok(row.map(|r| r.deployment_id))
    }

    /// Lets a replica go (`since_ms`: from then it gets no new requests)
    /// or, with 0, has it serve again.
    pub async fn set_replica_draining(&self, instance_id: &str, since_ms: i64) -> Result<()> {
        self.run_statements(
            "set_replica_draining",
            vec![(
                "UPDATE deployment_replicas SET draining_ms = $2 WHERE instance_id = $1".into(),
                vec![instance_id.into(), since_ms.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// The replicas of a deployment that some front door reported having
    /// requests in flight to, since `since_ms`.
    pub async fn busy_replicas(
        &self,
        deployment_id: &str,
        since_ms: i64,
    ) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT busy FROM deployment_load WHERE deployment_id = $1 AND updated_ms >= $2",
                &[deployment_id.into(), since_ms.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .flat_map(|(busy,)| busy.split(',').filter(|r| !r.is_empty()))
            .map(str::to_string)
            .collect())
    }

    /// What this control-plane replica's front door measured of a
    /// deployment's queue, and the replicas it has requests in flight to.
    pub async fn report_deployment_load(
        &self,
        deployment_id: &str,
        replica: &str,
        (waiting, in_flight): (i64, i64),
        busy: &[String],
        at_ms: i64,
    ) -> Result<()> {
        let args: Vec<Arg> = vec![
            deployment_id.into(),
            replica.into(),
            waiting.into(),
            in_flight.into(),
            at_ms.into(),
            busy.join(",").into(),
        ];
        self.run_statements(
            "report_deployment_load",
            vec![(
                "INSERT INTO deployment_load (deployment_id, replica, waiting, in_flight, updated_ms, busy) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (deployment_id, replica) DO UPDATE SET \
                 waiting = excluded.waiting, in_flight = excluded.in_flight, \
                 updated_ms = excluded.updated_ms, busy = excluded.busy"
                    .to_string(),
                args,
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Every front door's load of each deployment reported since
    /// `since_ms`: `(deployment, waiting, in flight)`, summed.
    pub async fn deployment_loads(&self, since_ms: i64) -> Result<Vec<(String, i64, i64)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            deployment_id: String,
            waiting: i64,
            in_flight: i64,
        }
        let rows: Vec<Row> = self
            .fetch_all(
                "SELECT deployment_id, CAST(SUM(waiting) AS BIGINT) AS waiting, \
                 CAST(SUM(in_flight) AS BIGINT) AS in_flight FROM deployment_load \
                 WHERE updated_ms >= $1 GROUP BY deployment_id",
                &[since_ms.into()],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.deployment_id, r.waiting, r.in_flight))
            .collect())
    }

    /// Records a key unless its name is taken or the project has `limit`.
    pub async fn insert_inference_key(
        &self,
        key: &InferenceKeyRecord,
        limit: i64,
    ) -> Result<Recorded> {
        let counts = self
            .run_statements_locked(
                "insert_inference_key",
                (crate::quotas::LOCK_PROJECT, key.project_id.clone()),
                vec![(
                    format!(
                        "INSERT INTO inference_keys ({KEY_COLUMNS}) \
                         SELECT $1, $2, $3, $4, $5, $6 \
                         WHERE (SELECT COUNT(*) FROM inference_keys WHERE project_id = $2) < $7 \
                         ON CONFLICT DO NOTHING"
                    ),
                    vec![
                        (&key.id).into(),
                        (&key.project_id).into(),
                        (&key.name).into(),
                        (&key.hash).into(),
                        (&key.prefix).into(),
                        (&key.created_at).into(),
                        limit.into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        if counts[0] == 1 {
            return Ok(Recorded::Added);
        }
        let taken = self
            .inference_keys(&key.project_id)
            .await?
            .iter()
            .any(|k| k.name == key.name);
        Ok(match taken {
            true => Recorded::NameTaken,
            false => Recorded::Full,
        })
    }

    pub async fn inference_keys(&self, project_id: &str) -> Result<Vec<InferenceKeyRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {KEY_COLUMNS} FROM inference_keys WHERE project_id = $1 \
                 ORDER BY created_at, id"
            ),
            &[project_id.into()],
        )
        .await
    }

    pub async fn inference_key_by_hash(&self, hash: &str) -> Result<Option<InferenceKeyRecord>> {
        self.fetch_optional(
            &format!("SELECT {KEY_COLUMNS} FROM inference_keys WHERE hash = $1"),
            &[hash.into()],
        )
        .await
    }

    /// Deletes one of the project's keys: whether it was there.
    pub async fn delete_inference_key(&self, project_id: &str, id: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "delete_inference_key",
                vec![(
                    "DELETE FROM inference_keys WHERE project_id = $1 AND id = $2".to_string(),
                    vec![project_id.into(), id.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }
}

/// A request made with `Prefer: respond-async`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InferenceRequestRecord {
    pub id: String,
    pub project_id: String,
    pub deployment_id: String,
    /// `Queue`, `Inference` or `Completed`.
    pub status: String,
    /// The replica's answer's status (0 until there is one).
    pub status_code: i64,
    pub content_type: String,
    /// The answer's body, base64.
    pub body: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// A job's request as asked (JSON), to send to its replica.
    pub request: String,
    /// The replica running a job's request.
    pub instance_id: Option<String>,
    /// When a job's request must have ended (0: not running).
    pub deadline_ms: i64,
    /// The control-plane process sending an async request (its store's
    /// [`Store::owner`]).
    pub owner: String,
}

const REQUEST_COLUMNS: &str = "id, project_id, deployment_id, status, status_code, content_type, \
     body, created_ms, updated_ms, request, instance_id, deadline_ms, owner";
/// [`REQUEST_COLUMNS`] with the request and answer left empty.
const LIGHT_REQUEST_COLUMNS: &str = "id, project_id, deployment_id, status, status_code, \
     content_type, '' AS body, created_ms, updated_ms, '' AS request, instance_id, deadline_ms, \
     owner";

impl Store {
    /// Records a request unless its deployment has `limit` open already
    /// (answers whether it did).
    pub async fn insert_inference_request(
        &self,
        r: &InferenceRequestRecord,
        limit: i64,
    ) -> Result<bool> {
        let counts = self
            .run_statements_locked(
                "insert_inference_request",
                (
                    "SELECT id FROM deployments WHERE id = $1 FOR UPDATE",
                    r.deployment_id.clone(),
                ),
                vec![(
                    format!(
                        "INSERT INTO inference_requests ({REQUEST_COLUMNS}) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14 \
                     WHERE (SELECT COUNT(*) FROM inference_requests WHERE deployment_id = $3 \
                            AND status IN ('Queue', 'Starting', 'Inference')) < $13"
                    ),
                    vec![
                        (&r.id).into(),
                        (&r.project_id).into(),
                        (&r.deployment_id).into(),
                        (&r.status).into(),
                        r.status_code.into(),
                        (&r.content_type).into(),
                        (&r.body).into(),
                        r.created_ms.into(),
                        r.updated_ms.into(),
                        (&r.request).into(),
                        r.instance_id.as_ref().into(),
                        r.deadline_ms.into(),
                        limit.into(),
                        (&r.owner).into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Async requests to container deployments whose process stopped
    /// before answering them: those of another process that has not
    /// reported its front door's load since `stale_ms` (while it has a
    /// request waiting or in flight it reports every second), and this
    /// process's own from before it started (`started_ms`), at most 100.
    pub async fn orphaned_requests(
        &self,
        me: &str,
        started_ms: i64,
        stale_ms: i64,
    ) -> Result<Vec<InferenceRequestRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {REQUEST_COLUMNS} FROM inference_requests r \
                 WHERE r.status IN ('Queue', 'Inference') AND r.request <> '' \
                 AND r.deployment_id IN (SELECT d.id FROM deployments d \
                                         WHERE d.kind = 'container' AND d.deleting = 0) \
                 AND ((r.owner = $1 AND r.updated_ms < $2) \
                      OR (r.owner <> $1 AND r.updated_ms < $3 AND NOT EXISTS ( \
                          SELECT 1 FROM deployment_load l WHERE l.deployment_id = r.deployment_id \
                          AND l.replica = r.owner AND l.updated_ms >= $3))) \
                 ORDER BY r.created_ms LIMIT 100"
            ),
            &[me.into(), started_ms.into(), stale_ms.into()],
        )
        .await
    }

    /// Takes an orphaned async request over from `from`, back in the
    /// queue: whether this process got it (another may have first).
    pub async fn claim_request(&self, id: &str, from: &str, me: &str, now_ms: i64) -> Result<bool> {
        let counts = self
            .run_statements(
                "claim_request",
                vec![(
                    "UPDATE inference_requests SET owner = $3, status = 'Queue', updated_ms = $4 \
                     WHERE id = $1 AND owner = $2 AND status IN ('Queue', 'Inference')"
                        .into(),
                    vec![id.into(), from.into(), me.into(), now_ms.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Records where an async request this process sends is, and its
    /// answer once it has one (not once another process took it over, nor
    /// once it has ended); or a `job`'s answer, once it is ending.
    pub async fn update_inference_request(
        &self,
        id: &str,
        status: &str,
        answer: Option<(i64, &str, &str)>,
        at_ms: i64,
        job: bool,
    ) -> Result<()> {
        let (code, content_type, body) = answer.unwrap_or((0, "", ""));
        let mut args: Vec<Arg> = vec![
            id.into(),
            status.into(),
            code.into(),
            content_type.into(),
            body.into(),
            at_ms.into(),
        ];
        // A job is ended by whichever process moved it to `Ending`.
        let only = match job {
            true => "status = 'Ending'",
            false => {
                args.push(self.owner().into());
                "owner = $7 AND status IN ('Queue', 'Inference')"
            }
        };
        self.run_statements(
            "update_inference_request",
            vec![(
                format!(
                    "UPDATE inference_requests SET status = $2, status_code = $3, content_type = $4, \
                     body = $5, updated_ms = $6 WHERE id = $1 AND {only}"
                ),
                args,
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// One of the project's async requests.
    pub async fn inference_request(
        &self,
        project_id: &str,
        id: &str,
    ) -> Result<Option<InferenceRequestRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {REQUEST_COLUMNS} FROM inference_requests \
                 WHERE id = $1 AND project_id = $2"
            ),
            &[id.into(), project_id.into()],
        )
        .await
    }

    /// A job deployment's requests in any of `statuses`, oldest first.
    pub async fn job_requests(
        &self,
        deployment_id: &str,
        statuses: &[&str],
    ) -> Result<Vec<InferenceRequestRecord>> {
        let mut args: Vec<Arg> = vec![deployment_id.into()];
        let mut wanted = Vec::new();
        for status in statuses {
            args.push((*status).into());
            wanted.push(format!("${}", args.len()));
        }
        // Without what was asked and answered (up to megabytes each):
        // `inference_request` reads those for the one being sent.
        self.fetch_all(
            &format!(
                "SELECT {LIGHT_REQUEST_COLUMNS} FROM inference_requests \
                 WHERE deployment_id = $1 AND status IN ({}) ORDER BY created_ms, id",
                wanted.join(", ")
            ),
            &args,
        )
        .await
    }

    /// The job request a replica runs.
    pub async fn job_request_of(
        &self,
        instance_id: &str,
    ) -> Result<Option<InferenceRequestRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {LIGHT_REQUEST_COLUMNS} FROM inference_requests WHERE instance_id = $1"
            ),
            &[instance_id.into()],
        )
        .await
    }

    /// Moves a request from `from` to `to` (giving it its replica and
    /// deadline when they are given): whether this call moved it.
    pub async fn move_job_request(
        &self,
        id: &str,
        from: &str,
        to: &str,
        instance_id: Option<&str>,
        deadline_ms: Option<i64>,
    ) -> Result<bool> {
        let counts = self
            .run_statements(
                "move_job_request",
                vec![(
                    "UPDATE inference_requests SET status = $3, \
                     instance_id = COALESCE($4, instance_id), \
                     deadline_ms = COALESCE($5, deadline_ms), updated_ms = $6 \
                     WHERE id = $1 AND status = $2"
                        .to_string(),
                    vec![
                        id.into(),
                        from.into(),
                        to.into(),
                        instance_id.into(),
                        match deadline_ms {
                            Some(ms) => ms.into(),
                            None => Arg::NullInt,
                        },
                        crate::now_ms().into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Forgets async requests that ended before `before_ms`, and any made
    /// before `abandoned_ms` (longer ago than any can wait and run: its
    /// process stopped under it).
    pub async fn prune_inference_requests(&self, before_ms: i64, abandoned_ms: i64) -> Result<u64> {
        let counts = self
            .run_statements(
                "prune_inference_requests",
                vec![(
                    "DELETE FROM inference_requests WHERE (updated_ms < $1 \
                     AND status IN ('Completed', 'Ending')) OR created_ms < $2"
                        .to_string(),
                    vec![before_ms.into(), abandoned_ms.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0])
    }
}
