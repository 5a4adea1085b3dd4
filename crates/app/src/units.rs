//! Kloigos compute units: allocate, deallocate, list.
//!
//! Allocation is placement (a decision on the view), a claim committed with
//! the store's conflict check, then the host side (the tenant's key) with a
//! deadline; the answer shows the state the unit is really in. A unit's
//! status with its deadline is the durable record of the step under way, so
//! [`crate::reconciler`] can settle what a crash interrupted.

use crate::error::{Error, Result};
use crate::hosts::unit_spec;
use crate::{App, HostCallError};
use tessera_core::placement::Request;
use tessera_core::quota::{QuotaOverrides, Usage};
use tessera_core::status::UnitStatus;
use tessera_core::{ComputeId, HostId, InstanceId, ProjectId};
use tessera_store::{ClaimQuota, QuotaCheck, UnitClaim, UnitFilter, UnitRecord};

/// A Kloigos compute unit: a fixed slice of a host's CPUs and ports that a
/// tenant (or an instance) takes whole.
#[derive(Clone, Debug)]
pub struct ComputeUnit {
    pub compute_id: ComputeId,
    pub host_id: HostId,
    pub hostname: String,
    pub ip: String,
    pub region: String,
    pub zone: String,
    /// Its CPUs, in the Kloigos range syntax (`0-3`).
    pub cpu_range: String,
    /// Its CPUs, in Linux list format.
    pub cpu_list: String,
    pub cpu_count: u32,
    /// The host ports it forwards, `FIRST-LAST`.
    pub ports_range: String,
    pub status: UnitStatus,
    pub status_detail: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub started_at: Option<String>,
    pub updated_at: String,
    /// The project it is allocated to.
    pub project_id: Option<ProjectId>,
    /// The instance holding it, when an instance took it.
    pub instance_id: Option<InstanceId>,
}

impl From<UnitRecord> for ComputeUnit {
    fn from(r: UnitRecord) -> ComputeUnit {
        ComputeUnit {
            compute_id: ComputeId::new(r.compute_id),
            host_id: HostId::new(r.host_id),
            hostname: r.hostname,
            ip: r.ip,
            region: r.region,
            zone: r.zone,
            cpu_range: r.cpu_range,
            cpu_list: r.cpu_list,
            cpu_count: u32::try_from(r.cpu_count).unwrap_or(0),
            ports_range: r.ports_range,
            status: r.status,
            status_detail: r.status_detail,
            tags: r.tags,
            started_at: r.started_at,
            updated_at: r.updated_at,
            project_id: r.project_id.map(ProjectId::new),
            instance_id: r.instance_id.map(InstanceId::new),
        }
    }
}

/// Which units to list (`GET /api/compute_units/`); `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct UnitQuery {
    pub compute_id: Option<String>,
    pub hostname: Option<String>,
    pub host_id: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub cpu_count: Option<i64>,
    pub deployment_id: Option<String>,
    pub statuses: Vec<UnitStatus>,
    /// Only units allocated to this project.
    pub project_id: Option<String>,
}

/// Kloigos's answer when nothing matches, which its clients look for.
pub const NO_FREE_UNIT: &str = "No free Compute Unit found to match your request";

/// How many times an allocation looks again after losing a race.
const MAX_CLAIM_ATTEMPTS: usize = 64;

/// How many times (2 ms apart) an allocation that finds no free unit waits
/// for other requests' claims to settle before it answers that none is.
const MAX_CLAIM_WAITS: usize = 250;

#[derive(Clone, Debug)]
pub struct AllocateUnit {
    pub cpu_count: u32,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub ssh_public_key: String,
    pub tags: Option<serde_json::Value>,
    /// The project the unit is allocated to.
    pub project_id: String,
}

/// Whose units a caller may deallocate.
#[derive(Clone, Copy, Debug)]
pub enum UnitReach<'a> {
    /// Every unit (the fleet's operators).
    Every,
    /// Its project's; it sees every unit (`server_read`), so another's is
    /// refused, not hidden.
    SeeEvery(&'a str),
    /// Its project's; others' are not there for it.
    Own(&'a str),
}

impl App {
    pub async fn compute_units(&self, filter: &UnitQuery) -> Result<Vec<ComputeUnit>> {
        let texts = [
            &filter.compute_id,
            &filter.hostname,
            &filter.host_id,
            &filter.region,
            &filter.zone,
            &filter.deployment_id,
        ];
        if texts.iter().any(|t| t.as_deref().is_some_and(has_nul)) {
            // No stored text holds a NUL (PostgreSQL cannot even be asked).
            return Ok(Vec::new());
        }
        let filter = UnitFilter {
            compute_id: filter.compute_id.clone(),
            hostname: filter.hostname.clone(),
            host_id: filter.host_id.clone(),
            region: filter.region.clone(),
            zone: filter.zone.clone(),
            cpu_count: filter.cpu_count,
            deployment_id: filter.deployment_id.clone(),
            statuses: filter.statuses.clone(),
            project_id: filter.project_id.clone(),
        };
        let units = self.store.units(&filter).await?;
        Ok(units.into_iter().map(ComputeUnit::from).collect())
    }

    pub async fn allocate_unit(&self, req: AllocateUnit) -> Result<ComputeUnit> {
        validate_allocation(&req)?;
        // A unit is metered while allocated (migration 0052); a prepaid
        // project's balance must cover an hour of it with what the project
        // already runs, as its instances' must: checked before the claim
        // (to answer soon), and in the claim's transaction under the
        // project's lock, where the unit being claimed counts (as a unit
        // being allocated does), so that nothing racing it (another unit,
        // an instance's start or creation) passes on the same money.
        let price = i64::from(req.cpu_count) * self.catalog.compute_unit_micros_per_cpu_hour();
        let what = format!("a compute unit of {} CPUs", req.cpu_count);
        let paid = price > 0 && self.store.project_policy(&req.project_id).await?.prepaid;
        if paid {
            self.check_project_funds(&req.project_id, None, price, &what)
                .await?;
        }
        let request = Request::Unit {
            cpu_count: req.cpu_count,
            region: req.region.clone(),
            zone: req.zone.clone(),
        };
        let quota = QuotaCheck {
            funds: paid,
            ..self.quota_check(
                &req.project_id,
                Usage {
                    instances: 1,
                    vcpus: i64::from(req.cpu_count),
                    ..Usage::default()
                },
            )
        };
        // When no configured default limits what a unit adds, the claim is
        // made only while the project sets no limit of its own either,
        // which the claim's own statement reads: nothing is counted or
        // locked (on PostgreSQL, the claim is one statement, and may share
        // it with others). A claim so refused, like one that lost a race,
        // has the project's limits read; a project with limits, or limited
        // by default, has its quota checked before it takes a unit in the
        // view (units taken by claims bound to fail would look allocated
        // to other projects' requests meanwhile), then again in the claim's
        // transaction, under the project's lock.
        let bound_by_default = !quota.unbounded_under(&quota.limits(&QuotaOverrides::default()));
        let mut limited = bound_by_default && self.check_quota_now(&quota).await?;
        let mut looked_again = false;
        let mut attempts = 0;
        let mut waited = 0;
        let decision = loop {
            let Some(taken) = self.placement.take(&request) else {
                // Units other requests are claiming may come free again (a
                // claim that loses a race or meets its quota): "no free
                // unit" only once they are settled.
                if self.placement.claims_in_flight() && waited < MAX_CLAIM_WAITS {
                    waited += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    continue;
                }
                if looked_again {
                    return Err(Error::NoCapacity(NO_FREE_UNIT.into()));
                }
                // The view may miss what other replicas freed or added.
                self.placement
                    .refresh_changed(&self.store, std::time::Instant::now())
                    .await?;
                looked_again = true;
                continue;
            };
            let decision = taken.decision().clone();
            let compute_id = decision
                .unit
                .clone()
                .map(|u| u.to_string())
                .unwrap_or_default();
            let cpus: Vec<u32> = decision.cpus.iter().collect();
            // Taken at each attempt, so that time lost to retries never eats
            // into the host calls' share of it.
            let deadline = self.deadline();
            let claim = UnitClaim {
                compute_id: &compute_id,
                host_id: decision.host.as_str(),
                cpus: &cpus,
                ssh_public_key: req.ssh_public_key.trim(),
                tags: req.tags.as_ref(),
                deadline: &deadline,
                project_id: &req.project_id,
                // Limited by default, the project's own -1 may go back to
                // the default meanwhile: checked, not guarded.
                quota: match paid || limited || bound_by_default {
                    true => ClaimQuota::Check(&quota),
                    false => ClaimQuota::NoOwnLimit,
                },
            };
            let claimed = self.store.claim_unit(&claim).await;
            drop(taken);
            if let Ok(Some(unit)) = claimed {
                break (decision, unit);
            }
            if let Err(tessera_store::StoreError::QuotaExceeded(exceeded)) = claimed {
                // The unit stays free for others.
                self.placement
                    .refresh_host(&self.store, decision.host.as_str())
                    .await?;
                return Err(Error::QuotaExceeded(exceeded));
            }
            // Refused because the project has limits of its own (the unit
            // is still free, as the view says): checked from now on, and
            // over them, the allocation is refused here.
            if matches!(claimed, Ok(None))
                && !limited
                && !bound_by_default
                && self.check_quota_now(&quota).await?
            {
                limited = true;
                continue;
            }
            // Lost a race, or the store failed: the view is wrong about this host.
            self.placement
                .refresh_host(&self.store, decision.host.as_str())
                .await?;
            claimed?;
            attempts += 1;
            if attempts >= MAX_CLAIM_ATTEMPTS {
                return Err(Error::Unavailable(
                    "too many concurrent allocations; try again".into(),
                ));
            }
        };
        // The unit as claimed: its generation fences every later step (a
        // forced decommission that takes it back meanwhile moves it on).
        let (decision, mut unit) = decision;
        let compute_id = unit.compute_id.clone();
        let generation = unit.generation;
        tracing::debug!(compute_id, host = %decision.host, "unit claimed");
        let outcome = match self.agent(&decision.host).await? {
            None => Err(HostCallError::NoAgent),
            Some(agent) => match unit_spec(&unit) {
                Ok(spec) => {
                    self.host_call(agent.activate_unit(&spec, req.ssh_public_key.trim()))
                        .await
                }
                Err(err) => Err(HostCallError::Failed(err.to_string())),
            },
        };
        let (to, detail) = match &outcome {
            Ok(()) => {
                self.placement.host_succeeded(&decision.host);
                (UnitStatus::Allocated, None)
            }
            Err(why) => {
                tracing::warn!(compute_id, error = %why, "allocation failed on the host");
                self.placement.host_failed(&decision.host);
                (UnitStatus::AllocationFail, Some(why.to_string()))
            }
        };
        let settled = self
            .store
            .transition_unit(
                &compute_id,
                generation,
                &[UnitStatus::Allocating],
                to,
                detail.as_deref(),
                None,
            )
            .await?;
        let Some(generation) = settled else {
            // Someone else moved it on (a reconciler that found it overdue,
            // a forced decommission): it was unwound, and may already be
            // another tenant's, so it is not shown to this caller.
            return Err(interrupted(&compute_id));
        };
        unit.status = to;
        unit.status_detail = detail;
        unit.deadline = None;
        unit.generation = generation;
        Ok(unit.into())
    }

    /// Takes a unit back from its tenant and wipes it. A unit that is not
    /// allocated is left as it is. With `reach` [`UnitReach::Own`], only a
    /// unit of that project: another's is a 404 to a caller that cannot
    /// see it, a 403 to one that can ([`UnitReach::SeeEvery`]).
    pub async fn deallocate_unit(&self, compute_id: &str, reach: UnitReach<'_>) -> Result<()> {
        let (project, sees_every) = match reach {
            UnitReach::Every => (None, true),
            UnitReach::SeeEvery(project) => (Some(project), true),
            UnitReach::Own(project) => (Some(project), false),
        };
        // The usual case in one write: an ALLOCATED unit the caller may
        // deallocate moves to DEALLOCATING. Any other finds it unmoved and
        // looks at it: to say why not, or to begin from another state. (An
        // id with a NUL names no unit, and PostgreSQL refuses it.)
        if !has_nul(compute_id)
            && let Some(unit) = self
                .store
                .begin_unit_release(compute_id, project, &self.deadline())
                .await?
        {
            return self.release(&unit).await;
        }
        let unit = self.unit_or_404(compute_id).await?;
        // Not allocated: nothing to do, for anyone, so a retried deallocate
        // is safe for the tenant whose unit it was (FREE is no one's).
        if matches!(unit.status, UnitStatus::Free | UnitStatus::Unavailable) {
            return Ok(());
        }
        if let Some(project) = project
            && unit.project_id.as_deref() != Some(project)
        {
            return Err(match sees_every {
                true => Error::Forbidden(format!(
                    "compute unit {compute_id} is another workspace's: deallocating it needs \
                     server_delete"
                )),
                false => Error::NotFound(format!(
                    "Compute unit {} not found",
                    compute_id.escape_debug()
                )),
            });
        }
        if let Some(instance) = &unit.instance_id {
            return Err(Error::Conflict(format!(
                "compute unit {compute_id} is held by instance {instance}; delete the instance \
                 to free it"
            )));
        }
        let expired = unit
            .deadline
            .as_deref()
            .is_some_and(|d| d < tessera_store::now().as_str());
        match unit.status {
            UnitStatus::Allocating if !expired => {
                return Err(Error::Conflict(format!(
                    "compute unit {compute_id} is being allocated; deallocate it once it is ALLOCATED"
                )));
            }
            _ => {}
        }
        // Only from the state just seen: a unit that changed meanwhile (given
        // back and handed to someone else) is not taken from its new tenant.
        let owner = unit.project_id.clone();
        match self.begin_release(unit).await? {
            Some(unit) => self.release(&unit).await,
            // Another request is deallocating it (a retry sent while the
            // first was under way): answered as that one ends.
            None => self.released_by_another(compute_id, owner.as_deref()).await,
        }
    }

    /// Waits for the deallocation of `compute_id` another request began
    /// to end (FREE: done; failed: its failure), as long as the unit is
    /// still `owner`'s being released. A unit that changed otherwise (given
    /// back and handed to someone else) is not taken from its new tenant.
    async fn released_by_another(&self, compute_id: &str, owner: Option<&str>) -> Result<()> {
        let changed = || {
            Error::Conflict(format!(
                "compute unit {compute_id} changed while being deallocated; look at it again"
            ))
        };
        let until = tokio::time::Instant::now() + self.config.agent_timeout;
        loop {
            let unit = self.unit_or_404(compute_id).await?;
            match unit.status {
                UnitStatus::Free | UnitStatus::Unavailable => return Ok(()),
                UnitStatus::Deallocating if unit.project_id.as_deref() == owner => {}
                UnitStatus::DeallocationFail if unit.project_id.as_deref() == owner => {
                    return Err(Error::HostFailed(format!(
                        "the host failed to wipe compute unit {compute_id} (now DEALLOCATION_FAIL)"
                    )));
                }
                _ => return Err(changed()),
            }
            if tokio::time::Instant::now() >= until {
                return Err(Error::HostTimeout(format!(
                    "compute unit {compute_id} is still being deallocated; it is retried in the \
                     background"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Moves a held unit, as last seen, to DEALLOCATING with a new deadline;
    /// `None` when it changed since.
    pub(crate) async fn begin_release(&self, mut unit: UnitRecord) -> Result<Option<UnitRecord>> {
        let deadline = self.deadline();
        let moved = self
            .store
            .transition_unit(
                &unit.compute_id,
                unit.generation,
                &[unit.status],
                UnitStatus::Deallocating,
                None,
                Some(&deadline),
            )
            .await?;
        Ok(moved.map(|generation| {
            unit.status = UnitStatus::Deallocating;
            unit.generation = generation;
            unit.deadline = Some(deadline);
            unit
        }))
    }

    /// Wipes a DEALLOCATING unit on its host and returns it to the pool.
    pub(crate) async fn release(&self, unit: &UnitRecord) -> Result<()> {
        let compute_id = unit.compute_id.as_str();
        let host = HostId::new(unit.host_id.as_str());
        let outcome = match self.agent(&host).await? {
            None => Err(HostCallError::NoAgent),
            Some(agent) => match unit_spec(unit) {
                Ok(spec) => self.host_call(agent.release_unit(&spec)).await,
                Err(err) => Err(HostCallError::Failed(err.to_string())),
            },
        };
        match outcome {
            Ok(()) => {
                if self
                    .store
                    .release_unit(compute_id, unit.generation, unit.project_id.as_deref())
                    .await?
                {
                    let spec = unit_spec(unit)?;
                    self.placement
                        .release_unit(&host, &spec.compute_id, spec.cpus);
                    tracing::debug!(compute_id, "unit released");
                }
                Ok(())
            }
            Err(HostCallError::Failed(why)) => {
                let failed = self
                    .store
                    .transition_unit(
                        compute_id,
                        unit.generation,
                        &[UnitStatus::Deallocating],
                        UnitStatus::DeallocationFail,
                        Some(&why),
                        None,
                    )
                    .await?;
                if failed.is_none() {
                    // A newer release of the same unit overtook this one
                    // (the host refused this step as stale): its outcome
                    // is the unit's, not this failure.
                    let now = self.unit_or_404(compute_id).await?;
                    return match now.status {
                        UnitStatus::Free | UnitStatus::Unavailable | UnitStatus::Deallocating => {
                            Ok(())
                        }
                        _ => Err(Error::Conflict(format!(
                            "compute unit {compute_id} changed while being deallocated; look at it again"
                        ))),
                    };
                }
                Err(Error::HostFailed(format!(
                    "deallocation of {compute_id} failed on {}: {why}",
                    unit.hostname
                )))
            }
            Err(HostCallError::Timeout(after)) => Err(Error::HostTimeout(format!(
                "{} did not finish wiping {compute_id} within {after:?}; it stays DEALLOCATING \
                 and is retried",
                unit.hostname
            ))),
            Err(HostCallError::NoAgent) => Err(Error::Unavailable(format!(
                "{} has no agent to wipe {compute_id}; it stays DEALLOCATING until one joins",
                unit.hostname
            ))),
        }
    }

    async fn unit_or_404(&self, compute_id: &str) -> Result<UnitRecord> {
        let unit = match has_nul(compute_id) {
            true => None,
            false => self.store.unit(compute_id).await?,
        };
        unit.ok_or_else(|| {
            Error::NotFound(format!(
                "Compute unit {} not found",
                compute_id.escape_debug()
            ))
        })
    }

    /// Units whose host-side step is overdue: what the reconciler settles.
    pub(crate) async fn overdue_units(&self) -> Result<Vec<UnitRecord>> {
        let filter = UnitFilter {
            statuses: vec![UnitStatus::Allocating, UnitStatus::Deallocating],
            ..UnitFilter::default()
        };
        let now = tessera_store::now();
        let units = self.store.units(&filter).await?;
        Ok(units
            .into_iter()
            .filter(|u| u.deadline.as_deref().is_some_and(|d| d < now.as_str()))
            .collect())
    }
}

fn validate_allocation(req: &AllocateUnit) -> Result<()> {
    match allocation_problems(req).into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// The most an allocation's tags may hold, as JSON.
pub const MAX_TAGS_BYTES: usize = 16 * 1024;

/// Every problem of an allocation's request, in the order of its fields;
/// none when it may be tried.
pub fn allocation_problems(req: &AllocateUnit) -> Vec<Error> {
    let mut problems = Vec::new();
    if let Err(err) = crate::ssh_keys::check_public_key("ssh_public_key", &req.ssh_public_key) {
        problems.push(err);
    }
    if req.tags.as_ref().is_some_and(|t| !t.is_object()) {
        problems.push(Error::invalid("tags", "tags must be an object or null"));
    }
    // Kept with the unit and answered in every list of units: bounded, as
    // a cloud's tags are, not by the body's 2 MiB alone.
    if req
        .tags
        .as_ref()
        .is_some_and(|t| t.to_string().len() > MAX_TAGS_BYTES)
    {
        problems.push(Error::invalid(
            "tags",
            format!("tags must be at most {MAX_TAGS_BYTES} bytes of JSON"),
        ));
    }
    let deployment_id = req.tags.as_ref().and_then(|t| t.get("deployment_id"));
    if deployment_id.and_then(|d| d.as_str()).is_some_and(has_nul) {
        problems.push(Error::invalid(
            "tags",
            "tags.deployment_id must not contain NUL characters",
        ));
    }
    let most = tessera_core::cpuset::MAX_CPU_ID + 1;
    if req.cpu_count == 0 || req.cpu_count > most {
        problems.push(Error::invalid(
            "cpu_count",
            format!("cpu_count must be 1 to {most} CPUs"),
        ));
    }
    problems
}

/// An allocation that lost its unit before it finished.
fn interrupted(compute_id: &str) -> Error {
    Error::HostTimeout(format!(
        "the allocation of {compute_id} did not finish in time and was undone; try again"
    ))
}

/// Whether `text` holds a NUL, which no stored text can (PostgreSQL refuses
/// it in text values).
pub(crate) fn has_nul(text: &str) -> bool {
    text.contains('\0')
}
