//! Host agents: join tokens, registered agents, and the desired state each
//! agent works towards with what it last observed.
//!
//! The control plane never calls an agent. It writes what it wants of an
//! object on a host (`agent_work.desired`) under a new generation of that
//! host; the agent, on whichever replica it talks to, reads what changed
//! since the generation it last saw, makes the host match, and reports what
//! it observed for the generation it worked on. A report for an older
//! generation than the row's changes nothing.

use crate::db::{Arg, Conn, DbError};
use crate::writer::{Commit, Shape};
use crate::{Result, Store, now};
use futures::future::BoxFuture;
use std::sync::Arc;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JoinTokenRecord {
    pub id: String,
    pub token_hash: String,
    pub description: String,
    pub created_by: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    /// The one host whose agent this token may replace, if any.
    pub replaces: Option<String>,
    /// How many more hosts it may admit; `None`: any number.
    pub uses_left: Option<i64>,
    /// The one host name it admits an agent under; `None`: any new one.
    pub hostname: Option<String>,
}

/// A join token to keep ([`Store::insert_join_token`]).
#[derive(Clone, Copy, Debug)]
pub struct NewJoinToken<'a> {
    pub id: &'a str,
    pub token_hash: &'a str,
    pub description: &'a str,
    pub created_by: Option<&'a str>,
    pub expires_at: &'a str,
    /// The one host whose agent it may replace.
    pub replaces: Option<&'a str>,
    /// How many hosts it admits; `None`: any number.
    pub uses: Option<i64>,
    /// The one host name it admits an agent under; `None`: any new one.
    pub hostname: Option<&'a str>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentRecord {
    pub hostname: String,
    pub credential_hash: String,
    pub driver: String,
    /// What the agent reported of its host, as JSON.
    pub inventory: String,
    pub generation: i64,
    pub reachable: i64,
    pub last_seen: String,
    pub registered_at: String,
}

/// One object's desired state on a host and what the agent observed of it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WorkRecord {
    pub hostname: String,
    pub key: String,
    pub generation: i64,
    pub desired: String,
    pub observed_generation: i64,
    pub observed: Option<String>,
}

/// A row of [`Store::desired_since`]: the agent's generation, and one
/// object changed since, if any.
#[derive(sqlx::FromRow)]
struct DesiredRow {
    agent_generation: i64,
    key: Option<String>,
    generation: Option<i64>,
    desired: Option<String>,
    observed_generation: Option<i64>,
    observed: Option<String>,
}

const JOIN_TOKEN_COLUMNS: &str = "id, token_hash, description, created_by, created_at, expires_at, revoked_at, replaces, \
     uses_left, hostname";
const AGENT_COLUMNS: &str =
    "hostname, credential_hash, driver, inventory, generation, reachable, last_seen, registered_at";
const WORK_COLUMNS: &str = "hostname, key, generation, desired, observed_generation, observed";

impl Store {
    pub async fn insert_join_token(&self, token: &NewJoinToken<'_>) -> Result<()> {
        self.run_statements(
            "insert_join_token",
            vec![(
                "INSERT INTO join_tokens (id, token_hash, description, created_by, created_at, \
                 expires_at, replaces, uses_left, hostname) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    .into(),
                vec![
                    token.id.into(),
                    token.token_hash.into(),
                    token.description.into(),
                    token.created_by.into(),
                    now().into(),
                    token.expires_at.into(),
                    token.replaces.into(),
                    token.uses.into(),
                    token.hostname.into(),
                ],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    pub async fn join_token_by_hash(&self, token_hash: &str) -> Result<Option<JoinTokenRecord>> {
        self.fetch_optional(
            &format!("SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens WHERE token_hash = $1"),
            &[token_hash.into()],
        )
        .await
    }

    pub async fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>> {
        self.fetch_all(
            &format!("SELECT {JOIN_TOKEN_COLUMNS} FROM join_tokens ORDER BY created_at DESC, id"),
            &[],
        )
        .await
    }

    /// Takes one of a join token's uses; `false`, changing nothing, when
    /// it has none left (or is revoked). A token of any number of uses
    /// always has one.
    pub async fn use_join_token(&self, id: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "use_join_token",
                vec![(
                    "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = $1 \
                     AND revoked_at IS NULL AND (uses_left IS NULL OR uses_left > 0)"
                        .into(),
                    vec![id.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Revokes a join token; `false` when it does not exist or already was.
    pub async fn revoke_join_token(&self, id: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "revoke_join_token",
                vec![(
                    "UPDATE join_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
                        .into(),
                    vec![now().into(), id.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Records the agent of `hostname` with a new credential, replacing the
    /// one of an earlier agent of the same host (a host reinstalled, or an
    /// agent that lost its state). Its desired state stays: the new agent
    /// works towards it.
    /// Records a host's new agent, in place of the one whose credential
    /// hash is `replacing` (none: the host had no agent). `false`, changing
    /// nothing, when another agent registered meanwhile: of two agents
    /// registering as one host at once, one gets the host, and the other's
    /// credential does not overwrite the winner's.
    pub async fn register_agent(
        &self,
        hostname: &str,
        credential_hash: &str,
        driver: &str,
        inventory: &str,
        offer: &AgentOffer,
        replacing: Option<&str>,
    ) -> Result<bool> {
        let at = now();
        let statements =
            vec![(
                "INSERT INTO agents (hostname, credential_hash, driver, inventory, generation, \
                 reachable, last_seen, registered_at, images, cpus) \
                 VALUES ($1, $2, $3, $4, 0, 1, $5, $5, CASE WHEN $3 = 'sim' THEN NULL ELSE $6 END, \
                 CASE WHEN $3 = 'sim' THEN NULL ELSE $7 END) \
                 ON CONFLICT (hostname) DO UPDATE SET credential_hash = excluded.credential_hash, \
                 driver = excluded.driver, inventory = excluded.inventory, reachable = 1, \
                 last_seen = excluded.last_seen, registered_at = excluded.registered_at, \
                 images = excluded.images, cpus = excluded.cpus \
                 WHERE agents.credential_hash = $8"
                    .into(),
                vec![
                    hostname.into(),
                    credential_hash.into(),
                    driver.into(),
                    inventory.into(),
                    at.into(),
                    offer.images.as_deref().into(),
                    offer.cpus.as_str().into(),
                    // No agent before: any row found is another's, new.
                    replacing.unwrap_or("").into(),
                ],
            ), (
                // What it offers may have changed: placement reads it again.
                "UPDATE hosts SET generation = generation + 1 WHERE hostname = $1".into(),
                vec![hostname.into()],
            ), (
                // A new agent (its host reinstalled, its state lost) reports
                // afresh on everything: what the last one saw is not true.
                "UPDATE agent_work SET observed_generation = 0 WHERE hostname = $1".into(),
                vec![hostname.into()],
            )];
        let store = self.clone();
        let write = async move {
            let counts = store
                .run_statements("register_agent", statements, |c| c[0] == 1)
                .await?;
            Ok(counts[0] == 1)
        };
        // An earlier credential of the host no longer holds.
        let host = hostname.to_string();
        self.written_then_told_here(write, move |registered| registered.then_some(host))
            .await
    }

    /// The most free disk (GB) any ready host of `location` reported
    /// through its agent; `None` when none reported any.
    pub async fn location_disk_gb(&self, location: &str) -> Result<Option<u64>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT a.inventory FROM agents a JOIN hosts h ON h.hostname = a.hostname \
                 WHERE h.region = $1 AND h.status = 'READY'",
                &[location.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|(inventory,)| {
                serde_json::from_str::<serde_json::Value>(inventory)
                    .ok()?
                    .get("disk_gb")?
                    .as_u64()
            })
            .max())
    }

    pub async fn agent(&self, hostname: &str) -> Result<Option<AgentRecord>> {
        self.fetch_optional(
            &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE hostname = $1"),
            &[hostname.into()],
        )
        .await
    }

    pub async fn agent_by_credential(&self, credential_hash: &str) -> Result<Option<AgentRecord>> {
        self.fetch_optional(
            &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE credential_hash = $1"),
            &[credential_hash.into()],
        )
        .await
    }

    /// Hosts whose agent misses its heartbeats: host id to host name.
    pub async fn unreachable_hosts(&self) -> Result<std::collections::HashMap<String, String>> {
        let rows: Vec<(String, String)> = self
            .fetch_all(
                "SELECT hosts.id, hosts.hostname FROM hosts JOIN agents \
                 ON agents.hostname = hosts.hostname WHERE agents.reachable = 0",
                &[],
            )
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Notes that the agent of `hostname` was heard from, with what it now
    /// reports of its host (its inventory, and apart what it offers
    /// placement). Answers whether it had been unreachable, and whether
    /// its offer changed; either bumps its host.
    pub async fn agent_heartbeat(
        &self,
        hostname: &str,
        inventory: &str,
        offer: &AgentOffer,
    ) -> Result<HeartbeatNews> {
        let (hostname, inventory, offer) =
            (hostname.to_string(), inventory.to_string(), offer.clone());
        self.write("agent_heartbeat", move |mut conn| {
            let (hostname, inventory, offer) = (hostname.clone(), inventory.clone(), offer.clone());
            Box::pin(async move {
                let back = conn
                    .execute(
                        "UPDATE agents SET reachable = 1 WHERE hostname = $1 AND reachable = 0",
                        &[hostname.as_str().into()],
                    )
                    .await?
                    == 1;
                let offer_changed = conn
                    .execute(
                        &format!(
                            "UPDATE agents SET images = {SIM_NONE_1}, cpus = {SIM_NONE_2} \
                             WHERE hostname = $3 AND (images IS DISTINCT FROM {SIM_NONE_1} \
                             OR cpus IS DISTINCT FROM {SIM_NONE_2})"
                        ),
                        &[
                            offer.images.into(),
                            offer.cpus.into(),
                            hostname.as_str().into(),
                        ],
                    )
                    .await?
                    == 1;
                conn.execute(
                    "UPDATE agents SET last_seen = $1, inventory = $2 WHERE hostname = $3",
                    &[
                        now().into(),
                        inventory.as_str().into(),
                        hostname.as_str().into(),
                    ],
                )
                .await?;
                if back || offer_changed {
                    bump_host(&mut conn, &hostname).await?;
                }
                Ok(Commit::Keep(HeartbeatNews {
                    back,
                    offer_changed,
                }))
            })
        })
        .await
    }

    /// Notes that these agents were heard from at `at` (heartbeats a
    /// replica gathered), in one transaction; answers those that were
    /// unreachable and now are not (their hosts' desired states are bumped,
    /// so their agents look again).
    pub async fn agents_seen(&self, hostnames: &[String], at: &str) -> Result<Vec<String>> {
        let (hostnames, at) = (hostnames.to_vec(), at.to_string());
        self.write("agents_seen", move |mut conn| {
            let (hostnames, at) = (hostnames.clone(), at.clone());
            Box::pin(async move {
                let mut back = Vec::new();
                // A few hundred at a time: SQLite finds a statement's
                // parameters by name, one walk of them each.
                for chunk in hostnames.chunks(200) {
                    let names: Vec<Arg> = chunk.iter().map(|h| Arg::from(h.as_str())).collect();
                    let marks = |from: usize| -> String {
                        (from..from + chunk.len())
                            .map(|i| format!("${i}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    back.extend(
                        conn.fetch_texts(
                            &format!(
                                "SELECT hostname FROM agents WHERE reachable = 0 \
                                 AND hostname IN ({})",
                                marks(1)
                            ),
                            &names,
                        )
                        .await?,
                    );
                    let mut args: Vec<Arg> = vec![at.as_str().into()];
                    args.extend(names);
                    conn.execute(
                        &format!(
                            "UPDATE agents SET last_seen = $1, reachable = 1 \
                             WHERE hostname IN ({})",
                            marks(2)
                        ),
                        &args,
                    )
                    .await?;
                }
                for hostname in &back {
                    bump_host(&mut conn, hostname).await?;
                }
                Ok(Commit::Keep(back))
            })
        })
        .await
    }

    /// Marks unreachable every agent not heard from since `before`; answers
    /// their host names.
    pub async fn mark_agents_unreachable(&self, before: &str) -> Result<Vec<String>> {
        let stale: Vec<(String,)> = self
            .fetch_all(
                "SELECT hostname FROM agents WHERE reachable = 1 AND last_seen < $1",
                &[before.into()],
            )
            .await?;
        let mut lost = Vec::new();
        for (hostname,) in stale {
            let (name, before) = (hostname.clone(), before.to_string());
            let flipped = self
                .write("mark_agent_unreachable", move |mut conn| {
                    let (hostname, before) = (name.clone(), before.clone());
                    Box::pin(async move {
                        let flipped = conn
                            .execute(
                                "UPDATE agents SET reachable = 0 WHERE hostname = $1 \
                                 AND reachable = 1 AND last_seen < $2",
                                &[hostname.as_str().into(), before.as_str().into()],
                            )
                            .await?
                            == 1;
                        if flipped {
                            bump_host(&mut conn, &hostname).await?;
                        }
                        Ok(Commit::Keep(flipped))
                    })
                })
                .await?;
            if flipped {
                lost.push(hostname);
            }
        }
        Ok(lost)
    }

    /// Forgets answered scripts and join tokens expired before `before`.
    pub async fn prune_agent_work(&self, before: &str) -> Result<()> {
        self.run_statements(
            "prune_agent_work",
            vec![
                (
                    "DELETE FROM agent_work WHERE key LIKE 'script:%' \
                     AND observed_generation >= generation AND updated_at < $1"
                        .into(),
                    vec![before.into()],
                ),
                (
                    "DELETE FROM join_tokens WHERE expires_at < $1".into(),
                    vec![before.into()],
                ),
            ],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Sets the desired state of `key` on `hostname` under the host's next
    /// generation; answers that generation and whether the agent is
    /// reachable (as its heartbeats last said), or `None` when the host has
    /// no agent.
    pub async fn set_desired(
        &self,
        hostname: &str,
        key: &str,
        desired: &str,
    ) -> Result<Option<(i64, bool)>> {
        let (host, key, desired) = (hostname.to_string(), key.to_string(), desired.to_string());
        let store = self.clone();
        let notice = format!("{DESIRED}{hostname}");
        let write = async move {
            let shape = store.write.one_statement_on_postgres();
            store
                .write
                .write("set_desired", shape, move |conn| {
                    let (hostname, key, desired) = (host.clone(), key.clone(), desired.clone());
                    Box::pin(
                        async move { set_desired(conn, &hostname, &key, &desired, None).await },
                    )
                })
                .await
        };
        self.written_then_told(write, move |written| written.map(|_| notice))
            .await
    }

    /// Writes `previous` back as `key`'s desired state, as
    /// [`Store::set_desired`] does, but only while the key still holds
    /// `ours`: a change that failed is undone without undoing one written
    /// over it meanwhile. `false`: another change is there, nothing
    /// written.
    pub async fn restore_desired(
        &self,
        hostname: &str,
        key: &str,
        ours: &str,
        previous: &str,
    ) -> Result<bool> {
        let notice = format!("{DESIRED}{hostname}");
        let (hostname, key, ours, previous) = (
            hostname.to_string(),
            key.to_string(),
            ours.to_string(),
            previous.to_string(),
        );
        let store = self.clone();
        let write = async move {
            store
                .write("restore_desired", move |conn| {
                    let (hostname, key, ours, previous) = (
                        hostname.clone(),
                        key.clone(),
                        ours.clone(),
                        previous.clone(),
                    );
                    Box::pin(async move {
                        set_desired(conn, &hostname, &key, &previous, Some(&ours)).await
                    })
                })
                .await
        };
        let written = self
            .written_then_told(write, move |written| written.map(|_| notice))
            .await?;
        Ok(written.is_some())
    }

    /// The objects of `hostname` changed after generation `after`, oldest
    /// change first.
    pub async fn work_after(&self, hostname: &str, after: i64) -> Result<Vec<WorkRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {WORK_COLUMNS} FROM agent_work WHERE hostname = $1 AND generation > $2 \
                 ORDER BY generation"
            ),
            &[hostname.into(), after.into()],
        )
        .await
    }

    /// What a long-poll of `hostname`'s agent after generation `after`
    /// reads, in one statement: the agent's generation now and the objects
    /// changed since `after`, oldest change first (every object when
    /// `after` is ahead of the agent: a generation from before the store
    /// was reset). `None`: the host has no agent.
    pub async fn desired_since(
        &self,
        hostname: &str,
        after: i64,
    ) -> Result<Option<(i64, Vec<WorkRecord>)>> {
        let read = |after: i64| async move {
            self.fetch_all::<DesiredRow>(
                "SELECT a.generation AS agent_generation, w.key, w.generation, w.desired, \
                 w.observed_generation, w.observed FROM agents a LEFT JOIN agent_work w \
                 ON w.hostname = a.hostname AND w.generation > $2 \
                 WHERE a.hostname = $1 ORDER BY w.generation",
                &[hostname.into(), after.into()],
            )
            .await
        };
        let mut rows = read(after).await?;
        let Some(now) = rows.first().map(|row| row.agent_generation) else {
            return Ok(None);
        };
        if after > now {
            rows = read(0).await?;
        }
        let work = rows
            .into_iter()
            .filter_map(|row| {
                Some(WorkRecord {
                    hostname: hostname.to_string(),
                    key: row.key?,
                    generation: row.generation?,
                    desired: row.desired?,
                    observed_generation: row.observed_generation?,
                    observed: row.observed,
                })
            })
            .collect();
        Ok(Some((now, work)))
    }

    pub async fn work(&self, hostname: &str, key: &str) -> Result<Option<WorkRecord>> {
        self.fetch_optional(
            &format!("SELECT {WORK_COLUMNS} FROM agent_work WHERE hostname = $1 AND key = $2"),
            &[hostname.into(), key.into()],
        )
        .await
    }

    /// Records what the agent observed of `key` at `generation`. Changes
    /// nothing (answers `false`) when the row has moved on to a newer
    /// generation or already has this report.
    pub async fn set_observed(
        &self,
        hostname: &str,
        key: &str,
        generation: i64,
        observed: &str,
    ) -> Result<bool> {
        let statement = (
            "UPDATE agent_work SET observed_generation = $1, observed = $2, updated_at = $3 \
             WHERE hostname = $4 AND key = $5 AND generation = $1 AND observed_generation < $1"
                .to_string(),
            vec![
                generation.into(),
                observed.into(),
                now().into(),
                hostname.into(),
                key.into(),
            ],
        );
        let store = self.clone();
        let write = async move { store.run_statement("set_observed", statement).await };
        let notice = format!("{REPORT}{hostname}");
        let count = self
            .written_then_told(write, move |count| (*count == 1).then_some(notice))
            .await?;
        Ok(count == 1)
    }

    /// Forgets an object whose desired state was reached for good (an
    /// instance deleted), unless it changed since `generation`.
    pub async fn forget_work(&self, hostname: &str, key: &str, generation: i64) -> Result<()> {
        self.run_statement(
            "forget_work",
            (
                "DELETE FROM agent_work WHERE hostname = $1 AND key = $2 AND generation <= $3"
                    .into(),
                vec![hostname.into(), key.into(), generation.into()],
            ),
        )
        .await?;
        Ok(())
    }
}

/// Moves a host's version, so that every replica's placement view reloads
/// it (its reachability changed).
/// A simulated host offers nothing of its own: its agent reports the
/// machine it runs on, not its host's CPUs, and it takes any image (an
/// older sim agent still reports an empty list of images). In the
/// agent's row, the first or second parameter, or none for a sim agent.
const SIM_NONE_1: &str = "CASE WHEN driver = 'sim' THEN NULL ELSE $1 END";
const SIM_NONE_2: &str = "CASE WHEN driver = 'sim' THEN NULL ELSE $2 END";

/// What a heartbeat written changed (see [`Store::agent_heartbeat`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatNews {
    /// The agent had been unreachable.
    pub back: bool,
    /// What it offers placement is not what it said before.
    pub offer_changed: bool,
}

/// What an agent offers placement (migration 0033): the CPUs instances may
/// have (Linux list format), and the images its host has, if its driver
/// runs any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOffer {
    pub cpus: String,
    pub images: Option<String>,
}

async fn bump_host(conn: &mut Conn<'_>, hostname: &str) -> std::result::Result<(), DbError> {
    conn.execute(
        "UPDATE hosts SET generation = generation + 1 WHERE hostname = $1",
        &[hostname.into()],
    )
    .await?;
    Ok(())
}

/// [`set_desired`] on PostgreSQL as one statement, run without a
/// transaction around it: the agent's row taken and moved to its next
/// generation first, then the key's row written at it (nothing, when the
/// host has no agent). One round trip a change instead of four (`BEGIN`,
/// two statements, `COMMIT`): every instance made, stopped, started or
/// deleted on a host with an agent writes one.
const SET_DESIRED_AT_ONCE: &str = "WITH bumped AS (\
     UPDATE agents SET generation = generation + 1 WHERE hostname = $1 \
     RETURNING generation, reachable), \
     written AS (INSERT INTO agent_work (hostname, key, generation, desired, \
     observed_generation, updated_at) SELECT $1, $2, generation, $3, 0, $4 FROM bumped \
     ON CONFLICT (hostname, key) DO UPDATE SET generation = excluded.generation, \
     desired = excluded.desired, updated_at = excluded.updated_at) \
     SELECT generation, reachable FROM bumped";

/// Sets `key`'s desired state at the agent's next generation; with
/// `only_over`, only while the key holds that (checked under the agent
/// row's lock, which every write of its desired state takes first).
async fn set_desired(
    mut conn: Conn<'_>,
    hostname: &str,
    key: &str,
    desired: &str,
    only_over: Option<&str>,
) -> std::result::Result<Commit<Option<(i64, bool)>>, DbError> {
    if only_over.is_none() && conn.is_postgres() {
        let args: Vec<Arg> = vec![hostname.into(), key.into(), desired.into(), now().into()];
        let bumped = conn.fetch_ints(SET_DESIRED_AT_ONCE, &args).await?;
        return Ok(Commit::Keep(match bumped[..] {
            [generation, reachable] => Some((generation, reachable != 0)),
            _ => None,
        }));
    }
    let bumped = conn
        .fetch_ints(
            "UPDATE agents SET generation = generation + 1 WHERE hostname = $1 \
             RETURNING generation, reachable",
            &[hostname.into()],
        )
        .await?;
    let [generation, reachable] = bumped[..] else {
        return Ok(Commit::Undo(None));
    };
    if let Some(ours) = only_over {
        let now = conn
            .fetch_text(
                "SELECT desired FROM agent_work WHERE hostname = $1 AND key = $2",
                &[hostname.into(), key.into()],
            )
            .await?;
        if now.as_deref() != Some(ours) {
            return Ok(Commit::Undo(None));
        }
    }
    let args: Vec<Arg> = vec![
        hostname.into(),
        key.into(),
        generation.into(),
        desired.into(),
        now().into(),
    ];
    conn.execute(
        "INSERT INTO agent_work (hostname, key, generation, desired, observed_generation, \
         updated_at) VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (hostname, key) DO UPDATE SET \
         generation = excluded.generation, desired = excluded.desired, \
         updated_at = excluded.updated_at",
        &args,
    )
    .await?;
    Ok(Commit::Keep(Some((generation, reachable != 0))))
}

/// A terminal session asked of a replica that does not hold the host's
/// agent channel.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRequestRecord {
    pub session: String,
    pub hostname: String,
    pub instance_id: String,
    /// The session request, JSON.
    pub request: String,
    /// The asking replica's base URL, for the agent to dial.
    pub dial_back: String,
    pub created_at: String,
}

impl Store {
    /// Records a session for the replica holding `hostname`'s channel to
    /// take.
    pub async fn request_session(&self, request: &SessionRequestRecord) -> Result<()> {
        self.run_statements(
            "request_session",
            vec![(
                "INSERT INTO session_requests (session, hostname, instance_id, request, \
                 dial_back, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
                    .into(),
                vec![
                    (&request.session).into(),
                    (&request.hostname).into(),
                    (&request.instance_id).into(),
                    (&request.request).into(),
                    (&request.dial_back).into(),
                    (&request.created_at).into(),
                ],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// The sessions asked and not yet taken, oldest first (at most 1,000).
    /// The table holds only requests seconds old, so a replica reads them
    /// all and keeps those of the channels it holds: the read does not grow
    /// with the fleet.
    /// Requests made before `since` are left out: one whose asker went
    /// without withdrawing it (a client gone, a replica crashed) and
    /// whose host nobody holds would otherwise stay first in line.
    pub async fn pending_session_requests(&self, since: &str) -> Result<Vec<SessionRequestRecord>> {
        self.fetch_all(
            "SELECT session, hostname, instance_id, request, dial_back, created_at \
             FROM session_requests WHERE created_at >= $1 \
             ORDER BY created_at, session LIMIT 1000",
            &[since.into()],
        )
        .await
    }

    /// Removes the session requests made before `before`: nobody waits
    /// for them any more.
    pub async fn prune_session_requests(&self, before: &str) -> Result<u64> {
        let counts = self
            .run_statements(
                "prune_session_requests",
                vec![(
                    "DELETE FROM session_requests WHERE created_at < $1".into(),
                    vec![before.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0])
    }

    /// Removes a session request; `true` for the one caller that removed
    /// it (the replica that takes it, or the asker giving up).
    pub async fn take_session_request(&self, session: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "take_session_request",
                vec![(
                    "DELETE FROM session_requests WHERE session = $1".into(),
                    vec![session.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }
}

/// The channel agents' changes are told on, on PostgreSQL: `desired
/// <hostname>` when a host's desired state changes and `report
/// <hostname>` when its agent reports, each sent once its write committed
/// ([`Store::tell_replicas`]); the bare host name, by a trigger (migration
/// 0059), when its agent's credential changes or the agent goes.
const AGENT_CHANNEL: &str = "tessera_agents";

/// Tells every replica's listener of agents' changes, on PostgreSQL: the
/// notices that callers ask for while one statement of them runs go
/// together in the next ([`crate::batch`]). Its transaction commits
/// without waiting for the WAL to reach the disk: a notice is a wake-up,
/// not a record, and PostgreSQL lets one notifying transaction commit at
/// a time (it holds a lock on the notification queue from its commit's
/// start to its end). When the notices were sent by triggers in the
/// writes themselves (migrations 0025 and 0029), that lock made every
/// desired state and report commit one after another, each waiting for
/// its own flush: with real agents, backends waiting for it were most of
/// what a sample of PostgreSQL's activity saw during creations.
pub(crate) struct NoticeBatch(crate::writer::Writer);

impl NoticeBatch {
    pub(crate) fn start(pool: &crate::pg::PgPool) -> crate::batch::Batcher<NoticeBatch> {
        let writer = crate::writer::Writer::Postgres(pool.clone());
        crate::batch::Batcher::start(NoticeBatch(writer), pool.clone())
    }
}

/// [`NoticeBatch`]'s statement: `$1` the channel, `$2` the notices as a
/// JSON list of text.
const NOTIFY_MANY: &str = "SELECT set_config('synchronous_commit', 'off', true) AS durable, \
     (SELECT COUNT(pg_notify($1, n)) FROM json_array_elements_text(CAST($2 AS json)) AS n) AS sent";

async fn notify(conn: &mut Conn<'_>, notices: &[Arc<String>]) -> std::result::Result<(), DbError> {
    let list = serde_json::Value::from(notices.iter().map(|n| n.as_str()).collect::<Vec<_>>());
    let args: Vec<Arg> = vec![AGENT_CHANNEL.into(), list.to_string().into()];
    conn.fetch_rows(NOTIFY_MANY, &args).await?;
    Ok(())
}

impl crate::batch::Batch for NoticeBatch {
    type Input = String;
    type Answer = ();
    const WHAT: &'static str = "tell_replicas";

    fn one(&self, notice: Arc<String>) -> BoxFuture<'static, Result<()>> {
        let writer = self.0.clone();
        Box::pin(async move {
            writer
                .write("tell_replicas", Shape::OneStatement, move |mut conn| {
                    let notice = notice.clone();
                    Box::pin(async move {
                        notify(&mut conn, &[notice]).await?;
                        Ok(Commit::Keep(()))
                    })
                })
                .await
        })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        notices: &'c [Arc<String>],
    ) -> BoxFuture<'c, std::result::Result<Vec<()>, DbError>> {
        Box::pin(async move {
            notify(&mut conn, notices).await?;
            Ok(vec![(); notices.len()])
        })
    }
}

/// The start of a payload that names a host with a new desired state.
const DESIRED: &str = "desired ";

/// The start of a payload that names a host whose agent reported.
const REPORT: &str = "report ";

/// Changes of agents' desired states and reports, whichever replica made
/// them, as host names (PostgreSQL's `LISTEN`, on a connection of its own).
/// On SQLite, the same changes as this process makes them, and whether
/// another process writes the same file.
pub struct AgentChanges(Listening);

enum Listening {
    Postgres(sqlx::postgres::PgListener),
    Sqlite(LocalChanges),
}

/// How often a SQLite store looks whether another process committed to its
/// file (`PRAGMA data_version` on the writer's connection, which moves only
/// for other connections' commits).
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long no other process must have written a SQLite file before its
/// changes are taken as all heard again.
const QUIET_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What a SQLite store's listener hears: its own process's changes (a
/// desired state, a report, a credential) and its echoes, as the store
/// tells them in the process once committed, and another
/// process's commits to the file, which nothing tells: those are looked
/// for every [`LOOK_EVERY`], and the first of them is
/// [`AgentChange::Unheard`] (this process cannot know what it changed).
/// Once none has come for [`QUIET_FOR`], [`AgentChange::Heard`].
struct LocalChanges {
    store: Store,
    told: tokio::sync::broadcast::Receiver<AgentChange>,
    look: tokio::time::Interval,
    /// The look under way: a write job, which may wait for the writer
    /// (another process holding the file's lock), so it runs beside what
    /// is told rather than before it.
    looking: Option<futures::future::BoxFuture<'static, Result<i64>>>,
    /// The writer's `data_version` at the last look.
    version: i64,
    /// When another process's commit was last seen, while it is taken as
    /// writing.
    elsewhere: Option<tokio::time::Instant>,
    quiet_for: std::time::Duration,
}

impl LocalChanges {
    async fn next(&mut self) -> Result<AgentChange> {
        loop {
            tokio::select! {
                told = self.told.recv() => {
                    return match told {
                        Ok(change) => Ok(change),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            Ok(AgentChange::Missed)
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            Err(crate::StoreError::Closed)
                        }
                    };
                }
                _ = self.look.tick(), if self.looking.is_none() => {
                    let store = self.store.clone();
                    self.looking = Some(Box::pin(async move { store.data_version().await }));
                }
                version = async { self.looking.as_mut().expect("a look").await }, if self.looking.is_some() => {
                    self.looking = None;
                    let version = version?;
                    let now = tokio::time::Instant::now();
                    if version != self.version {
                        self.version = version;
                        let first = self.elsewhere.is_none();
                        self.elsewhere = Some(now);
                        if first {
                            return Ok(AgentChange::Unheard);
                        }
                    } else if self
                        .elsewhere
                        .is_some_and(|at| now.duration_since(at) >= self.quiet_for)
                    {
                        self.elsewhere = None;
                        return Ok(AgentChange::Heard);
                    }
                }
            }
        }
    }
}

/// The start of an echo's payload ([`Store::echo_agent_changes`]): no
/// host name has a space.
const ECHO: &str = "echo ";

/// What [`AgentChanges::next`] heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentChange {
    /// This host's desired state changed.
    Desired(String),
    /// This host's agent reported.
    Reported(String),
    /// This host's agent has another credential, or is gone (or, from a
    /// replica before migration 0029, anything of it changed).
    Host(String),
    /// The connection was lost and made again: changes meanwhile were
    /// missed, so every waiter should look again.
    Missed,
    /// An echo some replica sent ([`Store::echo_agent_changes`]), with its
    /// token.
    Echo(String),
    /// SQLite: another process wrote the file, and goes on doing so for
    /// all this process knows. Its changes are not told: anything may have
    /// changed, now and until [`AgentChange::Heard`].
    Unheard,
    /// SQLite: no other process has written the file for a while (after
    /// [`AgentChange::Unheard`]); each change is heard again.
    Heard,
}

/// The change a notice's payload tells.
fn change_told(payload: &str) -> AgentChange {
    if let Some(token) = payload.strip_prefix(ECHO) {
        AgentChange::Echo(token.to_string())
    } else if let Some(hostname) = payload.strip_prefix(DESIRED) {
        AgentChange::Desired(hostname.to_string())
    } else if let Some(hostname) = payload.strip_prefix(REPORT) {
        AgentChange::Reported(hostname.to_string())
    } else {
        AgentChange::Host(payload.to_string())
    }
}

impl AgentChanges {
    pub async fn next(&mut self) -> Result<AgentChange> {
        let listener = match &mut self.0 {
            Listening::Postgres(listener) => listener,
            Listening::Sqlite(local) => return local.next().await,
        };
        match listener
            .try_recv()
            .await
            .map_err(crate::StoreError::Query)?
        {
            Some(notification) => Ok(change_told(notification.payload())),
            None => Ok(AgentChange::Missed),
        }
    }

    /// Looks for another process's commits every `look` and takes the
    /// file as written by this process alone after `quiet` without one
    /// (SQLite; tests shorten [`LOOK_EVERY`] and [`QUIET_FOR`]).
    #[doc(hidden)]
    pub fn looking(mut self, look: std::time::Duration, quiet: std::time::Duration) -> Self {
        if let Listening::Sqlite(local) = &mut self.0 {
            local.look = tokio::time::interval(look);
            local
                .look
                .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            local.quiet_for = quiet;
        }
        self
    }
}

impl Store {
    /// Listens for agents' changes made by any replica (PostgreSQL). On
    /// SQLite, for the changes this process makes, and whether another
    /// process writes the file.
    pub async fn agent_changes(&self) -> Result<AgentChanges> {
        let Some(url) = &self.listen_url else {
            let told = match &self.local_changes {
                Some(sender) => sender.subscribe(),
                None => return Err(crate::StoreError::Closed),
            };
            // From here on, another process's commit moves it.
            let version = self.data_version().await?;
            let mut look = tokio::time::interval(LOOK_EVERY);
            look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            return Ok(AgentChanges(Listening::Sqlite(LocalChanges {
                store: self.clone(),
                told,
                look,
                version,
                looking: None,
                elsewhere: None,
                quiet_for: QUIET_FOR,
            })));
        };
        let mut listener = sqlx::postgres::PgListener::connect(url)
            .await
            .map_err(crate::StoreError::Query)?;
        listener
            .listen(AGENT_CHANNEL)
            .await
            .map_err(crate::StoreError::Query)?;
        Ok(AgentChanges(Listening::Postgres(listener)))
    }

    /// SQLite: the writer connection's `data_version`, which other
    /// connections' commits move (this process's writes go through that
    /// connection, its checkpoints commit nothing).
    async fn data_version(&self) -> Result<i64> {
        self.write_one("data_version", |mut conn| {
            Box::pin(async move {
                let version = conn.fetch_int("PRAGMA data_version", &[]).await?;
                Ok(Commit::Undo(version.unwrap_or_default()))
            })
        })
        .await
    }

    /// [`Store::written_then_told`] for a change PostgreSQL's trigger tells
    /// every replica (a new credential, an agent gone): `host` makes of the
    /// answer the host whose agent changed, told on SQLite to this
    /// process's listener as the trigger's payload is (the bare host name).
    /// On PostgreSQL `write` runs as it is.
    pub(crate) async fn written_then_told_here<T, W, H>(&self, write: W, host: H) -> Result<T>
    where
        T: Send + 'static,
        W: std::future::Future<Output = Result<T>> + Send + 'static,
        H: FnOnce(&T) -> Option<String> + Send + 'static,
    {
        if self.local_changes.is_none() {
            return write.await;
        }
        self.written_then_told(write, host).await
    }

    /// SQLite: tells this process's listener of a change to agents that
    /// PostgreSQL's notices and triggers would tell (nobody listening:
    /// nothing to do).
    pub(crate) fn tell_locally(&self, change: AgentChange) {
        if let Some(sender) = &self.local_changes {
            let _ = sender.send(change);
        }
    }

    /// Runs `write`, and once it has committed tells the replicas what
    /// `notice` makes of its answer (nothing: `None`). Both run to their
    /// end in a task of their own: a caller dropped while its write was
    /// committing (a request's timeout) still has its change told, and
    /// the caller has its answer as soon as the write has committed,
    /// without waiting for the notice. On SQLite the notice goes to this
    /// process's listener, which wakes the change's waiters.
    async fn written_then_told<T, W, N>(&self, write: W, notice: N) -> Result<T>
    where
        T: Send + 'static,
        W: std::future::Future<Output = Result<T>> + Send + 'static,
        N: FnOnce(&T) -> Option<String> + Send + 'static,
    {
        let store = self.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let written = write.await;
            let told = written.as_ref().ok().and_then(notice);
            let _ = reply.send(written);
            if let Some(told) = told {
                store.tell_replicas(told).await;
            }
        });
        answer.await.map_err(|_| crate::StoreError::Closed)?
    }

    /// Tells the other replicas of a change of an agent's work once it
    /// committed (see [`NoticeBatch`]). A notice that cannot be sent is
    /// logged and dropped, the change kept: the replicas that missed it
    /// find the change when their waiters next look (a report within 5 s,
    /// a new desired state when the agent's long-poll ends, within 20 s).
    async fn tell_replicas(&self, notice: String) {
        let Some(notices) = &self.agent_notices else {
            self.tell_locally(change_told(&notice));
            return;
        };
        if let Err(err) = notices.call(Arc::new(notice)).await {
            tracing::warn!(error = %err, "telling the other replicas of an agent's change failed");
        }
    }

    /// Notifies `token` as an echo on the agents' channel, through the
    /// store's pool: a listener that hears its own echo still hears the
    /// others' changes. A listening connection may die silently (a peer
    /// gone without closing, a middlebox dropping it): nothing else would
    /// tell. On SQLite the echo goes through this process's own listener.
    pub async fn echo_agent_changes(&self, token: &str) -> Result<()> {
        if self.listen_url.is_none() {
            self.tell_locally(AgentChange::Echo(token.to_string()));
            return Ok(());
        }
        self.run_statement(
            "echo_agent_changes",
            (
                "SELECT pg_notify($1, $2)".into(),
                vec![AGENT_CHANNEL.into(), format!("{ECHO}{token}").into()],
            ),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed change is undone only while it is still the key's: one
    /// written over it meanwhile (the next operation) stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_replaces_only_the_one_it_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&Store::sqlite_url(&dir.path().join("tessera.db")))
            .await
            .expect("open");
        let offer = AgentOffer::default();
        let first = store.register_agent("h", "first", "sim", "{}", &offer, None);
        assert!(first.await.expect("first"));
        // A second agent that read no agent: another registered meanwhile.
        let second = store.register_agent("h", "second", "sim", "{}", &offer, None);
        assert!(!second.await.expect("second"));
        let kept = store.agent("h").await.expect("read").expect("an agent");
        assert_eq!(kept.credential_hash, "first");
        // One that read the first replaces it.
        let third = store.register_agent("h", "third", "sim", "{}", &offer, Some("first"));
        assert!(third.await.expect("third"));
        let now = store.agent("h").await.expect("read").expect("an agent");
        assert_eq!(now.credential_hash, "third");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restore_does_not_undo_a_later_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Store::sqlite_url(&dir.path().join("tessera.db"));
        let store = Store::open(&url).await.expect("open");
        store
            .register_agent("h", "hash", "sim", "{}", &AgentOffer::default(), None)
            .await
            .expect("agent");
        let desired = |store: Store| async move {
            store
                .work("h", "instance:i")
                .await
                .expect("work")
                .map(|w| w.desired)
        };
        store
            .set_desired("h", "instance:i", "running")
            .await
            .expect("set");
        store
            .set_desired("h", "instance:i", "stopped")
            .await
            .expect("set");
        // The stop failed: undone.
        assert!(
            store
                .restore_desired("h", "instance:i", "stopped", "running")
                .await
                .expect("restore")
        );
        assert_eq!(desired(store.clone()).await.as_deref(), Some("running"));
        // A stop failed, but a delete was written over it meanwhile: kept.
        store
            .set_desired("h", "instance:i", "stopped")
            .await
            .expect("set");
        store
            .set_desired("h", "instance:i", "absent")
            .await
            .expect("set");
        assert!(
            !store
                .restore_desired("h", "instance:i", "stopped", "running")
                .await
                .expect("restore")
        );
        assert_eq!(desired(store.clone()).await.as_deref(), Some("absent"));
    }

    /// What an agent offers is kept apart from its inventory, read back
    /// with its host, and said to have changed only when it did; a
    /// simulated host's agent offers nothing of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agents_offer_is_kept_and_its_changes_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Store::sqlite_url(&dir.path().join("tessera.db"));
        let store = Store::open(&url).await.expect("open");
        for (id, hostname) in [("host-a", "a"), ("host-s", "s")] {
            let host = crate::NewHost {
                id: id.into(),
                hostname: hostname.into(),
                ip: "10.0.0.1".into(),
                region: "r".into(),
                zone: "z".into(),
                cpu_ranges: vec![],
                numa_nodes: vec![],
                memory_mb: 1024,
                units: vec![],
                cpus: Some("0-3".into()),
                provider: None,
                plan: None,
                tags: vec![],
                arch: "amd64".into(),
            };
            assert!(store.insert_host(&host).await.expect("host"));
        }
        let offer = |cpus: &str, images: Option<&str>| AgentOffer {
            cpus: cpus.into(),
            images: images.map(str::to_string),
        };
        store
            .register_agent(
                "a",
                "ha",
                "container",
                "{}",
                &offer("0-3", Some(r#"["tiny"]"#)),
                None,
            )
            .await
            .expect("agent a");
        store
            .register_agent("s", "hs", "sim", "{}", &offer("0-1", Some("[]")), None)
            .await
            .expect("agent s");
        let seen = |cpus: Option<&str>, images: Option<&[&str]>| crate::AgentOfferSeen {
            cpus: cpus.map(str::to_string),
            images: images.map(|i| i.iter().map(|s| s.to_string()).collect()),
        };
        let mut sightings = store.host_sightings().await.expect("sightings");
        sightings.sort_by(|x, y| x.0.cmp(&y.0));
        let offers: Vec<_> = sightings
            .iter()
            .map(|(id, s)| (id.as_str(), s.offer.clone(), s.reachable))
            .collect();
        assert_eq!(
            offers,
            [
                ("host-a", seen(Some("0-3"), Some(&["tiny"])), true),
                ("host-s", seen(None, None), true),
            ]
        );
        let host = store.host("host-a").await.expect("read").expect("host");
        assert_eq!(host.offer, seen(Some("0-3"), Some(&["tiny"])));
        // What the sightings read is what a host's record says.
        assert_eq!(host.sighting(), sightings[0].1);
        // The same offer again is no news; fewer CPUs are.
        let same = store
            .agent_heartbeat("a", "{}", &offer("0-3", Some(r#"["tiny"]"#)))
            .await
            .expect("beat");
        assert!(!same.offer_changed);
        let before = store.host("host-a").await.expect("read").expect("host");
        let fewer = store
            .agent_heartbeat("a", "{}", &offer("0-2", Some(r#"["tiny"]"#)))
            .await
            .expect("beat");
        assert!(fewer.offer_changed);
        let after = store.host("host-a").await.expect("read").expect("host");
        assert_eq!(after.offer.cpus.as_deref(), Some("0-2"));
        assert!(after.generation > before.generation, "the host was bumped");
        // A sim agent's offer stays nothing, however it reports.
        let sim = store
            .agent_heartbeat("s", "{}", &offer("0-7", Some(r#"["x"]"#)))
            .await
            .expect("beat");
        assert!(!sim.offer_changed);
    }
}
