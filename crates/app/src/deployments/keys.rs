//! Inference keys: what callers of a project's deployments present to the
//! front door (`Authorization: Bearer <key>`). Random, shown once when
//! made, kept as their SHA-256 like API tokens; they call deployments and
//! nothing else.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tessera_core::Permission;
use tessera_store::{InferenceKeyRecord, Recorded};

/// What every key starts with, so that one found in a log is known.
pub const KEY_PREFIX: &str = "tsk_inf_";
/// The most keys a project may have.
pub const MAX_KEYS: usize = 100;

/// An inference key as listed: never the key.
#[derive(Clone, Debug)]
pub struct InferenceKey {
    pub id: String,
    pub name: String,
    /// Its first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: String,
}

impl From<InferenceKeyRecord> for InferenceKey {
    fn from(r: InferenceKeyRecord) -> Self {
        InferenceKey {
            id: r.id,
            name: r.name,
            prefix: r.prefix,
            created_at: r.created_at,
        }
    }
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl App {
    /// Makes a key; answers it with the key itself, which is never shown
    /// again.
    pub async fn create_inference_key(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<(InferenceKey, String)> {
        caller.require(Permission::SecretWrite)?;
        crate::secrets::check_name("name", "the key", name)?;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let key = format!("{KEY_PREFIX}{}", hex::encode(bytes));
        let record = InferenceKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: caller.project_id.clone(),
            name: name.to_string(),
            hash: hash(&key),
            prefix: key.chars().take(KEY_PREFIX.len() + 6).collect(),
            created_at: tessera_store::now(),
        };
        match self
            .store
            .insert_inference_key(&record, MAX_KEYS as i64)
            .await?
        {
            Recorded::Added => Ok((record.into(), key)),
            Recorded::NameTaken => Err(Error::Conflict(format!(
                "an inference key named {name} already exists"
            ))),
            Recorded::Full => Err(Error::Forbidden(format!(
                "project {} already has {MAX_KEYS} inference keys; revoke some first",
                caller.project_name
            ))),
        }
    }

    pub async fn inference_keys(&self, caller: &Principal) -> Result<Vec<InferenceKey>> {
        caller.require(Permission::SecretRead)?;
        Ok(self
            .store
            .inference_keys(&caller.project_id)
            .await?
            .into_iter()
            .map(InferenceKey::from)
            .collect())
    }

    /// Revokes a key (by id or name): the front door refuses it at once.
    pub async fn revoke_inference_key(&self, caller: &Principal, key: &str) -> Result<()> {
        caller.require(Permission::SecretWrite)?;
        let found = self
            .store
            .inference_keys(&caller.project_id)
            .await?
            .into_iter()
            .find(|k| !has_nul(key) && (k.id == key || k.name == key))
            .ok_or_else(|| Error::NotFound(format!("inference key {key} not found")))?;
        self.store
            .delete_inference_key(&caller.project_id, &found.id)
            .await?;
        Ok(())
    }

    /// The project a key calls deployments of.
    pub async fn inference_project(&self, key: Option<&str>) -> Result<String> {
        let refused = || {
            Error::Unauthenticated(
                "an inference key is needed: Authorization: Bearer <key> (tessera inference-key create)"
                    .into(),
            )
        };
        let key = key
            .filter(|k| k.starts_with(KEY_PREFIX) && !has_nul(k))
            .ok_or_else(refused)?;
        self.store
            .inference_key_by_hash(&hash(key))
            .await?
            .map(|k| k.project_id)
            .ok_or_else(refused)
    }
}
