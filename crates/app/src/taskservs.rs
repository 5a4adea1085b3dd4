//! Taskservs: named services installed on chosen servers.
//!
//! A catalog of definitions (metadata, an install and a remove script; see
//! `taskservs/README.md`) is built into the binary or read from a
//! directory. Creating a taskserv is an operation that runs the install
//! script on each named server through its host agent and records each
//! server's outcome; if any server fails, the servers where it succeeded
//! run the remove script again, so a taskserv is on all its servers or on
//! none. Deleting runs the remove script everywhere.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::operations::{Operation, Run};
use crate::{App, has_nul, new_id};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use tessera_agent_api::{HostScript, ScriptOutcome};
use tessera_core::ProjectId;
use tessera_core::status::{HostStatus, OperationKind, OperationStatus, TaskservStatus};
use tessera_core::{HostId, Permission};
use tessera_store::{NewOperation, NewTaskserv, TaskservRecord};

/// A service installed on servers of the fleet.
#[derive(Clone, Debug)]
pub struct Taskserv {
    pub id: String,
    pub project_id: ProjectId,
    pub name: String,
    pub version: String,
    pub config: serde_json::Value,
    /// Hostnames.
    pub servers: Vec<String>,
    pub status: TaskservStatus,
    /// Each server's outcome (`status`, `exit_code`, `output`).
    pub results: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
}

impl Taskserv {
    fn from_record(r: TaskservRecord) -> Result<Taskserv> {
        let corrupt = |what: String| Error::corrupt(format!("taskserv {}: {what}", r.id));
        Ok(Taskserv {
            status: r
                .status
                .parse()
                .map_err(|e| corrupt(format!("status: {e}")))?,
            config: serde_json::from_str(&r.config).map_err(|e| corrupt(format!("config: {e}")))?,
            servers: serde_json::from_str(&r.servers)
                .map_err(|e| corrupt(format!("servers: {e}")))?,
            results: serde_json::from_str(&r.results)
                .map_err(|e| corrupt(format!("results: {e}")))?,
            id: r.id,
            project_id: ProjectId::new(r.project_id),
            name: r.name,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// One catalog entry.
#[derive(Clone, Debug)]
pub struct TaskservDefinition {
    pub name: String,
    pub version: String,
    pub description: String,
    pub install: String,
    pub remove: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
}

/// The definitions a control plane offers.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    definitions: BTreeMap<String, TaskservDefinition>,
}

const BUILT_IN: &[(&str, &str, &str)] = &[
    (
        include_str!("../../../taskservs/hello/taskserv.toml"),
        include_str!("../../../taskservs/hello/install.sh"),
        include_str!("../../../taskservs/hello/remove.sh"),
    ),
    (
        include_str!("../../../taskservs/motd/taskserv.toml"),
        include_str!("../../../taskservs/motd/install.sh"),
        include_str!("../../../taskservs/motd/remove.sh"),
    ),
];

impl Catalog {
    /// The catalog shipped with Tessera (`taskservs/` in the source tree).
    pub fn built_in() -> Catalog {
        let mut catalog = Catalog::default();
        for (meta, install, remove) in BUILT_IN {
            if let Ok(def) = definition(meta, install, remove) {
                catalog.definitions.insert(def.name.clone(), def);
            }
        }
        catalog
    }

    /// Every `DIR/<name>/{taskserv.toml,install.sh,remove.sh}`.
    pub fn load(dir: &Path) -> std::result::Result<Catalog, String> {
        let mut catalog = Catalog::default();
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| e.to_string())?.path();
            if !path.is_dir() {
                continue;
            }
            let read = |file: &str| {
                std::fs::read_to_string(path.join(file))
                    .map_err(|e| format!("{}: {e}", path.join(file).display()))
            };
            let def = definition(
                &read("taskserv.toml")?,
                &read("install.sh")?,
                &read("remove.sh")?,
            )
            .map_err(|e| format!("{}: {e}", path.display()))?;
            catalog.definitions.insert(def.name.clone(), def);
        }
        Ok(catalog)
    }

    pub fn get(&self, name: &str) -> Option<&TaskservDefinition> {
        self.definitions.get(name)
    }

    pub fn definitions(&self) -> impl Iterator<Item = &TaskservDefinition> {
        self.definitions.values()
    }
}

fn definition(
    meta: &str,
    install: &str,
    remove: &str,
) -> std::result::Result<TaskservDefinition, String> {
    let meta: Metadata = toml::from_str(meta).map_err(|e| format!("taskserv.toml: {e}"))?;
    Ok(TaskservDefinition {
        name: meta.name,
        version: meta.version,
        description: meta.description,
        install: install.to_string(),
        remove: remove.to_string(),
    })
}

#[derive(Clone, Debug)]
pub struct CreateTaskserv {
    pub workspace: Option<String>,
    pub name: String,
    pub servers: Vec<String>,
    pub config: serde_json::Value,
    pub check_mode: bool,
}

/// The environment a script gets from a taskserv's config.
fn script_env(taskserv: &TaskservRecord) -> Vec<(String, String)> {
    let mut env = vec![
        ("TASKSERV_NAME".to_string(), taskserv.name.clone()),
        ("TASKSERV_VERSION".to_string(), taskserv.version.clone()),
        ("TASKSERV_CONFIG".to_string(), taskserv.config.clone()),
    ];
    let config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&taskserv.config).unwrap_or_default();
    for (key, value) in config {
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        env.push((format!("TASKSERV_CONFIG_{}", key.to_uppercase()), text));
    }
    env
}

impl App {
    pub fn taskserv_catalog(&self) -> &Catalog {
        &self.taskservs
    }

    pub async fn taskservs(&self, caller: &Principal) -> Result<Vec<Taskserv>> {
        caller.require(Permission::TaskservRead)?;
        let records = self.store.taskservs(&caller.project_id).await?;
        records.into_iter().map(Taskserv::from_record).collect()
    }

    pub async fn taskserv(&self, caller: &Principal, id: &str) -> Result<Taskserv> {
        caller.require(Permission::TaskservRead)?;
        self.project_taskserv(caller, id).await
    }

    async fn project_taskserv(&self, caller: &Principal, id: &str) -> Result<Taskserv> {
        let found = match has_nul(id) {
            true => None,
            false => self.store.taskserv(id).await?,
        };
        found
            .map(Taskserv::from_record)
            .transpose()?
            .filter(|t| *t.project_id == *caller.project_id && t.status != TaskservStatus::Removed)
            .ok_or_else(|| Error::NotFound(format!("taskserv {id} not found")))
    }

    /// Validates a taskserv and starts the operation that installs it on
    /// its servers (with `check_mode`, validates only).
    pub async fn create_taskserv(
        &self,
        caller: &Principal,
        req: CreateTaskserv,
    ) -> Result<Operation> {
        caller.require(Permission::TaskservCreate)?;
        let project_id = self.workspace_of(caller, req.workspace.as_deref()).await?;
        let Some(def) = self.taskservs.get(&req.name) else {
            let known: Vec<&str> = self
                .taskservs
                .definitions()
                .map(|d| d.name.as_str())
                .collect();
            return Err(Error::invalid(
                "name",
                format!(
                    "no taskserv {:?} in the catalog; it has: {}",
                    req.name,
                    known.join(", ")
                ),
            ));
        };
        let Some(config) = req.config.as_object() else {
            return Err(Error::invalid("config", "config must be an object"));
        };
        for (key, value) in config {
            let key_ok = !key.is_empty()
                && key.len() <= 64
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok || value.as_str().is_some_and(|v| v.len() > 4096 || has_nul(v)) {
                return Err(Error::invalid(
                    "config",
                    format!(
                        "config key {key:?}: keys are letters, digits and '_'; values at most 4096 characters"
                    ),
                ));
            }
        }
        let version = match config.get("version") {
            None => def.version.clone(),
            Some(serde_json::Value::String(v)) if !v.is_empty() && v.len() <= 64 => v.clone(),
            Some(_) => {
                return Err(Error::invalid(
                    "config",
                    "config.version must be a short string",
                ));
            }
        };
        if req.servers.is_empty() || req.servers.len() > 256 {
            return Err(Error::invalid(
                "servers",
                "servers must list 1 to 256 servers (ids or host names)",
            ));
        }
        let mut servers = req.servers.clone();
        servers.sort();
        servers.dedup();
        for name in &servers {
            let host = self.find_server(name).await?;
            if host.status != HostStatus::Ready {
                return Err(Error::Conflict(format!(
                    "server {name} is {}, not running",
                    host.status.as_str().to_lowercase()
                )));
            }
        }
        let id = new_id("tsk");
        let op = NewOperation {
            id: crate::new_uuid(),
            project_id: project_id.clone(),
            kind: OperationKind::TaskservCreate,
            resource_id: Some(id.clone()),
            params: serde_json::json!({ "taskserv_id": id, "check_mode": req.check_mode, "name": req.name }),
            created_by: caller.username.clone(),
        };
        if req.check_mode {
            self.store.insert_operation(&op).await?;
        } else {
            let taskserv = NewTaskserv {
                id,
                project_id,
                name: def.name.clone(),
                version,
                config: req.config.clone(),
                servers,
            };
            self.store.insert_taskserv(&taskserv, &op).await?;
        }
        // Read before the operation starts, so the answer is what was recorded.
        let recorded = self.project_operation(caller, &op.id).await?;
        self.spawn_operation(&op.id);
        Ok(recorded)
    }

    /// Starts removing a taskserv from its servers.
    pub async fn delete_taskserv(
        &self,
        caller: &Principal,
        id: &str,
        workspace: Option<&str>,
    ) -> Result<Operation> {
        caller.require(Permission::TaskservDelete)?;
        let project_id = self.workspace_of(caller, workspace).await?;
        let taskserv = self.project_taskserv(caller, id).await?;
        let op = NewOperation {
            id: crate::new_uuid(),
            project_id,
            kind: OperationKind::TaskservDelete,
            resource_id: Some(taskserv.id.clone()),
            params: serde_json::json!({ "taskserv_id": taskserv.id }),
            created_by: caller.username.clone(),
        };
        if !self.store.begin_taskserv_removal(&taskserv.id, &op).await? {
            return Err(Error::Conflict(format!(
                "taskserv {id} is {}; wait for its operation to end",
                taskserv.status
            )));
        }
        // Read before the operation starts, so the answer is what was recorded.
        let recorded = self.project_operation(caller, &op.id).await?;
        self.spawn_operation(&op.id);
        Ok(recorded)
    }

    /// Runs one script of a taskserv on each of `servers`.
    async fn run_on_servers(
        &self,
        taskserv: &TaskservRecord,
        servers: &[String],
        phase: &str,
    ) -> Result<BTreeMap<String, Result<ScriptOutcome, String>>> {
        let def = self.taskservs.get(&taskserv.name).ok_or_else(|| {
            Error::Unavailable(format!("taskserv {} left the catalog", taskserv.name))
        })?;
        let body = if phase == "install" {
            &def.install
        } else {
            &def.remove
        };
        let script = HostScript {
            label: format!("{}:{phase}", taskserv.name),
            body: body.clone(),
            env: script_env(taskserv),
        };
        let runs = servers.iter().map(|hostname| {
            let script = script.clone();
            async move {
                let outcome = async {
                    let host = self
                        .store
                        .host_by_hostname(hostname)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("server {hostname} no longer exists"))?;
                    let agent = self
                        .agent(&HostId::new(host.id.as_str()))
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("server {hostname} has no agent"))?;
                    self.host_call(agent.run_script(&script))
                        .await
                        .map_err(String::from)
                }
                .await;
                (hostname.clone(), outcome)
            }
        });
        Ok(futures::future::join_all(runs).await.into_iter().collect())
    }

    /// Drives `taskserv_create` (see the module doc).
    pub(crate) async fn run_taskserv_create(&self, run: &mut Run) -> Result<()> {
        let params: serde_json::Value = run.params()?;
        if params["check_mode"] == true {
            let result =
                serde_json::json!({ "check_mode": true, "valid": true, "name": params["name"] });
            self.store
                .finish_operation(&run.op.id, OperationStatus::Completed, Some(&result), None)
                .await?;
            return Ok(());
        }
        let id = run.op.resource_id.clone().unwrap_or_default();
        let Some(taskserv) = self.store.taskserv(&id).await? else {
            self.store
                .finish_operation(
                    &run.op.id,
                    OperationStatus::Failed,
                    None,
                    Some("the taskserv no longer exists"),
                )
                .await?;
            return Ok(());
        };
        let servers: Vec<String> = serde_json::from_str(&taskserv.servers).unwrap_or_default();
        self.store
            .set_taskserv(&id, TaskservStatus::Installing, &serde_json::json!({}))
            .await?;
        let outcomes = self.run_on_servers(&taskserv, &servers, "install").await?;
        let mut results = serde_json::Map::new();
        let mut failed = Vec::new();
        let mut installed = Vec::new();
        for (hostname, outcome) in &outcomes {
            results.insert(hostname.clone(), outcome_json("installed", outcome));
            match outcome {
                Ok(o) if o.exit_code == 0 => installed.push(hostname.clone()),
                Ok(o) => failed.push(format!("{hostname} (exit {})", o.exit_code)),
                Err(why) => failed.push(format!("{hostname} ({why})")),
            }
        }
        if failed.is_empty() {
            let results = serde_json::Value::Object(results);
            self.store
                .set_taskserv(&id, TaskservStatus::Running, &results)
                .await?;
            let result = serde_json::json!({ "taskserv_id": id, "servers": results });
            self.store
                .finish_operation(&run.op.id, OperationStatus::Completed, Some(&result), None)
                .await?;
            tracing::info!(taskserv = %taskserv.name, id, servers = servers.len(), "taskserv installed");
            return Ok(());
        }
        // All or none: take it back off the servers where it went on.
        let undone = self.run_on_servers(&taskserv, &installed, "remove").await?;
        for (hostname, outcome) in &undone {
            results.insert(hostname.clone(), outcome_json("rolled_back", outcome));
        }
        let why = format!("install failed on {}", failed.join(", "));
        self.store
            .set_taskserv(
                &id,
                TaskservStatus::Failed,
                &serde_json::Value::Object(results),
            )
            .await?;
        self.store
            .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
            .await?;
        tracing::warn!(taskserv = %taskserv.name, id, why, "taskserv install failed");
        Ok(())
    }

    /// Drives `taskserv_delete`.
    pub(crate) async fn run_taskserv_delete(&self, run: &mut Run) -> Result<()> {
        let id = run.op.resource_id.clone().unwrap_or_default();
        let Some(taskserv) = self.store.taskserv(&id).await? else {
            self.store
                .finish_operation(
                    &run.op.id,
                    OperationStatus::Failed,
                    None,
                    Some("the taskserv no longer exists"),
                )
                .await?;
            return Ok(());
        };
        let servers: Vec<String> = serde_json::from_str(&taskserv.servers).unwrap_or_default();
        let outcomes = self.run_on_servers(&taskserv, &servers, "remove").await?;
        let mut results = serde_json::Map::new();
        let mut failed = Vec::new();
        for (hostname, outcome) in &outcomes {
            results.insert(hostname.clone(), outcome_json("removed", outcome));
            if !matches!(outcome, Ok(o) if o.exit_code == 0) {
                failed.push(hostname.clone());
            }
        }
        let results = serde_json::Value::Object(results);
        if failed.is_empty() {
            self.store
                .set_taskserv(&id, TaskservStatus::Removed, &results)
                .await?;
            let result = serde_json::json!({ "taskserv_id": id, "servers": results });
            self.store
                .finish_operation(&run.op.id, OperationStatus::Completed, Some(&result), None)
                .await?;
        } else {
            self.store
                .set_taskserv(&id, TaskservStatus::Failed, &results)
                .await?;
            let why = format!("remove failed on {}", failed.join(", "));
            self.store
                .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                .await?;
        }
        Ok(())
    }
}

fn outcome_json(done: &str, outcome: &Result<ScriptOutcome, String>) -> serde_json::Value {
    match outcome {
        Ok(o) if o.exit_code == 0 => {
            serde_json::json!({"status": done, "exit_code": 0, "output": o.output})
        }
        Ok(o) => {
            serde_json::json!({"status": "failed", "exit_code": o.exit_code, "output": o.output})
        }
        Err(why) => serde_json::json!({"status": "failed", "exit_code": null, "output": why}),
    }
}
