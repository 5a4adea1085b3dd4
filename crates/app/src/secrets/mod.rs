//! Secrets a project's deployments use: values (injected as environment
//! variables) and file secrets (sets of files, mounted as a directory), and
//! container registry credentials ([`registry`]). What they hold is sealed
//! at rest ([`sealing`]) and never answered by any API; only names, kinds,
//! file names and times are.

pub mod registry;
pub mod sealing;

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealing::SealingKey;
use std::collections::BTreeMap;
use tessera_core::Permission;
use tessera_store::{Recorded, SecretRecord};

/// The most secrets (of both kinds) a project may have.
pub const MAX_SECRETS: i64 = 500;
/// The largest value of a secret.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The largest file secret, all its files together.
pub const MAX_FILES_BYTES: usize = 1024 * 1024;
/// The most files in a file secret.
pub const MAX_FILES: usize = 64;

/// What a secret holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// One value, for environment variables.
    Generic,
    /// A set of files, mounted as a directory.
    Files,
}

impl SecretKind {
    fn as_str(self) -> &'static str {
        match self {
            SecretKind::Generic => "generic",
            SecretKind::Files => "file",
        }
    }

    fn parse(text: &str) -> Result<SecretKind> {
        match text {
            "generic" => Ok(SecretKind::Generic),
            "file" => Ok(SecretKind::Files),
            other => Err(Error::corrupt(format!("secret kind {other:?}"))),
        }
    }
}

/// A secret as the API shows it: never what it holds.
#[derive(Clone, Debug)]
pub struct Secret {
    pub name: String,
    pub kind: SecretKind,
    /// A file secret's files; empty for a value.
    pub file_names: Vec<String>,
    pub created_at: String,
}

impl TryFrom<SecretRecord> for Secret {
    type Error = Error;

    fn try_from(r: SecretRecord) -> Result<Secret> {
        Ok(Secret {
            kind: SecretKind::parse(&r.kind)?,
            file_names: serde_json::from_str(&r.file_names)
                .map_err(|e| Error::corrupt(format!("secret {}'s file names: {e}", r.name)))?,
            name: r.name,
            created_at: r.created_at,
        })
    }
}

/// Checks the name of a secret or of registry credentials: 1 to 63
/// lowercase letters, digits and `-`, starting and ending with a letter or
/// digit (a name that is safe as a path, a label and an identifier).
pub(crate) fn check_name(field: &'static str, what: &str, name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(
            field,
            format!(
                "{what} name {:?} must be 1 to 63 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit",
                name
            ),
        )),
    }
}

/// Checks a file secret's file name: a plain name, no directories.
fn check_file_name(name: &str) -> Result<()> {
    let ok = (1..=255).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(
            "files",
            format!(
                "file name {:?} must be 1 to 255 printable characters without '/', and not '.' or '..'",
                name
            ),
        )),
    }
}

/// The row a sealed secret belongs to, bound into its seal.
fn secret_context(project_id: &str, name: &str) -> String {
    format!("secrets/{project_id}/{name}")
}

impl App {
    pub(crate) fn sealing_key(&self) -> Result<&SealingKey> {
        self.config.secrets_key.as_ref().ok_or_else(|| {
            Error::Unavailable("this control plane has no secrets key configured".into())
        })
    }

    /// Stores a secret's value, sealed.
    pub async fn create_secret(&self, caller: &Principal, name: &str, value: &str) -> Result<()> {
        caller.require(Permission::SecretWrite)?;
        check_name("name", "the secret", name)?;
        if value.is_empty() || value.len() > MAX_VALUE_BYTES || value.contains('\0') {
            return Err(Error::invalid(
                "value",
                format!("value must be 1 to {MAX_VALUE_BYTES} bytes, without NUL"),
            ));
        }
        self.record_secret(caller, name, SecretKind::Generic, vec![], value.as_bytes())
            .await
    }

    /// Stores a file secret: each file's name and base64 content.
    pub async fn create_file_secret(
        &self,
        caller: &Principal,
        name: &str,
        files: &[(String, String)],
    ) -> Result<()> {
        caller.require(Permission::SecretWrite)?;
        check_name("name", "the file secret", name)?;
        if files.is_empty() || files.len() > MAX_FILES {
            return Err(Error::invalid(
                "files",
                format!("a file secret holds 1 to {MAX_FILES} files"),
            ));
        }
        let mut contents = BTreeMap::new();
        let mut total = 0usize;
        for (file_name, base64_content) in files {
            check_file_name(file_name)?;
            let content = STANDARD.decode(base64_content.trim()).map_err(|_| {
                Error::invalid(
                    "files",
                    format!("the content of {file_name:?} is not base64"),
                )
            })?;
            total += content.len();
            if total > MAX_FILES_BYTES {
                return Err(Error::invalid(
                    "files",
                    format!("a file secret holds at most {MAX_FILES_BYTES} bytes in all"),
                ));
            }
            if contents
                .insert(file_name.clone(), STANDARD.encode(&content))
                .is_some()
            {
                return Err(Error::invalid(
                    "files",
                    format!("the file {file_name:?} is given twice"),
                ));
            }
        }
        let file_names = contents.keys().cloned().collect();
        let plain = serde_json::to_vec(&contents).unwrap_or_default();
        self.record_secret(caller, name, SecretKind::Files, file_names, &plain)
            .await
    }

    async fn record_secret(
        &self,
        caller: &Principal,
        name: &str,
        kind: SecretKind,
        file_names: Vec<String>,
        plain: &[u8],
    ) -> Result<()> {
        let key = self.sealing_key()?;
        let record = SecretRecord {
            project_id: caller.project_id.clone(),
            name: name.to_string(),
            kind: kind.as_str().to_string(),
            file_names: serde_json::to_string(&file_names).unwrap_or_default(),
            sealed: key.seal(&secret_context(&caller.project_id, name), plain),
            created_at: tessera_store::now(),
        };
        match self.store.insert_secret(&record, MAX_SECRETS).await? {
            Recorded::Added => Ok(()),
            Recorded::NameTaken => Err(Error::Conflict(format!(
                "a secret named {name} already exists"
            ))),
            Recorded::Full => Err(Error::Forbidden(format!(
                "project {} already has {MAX_SECRETS} secrets; delete some first",
                caller.project_name
            ))),
        }
    }

    /// The project's secrets of both kinds (`None`) or of one, by name.
    pub async fn secrets(
        &self,
        caller: &Principal,
        kind: Option<SecretKind>,
    ) -> Result<Vec<Secret>> {
        caller.require(Permission::SecretRead)?;
        let records = self.store.secrets(&caller.project_id).await?;
        let mut secrets = Vec::with_capacity(records.len());
        for record in records {
            let secret = Secret::try_from(record)?;
            if kind.is_none_or(|k| k == secret.kind) {
                secrets.push(secret);
            }
        }
        Ok(secrets)
    }

    /// Deletes a secret of the project; of `kind` only, when given.
    /// A secret a deployment uses stays unless `force`.
    pub async fn delete_secret(
        &self,
        caller: &Principal,
        name: &str,
        kind: Option<SecretKind>,
        force: bool,
    ) -> Result<()> {
        caller.require(Permission::SecretWrite)?;
        let not_found = || Error::NotFound(format!("secret {name} not found"));
        if has_nul(name) {
            return Err(not_found());
        }
        let Some(found) = self.store.secret(&caller.project_id, name).await? else {
            return Err(not_found());
        };
        let found = Secret::try_from(found)?;
        if kind.is_some_and(|k| k != found.kind) {
            return Err(not_found());
        }
        if !force && let Some(user) = self.secret_user(&caller.project_id, name).await? {
            return Err(Error::Conflict(format!(
                "secret {name} is used by deployment {user}; delete it with force=true to remove it anyway"
            )));
        }
        match self
            .store
            .delete_secret(&caller.project_id, name, found.kind.as_str())
            .await?
        {
            true => Ok(()),
            false => Err(not_found()),
        }
    }

    /// A secret's value, opened.
    pub(crate) async fn secret_value(&self, project_id: &str, name: &str) -> Result<Vec<u8>> {
        let record = self
            .sealed_secret(project_id, name, SecretKind::Generic)
            .await?;
        self.unseal(&secret_context(project_id, name), &record.sealed, name)
    }

    /// A file secret's files, opened: name to content.
    pub(crate) async fn secret_files(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<BTreeMap<String, Vec<u8>>> {
        let record = self
            .sealed_secret(project_id, name, SecretKind::Files)
            .await?;
        let plain = self.unseal(&secret_context(project_id, name), &record.sealed, name)?;
        let encoded: BTreeMap<String, String> = serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt(format!("file secret {name}: {e}")))?;
        encoded
            .into_iter()
            .map(|(file, content)| {
                STANDARD
                    .decode(content)
                    .map(|bytes| (file, bytes))
                    .map_err(|e| Error::corrupt(format!("file secret {name}: {e}")))
            })
            .collect()
    }

    async fn sealed_secret(
        &self,
        project_id: &str,
        name: &str,
        kind: SecretKind,
    ) -> Result<SecretRecord> {
        let record = match has_nul(name) {
            true => None,
            false => self.store.secret(project_id, name).await?,
        };
        let what = match kind {
            SecretKind::Generic => "secret",
            SecretKind::Files => "file secret",
        };
        record
            .filter(|r| r.kind == kind.as_str())
            .ok_or_else(|| Error::invalid("name", format!("{what} {name} not found")))
    }

    pub(crate) fn unseal(&self, context: &str, sealed: &str, name: &str) -> Result<Vec<u8>> {
        self.sealing_key()?
            .open(context, sealed)
            .map_err(|e| Error::Unavailable(format!("{name} cannot be opened: {e}")))
    }

    /// The name of a deployment that uses the project's secret `name`.
    async fn secret_user(&self, project_id: &str, name: &str) -> Result<Option<String>> {
        self.deployment_using(project_id, |spec| {
            spec.containers.iter().any(|c| {
                c.env.iter().any(|e| e.secret && e.value == name)
                    || c.volume_mounts.iter().any(|m| {
                        matches!(m, crate::deployments::VolumeMount::Secret { secret_name, .. } if secret_name == name)
                    })
            })
        })
        .await
    }
}
