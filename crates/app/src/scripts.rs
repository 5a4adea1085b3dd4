//! Startup scripts: a project's scripts, which an instance names at
//! creation and runs once on first boot.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul};
use tessera_core::{Permission, ProjectId};
use tessera_store::ScriptRecord;

/// A startup script of a project.
#[derive(Clone, Debug)]
pub struct Script {
    pub id: String,
    pub project_id: ProjectId,
    pub name: String,
    /// Its text.
    pub script: String,
    pub created_at: String,
}

impl From<ScriptRecord> for Script {
    fn from(r: ScriptRecord) -> Script {
        Script {
            id: r.id,
            project_id: ProjectId::new(r.project_id),
            name: r.name,
            script: r.script,
            created_at: r.created_at,
        }
    }
}

/// The largest script, as instances' `user_data` is.
pub const MAX_SCRIPT_BYTES: usize = 64 * 1024;
/// The most scripts a project may have, whatever the configured quota.
pub const MAX_SCRIPT_QUOTA: u32 = 10_000;

/// One page of scripts and how many there are in all.
#[derive(Clone, Debug)]
pub struct ScriptPage {
    pub items: Vec<Script>,
    pub total: i64,
}

impl App {
    pub async fn create_script(
        &self,
        caller: &Principal,
        name: &str,
        script: &str,
    ) -> Result<Script> {
        caller.require(Permission::ScriptWrite)?;
        let name = name.trim();
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name",
                "name must be 1 to 255 printable characters",
            ));
        }
        if script.trim().is_empty() || script.len() > MAX_SCRIPT_BYTES || script.contains('\0') {
            return Err(Error::invalid(
                "script",
                format!("script must be 1 to {MAX_SCRIPT_BYTES} bytes of text"),
            ));
        }
        let record = ScriptRecord {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: caller.project_id.clone(),
            name: name.to_string(),
            script: script.to_string(),
            created_at: tessera_store::now(),
        };
        let quota = self.config.script_quota.min(MAX_SCRIPT_QUOTA);
        if !self.store.insert_script(&record, i64::from(quota)).await? {
            return Err(Error::Forbidden(format!(
                "project {} already has {quota} startup scripts, its quota; delete some first",
                caller.project_name
            )));
        }
        Ok(record.into())
    }

    /// A page of the project's scripts, oldest first: `page` from 1.
    pub async fn scripts(
        &self,
        caller: &Principal,
        page: u32,
        page_size: u32,
    ) -> Result<ScriptPage> {
        caller.require(Permission::ScriptRead)?;
        let offset = i64::from(page.saturating_sub(1)) * i64::from(page_size);
        let (items, total) = self
            .store
            .scripts(&caller.project_id, offset, i64::from(page_size))
            .await?;
        Ok(ScriptPage {
            items: items.into_iter().map(Script::from).collect(),
            total,
        })
    }

    pub async fn script(&self, caller: &Principal, id: &str) -> Result<Script> {
        caller.require(Permission::ScriptRead)?;
        self.project_script(&caller.project_id, id).await
    }

    pub(crate) async fn project_script(&self, project_id: &str, id: &str) -> Result<Script> {
        let script = match has_nul(id) {
            true => None,
            false => self.store.script(project_id, id).await?,
        };
        script
            .map(Script::from)
            .ok_or_else(|| Error::NotFound(format!("startup script {id} not found")))
    }

    /// Deletes scripts of the project; every id must be one of them, or
    /// nothing is deleted.
    pub async fn delete_scripts(&self, caller: &Principal, ids: &[String]) -> Result<()> {
        caller.require(Permission::ScriptWrite)?;
        for id in ids {
            self.project_script(&caller.project_id, id).await?;
        }
        self.store.delete_scripts(&caller.project_id, ids).await?;
        Ok(())
    }
}
