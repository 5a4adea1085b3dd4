//! OAuth2 client credentials (the Verda face's authentication).
//!
//! A credential is a client id and secret that act in one project with a
//! role. `client_credentials` trades them for a short-lived access token (a
//! JWT signed with the store's key, so any replica accepts it) and a refresh
//! token; `refresh_token` trades a refresh token, once, for new ones. The
//! secret and refresh tokens are random and kept as SHA-256 hashes. Each
//! request checks that the client still exists and is not revoked (cached
//! for a few seconds, like every credential).
//!
//! A credential never does more than what made it. One made by a user acts
//! with that user's *current* membership and role in the project (capped by
//! the role it was given): a deleted, disabled, demoted or removed user
//! takes it down or narrows it. One made with a scoped API token carries
//! those scopes, and is revoked with that token. Only an install admin
//! makes a credential with a fixed role for a project it is not a member
//! of; such a credential is listed as acting for no user.

use crate::error::{Error, Result};
use crate::identity::{Principal, hash_token, unauthenticated};
use crate::{App, has_nul};
use rand::Rng;
use tessera_core::{Permission, Role};
use tessera_store::OAuthClientRecord;

/// Lifetime of an access token, in seconds: Verda's.
pub const ACCESS_TOKEN_SECONDS: i64 = 3600;
const REFRESH_TOKEN_DAYS: i64 = 30;
/// The scope every token has.
pub const SCOPE: &str = "cloud-api-v1";
const ACCESS_TYP: &str = "oauth_access";

/// A new credential, the only time its secret is seen.
#[derive(Clone, Debug)]
pub struct NewCredential {
    pub client_id: String,
    pub client_secret: String,
    pub project: String,
    pub role: Role,
    pub created_at: String,
}

/// A credential as listed (no secret).
#[derive(Clone, Debug)]
pub struct Credential {
    pub client_id: String,
    pub project: String,
    pub role: String,
    pub description: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The user whose membership and role it acts with; `None` for a fixed
    /// role an install admin gave it.
    pub acts_as: Option<String>,
    /// The scopes it is limited to, if it was made with a scoped token.
    pub scopes: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateCredential {
    /// The project's name; the caller's current one when `None`.
    pub project: Option<String>,
    /// The caller's own role when `None`.
    pub role: Option<String>,
    pub description: Option<String>,
    /// A fixed role, acting for no user (install admins only).
    pub fixed_role: bool,
}

/// What the token endpoint answers.
#[derive(Clone, Debug)]
pub struct OAuthTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

fn random_text(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn invalid_client() -> Error {
    Error::Unauthenticated("Invalid client credentials".into())
}

impl App {
    /// Makes a client id and secret for a project: the caller's own, with
    /// at most the caller's role, acting as the caller; or, for an install
    /// admin, any project, where (unless it is a member) it has the role it
    /// is given, acting for no user.
    pub async fn create_credential(
        &self,
        caller: &Principal,
        req: CreateCredential,
    ) -> Result<NewCredential> {
        caller.require(Permission::CredentialWrite)?;
        let (project_id, project_name) = match req.project.as_deref() {
            None => (caller.project_id.clone(), caller.project_name.clone()),
            Some(name) if name == caller.project_name => {
                (caller.project_id.clone(), caller.project_name.clone())
            }
            Some(name) => {
                if !caller.is_install_admin() {
                    return Err(Error::Forbidden(format!(
                        "only an install admin may make credentials for project {name}; yours is {}",
                        caller.project_name
                    )));
                }
                let project = self.project_named(name).await?;
                (project.id, project.name)
            }
        };
        // Acting as the caller wherever the caller is a member there, unless
        // an install admin fixes the role.
        if req.fixed_role && !caller.is_install_admin() {
            return Err(Error::Forbidden(
                "only an install admin may make a credential with a fixed role".into(),
            ));
        }
        let own_role = match (req.fixed_role, project_id == caller.project_id) {
            (true, _) => None,
            (false, true) => Some(caller.role),
            (false, false) => self
                .store
                .membership(&caller.user_id, &project_id)
                .await?
                .and_then(|m| m.role.parse::<Role>().ok()),
        };
        let role = match req.role.as_deref() {
            None => match own_role {
                Some(Role::Admin) | None => Role::Member,
                Some(own) => own,
            },
            Some(text) => text
                .parse::<Role>()
                .map_err(|e| Error::invalid("role", e))?,
        };
        if let Some(own) = own_role
            && !role.within(own)
        {
            return Err(Error::Forbidden(format!(
                "you cannot give a credential the role {role}, which can do more than yours ({own})"
            )));
        }
        let description = req.description.unwrap_or_default();
        if description.len() > 256 || description.chars().any(char::is_control) {
            return Err(Error::invalid(
                "description",
                "description must be at most 256 printable characters",
            ));
        }
        let scopes = caller.scopes.as_ref().map(|scopes| {
            let names: Vec<&str> = scopes.iter().map(|p| p.as_str()).collect();
            serde_json::to_string(&names).unwrap_or_default()
        });
        let client_id = random_text(21);
        let client_secret = random_text(43);
        let record = OAuthClientRecord {
            client_id: client_id.clone(),
            secret_hash: hash_token(&client_secret),
            project_id,
            role: role.as_str().into(),
            description,
            created_by: Some(caller.user_id.clone()),
            created_at: tessera_store::now(),
            revoked_at: None,
            scopes,
            parent_token_id: caller.token_id.clone(),
            acts_as: own_role.map(|_| caller.user_id.clone()),
            // No later than the token it is made with.
            expires_at: caller.expires_at.clone(),
            login_family: caller
                .token_id
                .is_none()
                .then(|| caller.login.clone())
                .flatten(),
        };
        if !self.store.insert_oauth_client(&record).await? {
            return Err(crate::tokens::login_revoked());
        }
        tracing::info!(client_id = %client_id, project = %project_name, %role, "OAuth credential created");
        Ok(NewCredential {
            client_id,
            client_secret,
            project: project_name,
            role,
            created_at: record.created_at,
        })
    }

    /// Whether `caller` may see and revoke credential `record`: its own;
    /// its workspace's with `credential_admin`; any for an install admin.
    fn manages_credential(caller: &Principal, record: &OAuthClientRecord) -> bool {
        caller.is_install_admin()
            || (record.project_id == caller.project_id
                && (caller.can(Permission::CredentialAdmin)
                    || record.created_by.as_deref() == Some(&caller.user_id)))
    }

    /// The credentials the caller manages.
    pub async fn credentials(&self, caller: &Principal) -> Result<Vec<Credential>> {
        caller.require(Permission::CredentialWrite)?;
        let scope = (!caller.is_install_admin()).then_some(caller.project_id.as_str());
        let records = self.store.oauth_clients(scope).await?;
        let mut names = std::collections::HashMap::new();
        for project in self.store.projects().await? {
            names.insert(project.id, project.name);
        }
        Ok(records
            .into_iter()
            .filter(|r| Self::manages_credential(caller, r))
            .map(|r| Credential {
                project: names.get(&r.project_id).cloned().unwrap_or_default(),
                client_id: r.client_id,
                role: r.role,
                description: r.description,
                created_at: r.created_at,
                revoked_at: r.revoked_at,
                acts_as: r.acts_as,
                scopes: r.scopes.and_then(|s| serde_json::from_str(&s).ok()),
            })
            .collect())
    }

    /// Revokes a credential: its tokens stop working within seconds.
    pub async fn revoke_credential(&self, caller: &Principal, client_id: &str) -> Result<()> {
        caller.require(Permission::CredentialWrite)?;
        let record = match has_nul(client_id) {
            true => None,
            false => self.store.oauth_client(client_id).await?,
        };
        let record = record
            .filter(|r| Self::manages_credential(caller, r))
            .ok_or_else(|| Error::NotFound(format!("credential {client_id} not found")))?;
        self.require_reach_over(
            caller,
            record.created_by.as_deref(),
            "credential",
            client_id,
        )
        .await?;
        self.store.revoke_oauth_client(&record.client_id).await?;
        self.identity.forget_all();
        Ok(())
    }

    /// The `client_credentials` grant.
    pub async fn oauth_login(&self, client_id: &str, client_secret: &str) -> Result<OAuthTokens> {
        let record = match has_nul(client_id) {
            true => None,
            false => self.store.oauth_client(client_id).await?,
        };
        let record = record
            .filter(|r| r.revoked_at.is_none())
            .ok_or_else(invalid_client)?;
        let given = hash_token(client_secret);
        // Compared in constant time: both are hex digests of equal length.
        let same = given.len() == record.secret_hash.len()
            && given
                .bytes()
                .zip(record.secret_hash.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(invalid_client());
        }
        // No tokens for a credential whose user is gone.
        self.principal_of_client(&record).await?;
        self.oauth_tokens(&record.client_id).await
    }

    /// The `refresh_token` grant: the token works once.
    pub async fn oauth_refresh(&self, refresh_token: &str) -> Result<OAuthTokens> {
        let next = random_text(48);
        let expires = chrono::Utc::now() + chrono::Duration::days(REFRESH_TOKEN_DAYS);
        let client = self
            .store
            .rotate_oauth_refresh_token(
                &hash_token(refresh_token),
                &hash_token(&next),
                &tessera_store::timestamp(expires),
            )
            .await?
            .ok_or_else(|| Error::Unauthenticated("Invalid refresh token".into()))?;
        let record = self
            .store
            .oauth_client(&client)
            .await?
            .filter(|r| r.revoked_at.is_none())
            .ok_or_else(invalid_client)?;
        self.principal_of_client(&record).await?;
        let (access_token, _) = self.identity.sign(
            &record.client_id,
            ACCESS_TYP,
            chrono::Duration::seconds(ACCESS_TOKEN_SECONDS),
        )?;
        Ok(OAuthTokens {
            access_token,
            refresh_token: next,
            expires_in: ACCESS_TOKEN_SECONDS,
        })
    }

    async fn oauth_tokens(&self, client_id: &str) -> Result<OAuthTokens> {
        let (access_token, _) = self.identity.sign(
            client_id,
            ACCESS_TYP,
            chrono::Duration::seconds(ACCESS_TOKEN_SECONDS),
        )?;
        let refresh_token = random_text(48);
        let expires = chrono::Utc::now() + chrono::Duration::days(REFRESH_TOKEN_DAYS);
        self.store
            .insert_oauth_refresh_token(
                &hash_token(&refresh_token),
                client_id,
                &tessera_store::timestamp(expires),
            )
            .await?;
        Ok(OAuthTokens {
            access_token,
            refresh_token,
            expires_in: ACCESS_TOKEN_SECONDS,
        })
    }

    /// The principal an OAuth access token stands for.
    pub async fn authenticate_oauth(&self, bearer: Option<&str>) -> Result<Principal> {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated(
                "Access token is missing: send Authorization: Bearer <access_token> from POST /oauth2/token"
                    .into(),
            ));
        };
        // Cached apart from the native API's credentials: a native token
        // is not an OAuth access token.
        let hash = hash_token(&format!("oauth\0{token}"));
        if let Some(principal) = self.identity.cached(&hash) {
            return Ok(principal);
        }
        let claims = self
            .identity
            .verify(token, ACCESS_TYP)
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "Access token is invalid or expired: this API takes the access tokens of POST /oauth2/token, not other credentials"
                        .into(),
                )
            })?;
        let record = self
            .store
            .oauth_client(&claims.sub)
            .await?
            .filter(|r| r.revoked_at.is_none())
            .ok_or_else(unauthenticated)?;
        let principal = self.principal_of_client(&record).await?;
        self.identity.remember(hash, &principal);
        Ok(principal)
    }

    /// What a credential may do now: its role, capped by the current role
    /// of the user it acts as (gone, disabled or no longer a member: 401),
    /// narrowed by its scopes. A credential never has an install role.
    async fn principal_of_client(&self, record: &OAuthClientRecord) -> Result<Principal> {
        let role: Role = record
            .role
            .parse()
            .map_err(|e: String| Error::corrupt(format!("oauth_clients.role: {e}")))?;
        let scopes = match &record.scopes {
            None => None,
            Some(text) => {
                let names: Vec<String> = serde_json::from_str(text)
                    .map_err(|e| Error::corrupt(format!("oauth_clients.scopes: {e}")))?;
                Some(names.iter().filter_map(|n| n.parse().ok()).collect())
            }
        };
        // Made with an API token that expires, it expires with it, as a
        // token made with that token does (revoking it revokes this too).
        let expires_at = record.expires_at.clone();
        if crate::identity::expired(expires_at.as_deref()) {
            return Err(Error::Unauthenticated(
                "this credential was made with an API token that has expired, and expired with it"
                    .into(),
            ));
        }
        let (user_id, project_id, project_name, role) = match &record.acts_as {
            Some(user) => {
                let holder = self
                    .principal_of_user(user, Some(&record.project_id), None, None)
                    .await
                    .map_err(|_| {
                        Error::Unauthenticated(
                            "the user this credential acts for is gone, disabled or no longer \
                             a member of its project"
                                .into(),
                        )
                    })?;
                (
                    holder.user_id,
                    holder.project_id,
                    holder.project_name,
                    role.min(holder.role),
                )
            }
            None => {
                let project = self
                    .store
                    .project(&record.project_id)
                    .await?
                    .ok_or_else(unauthenticated)?;
                (record.client_id.clone(), project.id, project.name, role)
            }
        };
        Ok(Principal {
            user_id,
            username: format!("oauth:{}", record.client_id),
            project_id,
            project_name,
            role,
            install_role: None,
            scopes,
            token_id: Some(record.client_id.clone()),
            expires_at,
            compute_scopes: None,
            login: None,
        })
    }
}
