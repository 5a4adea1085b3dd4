//! Operations: every long action, persisted before it starts, driven by one
//! process at a time, resumable after a crash, cancellable, and visible at
//! `/v1/operations`.
//!
//! An operation is a saga: a list of steps, each recorded in the operation's
//! step log as it is done (with the step's own changes where they are in the
//! store, in the same transaction), and each with an undo. The process that
//! drives it holds a lease, renewed at each step; when a driver dies, the
//! reconciler of any process takes the operation over once the lease has
//! passed and carries on from the log: forward, or back through the undos
//! when a step failed or a cancel was asked for. A driver that cannot finish
//! now (a host that does not answer an undo) leaves the operation running
//! and lets its lease run out, so it is tried again.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, InFlight, has_nul};
use base64::Engine;
use std::time::Duration;
use tessera_core::status::{OperationKind, OperationStatus};
use tessera_core::{OperationId, Permission, ProjectId};
use tessera_store::{OperationFilter, OperationRecord};

mod steps;

pub(crate) use steps::{Step, StepLog};

/// An operation, as the app speaks of it. Made from its store row once,
/// here; its step log and parameters stay with the driver ([`Run`]).
#[derive(Clone, Debug)]
pub struct Operation {
    pub id: OperationId,
    pub project_id: ProjectId,
    pub kind: OperationKind,
    pub status: OperationStatus,
    /// The id of what it acts on.
    pub resource_id: Option<String>,
    /// What it produced, once completed.
    pub result: Option<serde_json::Value>,
    /// Why it failed, once failed or cancelled.
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// The user who started it.
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    /// How many times a process took it up.
    pub attempts: u32,
    /// Why the last attempt stopped short, while it is retried.
    pub last_error: Option<String>,
}

impl Operation {
    pub(crate) fn from_record(r: OperationRecord) -> Result<Operation> {
        let corrupt = |what: String| Error::corrupt(format!("operation {}: {what}", r.id));
        let kind = r.kind.parse().map_err(|e| corrupt(format!("kind: {e}")))?;
        let status = r
            .status
            .parse()
            .map_err(|e| corrupt(format!("status: {e}")))?;
        let result = r
            .result
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt(format!("result: {e}")))?;
        Ok(Operation {
            id: OperationId::new(r.id),
            project_id: ProjectId::new(r.project_id),
            kind,
            status,
            resource_id: r.resource_id,
            result,
            error: r.error,
            cancel_requested: r.cancel_requested != 0,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
            last_error: r.last_error,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

/// Operation kinds a cancel can stop (and unwind) midway.
const CANCELLABLE: &[OperationKind] = &[
    OperationKind::InstanceCreate,
    OperationKind::ServerCreate,
    OperationKind::ClusterCreate,
];
/// The fleet permission an operation on the fleet (not on a workspace's
/// resources) acts with: whoever has it, or `server_read`, sees the
/// operation whichever workspace it was asked in, and only who has it
/// cancels it. Workspace operations need the workspace's permissions.
fn fleet_permission(kind: OperationKind) -> Option<Permission> {
    match kind {
        OperationKind::ServerCreate => Some(Permission::ServerCreate),
        OperationKind::ServerDelete | OperationKind::ServerDrain => Some(Permission::ServerDelete),
        OperationKind::TaskservCreate => Some(Permission::TaskservCreate),
        OperationKind::TaskservDelete => Some(Permission::TaskservDelete),
        OperationKind::InstanceCreate
        | OperationKind::InstanceDelete
        | OperationKind::InstanceStart
        | OperationKind::InstanceStop
        | OperationKind::ClusterCreate => None,
    }
}

/// What cancelling `op` needs beside `operation_cancel`: the fleet's
/// permission it acts with, for the fleet's; and, for a server's
/// registration (a cancel once it is registered retires the server), a
/// removal's too.
pub(crate) fn may_cancel(caller: &Principal, op: &Operation) -> Result<()> {
    if let Some(acts) = fleet_permission(op.kind) {
        caller.require(acts)?;
    }
    if op.kind == OperationKind::ServerCreate {
        caller.require(Permission::ServerDelete)?;
    }
    Ok(())
}

/// The project an operation's events are the project's of: none for the
/// fleet's (then they are its staff's, as events of no project are).
fn event_project(kind: OperationKind, project_id: &str) -> Option<&str> {
    fleet_permission(kind).is_none().then_some(project_id)
}

/// [`event_project`] of an operation as stored.
fn stored_event_project(op: &OperationRecord) -> Option<&str> {
    match op.kind.parse::<OperationKind>() {
        Ok(kind) => event_project(kind, &op.project_id),
        Err(_) => None,
    }
}

/// The longest a client may wait on one request.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default)]
pub struct OperationQuery {
    pub kind: Option<OperationKind>,
    pub status: Option<OperationStatus>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

/// One page of a list, and the token of the next page if there is one.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: Option<String>,
}

/// A page token: where the previous page ended, `(created_at, id)`, and
/// which listing it pages (see [`listing_mark`]).
pub(crate) fn encode_page_token(created_at: &str, id: &str, listing: &str) -> String {
    let mark = listing_mark(listing);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}|{mark}"))
}

/// What a token keeps of the listing it was given for (the list and its
/// filters, as its caller writes them): a token given for one listing is
/// refused by another, as real clouds refuse it, rather than paging it
/// from a place the other listing never had.
fn listing_mark(listing: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(listing.as_bytes())[..8])
}

fn decode_page_token(token: &str, listing: &str) -> Result<(String, String)> {
    let invalid = || Error::invalid("page_token", "page_token is not a token this API gave out");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    if has_nul(&text) {
        return Err(invalid());
    }
    let mut parts = text.splitn(3, '|');
    let (Some(at), Some(id)) = (parts.next(), parts.next()) else {
        return Err(invalid());
    };
    // A token without its listing's mark was given before tokens had one:
    // taken as it was then.
    if let Some(mark) = parts.next()
        && mark != listing_mark(listing)
    {
        return Err(Error::invalid(
            "page_token",
            "page_token was given for another listing (other filters); keep the filters of \
             the request that gave it, or start again without it",
        ));
    }
    Ok((at.to_string(), id.to_string()))
}

/// A list request's page size and where it starts, for `listing` (the
/// list and its filters: a token only pages the listing it was given for).
pub(crate) fn page_request(
    limit: Option<u32>,
    page_token: Option<&str>,
    listing: &str,
) -> Result<(usize, Option<(String, String)>)> {
    let after = page_token
        .map(|token| decode_page_token(token, listing))
        .transpose()?;
    Ok((page_limit(limit)?, after))
}

fn page_limit(limit: Option<u32>) -> Result<usize> {
    match limit {
        None => Ok(100),
        Some(n @ 1..=1000) => Ok(n as usize),
        Some(_) => Err(Error::invalid("limit", "limit must be between 1 and 1000")),
    }
}

/// Stops a task when dropped, whatever way its owner ends (a panic too).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An operation being driven: its record and the steps done so far.
pub(crate) struct Run {
    pub op: OperationRecord,
    pub steps: StepLog,
    /// This process's changes to the operation since before it was taken:
    /// a cancel asked here wakes the run at once.
    changes: crate::events::ChangeWatch,
    /// How the run ended the operation, when the saga says so as it
    /// settles it: its end is then published without reading it back.
    pub ended: Option<OperationStatus>,
    /// The instance the operation acts on, as this process wrote or read
    /// it when it began the operation: its first step need not read it.
    pub instance: Option<crate::instances::Instance>,
}

impl Run {
    pub fn done(&self, step: &Step) -> bool {
        self.steps.done(step)
    }

    /// The log with `step` added.
    pub fn with(&self, step: Step) -> StepLog {
        self.steps.with(step)
    }

    pub fn params<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.op.params)
            .map_err(|e| Error::corrupt(format!("operation {} params: {e}", self.op.id)))
    }
}

impl App {
    /// The caller's project's operations, oldest first.
    pub async fn operations(
        &self,
        caller: &Principal,
        query: &OperationQuery,
    ) -> Result<Page<Operation>> {
        caller.require(Permission::OperationRead)?;
        let listing = format!("operations kind={:?} status={:?}", query.kind, query.status);
        let (limit, after) = page_request(query.limit, query.page_token.as_deref(), &listing)?;
        // The fleet's operations asked in this workspace are the fleet's
        // staff's to see, not every member's.
        let hidden_kinds = match caller.can(Permission::ServerRead) {
            true => Vec::new(),
            false => OperationKind::ALL
                .iter()
                .copied()
                .filter(|kind| fleet_permission(*kind).is_some())
                .collect(),
        };
        let mut items = self
            .store
            .operations(&OperationFilter {
                project_id: Some(caller.project_id.clone()),
                kind: query.kind,
                status: query.status,
                hidden_kinds,
                after,
                limit: Some(limit as i64 + 1),
            })
            .await?;
        let next_page_token = if items.len() > limit {
            items.truncate(limit);
            items
                .last()
                .map(|op| encode_page_token(&op.created_at, &op.id, &listing))
        } else {
            None
        };
        Ok(Page {
            items: items
                .into_iter()
                .map(Operation::from_record)
                .collect::<Result<_>>()?,
            next_page_token,
        })
    }

    /// An operation of the caller's project; another project's is a 404.
    pub async fn operation(&self, caller: &Principal, id: &str) -> Result<Operation> {
        caller.require(Permission::OperationRead)?;
        self.project_operation(caller, id).await
    }

    /// An operation the caller may see: one of its workspace's, unless it
    /// is the fleet's (then its staff's, whichever workspace it was asked
    /// in); another's is a 404.
    pub(crate) async fn project_operation(
        &self,
        caller: &Principal,
        id: &str,
    ) -> Result<Operation> {
        self.stored_operation(id)
            .await?
            .filter(|op| match fleet_permission(op.kind) {
                Some(acts) => caller.can(Permission::ServerRead) || caller.can(acts),
                None => op.project_id == *caller.project_id,
            })
            .ok_or_else(|| Error::NotFound(format!("operation {id} not found")))
    }

    /// An operation as the store has it now.
    pub(crate) async fn stored_operation(&self, id: &str) -> Result<Option<Operation>> {
        match has_nul(id) {
            true => Ok(None),
            false => self
                .store
                .operation(id)
                .await?
                .map(Operation::from_record)
                .transpose(),
        }
    }

    /// Answers when the operation has finished, or when `timeout` passes,
    /// with the operation as it is then.
    pub async fn wait_operation(
        &self,
        caller: &Principal,
        id: &str,
        timeout: Duration,
    ) -> Result<Operation> {
        caller.require(Permission::OperationRead)?;
        let op = self.project_operation(caller, id).await?;
        self.wait_for_end(op, timeout.min(MAX_WAIT)).await
    }

    /// Waits until an operation ends, or `timeout` passes: for services
    /// that answer once their own operation is done.
    pub(crate) async fn wait_operation_quietly(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<Operation>> {
        match self.stored_operation(id).await? {
            Some(op) => Ok(Some(self.wait_for_end(op, timeout).await?)),
            None => Ok(None),
        }
    }

    async fn wait_for_end(&self, mut op: Operation, timeout: Duration) -> Result<Operation> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.watch_changes(&op.id);
        while !op.is_finished() {
            // Woken by this process's changes; the poll catches other replicas'.
            let poll = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                // The server stops: answer the operation as it is.
                _ = self.stopping.cancelled() => break,
                _ = poll => {}
                _ = changes.changed() => {}
            }
            op = self
                .stored_operation(&op.id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("operation {} not found", op.id)))?;
        }
        Ok(op)
    }

    /// Asks an operation to stop; its done steps are undone. Answers once it
    /// has stopped (or after the agent timeout, still stopping).
    pub async fn cancel_operation(&self, caller: &Principal, id: &str) -> Result<Operation> {
        caller.require(Permission::OperationCancel)?;
        let op = self.project_operation(caller, id).await?;
        may_cancel(caller, &op)?;
        self.cancel(op).await
    }

    pub(crate) async fn cancel(&self, op: Operation) -> Result<Operation> {
        if op.is_finished() {
            return Err(Error::Conflict(format!(
                "operation {} already ended ({})",
                op.id, op.status
            )));
        }
        if !CANCELLABLE.contains(&op.kind) {
            return Err(Error::Conflict(format!(
                "operation {} ({}) cannot be cancelled; wait for it to end",
                op.id, op.kind
            )));
        }
        if !self.store.request_operation_cancel(&op.id).await? {
            let op = self.stored_operation(&op.id).await?.unwrap_or(op);
            return Err(Error::Conflict(format!(
                "operation {} already ended ({})",
                op.id, op.status
            )));
        }
        self.cancel_requested_of(&op.id, op.kind, &op.project_id);
        self.wait_for_end(op, self.config.agent_timeout).await
    }

    /// Goes on with an operation whose cancel was just recorded: its
    /// driver here hears of it at once, and one is started if none runs.
    pub(crate) fn cancel_requested_of(&self, id: &str, kind: OperationKind, project_id: &str) {
        tracing::info!(operation = %id, %kind, "cancel requested");
        self.publish(
            "operation",
            id,
            event_project(kind, project_id),
            "cancelling",
        );
        self.spawn_operation(id);
    }

    /// Drives an operation in the background.
    pub(crate) fn spawn_operation(&self, id: &str) {
        self.spawn_driver(id, false);
    }

    /// Drives an operation in the background, taking back a lease this
    /// replica holds itself (what it drove before a restart, or an attempt
    /// it gave up on that can go on now).
    pub(crate) fn spawn_reclaimed(&self, id: &str) {
        self.spawn_driver(id, true);
    }

    fn spawn_driver(&self, id: &str, reclaim: bool) {
        let app = self.clone();
        let id = id.to_string();
        self.tasks
            .spawn(async move { app.drive_operation(&id, reclaim).await });
    }

    /// Takes the operation (unless another driver holds it) and carries it
    /// as far as it goes.
    pub(crate) async fn drive_operation(&self, id: &str, reclaim: bool) {
        // One driver per operation in this process: so a lease of this
        // replica's may be taken back without two drivers at once.
        let Some(_guard) = InFlight::enter(&self.in_flight, format!("op:{id}")) else {
            return;
        };
        // Watching from before the operation is read, a cancel asked here
        // after that read is never missed.
        let changes = self.watch_changes(id);
        let op = match self
            .store
            .acquire_operation(id, &self.deadline(), reclaim)
            .await
        {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(operation = id, error = %err, "cannot take the operation");
                return;
            }
        };
        self.drive_taken(op, changes, None).await;
    }

    /// Drives, in the background, an operation this process recorded
    /// already taken (see [`tessera_store::Store::insert_instance`]):
    /// `changes` watches it from before it was written, and `instance` is
    /// the instance it acts on as written with it, so neither is read
    /// again.
    pub(crate) fn spawn_taken(
        &self,
        op: OperationRecord,
        changes: crate::events::ChangeWatch,
        instance: Option<crate::instances::Instance>,
    ) {
        let app = self.clone();
        self.tasks.spawn(async move {
            let id = op.id.clone();
            // A new operation: no other driver here can hold it.
            let Some(_guard) = InFlight::enter(&app.in_flight, format!("op:{id}")) else {
                return;
            };
            app.drive_taken(op, changes, instance).await;
        });
    }

    /// Carries an operation this process holds as far as it goes.
    async fn drive_taken(
        &self,
        op: OperationRecord,
        changes: crate::events::ChangeWatch,
        instance: Option<crate::instances::Instance>,
    ) {
        let id = op.id.clone();
        let id = id.as_str();
        let steps = match StepLog::read(&op.id, &op.steps) {
            Ok(steps) => steps,
            Err(err) => {
                // What was done is unknown: nothing is touched, and the
                // operation stays as it is, with why, for an operator.
                tracing::error!(operation = id, error = ?err, "the operation's step log cannot be read");
                let _ = self
                    .store
                    .note_operation_error(id, "its step log cannot be read")
                    .await;
                return;
            }
        };
        let kind = op.kind.clone();
        let mut run = Run {
            op,
            steps,
            changes,
            ended: None,
            instance,
        };
        // Keep the lease while this process drives it, however long a host
        // takes; only a dead process lets it run out.
        let heartbeat = {
            let app = self.clone();
            let id = id.to_string();
            let every = (self.config.agent_timeout / 2).max(Duration::from_secs(1));
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match app.store.renew_operation_lease(&id, &app.deadline()).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(err) => {
                            tracing::warn!(operation = %id, error = %err, "renewing the lease failed");
                        }
                    }
                }
            }))
        };
        let driven = match kind.parse::<OperationKind>() {
            Ok(OperationKind::InstanceCreate) => self.run_instance_create(&mut run).await,
            Ok(
                kind @ (OperationKind::InstanceDelete
                | OperationKind::InstanceStart
                | OperationKind::InstanceStop),
            ) => self.run_instance_power(&mut run, kind).await,
            Ok(OperationKind::ServerCreate) => self.run_server_create(&mut run).await,
            Ok(OperationKind::ServerDelete) => self.run_server_delete(&mut run).await,
            Ok(OperationKind::ClusterCreate) => self.run_cluster_create(&mut run).await,
            Ok(OperationKind::ServerDrain) => self.run_server_drain(&mut run).await,
            Ok(OperationKind::TaskservCreate) => self.run_taskserv_create(&mut run).await,
            Ok(OperationKind::TaskservDelete) => self.run_taskserv_delete(&mut run).await,
            Err(_) => {
                let error = format!("unknown operation kind {kind}");
                self.store
                    .finish_operation(id, OperationStatus::Failed, None, Some(&error))
                    .await
                    .map(|_| ())
                    .map_err(Error::from)
            }
        };
        drop(heartbeat);
        if let Err(err) = driven {
            tracing::warn!(operation = id, kind, error = %err, "operation interrupted; it resumes when its lease ends");
            if let Err(note) = self.store.note_operation_error(id, &err.to_string()).await {
                tracing::warn!(operation = id, error = %note, "noting the error failed");
            }
            return;
        }
        match run.ended {
            Some(status) => self.publish(
                "operation",
                id,
                stored_event_project(&run.op),
                status.as_str(),
            ),
            None => {
                if let Ok(Some(op)) = self.store.operation(id).await {
                    self.publish("operation", id, stored_event_project(&op), &op.status);
                }
            }
        }
    }

    /// Whether a cancel was asked for since the run started.
    pub(crate) async fn cancel_requested(&self, run: &Run) -> Result<bool> {
        Ok(self
            .store
            .operation(&run.op.id)
            .await?
            .is_some_and(|op| op.cancel_requested != 0))
    }

    /// Resolves once a cancel of the run's operation is asked for (here or
    /// on another replica) after the operation was read as the run took it
    /// or last looked with [`App::cancel_requested`].
    pub(crate) async fn until_cancel_requested(&self, run: &mut Run) -> Result<()> {
        loop {
            // Woken by this process's changes to this operation (a cancel
            // here publishes it); the poll catches other replicas' cancels.
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = run.changes.changed() => {}
            }
            if self.cancel_requested(run).await? {
                return Ok(());
            }
        }
    }

    /// Records `step` as done and renews the lease. An operation another
    /// process has settled meanwhile stops this run.
    pub(crate) async fn record_step(&self, run: &mut Run, step: Step) -> Result<()> {
        let steps = run.with(step);
        if !self
            .store
            .record_operation_progress(&run.op.id, &steps.to_json(), &self.deadline())
            .await?
        {
            return Err(Error::Conflict(format!(
                "operation {} was settled by another process",
                run.op.id
            )));
        }
        run.steps = steps;
        Ok(())
    }

    /// Starts every unfinished operation no live process drives.
    /// At start: takes back at once the operations this replica was
    /// driving when it stopped (its leases name it), rather than waiting
    /// for their leases to pass as another replica must.
    pub(crate) async fn resume_own_operations(&self) -> Result<()> {
        for id in self.store.own_operations().await? {
            tracing::info!(operation = %id, "resuming an operation this replica was driving");
            self.spawn_reclaimed(&id);
        }
        Ok(())
    }

    /// Goes on at once with the unfinished operations of `kind` on
    /// `resource_id` whose lease is this replica's (one that gave up
    /// waiting for what has just happened).
    pub(crate) async fn resume_operations_on(&self, kind: &str, resource_id: &str) -> Result<()> {
        for id in self
            .store
            .unfinished_operations_on(kind, resource_id)
            .await?
        {
            self.spawn_reclaimed(&id);
        }
        Ok(())
    }

    pub(crate) async fn resume_operations(&self) -> Result<()> {
        for id in self.store.orphaned_operations().await? {
            let busy = self
                .in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&format!("op:{id}"));
            if !busy {
                tracing::info!(operation = %id, "resuming an unfinished operation");
                self.spawn_operation(&id);
            }
        }
        Ok(())
    }
}

/// Counts for the system metrics, fleet-wide.
#[derive(Clone, Debug)]
pub struct SystemCounts {
    /// Operations by status: those under way as they are now, those ended
    /// as of [`HISTORY_EVERY`] ago at most.
    pub operations: Vec<(String, i64)>,
    /// Instances by state: live ones as they are now, terminated ones as of
    /// [`HISTORY_EVERY`] ago at most.
    pub instances: Vec<(String, i64)>,
    /// Hosts by status.
    pub hosts: Vec<(String, i64)>,
    /// CPUs of hosts that take work, and how many of them are free.
    pub cpus_total: u64,
    pub cpus_free: u64,
}

/// How long this process answers the counts of history (operations that
/// ended, instances terminated) from its last count of them. Those tables
/// keep every row ever made, so counting them reads every row: once a
/// minute at most, not at every scrape of every scraper.
pub const HISTORY_EVERY: Duration = Duration::from_secs(60);

/// Counts by status or state.
type Counts = Vec<(String, i64)>;

/// The last count of history: when, operations by status, instances by
/// state (every row of each).
#[derive(Default)]
pub(crate) struct HistoryCounts(tokio::sync::Mutex<Option<(std::time::Instant, Counts, Counts)>>);

impl App {
    /// Operations by status and instances by state: what is under way or
    /// live read now on indexes (it costs what is live); what ended from
    /// a count at most [`HISTORY_EVERY`] old.
    async fn operation_and_instance_counts(&self) -> Result<(Counts, Counts)> {
        let (operations, instances) = {
            let mut last = self.history.0.lock().await;
            match last.as_ref() {
                Some((at, operations, instances)) if at.elapsed() < HISTORY_EVERY => {
                    (operations.clone(), instances.clone())
                }
                _ => {
                    let operations = self.store.operation_counts().await?;
                    let instances = self.store.instance_counts().await?;
                    *last = Some((
                        std::time::Instant::now(),
                        operations.clone(),
                        instances.clone(),
                    ));
                    (operations, instances)
                }
            }
        };
        let under_way = ["pending", "running"];
        let mut operations: Counts = operations
            .into_iter()
            .filter(|(status, _)| !under_way.contains(&status.as_str()))
            .chain(self.store.active_operation_counts().await?)
            .collect();
        operations.sort();
        let mut instances: Counts = instances
            .into_iter()
            .filter(|(state, _)| state == "terminated")
            .chain(self.store.live_instance_counts().await?)
            .collect();
        instances.sort();
        Ok((operations, instances))
    }

    pub async fn system_counts(&self, caller: &Principal) -> Result<SystemCounts> {
        caller.require(Permission::SystemMetrics)?;
        let (operations, instances) = self.operation_and_instance_counts().await?;
        let (cpus_total, cpus_free) = self.placement.with_engine(|engine| {
            engine
                .hosts()
                .filter(|h| h.schedulable)
                .fold((0u64, 0u64), |(total, free), h| {
                    (
                        total + h.cpus.len() as u64,
                        free + h.free_cpus().len() as u64,
                    )
                })
        });
        Ok(SystemCounts {
            operations,
            instances,
            hosts: self.store.host_counts().await?,
            cpus_total,
            cpus_free,
        })
    }
}
