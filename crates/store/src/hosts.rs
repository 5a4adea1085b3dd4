//! Hosts: the servers of the fleet, with their Kloigos units.

use crate::db::{Arg, Conn, DbError};
use crate::writer::Commit;
use crate::{Result, Store, StoreError, now};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::sync::Arc;
use tessera_core::status::{HostStatus, UnitStatus};

#[derive(Clone, Debug)]
pub struct HostRecord {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    pub region: String,
    pub zone: String,
    pub status: HostStatus,
    pub status_detail: Option<String>,
    pub cpu_ranges: Vec<String>,
    /// Each node's CPUs in Linux list format.
    pub numa_nodes: Vec<String>,
    pub memory_mb: i64,
    pub generation: i64,
    pub created_at: String,
    pub updated_at: String,
    /// A pooled host's CPUs in Linux list format; `None` for a host
    /// partitioned into Kloigos units.
    pub cpus: Option<String>,
    pub provider: Option<String>,
    pub plan: Option<String>,
    pub tags: Vec<String>,
    /// `false` while the host's agent misses its heartbeats.
    pub reachable: bool,
    /// Whether the host can run instances: not when its agent runs the
    /// `unit` driver (Kloigos units only).
    pub runs_instances: bool,
    /// Its CPU architecture: `amd64`, `arm64`.
    pub arch: String,
    /// What isolation its agent gives instances (its last inventory).
    pub isolation: Option<String>,
    /// What its agent offers placement.
    pub offer: AgentOfferSeen,
    /// Being (or been) retired with force: without its agent, if that
    /// does not answer.
    pub decommission_forced: bool,
}

/// How [`Store::begin_decommission`] went.
#[derive(Debug, PartialEq, Eq)]
pub enum DecommissionStart {
    Started,
    AlreadyDecommissioning,
    AlreadyDecommissioned,
    /// Refused: these units are held.
    UnitsHeld(Vec<String>),
    /// Refused: these instances are on the host.
    InstancesPresent(Vec<String>),
}

#[derive(Clone)]
pub struct NewHost {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    pub region: String,
    pub zone: String,
    pub cpu_ranges: Vec<String>,
    pub numa_nodes: Vec<String>,
    pub memory_mb: i64,
    pub units: Vec<NewUnit>,
    /// Set for a pooled host (no units).
    pub cpus: Option<String>,
    pub provider: Option<String>,
    pub plan: Option<String>,
    pub tags: Vec<String>,
    /// Its CPU architecture: `amd64`, `arm64`.
    pub arch: String,
}

#[derive(Clone)]
pub struct NewUnit {
    pub compute_id: String,
    pub cpu_range: String,
    pub cpu_list: String,
    pub cpu_count: i64,
    pub ports_range: String,
}

const HOST_COLUMNS: &str = "id, hostname, ip, region, zone, status, status_detail, cpu_ranges, \
     numa_nodes, memory_mb, generation, created_at, updated_at, cpus, provider, plan, tags, arch, \
     decommission_forced, \
     COALESCE((SELECT reachable FROM agents WHERE agents.hostname = hosts.hostname), 1) AS reachable, \
     COALESCE((SELECT driver FROM agents WHERE agents.hostname = hosts.hostname), '') AS agent_driver, \
     (SELECT inventory FROM agents WHERE agents.hostname = hosts.hostname) AS agent_inventory, \
     (SELECT images FROM agents WHERE agents.hostname = hosts.hostname) AS agent_images, \
     (SELECT cpus FROM agents WHERE agents.hostname = hosts.hostname) AS agent_cpus";

/// What a host's agent offers placement, as stored (migration 0033).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOfferSeen {
    /// The CPUs it offers instances (Linux list format); `None` when it
    /// said nothing of them (a simulated host, no agent yet).
    pub cpus: Option<String>,
    /// The images it said it has; `None` when it runs no image of its own
    /// (a simulated host, no agent yet): any image will do.
    pub images: Option<Vec<String>>,
}

/// What [`Store::host_sightings`] reads of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSighting {
    pub status: HostStatus,
    pub reachable: bool,
    pub offer: AgentOfferSeen,
}

impl HostRecord {
    /// The host as [`Store::host_sightings`] reads it.
    pub fn sighting(&self) -> HostSighting {
        HostSighting {
            status: self.status,
            reachable: self.reachable,
            offer: self.offer.clone(),
        }
    }
}

fn parse_images(text: Option<String>) -> Result<Option<Vec<String>>> {
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("agents.images is not a JSON list: {e}")))
}

fn host_from_row(row: &AnyRow) -> Result<HostRecord> {
    let status: String = row.try_get("status")?;
    let json_list = |column: &str| -> Result<Vec<String>> {
        let text: String = row.try_get(column)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("hosts.{column} is not a JSON list: {e}")))
    };
    Ok(HostRecord {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        ip: row.try_get("ip")?,
        region: row.try_get("region")?,
        zone: row.try_get("zone")?,
        status: status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("hosts.status: {e}")))?,
        status_detail: row.try_get("status_detail")?,
        cpu_ranges: json_list("cpu_ranges")?,
        numa_nodes: json_list("numa_nodes")?,
        memory_mb: row.try_get("memory_mb")?,
        generation: row.try_get("generation")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        cpus: row.try_get("cpus")?,
        provider: row.try_get("provider")?,
        plan: row.try_get("plan")?,
        reachable: row.try_get::<i64, _>("reachable")? != 0,
        runs_instances: row.try_get::<String, _>("agent_driver")? != "unit",
        arch: row.try_get("arch")?,
        decommission_forced: row.try_get::<i64, _>("decommission_forced")? != 0,
        // What its agent last said of its isolation (a newer field of the
        // inventory: absent from older agents' and simulated hosts').
        isolation: row
            .try_get::<Option<String>, _>("agent_inventory")?
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|inventory| inventory["isolation"].as_str().map(str::to_string)),
        offer: AgentOfferSeen {
            cpus: row.try_get("agent_cpus")?,
            images: parse_images(row.try_get("agent_images")?)?,
        },
        tags: row
            .try_get::<Option<String>, _>("tags")?
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("hosts.tags is not a JSON list: {e}")))?
            .unwrap_or_default(),
    })
}

impl Store {
    /// Records a new host in INITIALIZING with its units UNAVAILABLE.
    /// Answers `false`, changing nothing, when the hostname is taken by a
    /// host that is neither decommissioned nor failed; such a one is replaced.
    pub async fn insert_host(&self, host: &NewHost) -> Result<bool> {
        let host = Arc::new(host.clone());
        self.write("insert_host", move |conn| {
            let host = host.clone();
            Box::pin(async move { insert_host(conn, &host).await })
        })
        .await
    }

    /// The host named `hostname` in any case (host names are DNS names),
    /// the one spelt so first: the host a new registration of that name
    /// meets.
    /// Whether a host that is not retired is in region or zone
    /// `location`.
    pub async fn location_in_use(&self, location: &str) -> Result<bool> {
        let rows = self
            .fetch_rows(
                "SELECT 1 FROM hosts WHERE (region = $1 OR zone = $1) \
                 AND status <> 'DECOMMISSIONED'",
                &[location.into()],
                Some(1),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub async fn host_named_in_any_case(&self, hostname: &str) -> Result<Option<HostRecord>> {
        let sql = format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE lower(hostname) = lower($1) \
             ORDER BY CASE WHEN hostname = $1 THEN 0 ELSE 1 END LIMIT 1"
        );
        let rows = self.fetch_rows(&sql, &[hostname.into()], Some(1)).await?;
        rows.first().map(host_from_row).transpose()
    }

    pub async fn host_by_hostname(&self, hostname: &str) -> Result<Option<HostRecord>> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE hostname = $1");
        let rows = self.fetch_rows(&sql, &[hostname.into()], Some(1)).await?;
        rows.first().map(host_from_row).transpose()
    }

    pub async fn host(&self, id: &str) -> Result<Option<HostRecord>> {
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1");
        let rows = self.fetch_rows(&sql, &[id.into()], Some(1)).await?;
        rows.first().map(host_from_row).transpose()
    }

    /// Hosts in any of `statuses`, or all hosts when it is empty.
    pub async fn hosts(&self, statuses: &[HostStatus]) -> Result<Vec<HostRecord>> {
        let statuses: Vec<&'static str> = statuses.iter().map(|s| s.as_str()).collect();
        let guard = status_guard("status", &statuses, 1);
        let sql = format!("SELECT {HOST_COLUMNS} FROM hosts WHERE {guard} ORDER BY hostname");
        let args: Vec<Arg> = statuses.iter().map(|s| Arg::from(*s)).collect();
        let rows = self.fetch_rows_bulk(&sql, &args).await?;
        rows.iter().map(host_from_row).collect()
    }

    /// Whether any host of architecture `arch` can run instances (its
    /// agent, if it has one, does not serve Kloigos units only): one
    /// matching row, not the fleet.
    pub async fn instance_host_of_arch_exists(&self, arch: &str) -> Result<bool> {
        let rows = self
            .fetch_rows(
                "SELECT id FROM hosts WHERE arch = $1 AND COALESCE((SELECT driver FROM agents \
                 WHERE agents.hostname = hosts.hostname), '') <> 'unit' LIMIT 1",
                &[arch.into()],
                None,
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// The ids and hostnames of ready hosts no agent has registered for
    /// (those served in process: simulated hosts), in hostname order. Only
    /// the two names are read: the observation pass walks them every few
    /// seconds, and 10,000 whole host rows (inventories and all) cost it
    /// more than its hosts did. A fleet of remote agents has none: the
    /// hosts are walked on the agents' key, not read whole.
    pub async fn ready_hosts_without_agents(&self) -> Result<Vec<(String, String)>> {
        self.fetch_all_bulk(
            "SELECT id, hostname FROM hosts WHERE status = $1 \
                 AND NOT EXISTS (SELECT 1 FROM agents WHERE agents.hostname = hosts.hostname) \
                 ORDER BY hostname",
            &[HostStatus::Ready.as_str().into()],
        )
        .await
    }

    /// A page of hosts in hostname order: at most `limit` after the
    /// hostname `after`, on the hostname's unique index.
    pub async fn hosts_page(&self, after: Option<&str>, limit: i64) -> Result<Vec<HostRecord>> {
        let sql = format!(
            "SELECT {HOST_COLUMNS} FROM hosts WHERE hostname > $1 ORDER BY hostname LIMIT $2"
        );
        let rows = self
            .fetch_rows(&sql, &[after.unwrap_or("").into(), limit.into()], None)
            .await?;
        rows.iter().map(host_from_row).collect()
    }

    /// How many hosts are in each status.
    pub async fn host_counts(&self) -> Result<Vec<(String, i64)>> {
        self.fetch_all_bulk(
            "SELECT status, COUNT(*) AS n FROM hosts GROUP BY status ORDER BY status",
            &[],
        )
        .await
    }

    /// `(id, version)` of every host: what a placement view compares with
    /// its own to find the hosts it must reload. The version is the host's
    /// generation plus its units' (every change to either bumps one), so
    /// claims on one host never contend for the host row just to say so.
    pub async fn host_versions(&self) -> Result<Vec<(String, i64)>> {
        let rows = self
            .fetch_rows_bulk(
                "SELECT h.id, CAST(h.generation + COALESCE(SUM(u.generation), 0) AS BIGINT) \
                 AS version FROM hosts h LEFT JOIN compute_units u ON u.host_id = h.id \
                 GROUP BY h.id, h.generation",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("version")?)))
            .collect()
    }

    /// Every host as placement must know it beyond its claims (its
    /// status, whether its agent is heard, what the agent offers), by
    /// host id: one read for a replica to find the hosts another replica
    /// changed (see [`HostRecord::sighting`]).
    pub async fn host_sightings(&self) -> Result<Vec<(String, HostSighting)>> {
        let rows = self
            .fetch_rows_bulk(
                "SELECT h.id, h.status, CAST(COALESCE(a.reachable, 1) AS BIGINT) AS reachable, \
                 a.cpus, a.images FROM hosts h LEFT JOIN agents a ON a.hostname = h.hostname",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                let images: Option<String> = r.try_get("images")?;
                Ok((
                    r.try_get("id")?,
                    HostSighting {
                        status: status
                            .parse()
                            .map_err(|e| StoreError::Corrupt(format!("hosts.status: {e}")))?,
                        reachable: r.try_get::<i64, _>("reachable")? != 0,
                        offer: AgentOfferSeen {
                            cpus: r.try_get("cpus")?,
                            images: parse_images(images)?,
                        },
                    },
                ))
            })
            .collect()
    }

    /// Moves a host from one of `from` to `to`; `false` when it was in none of
    /// them (someone else moved it first). Units follow: a host that becomes
    /// READY publishes its UNAVAILABLE units as FREE; a host that leaves READY
    /// takes its FREE units out of service; a DECOMMISSIONED host's units are
    /// retired, and its agent forgotten.
    pub async fn transition_host(
        &self,
        id: &str,
        from: &[HostStatus],
        to: HostStatus,
        detail: Option<&str>,
    ) -> Result<bool> {
        let from: Vec<&'static str> = from.iter().map(|s| s.as_str()).collect();
        let retiring = self.retiring_agent(id, to).await?;
        let (id, detail) = (id.to_string(), detail.map(str::to_string));
        let store = self.clone();
        let write = async move {
            store
                .write("transition_host", move |conn| {
                    let (id, detail, from) = (id.clone(), detail.clone(), from.clone());
                    Box::pin(async move {
                        transition_host(conn, &id, &from, to, detail.as_deref()).await
                    })
                })
                .await
        };
        self.written_then_told_here(write, retired_agent(retiring))
            .await
    }

    /// The host name of `id` when its move `to` removes its agent and this
    /// process's listener is told so by the store itself (SQLite; on
    /// PostgreSQL a trigger tells every replica).
    async fn retiring_agent(&self, id: &str, to: HostStatus) -> Result<Option<String>> {
        if to != HostStatus::Decommissioned || self.local_changes.is_none() {
            return Ok(None);
        }
        Ok(self.host(id).await?.map(|host| host.hostname))
    }

    /// Moves a host from `from` to `to` as a step of an operation this
    /// process drives, in one transaction: the host's change, then either
    /// the operation's progress (`steps`) or its end (`end`). `false`,
    /// changing nothing, when the host was not in `from` or the operation is
    /// no longer this process's.
    pub async fn transition_host_for(
        &self,
        id: &str,
        from: HostStatus,
        to: HostStatus,
        op: (&str, &str, &str),
        end: Option<crate::OperationEnd<'_>>,
    ) -> Result<bool> {
        let mark = match &end {
            Some(end) => crate::operations::operation_finish(
                end.id,
                end.status,
                end.result,
                end.error,
                &self.owner,
            ),
            None => crate::operations::operation_progress(op.0, op.1, op.2, &self.owner),
        };
        let retiring = self.retiring_agent(id, to).await?;
        let (id, mark) = (id.to_string(), Arc::new(mark));
        let store = self.clone();
        let write = async move {
            store
                .write("transition_host_for", move |mut conn| {
                    let (id, mark) = (id.clone(), mark.clone());
                    Box::pin(async move {
                        if conn.execute(&mark.0, &mark.1).await? != 1 {
                            return Ok(Commit::Undo(false));
                        }
                        match transition_host(conn, &id, &[from.as_str()], to, None).await? {
                            Commit::Keep(true) => Ok(Commit::Keep(true)),
                            _ => Ok(Commit::Undo(false)),
                        }
                    })
                })
                .await
        };
        self.written_then_told_here(write, retired_agent(retiring))
            .await
    }

    /// Starts retiring a host: DECOMMISSIONING, its FREE units out of
    /// service. Unless `force`, refused while a Kloigos tenant holds a
    /// unit; unless `move_instances` (the caller moves them off), refused
    /// while instances are there or moving there. The checks and the change
    /// are one transaction behind the host row's exclusive lock, which waits
    /// for every claim in flight (they hold it shared), so no claim can slip
    /// between them. With `force`, the host is retired without its agent if
    /// that does not answer (recorded, so a retirement already under way
    /// goes so too).
    pub async fn begin_decommission(
        &self,
        id: &str,
        force: bool,
        move_instances: bool,
    ) -> Result<DecommissionStart> {
        let held: Vec<&str> = UnitStatus::ALL
            .iter()
            .filter(|s| s.is_held())
            .map(|s| s.as_str())
            .collect();
        let guard = status_guard("status", &held, 2);
        let held_sql = format!(
            "SELECT compute_id FROM compute_units WHERE host_id = $1 AND {guard} \
             AND instance_id IS NULL ORDER BY position"
        );
        let id = id.to_string();
        self.write("begin_decommission", move |mut conn| {
            let (id, held_sql, held) = (id.clone(), held_sql.clone(), held.clone());
            Box::pin(async move {
                let at = now();
                // Take the host row's lock first, as every unit claim does.
                conn.execute(
                    "UPDATE hosts SET generation = generation + 1, updated_at = $1 WHERE id = $2",
                    &[(&at).into(), (&id).into()],
                )
                .await?;
                let status = conn
                    .fetch_text("SELECT status FROM hosts WHERE id = $1", &[(&id).into()])
                    .await?;
                match status.as_deref() {
                    None | Some("DECOMMISSIONED") => {
                        return Ok(Commit::Undo(DecommissionStart::AlreadyDecommissioned));
                    }
                    // Asked again with force: the retirement under way may
                    // now go without the agent.
                    Some("DECOMMISSIONING") if force => {
                        conn.execute(
                            "UPDATE hosts SET decommission_forced = 1 WHERE id = $1",
                            &[(&id).into()],
                        )
                        .await?;
                        return Ok(Commit::Keep(DecommissionStart::AlreadyDecommissioning));
                    }
                    Some("DECOMMISSIONING") => {
                        return Ok(Commit::Undo(DecommissionStart::AlreadyDecommissioning));
                    }
                    _ => {}
                }
                if !force {
                    let mut args: Vec<Arg> = vec![(&id).into()];
                    args.extend(held.iter().map(|v| Arg::from(*v)));
                    let ids = conn.fetch_texts(&held_sql, &args).await?;
                    if !ids.is_empty() {
                        return Ok(Commit::Undo(DecommissionStart::UnitsHeld(ids)));
                    }
                }
                if !move_instances {
                    // Instances there, and those with CPUs reserved there
                    // (moving in).
                    let instances = conn
                        .fetch_texts(
                            "SELECT id FROM instances WHERE host_id = $1 AND state <> 'terminated' \
                             UNION SELECT DISTINCT SUBSTR(holder, 10) FROM cpu_claims \
                             WHERE host_id = $1 AND SUBSTR(holder, 1, 9) = 'instance:' \
                             UNION SELECT DISTINCT instance_id FROM cpu_shares \
                             WHERE host_id = $1 ORDER BY 1",
                            &[(&id).into()],
                        )
                        .await?;
                    if !instances.is_empty() {
                        return Ok(Commit::Undo(DecommissionStart::InstancesPresent(instances)));
                    }
                }
                conn.execute(
                    "UPDATE hosts SET status = 'DECOMMISSIONING', status_detail = NULL, \
                     decommission_forced = $1 WHERE id = $2",
                    &[i64::from(force).into(), (&id).into()],
                )
                .await?;
                conn.execute(
                    "UPDATE compute_units SET status = 'UNAVAILABLE', updated_at = $1, \
                     generation = generation + 1 WHERE host_id = $2 AND status = 'FREE'",
                    &[(&at).into(), (&id).into()],
                )
                .await?;
                Ok(Commit::Keep(DecommissionStart::Started))
            })
        })
        .await
    }

    /// Sets a host's CPU architecture (as its agent reports it).
    pub async fn set_host_arch(&self, id: &str, arch: &str) -> Result<()> {
        self.run_statements(
            "set_host_arch",
            vec![(
                "UPDATE hosts SET arch = $1, generation = generation + 1, updated_at = $2 \
                 WHERE id = $3"
                    .into(),
                vec![arch.into(), now().into(), id.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Gives a host registered without an address the one its agent
    /// reported; a host that has one keeps it.
    pub async fn set_host_address_if_unknown(&self, id: &str, ip: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "set_host_address_if_unknown",
                vec![(
                    "UPDATE hosts SET ip = $1, generation = generation + 1, updated_at = $2 \
                     WHERE id = $3 AND ip = ''"
                        .into(),
                    vec![ip.into(), now().into(), id.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Records what the host's agent reported of its memory.
    pub async fn set_host_memory(&self, id: &str, memory_mb: i64) -> Result<()> {
        let id = id.to_string();
        self.write_one("set_host_memory", move |mut conn| {
            let id = id.clone();
            Box::pin(async move {
                conn.execute(
                    "UPDATE hosts SET memory_mb = $1, generation = generation + 1, updated_at = $2 WHERE id = $3",
                    &[memory_mb.into(), now().as_str().into(), (&id).into()],
                )
                .await?;
                Ok(Commit::Keep(()))
            })
        })
        .await
    }
}

async fn insert_host(mut conn: Conn<'_>, host: &NewHost) -> Result<Commit<bool>, DbError> {
    let cpu_ranges = serde_json::to_string(&host.cpu_ranges).unwrap_or_default();
    let numa_nodes = serde_json::to_string(&host.numa_nodes).unwrap_or_default();
    // Host names are DNS names, which know no case: one is taken by a
    // host of the same name in any case. On PostgreSQL, registrations of
    // one name in any case wait for one another (SQLite has one writer).
    if conn.is_postgres() {
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext(lower($1)))",
            &[(&host.hostname).into()],
        )
        .await?;
    }
    // A host that was retired, or whose preparation failed, may be
    // registered again under the same name.
    let retired = "(SELECT id FROM hosts WHERE lower(hostname) = lower($1) \
         AND status IN ('DECOMMISSIONED', 'INIT_FAIL'))";
    conn.execute(
        &format!("UPDATE instances SET host_id = NULL WHERE host_id IN {retired}"),
        &[(&host.hostname).into()],
    )
    .await?;
    for table in ["cpu_shares", "cpu_claims", "compute_units"] {
        conn.execute(
            &format!("DELETE FROM {table} WHERE host_id IN {retired}"),
            &[(&host.hostname).into()],
        )
        .await?;
    }
    conn.execute(
        "DELETE FROM hosts WHERE lower(hostname) = lower($1) \
         AND status IN ('DECOMMISSIONED', 'INIT_FAIL')",
        &[(&host.hostname).into()],
    )
    .await?;
    let taken = conn
        .fetch_text(
            "SELECT hostname FROM hosts WHERE lower(hostname) = lower($1) LIMIT 1",
            &[(&host.hostname).into()],
        )
        .await?;
    if taken.is_some() {
        return Ok(Commit::Undo(false));
    }
    let at = now();
    let inserted = conn
        .execute(
            "INSERT INTO hosts (id, hostname, ip, region, zone, status, cpu_ranges, numa_nodes, \
             memory_mb, generation, created_at, updated_at, cpus, provider, plan, tags, arch) \
             VALUES ($1, $2, $3, $4, $5, 'INITIALIZING', $6, $7, $8, 1, $9, $9, $10, $11, $12, $13, \
             $14) \
             ON CONFLICT (hostname) DO NOTHING",
            &[
                (&host.id).into(),
                (&host.hostname).into(),
                (&host.ip).into(),
                (&host.region).into(),
                (&host.zone).into(),
                (&cpu_ranges).into(),
                (&numa_nodes).into(),
                host.memory_mb.into(),
                (&at).into(),
                host.cpus.as_ref().into(),
                host.provider.as_ref().into(),
                host.plan.as_ref().into(),
                serde_json::to_string(&host.tags).unwrap_or_default().into(),
                (&host.arch).into(),
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(Commit::Undo(false));
    }
    for (position, unit) in host.units.iter().enumerate() {
        conn.execute(
            "INSERT INTO compute_units (compute_id, host_id, position, cpu_range, cpu_list, \
             cpu_count, ports_range, status, generation, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'UNAVAILABLE', 1, $8)",
            &[
                (&unit.compute_id).into(),
                (&host.id).into(),
                (position as i64).into(),
                (&unit.cpu_range).into(),
                (&unit.cpu_list).into(),
                unit.cpu_count.into(),
                (&unit.ports_range).into(),
                (&at).into(),
            ],
        )
        .await?;
    }
    Ok(Commit::Keep(true))
}

/// What a host's move tells this process's listener once it committed:
/// that the agent of `hostname` (a retirement's, see
/// [`Store::retiring_agent`]) is gone.
fn retired_agent(hostname: Option<String>) -> impl FnOnce(&bool) -> Option<String> {
    move |moved| hostname.filter(|_| *moved)
}

async fn transition_host(
    mut conn: Conn<'_>,
    id: &str,
    from: &[&'static str],
    to: HostStatus,
    detail: Option<&str>,
) -> Result<Commit<bool>, DbError> {
    let at = now();
    if to == HostStatus::Decommissioned {
        // Its agent is done: its credential stops working and its desired
        // state goes, with the retirement that any returning agent (`tessera
        // up` starting again on the host) waits to see. Written after it, an
        // agent that came back in between lost its new registration. Taken
        // before the host's row, in the order an agent's own writes take
        // them (its row, then its work or its host), so that neither waits
        // for the other; undone with the rest if the host was not in `from`.
        for table in ["agents", "agent_work"] {
            conn.execute(
                &format!(
                    "DELETE FROM {table} WHERE hostname = (SELECT hostname FROM hosts WHERE id = $1)"
                ),
                &[id.into()],
            )
            .await?;
        }
    }
    let guard = status_guard("status", from, 5);
    let update = format!(
        "UPDATE hosts SET status = $1, status_detail = $2, updated_at = $3, \
         generation = generation + 1 WHERE id = $4 AND {guard}"
    );
    let mut args: Vec<Arg> = vec![to.as_str().into(), detail.into(), (&at).into(), id.into()];
    args.extend(from.iter().map(|v| Arg::from(*v)));
    if conn.execute(&update, &args).await? == 0 {
        return Ok(Commit::Undo(false));
    }
    let units = match to {
        HostStatus::Ready => Some(("FREE", "UNAVAILABLE")),
        HostStatus::Decommissioning
        | HostStatus::InitFail
        | HostStatus::Initializing
        | HostStatus::Draining
        | HostStatus::Drained => Some(("UNAVAILABLE", "FREE")),
        _ => None,
    };
    if let Some((new, old)) = units {
        conn.execute(
            "UPDATE compute_units SET status = $1, updated_at = $2, generation = generation + 1 \
             WHERE host_id = $3 AND status = $4",
            &[new.into(), (&at).into(), id.into(), old.into()],
        )
        .await?;
    }
    if to == HostStatus::Decommissioned {
        for table in ["cpu_shares", "cpu_claims", "compute_units"] {
            conn.execute(
                &format!("DELETE FROM {table} WHERE host_id = $1"),
                &[id.into()],
            )
            .await?;
        }
    }
    Ok(Commit::Keep(true))
}

/// `column IN ($n, $n+1, ...)`, one parameter per status (bound by the
/// caller in that order); always true when `statuses` is empty.
pub(crate) fn status_guard(column: &str, statuses: &[&'static str], first_param: usize) -> String {
    if statuses.is_empty() {
        return "1 = 1".to_string();
    }
    let params: Vec<String> = (0..statuses.len())
        .map(|i| format!("${}", first_param + i))
        .collect();
    format!("{column} IN ({})", params.join(", "))
}
