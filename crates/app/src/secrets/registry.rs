//! Container registry credentials: a project's named logins to private
//! registries, which a deployment names to pull its image. Every kind
//! Verda lists is accepted and checked; each becomes a user name and a
//! password for the registries it is good for, as `docker login` would
//! use them. AWS ECR needs a token exchange with AWS at pull time, which
//! this cloud does not make: such credentials are accepted (their keys
//! checked, not kept), and a deployment naming them is refused, saying so.

use super::{MAX_SECRETS, check_name};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_core::Permission;
use tessera_store::{Recorded, RegistryCredentialRecord};

/// The kinds of registry Verda names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistryKind {
    Verda,
    Gcr,
    Dockerhub,
    Ghcr,
    AwsEcr,
    Scaleway,
    Custom,
}

impl RegistryKind {
    pub const ALL: [RegistryKind; 7] = [
        RegistryKind::Verda,
        RegistryKind::Gcr,
        RegistryKind::Dockerhub,
        RegistryKind::Ghcr,
        RegistryKind::AwsEcr,
        RegistryKind::Scaleway,
        RegistryKind::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RegistryKind::Verda => "verda",
            RegistryKind::Gcr => "gcr",
            RegistryKind::Dockerhub => "dockerhub",
            RegistryKind::Ghcr => "ghcr",
            RegistryKind::AwsEcr => "aws-ecr",
            RegistryKind::Scaleway => "scaleway",
            RegistryKind::Custom => "custom",
        }
    }

    pub fn parse(text: &str) -> Option<RegistryKind> {
        RegistryKind::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// What a user gives to make registry credentials; which fields count
/// depends on the kind. (No `Debug`: it holds tokens and keys.)
#[derive(Clone, Default)]
pub struct RegistryCredentialInput {
    pub name: String,
    pub kind: String,
    pub username: Option<String>,
    pub access_token: Option<String>,
    pub service_account_key: Option<String>,
    pub docker_config_json: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub region: Option<String>,
    pub ecr_repo: Option<String>,
    pub scaleway_domain: Option<String>,
    pub scaleway_uuid: Option<String>,
}

/// Registry credentials as the API shows them: never what they hold.
#[derive(Clone, Debug)]
pub struct RegistryCredential {
    pub name: String,
    pub kind: RegistryKind,
    pub created_at: String,
}

/// What is sealed: logins by registry host. (No `Debug`: it holds
/// passwords.)
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Sealed {
    /// One login for registries matching `registries` (a host, or
    /// `*.suffix`); for every registry when empty.
    Login {
        registries: Vec<String>,
        username: String,
        password: String,
    },
    /// A Docker config's logins, by registry host.
    DockerConfig {
        auths: BTreeMap<String, (String, String)>,
    },
    /// AWS ECR: the repository and region only. Its keys are checked and
    /// not kept, since a pull with them would need AWS's token exchange,
    /// which this cloud does not make.
    AwsEcr { repository: String, region: String },
}

/// A user name and password to pull with.
#[derive(Clone, PartialEq, Eq)]
pub struct PullLogin {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for PullLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
const MAX_FIELD: usize = 16 * 1024;

/// The registry an image reference pulls from, as Docker reads one: the
/// first part when it names a host (a dot, a port or `localhost`),
/// Docker Hub otherwise.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_ascii_lowercase()
        }
        _ => "docker.io".to_string(),
    }
}

/// A registry host as written in a Docker config (`https://index.docker.io/v1/`).
fn host_of(key: &str) -> String {
    let key = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match DOCKER_HUB.contains(&host.as_str()) {
        true => "docker.io".to_string(),
        false => host,
    }
}

fn matches(pattern: &str, registry: &str) -> bool {
    let registry = host_of(registry);
    match pattern.strip_prefix('*') {
        Some(suffix) => registry.ends_with(suffix),
        None => host_of(pattern) == registry,
    }
}

fn required(field: &'static str, kind: RegistryKind, value: &Option<String>) -> Result<String> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() && v.len() <= MAX_FIELD && !v.contains('\0') => Ok(v.to_string()),
        Some(v) if v.len() > MAX_FIELD => Err(Error::invalid(
            field,
            format!("{field} is longer than {MAX_FIELD} bytes"),
        )),
        _ => Err(Error::invalid(
            field,
            format!("{field} is required for {} credentials", kind.as_str()),
        )),
    }
}

fn check_host(field: &'static str, host: &str) -> Result<String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    match ok {
        true => Ok(host.to_ascii_lowercase()),
        false => Err(Error::invalid(
            field,
            format!("{field} must be a registry host name, not {:?}", host),
        )),
    }
}

/// Reads a Docker config's `auths`: `auth` (base64 of `user:password`) or
/// `username` and `password`, by registry.
fn docker_config(text: &str) -> Result<BTreeMap<String, (String, String)>> {
    #[derive(Deserialize)]
    struct Config {
        auths: BTreeMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let invalid =
        |why: String| Error::invalid("docker_config_json", format!("docker_config_json: {why}"));
    let config: Config = serde_json::from_str(text).map_err(|e| {
        invalid(format!(
            "docker_config_json is not a Docker config with auths: {e}"
        ))
    })?;
    if config.auths.is_empty() {
        return Err(invalid("no auths".into()));
    }
    let mut auths = BTreeMap::new();
    for (registry, entry) in config.auths {
        let host = check_host("docker_config_json", &host_of(&registry))?;
        let login = match (entry.auth, entry.username, entry.password) {
            (Some(auth), _, _) => {
                let decoded = STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| {
                        s.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                    });
                decoded.ok_or_else(|| {
                    invalid(format!(
                        "the auth of {registry} is not base64 of user:password"
                    ))
                })?
            }
            (None, Some(username), Some(password)) => (username, password),
            _ => {
                return Err(invalid(format!(
                    "{registry} has neither auth nor username and password"
                )));
            }
        };
        auths.insert(host, login);
    }
    Ok(auths)
}

/// Checks what the user gave for its kind and makes what is sealed.
fn sealed_for(kind: RegistryKind, input: &RegistryCredentialInput) -> Result<Sealed> {
    let login = |registries: Vec<String>, username: String, password: String| Sealed::Login {
        registries,
        username,
        password,
    };
    Ok(match kind {
        RegistryKind::Dockerhub => login(
            vec!["docker.io".into()],
            required("username", kind, &input.username)?,
            required("access_token", kind, &input.access_token)?,
        ),
        RegistryKind::Ghcr => login(
            vec!["ghcr.io".into()],
            required("username", kind, &input.username)?,
            required("access_token", kind, &input.access_token)?,
        ),
        // Verda's own registry: good for whichever registry the image names.
        RegistryKind::Verda => login(
            vec![],
            required("username", kind, &input.username)?,
            required("access_token", kind, &input.access_token)?,
        ),
        // Google's registries take the key itself as the password of the
        // user `_json_key`.
        RegistryKind::Gcr => {
            let key = required("service_account_key", kind, &input.service_account_key)?;
            let parsed: serde_json::Value = serde_json::from_str(&key).map_err(|_| {
                Error::invalid(
                    "service_account_key",
                    "service_account_key must be a service account's JSON key",
                )
            })?;
            if parsed["type"] != "service_account" || !parsed["private_key"].is_string() {
                return Err(Error::invalid(
                    "service_account_key",
                    "service_account_key must be a service account's JSON key (type service_account, with private_key)",
                ));
            }
            login(
                vec!["gcr.io".into(), "*.gcr.io".into(), "*.pkg.dev".into()],
                "_json_key".into(),
                key,
            )
        }
        RegistryKind::Scaleway => {
            let domain = required("scaleway_domain", kind, &input.scaleway_domain)?;
            login(
                vec![check_host("scaleway_domain", &domain)?],
                "nologin".into(),
                required("scaleway_uuid", kind, &input.scaleway_uuid)?,
            )
        }
        RegistryKind::AwsEcr => {
            required("access_key_id", kind, &input.access_key_id)?;
            required("secret_access_key", kind, &input.secret_access_key)?;
            let region = required("region", kind, &input.region)?;
            let repository = required("ecr_repo", kind, &input.ecr_repo)?;
            // Its host, as the spec's example gives it, or a repository's
            // URI (`<account>.dkr.ecr.<region>.amazonaws.com/<name>`), as
            // the SDK's documentation calls it: the credentials are the
            // registry's.
            let host = repository
                .trim()
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap_or_default();
            Sealed::AwsEcr {
                repository: check_host("ecr_repo", host)?,
                region,
            }
        }
        RegistryKind::Custom => Sealed::DockerConfig {
            auths: docker_config(&required(
                "docker_config_json",
                kind,
                &input.docker_config_json,
            )?)?,
        },
    })
}

fn credential_context(project_id: &str, name: &str) -> String {
    format!("registry_credentials/{project_id}/{name}")
}

impl TryFrom<RegistryCredentialRecord> for RegistryCredential {
    type Error = Error;

    fn try_from(r: RegistryCredentialRecord) -> Result<RegistryCredential> {
        Ok(RegistryCredential {
            kind: RegistryKind::parse(&r.kind)
                .ok_or_else(|| Error::corrupt(format!("registry kind {:?}", r.kind)))?,
            name: r.name,
            created_at: r.created_at,
        })
    }
}

impl App {
    /// Stores registry credentials, sealed.
    pub async fn create_registry_credential(
        &self,
        caller: &Principal,
        input: &RegistryCredentialInput,
    ) -> Result<()> {
        caller.require(Permission::SecretWrite)?;
        check_name("name", "the credentials'", &input.name)?;
        let kind = RegistryKind::parse(&input.kind).ok_or_else(|| {
            Error::invalid(
                "type",
                format!(
                    "type must be one of {}, not {:?}",
                    RegistryKind::ALL.map(RegistryKind::as_str).join(", "),
                    input.kind
                ),
            )
        })?;
        let sealed = sealed_for(kind, input)?;
        let plain = serde_json::to_vec(&sealed).unwrap_or_default();
        let record = RegistryCredentialRecord {
            project_id: caller.project_id.clone(),
            name: input.name.clone(),
            kind: kind.as_str().to_string(),
            sealed: self
                .sealing_key()?
                .seal(&credential_context(&caller.project_id, &input.name), &plain),
            created_at: tessera_store::now(),
        };
        match self
            .store
            .insert_registry_credential(&record, MAX_SECRETS)
            .await?
        {
            Recorded::Added => Ok(()),
            Recorded::NameTaken => Err(Error::Conflict(format!(
                "registry credentials named {} already exist",
                input.name
            ))),
            Recorded::Full => Err(Error::Forbidden(format!(
                "project {} already has {MAX_SECRETS} registry credentials; delete some first",
                caller.project_name
            ))),
        }
    }

    pub async fn registry_credentials(
        &self,
        caller: &Principal,
    ) -> Result<Vec<RegistryCredential>> {
        caller.require(Permission::SecretRead)?;
        self.store
            .registry_credentials(&caller.project_id)
            .await?
            .into_iter()
            .map(RegistryCredential::try_from)
            .collect()
    }

    /// Deletes registry credentials; credentials a deployment uses stay
    /// unless `force`.
    pub async fn delete_registry_credential(
        &self,
        caller: &Principal,
        name: &str,
        force: bool,
    ) -> Result<()> {
        caller.require(Permission::SecretWrite)?;
        let not_found = || Error::NotFound(format!("registry credentials {name} not found"));
        if has_nul(name) {
            return Err(not_found());
        }
        if self
            .store
            .registry_credential(&caller.project_id, name)
            .await?
            .is_none()
        {
            return Err(not_found());
        }
        if !force && let Some(user) = self.credential_user(&caller.project_id, name).await? {
            return Err(Error::Conflict(format!(
                "registry credentials {name} are used by deployment {user}; delete them with force=true to remove them anyway"
            )));
        }
        match self
            .store
            .delete_registry_credential(&caller.project_id, name)
            .await?
        {
            true => Ok(()),
            false => Err(not_found()),
        }
    }

    /// The login the project's credentials `name` give for pulling `image`:
    /// `None` when they hold none for its registry.
    pub(crate) async fn pull_login(
        &self,
        project_id: &str,
        name: &str,
        image: &str,
    ) -> Result<Option<PullLogin>> {
        let record = match has_nul(name) {
            true => None,
            false => self.store.registry_credential(project_id, name).await?,
        };
        let record = record.ok_or_else(|| {
            Error::invalid(
                "credentials",
                format!("registry credentials {name} not found"),
            )
        })?;
        let plain = self.unseal(&credential_context(project_id, name), &record.sealed, name)?;
        let sealed: Sealed = serde_json::from_slice(&plain)
            .map_err(|e| Error::corrupt(format!("registry credentials {name}: {e}")))?;
        login_for(&sealed, &registry_of(image), name)
    }

    /// The name of a deployment that uses the project's registry
    /// credentials `name`.
    async fn credential_user(&self, project_id: &str, name: &str) -> Result<Option<String>> {
        self.deployment_using(project_id, |spec| {
            spec.registry.is_private && spec.registry.credentials.as_deref() == Some(name)
        })
        .await
    }
}

fn login_for(sealed: &Sealed, registry: &str, name: &str) -> Result<Option<PullLogin>> {
    Ok(match sealed {
        Sealed::Login {
            registries,
            username,
            password,
        } => {
            (registries.is_empty() || registries.iter().any(|r| matches(r, registry))).then(|| {
                PullLogin {
                    username: username.clone(),
                    password: password.clone(),
                }
            })
        }
        Sealed::DockerConfig { auths } => auths
            .iter()
            .find(|(host, _)| matches(host, registry))
            .map(|(_, (username, password))| PullLogin {
                username: username.clone(),
                password: password.clone(),
            }),
        Sealed::AwsEcr { .. } => {
            return Err(Error::invalid(
                "credentials",
                format!(
                    "registry credentials {name} are AWS ECR keys, which need AWS's token exchange: \
                     not supported here; use custom credentials with a login from `aws ecr get-login-password`"
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str) -> RegistryCredentialInput {
        RegistryCredentialInput {
            name: "c".into(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    #[test]
    fn registries_are_read_as_docker_reads_them() {
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("library/nginx:1"), "docker.io");
        assert_eq!(registry_of("ghcr.io/me/app:1"), "ghcr.io");
        assert_eq!(registry_of("localhost:5000/app"), "localhost:5000");
        assert_eq!(
            registry_of("127.0.0.1:5000/app@sha256:ab"),
            "127.0.0.1:5000"
        );
        assert!(matches("docker.io", "index.docker.io"));
        assert!(matches("https://index.docker.io/v1/", "docker.io"));
        assert!(matches("*.pkg.dev", "europe-docker.pkg.dev"));
        assert!(!matches("ghcr.io", "docker.io"));
    }

    #[test]
    fn each_kind_asks_for_its_fields_and_logs_in_to_its_registries() {
        let mut hub = input("dockerhub");
        assert!(sealed_for(RegistryKind::Dockerhub, &hub).is_err());
        hub.username = Some("me".into());
        hub.access_token = Some("tok".into());
        let sealed = sealed_for(RegistryKind::Dockerhub, &hub).expect("a value");
        let login = login_for(&sealed, "docker.io", "c")
            .expect("a value")
            .expect("a value");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("me", "tok")
        );
        assert_eq!(login_for(&sealed, "ghcr.io", "c").expect("a value"), None);

        let mut custom = input("custom");
        custom.docker_config_json = Some(
            r#"{"auths": {"127.0.0.1:5000": {"auth": "dTpw"}, "https://index.docker.io/v1/": {"username": "a", "password": "b"}}}"#
                .into(),
        );
        let sealed = sealed_for(RegistryKind::Custom, &custom).expect("a value");
        let login = login_for(&sealed, "127.0.0.1:5000", "c")
            .expect("a value")
            .expect("a value");
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p")
        );
        assert_eq!(
            login_for(&sealed, "docker.io", "c")
                .expect("a value")
                .expect("a value")
                .username,
            "a"
        );
        custom.docker_config_json = Some(r#"{"auths": {"x.io": {"auth": "not base64!"}}}"#.into());
        assert!(sealed_for(RegistryKind::Custom, &custom).is_err());

        let mut gcr = input("gcr");
        gcr.service_account_key = Some("{}".into());
        assert!(sealed_for(RegistryKind::Gcr, &gcr).is_err());
        gcr.service_account_key = Some(r#"{"type": "service_account", "private_key": "k"}"#.into());
        let sealed = sealed_for(RegistryKind::Gcr, &gcr).expect("a value");
        let login = login_for(&sealed, "europe-docker.pkg.dev", "c")
            .expect("a value")
            .expect("a value");
        assert_eq!(login.username, "_json_key");

        let mut ecr = input("aws-ecr");
        ecr.access_key_id = Some("AKIA".into());
        ecr.secret_access_key = Some("s".into());
        ecr.region = Some("eu-north-1".into());
        ecr.ecr_repo = Some("1.dkr.ecr.eu-north-1.amazonaws.com".into());
        let sealed = sealed_for(RegistryKind::AwsEcr, &ecr).expect("a value");
        let err =
            login_for(&sealed, "1.dkr.ecr.eu-north-1.amazonaws.com", "c").expect_err("an error");
        assert!(err.to_string().contains("not supported here"), "{err}");
        // A repository's URI names the same registry.
        ecr.ecr_repo = Some("https://1.dkr.ecr.eu-north-1.amazonaws.com/team/app".into());
        let from_uri = sealed_for(RegistryKind::AwsEcr, &ecr).expect("a value");
        assert_eq!(
            serde_json::to_value(&from_uri).expect("json"),
            serde_json::to_value(&sealed).expect("json")
        );
        ecr.ecr_repo = Some("/app".into());
        assert!(sealed_for(RegistryKind::AwsEcr, &ecr).is_err());
    }
}
