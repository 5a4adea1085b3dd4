//! SSH public keys of a project, which instances name in `ssh_key_ids`.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul, new_id};
use tessera_core::Permission;

pub use tessera_store::SshKeyRecord as SshKey;

#[derive(Clone, Debug)]
pub struct CreateSshKey {
    pub name: String,
    pub public_key: String,
}

/// Parses one OpenSSH public key line, as `field` of a request.
pub fn parse_public_key(field: &'static str, key: &str) -> Result<ssh_key::PublicKey> {
    let key = key.trim();
    if key.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must be a single OpenSSH public key line, without control characters"),
        ));
    }
    ssh_key::PublicKey::from_openssh(key).map_err(|e| {
        Error::invalid(
            field,
            format!(
                "{field} is not an OpenSSH public key ({e}); expected e.g. \"ssh-ed25519 AAAA... user@host\""
            ),
        )
    })
}

impl App {
    pub async fn ssh_keys(&self, caller: &Principal) -> Result<Vec<SshKey>> {
        caller.require(Permission::SshKeyRead)?;
        Ok(self.store.ssh_keys(&caller.project_id).await?)
    }

    pub async fn ssh_key(&self, caller: &Principal, id: &str) -> Result<SshKey> {
        caller.require(Permission::SshKeyRead)?;
        self.project_ssh_key(&caller.project_id, id).await
    }

    pub(crate) async fn project_ssh_key(&self, project_id: &str, id: &str) -> Result<SshKey> {
        let key = match has_nul(id) {
            true => None,
            false => self.store.ssh_key(project_id, id).await?,
        };
        key.ok_or_else(|| Error::NotFound(format!("SSH key {id} not found")))
    }

    pub async fn create_ssh_key(&self, caller: &Principal, req: CreateSshKey) -> Result<SshKey> {
        caller.require(Permission::SshKeyWrite)?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name",
                "name must be 1 to 128 printable characters",
            ));
        }
        let parsed = parse_public_key("public_key", &req.public_key)?;
        let key = SshKey {
            id: new_id("key"),
            project_id: caller.project_id.clone(),
            name: name.to_string(),
            public_key: req.public_key.trim().to_string(),
            fingerprint: parsed.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            created_at: tessera_store::now(),
        };
        if !self.store.insert_ssh_key(&key).await? {
            return Err(Error::Conflict(format!(
                "an SSH key named {name} already exists"
            )));
        }
        Ok(key)
    }

    pub async fn delete_ssh_key(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::SshKeyWrite)?;
        let key = self.project_ssh_key(&caller.project_id, id).await?;
        self.store
            .delete_ssh_key(&caller.project_id, &key.id)
            .await?;
        Ok(())
    }
}
