//! Who is calling, and what they may do: authentication (API tokens, JWT
//! access tokens), login with rotating refresh tokens, and the bootstrap
//! admin.
//!
//! Two credentials reach the API. API tokens (`tsr_...`) are high-entropy
//! random strings, so their SHA-256 is what is stored and compared (a slow
//! hash buys nothing for them and would cost every request). JWTs come from
//! `POST /v1/auth/login`, signed with a key kept in the store so that every
//! replica accepts them. Passwords are hashed with argon2. Either way the
//! caller's role is read from the store (cached for a few seconds), so a
//! revoked token, a disabled user or a changed role takes effect at once on
//! the replica that made the change and within [`CACHE_TTL`] everywhere.

use crate::error::{Error, Result};
use crate::{App, new_id};
use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_core::scopes::{ComputeAction, ComputeScopes};
use tessera_core::{InstallRole, Permission, Reach, Role};
use tessera_store::{NewUser, ProjectRecord, RefreshUse, Store};

pub const BOOTSTRAP_TOKEN_ID: &str = "bootstrap-admin";
pub const ADMIN_USERNAME: &str = "admin";
pub const DEFAULT_PROJECT: &str = "default";
/// How long a verified credential is trusted without asking the store again:
/// a revocation made on another replica takes effect within it.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Lifetime of an access token, as the provisioning API documents it.
pub const ACCESS_TOKEN_SECONDS: i64 = 86_400;
const REFRESH_TOKEN_DAYS: i64 = 30;

/// The caller behind a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    /// The project the caller acts in: the token's, or the user's active one.
    pub project_id: String,
    pub project_name: String,
    /// The caller's role in that project.
    pub role: Role,
    /// The caller's role over the whole install, if it has one.
    pub install_role: Option<InstallRole>,
    /// An API token's scopes; `None` allows all of the roles' permissions.
    pub scopes: Option<Vec<Permission>>,
    /// The API token (or OAuth client) the caller used, if any.
    pub token_id: Option<String>,
    /// When the API token the caller used expires, if it does.
    pub expires_at: Option<String>,
    /// An API token's grants on the containers API; `None`: not limited
    /// that way.
    pub compute_scopes: Option<ComputeScopes>,
    /// The login (refresh-token family) the caller used, if it used one:
    /// what it makes with it is revoked with it.
    pub login: Option<String>,
}

/// Whether a credential whose end is `at` has expired.
pub(crate) fn expired(at: Option<&str>) -> bool {
    at.is_some_and(|at| at <= tessera_store::now().as_str())
}

impl Principal {
    /// The user the caller acts as; `None` for a credential that acts for
    /// no user (a fixed role).
    pub fn acting_user(&self) -> Option<String> {
        (!self.user_id.is_empty()).then(|| self.user_id.clone())
    }

    /// Whether the credential's containers-API grants (if any) allow
    /// `action` on `path` (`compute.<uid>.containers.<id>`).
    pub fn compute_allows(&self, path: &str, action: ComputeAction) -> bool {
        self.compute_scopes
            .as_ref()
            .is_none_or(|scopes| scopes.allows(path, action))
    }

    /// The caller as the containers API sees it: a token limited by
    /// containers-API grants alone acts there with its role's permissions,
    /// each request having been checked against its grants first.
    pub fn on_compute_face(mut self) -> Principal {
        if self.compute_scopes.is_some() && self.scopes.as_ref().is_some_and(Vec::is_empty) {
            self.scopes = None;
        }
        self
    }

    pub fn can(&self, permission: Permission) -> bool {
        let granted = match permission.reach() {
            Reach::Workspace => self.role.grants(permission),
            Reach::Fleet => self.install_role.is_some_and(|r| r.grants(permission)),
        };
        granted && self.scope_allows(permission)
    }

    /// Whether the credential's scopes (if any) include `permission`.
    pub fn scope_allows(&self, permission: Permission) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|scopes| scopes.contains(&permission))
    }

    /// An install admin acting with its whole power (a login, or a token
    /// with no scopes): acts on the users, tokens and credentials of every
    /// workspace. A scoped token of an install admin is not one: scoped to
    /// `user_admin`, it could otherwise set any password, its user's too,
    /// and become more than its scopes.
    pub fn is_install_admin(&self) -> bool {
        self.install_role == Some(InstallRole::Admin) && self.unscoped()
    }

    /// Whether the credential carries no scopes at all: a login, or an API
    /// token (or OAuth credential) made without them.
    pub fn unscoped(&self) -> bool {
        self.scopes.is_none() && self.compute_scopes.is_none()
    }

    /// Refuses what would let a scoped credential become more than its
    /// scopes (setting a password, which then logs in with the whole role):
    /// that takes a login or an unscoped token.
    pub fn require_unscoped(&self, what: &str) -> Result<()> {
        match self.unscoped() {
            true => Ok(()),
            false => Err(Error::Forbidden(format!(
                "{what} needs a login or a token without scopes: a scoped token could \
                 otherwise act beyond its scopes"
            ))),
        }
    }

    /// `Forbidden` unless the caller has `permission`.
    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.can(permission) {
            return Ok(());
        }
        if !self.scope_allows(permission) {
            return Err(Error::Forbidden(format!(
                "permission {permission} is required, and the token you used is not scoped to it"
            )));
        }
        Err(Error::Forbidden(match permission.reach() {
            Reach::Workspace => format!(
                "permission {permission} is required (your role in workspace {} is {})",
                self.project_name, self.role
            ),
            Reach::Fleet => format!(
                "permission {permission} is required: it acts on the whole install, and belongs \
                 to install-wide roles ({})",
                match self.install_role {
                    Some(role) => format!("yours is {role}"),
                    None => "you have none".to_string(),
                }
            ),
        }))
    }

    pub fn permissions(&self) -> Vec<Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(|p| self.can(*p))
            .collect()
    }
}

/// A login's tokens, as `POST /v1/auth/login` answers them.
#[derive(Clone, Debug)]
pub struct Session {
    pub token: String,
    pub refresh_token: String,
    pub expires_in: i64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    exp: i64,
    iat: i64,
    jti: String,
    /// `access` or `refresh`.
    typ: String,
    /// The login (refresh-token family) an access token belongs to: refused
    /// once that login is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fam: Option<String>,
}

/// Verified credentials and signing keys.
pub struct Identity {
    encoding: EncodingKey,
    decoding: DecodingKey,
    verified: Mutex<HashMap<String, (Principal, Instant)>>,
    /// Hash checked for unknown users, so a login takes as long whether the
    /// user exists or not.
    dummy_hash: String,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new API token secret.
pub fn generate_token() -> String {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    format!("tsr_{}", hex::encode(secret))
}

pub fn hash_password(password: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| Error::Unavailable(format!("cannot salt the password hash: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Unavailable(format!("cannot hash the password: {e}")))
}

pub fn validate_password(password: &str) -> Result<()> {
    if password.chars().count() < 8 || password.len() > 1024 {
        return Err(Error::invalid(
            "password",
            "password must be 8 to 1024 characters",
        ));
    }
    Ok(())
}

impl Identity {
    /// Loads (or, on the very first start, creates) the shared signing key.
    pub async fn load(store: &Store) -> Result<Identity> {
        let mut fresh = [0u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        let key = store
            .setting_or_init("jwt_signing_key", &hex::encode(fresh))
            .await?;
        let key =
            hex::decode(key).map_err(|_| Error::corrupt("settings.jwt_signing_key is not hex"))?;
        let dummy_hash = tokio::task::spawn_blocking(|| hash_password("not a real password"))
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))??;
        Ok(Identity {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            verified: Mutex::new(HashMap::new()),
            dummy_hash,
        })
    }

    pub(crate) fn sign(
        &self,
        user_id: &str,
        typ: &str,
        lifetime: chrono::Duration,
    ) -> Result<(String, Claims)> {
        self.sign_in(user_id, typ, lifetime, None)
    }

    /// [`Identity::sign`] for a token of login `family`.
    fn sign_in(
        &self,
        user_id: &str,
        typ: &str,
        lifetime: chrono::Duration,
        family: Option<&str>,
    ) -> Result<(String, Claims)> {
        let now = chrono::Utc::now();
        let claims = Claims {
            sub: user_id.to_string(),
            iat: now.timestamp(),
            exp: (now + lifetime).timestamp(),
            jti: uuid::Uuid::new_v4().to_string(),
            typ: typ.to_string(),
            fam: family.map(str::to_string),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Unavailable(format!("cannot sign a token: {e}")))?;
        Ok((token, claims))
    }

    pub(crate) fn verify(&self, token: &str, typ: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()?
            .claims;
        (claims.typ == typ).then_some(claims)
    }

    pub(crate) fn cached(&self, hash: &str) -> Option<Principal> {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            // Not past the credential's own expiry, however recently seen.
            .filter(|(p, _)| !expired(p.expires_at.as_deref()))
            .map(|(p, _)| p.clone())
    }

    pub(crate) fn remember(&self, hash: String, principal: &Principal) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() > 10_000 {
            verified.clear();
        }
        verified.insert(hash, (principal.clone(), Instant::now()));
    }

    /// Forgets every verified credential: after a revocation or a change of
    /// role, this replica asks the store again at once.
    pub fn forget_all(&self) {
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

pub(crate) fn unauthenticated() -> Error {
    Error::Unauthenticated("Invalid authentication credentials".into())
}

impl App {
    /// Ensures the bootstrap admin: the `default` project, the `admin` user
    /// (an admin there) and its API token. With `token_from_env`, that token
    /// is the admin's; without, one is generated on the first start and
    /// returned so that it can be shown once (`None` on later starts). With
    /// `password`, the admin's password is set to it.
    pub async fn bootstrap_admin(
        &self,
        token_from_env: Option<&str>,
        password: Option<&str>,
    ) -> Result<Option<String>> {
        if let Some(token) = token_from_env
            && token.len() < 16
        {
            return Err(Error::invalid(
                "TESSERA_ADMIN_TOKEN",
                "TESSERA_ADMIN_TOKEN must be at least 16 characters",
            ));
        }
        let project = self.ensure_project(DEFAULT_PROJECT, None).await?;
        let user = match self.store.user_by_name(ADMIN_USERNAME).await? {
            Some(user) => user,
            None => {
                self.store
                    .insert_user(&NewUser {
                        id: new_id("usr"),
                        username: ADMIN_USERNAME.into(),
                        password_hash: None,
                        project_id: project.id.clone(),
                        role: Role::Admin.as_str().into(),
                        install_role: Some(InstallRole::Admin.as_str().into()),
                    })
                    .await?;
                self.store
                    .user_by_name(ADMIN_USERNAME)
                    .await?
                    .ok_or_else(|| Error::Unavailable("the admin user vanished".into()))?
            }
        };
        if let Some(password) = password {
            validate_password(password)?;
            let password = password.to_string();
            let hash = tokio::task::spawn_blocking(move || hash_password(&password))
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))??;
            self.store.update_user(&user.id, Some(&hash), None).await?;
        }
        let existing = self.store.token(BOOTSTRAP_TOKEN_ID).await?;
        let generated = match (token_from_env, &existing) {
            (Some(token), _) => {
                self.put_bootstrap_token(token, &user.id, &project.id)
                    .await?;
                None
            }
            (None, Some(record)) if record.user_id.is_some() => None,
            (None, Some(record)) => {
                // A store from before users existed: the token stays, and
                // now belongs to the admin.
                let hash = record.token_hash.clone();
                self.store
                    .put_token(
                        BOOTSTRAP_TOKEN_ID,
                        "bootstrap admin",
                        &hash,
                        &user.id,
                        &project.id,
                    )
                    .await?;
                None
            }
            (None, None) => {
                let token = generate_token();
                self.put_bootstrap_token(&token, &user.id, &project.id)
                    .await?;
                Some(token)
            }
        };
        Ok(generated)
    }

    async fn put_bootstrap_token(
        &self,
        token: &str,
        user_id: &str,
        project_id: &str,
    ) -> Result<()> {
        self.store
            .put_token(
                BOOTSTRAP_TOKEN_ID,
                "bootstrap admin",
                &hash_token(token),
                user_id,
                project_id,
            )
            .await?;
        self.identity.forget_all();
        Ok(())
    }

    /// The project `name`, created (with `path`) when missing.
    pub(crate) async fn ensure_project(
        &self,
        name: &str,
        path: Option<&str>,
    ) -> Result<ProjectRecord> {
        if let Some(project) = self.store.project_by_name(name).await? {
            return Ok(project);
        }
        let project = ProjectRecord {
            id: new_id("prj"),
            name: name.to_string(),
            path: path.map_or_else(|| format!("/workspaces/{name}"), str::to_string),
            created_at: tessera_store::now(),
        };
        self.store.insert_project(&project, None).await?;
        self.store
            .project_by_name(name)
            .await?
            .ok_or_else(|| Error::Unavailable(format!("project {name} vanished")))
    }

    /// The principal a bearer credential stands for.
    /// The principal `bearer` stands for in project `project_id`, for a
    /// session opened there that asks again while it lasts: a login acts
    /// in whichever project its user has made active since, so the session
    /// holds on to its own (and ends if its user is no longer a member).
    pub async fn authenticate_in(
        &self,
        bearer: Option<&str>,
        project_id: &str,
    ) -> Result<Principal> {
        let caller = self.authenticate(bearer).await?;
        if caller.project_id == project_id {
            return Ok(caller);
        }
        let mut there = self
            .principal_of_user(
                &caller.user_id,
                Some(project_id),
                caller.scopes.clone(),
                caller.token_id.clone(),
            )
            .await?;
        there.expires_at = caller.expires_at;
        there.compute_scopes = caller.compute_scopes;
        there.login = caller.login;
        Ok(there)
    }

    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal> {
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(Error::Unauthenticated("Not authenticated".into()));
        };
        let hash = hash_token(token);
        if let Some(principal) = self.identity.cached(&hash) {
            return Ok(principal);
        }
        // A JWT is three base64url parts, its header starting `{"`; anything
        // else is an API token (the bootstrap one may be any string).
        let is_jwt = token.starts_with("eyJ") && token.split('.').count() == 3;
        let principal = if !is_jwt {
            self.principal_of_api_token(&hash).await?
        } else {
            let claims = self
                .identity
                .verify(token, "access")
                .ok_or_else(unauthenticated)?;
            // Every access token belongs to a login; one whose refresh token
            // was reused is revoked, and its access tokens with it, as are
            // a user's logins when its password changes or it is disabled.
            let family = claims.fam.as_deref().ok_or_else(unauthenticated)?;
            if self.store.refresh_family_revoked(family).await? {
                return Err(Error::Unauthenticated(
                    "this login was revoked (its refresh token was used twice, or its user's \
                     password changed, or its user was disabled); log in again"
                        .into(),
                ));
            }
            let mut principal = self
                .principal_of_user(&claims.sub, None, None, None)
                .await?;
            principal.login = Some(family.to_string());
            principal
        };
        self.identity.remember(hash, &principal);
        Ok(principal)
    }

    async fn principal_of_api_token(&self, hash: &str) -> Result<Principal> {
        let record = self
            .store
            .token_by_hash(hash)
            .await?
            .ok_or_else(unauthenticated)?;
        if record.revoked_at.is_some() || expired(record.expires_at.as_deref()) {
            return Err(unauthenticated());
        }
        let (Some(user_id), Some(project_id)) = (&record.user_id, &record.project_id) else {
            return Err(unauthenticated());
        };
        let compute_scopes = stored_compute_scopes(record.compute_scopes.as_deref());
        // A token limited by containers-API grants alone has nothing on the
        // other faces (the containers API lifts this: `on_compute_face`).
        let scopes = match stored_scopes(record.scopes.as_deref()) {
            None if compute_scopes.is_some() => Some(Vec::new()),
            scopes => scopes,
        };
        let mut principal = self
            .principal_of_user(user_id, Some(project_id), scopes, Some(record.id.clone()))
            .await?;
        principal.expires_at = record.expires_at.clone();
        principal.compute_scopes = compute_scopes;
        Ok(principal)
    }

    /// The principal of a user acting in `project_id` (by default its active
    /// project). 401 when the user is gone or disabled, or is no longer a
    /// member of the project.
    pub(crate) async fn principal_of_user(
        &self,
        user_id: &str,
        project_id: Option<&str>,
        scopes: Option<Vec<Permission>>,
        token_id: Option<String>,
    ) -> Result<Principal> {
        let user = self
            .store
            .user(user_id)
            .await?
            .filter(|u| u.disabled == 0)
            .ok_or_else(unauthenticated)?;
        let project_id = project_id
            .map(str::to_string)
            .or(user.active_project_id.clone())
            .ok_or_else(unauthenticated)?;
        let membership = self
            .store
            .membership(&user.id, &project_id)
            .await?
            .ok_or_else(unauthenticated)?;
        let role: Role = membership
            .role
            .parse()
            .map_err(|e: String| Error::corrupt(format!("memberships.role: {e}")))?;
        let install_role = parse_install_role(user.install_role.as_deref())?;
        Ok(Principal {
            user_id: user.id,
            username: user.username,
            project_id: membership.project_id,
            project_name: membership.project_name,
            role,
            install_role,
            scopes,
            token_id,
            expires_at: None,
            compute_scopes: None,
            login: None,
        })
    }

    /// Checks a username and password and opens a session. Attempts are
    /// throttled per user and per client address ([`crate::throttle`]); an
    /// attempt over a limit is refused before any password is checked.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<Session> {
        let attempt = self.throttle.begin_login(username, client)?;
        let user = match username.contains('\0') {
            true => None,
            false => self.store.user_by_name(username).await?,
        };
        let hash = user
            .as_ref()
            .filter(|u| u.disabled == 0)
            .and_then(|u| u.password_hash.clone());
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.identity.dummy_hash.clone());
        let matches = self.throttle.verify_password(password, &hash).await?;
        let Some(user) = user.filter(|_| known && matches) else {
            attempt.failed();
            return Err(Error::Unauthenticated("Invalid credentials".into()));
        };
        attempt.succeeded();
        self.open_session(&user.id, None).await
    }

    /// Trades a refresh token for a new session; the old token stops working.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let invalid = || Error::Unauthenticated("Invalid refresh token".into());
        let claims = self
            .identity
            .verify(refresh_token, "refresh")
            .ok_or_else(invalid)?;
        let (token, next) = self.identity.sign_in(
            &claims.sub,
            "refresh",
            chrono::Duration::days(REFRESH_TOKEN_DAYS),
            claims.fam.as_deref(),
        )?;
        let expires = chrono::DateTime::from_timestamp(next.exp, 0).unwrap_or_default();
        match self
            .store
            .rotate_refresh_token(&claims.jti, &next.jti, &tessera_store::timestamp(expires))
            .await?
        {
            RefreshUse::Rotated { user_id, family } => {
                // The user must still exist and be enabled.
                self.principal_of_user(&user_id, None, None, None)
                    .await
                    .map_err(|_| invalid())?;
                self.open_session(&user_id, Some((token, family))).await
            }
            RefreshUse::Reused => {
                // This replica forgets the login's access tokens at once;
                // the others within CACHE_TTL.
                self.identity.forget_all();
                tracing::warn!(user = %claims.sub, "a used refresh token was presented again; its sessions are revoked");
                Err(Error::Unauthenticated(
                    "Invalid refresh token: it was already used, so every token of this login has been revoked"
                        .into(),
                ))
            }
            RefreshUse::Invalid => Err(invalid()),
        }
    }

    /// Signs an access token and, unless `refresh` (a token and its login)
    /// was already recorded as the successor of a used one, a new login: a
    /// new refresh-token family.
    async fn open_session(
        &self,
        user_id: &str,
        refresh: Option<(String, String)>,
    ) -> Result<Session> {
        let (refresh_token, family) = match refresh {
            Some(pair) => pair,
            None => {
                let family = uuid::Uuid::new_v4().to_string();
                let (token, claims) = self.identity.sign_in(
                    user_id,
                    "refresh",
                    chrono::Duration::days(REFRESH_TOKEN_DAYS),
                    Some(&family),
                )?;
                let expires = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_default();
                self.store
                    .insert_refresh_token(
                        &claims.jti,
                        user_id,
                        &family,
                        &tessera_store::timestamp(expires),
                    )
                    .await?;
                (token, family)
            }
        };
        let (token, _) = self.identity.sign_in(
            user_id,
            "access",
            chrono::Duration::seconds(ACCESS_TOKEN_SECONDS),
            Some(&family),
        )?;
        Ok(Session {
            token,
            refresh_token,
            expires_in: ACCESS_TOKEN_SECONDS,
        })
    }
}

/// An install role as stored.
pub(crate) fn parse_install_role(text: Option<&str>) -> Result<Option<InstallRole>> {
    text.map(|t| {
        t.parse::<InstallRole>()
            .map_err(|e| Error::corrupt(format!("users.install_role: {e}")))
    })
    .transpose()
}

/// A token's stored scopes: `None` for all of its user's permissions. A list
/// that cannot be read, or a name no longer known, grants nothing rather
/// than more.
pub(crate) fn stored_scopes(text: Option<&str>) -> Option<Vec<Permission>> {
    let names: Vec<String> = serde_json::from_str(text?).unwrap_or_default();
    Some(names.iter().filter_map(|n| n.parse().ok()).collect())
}

/// A token's stored containers-API grants. Grants that cannot be read
/// grant nothing rather than more.
pub(crate) fn stored_compute_scopes(text: Option<&str>) -> Option<ComputeScopes> {
    let text = text?;
    let grants: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_str(text).unwrap_or_default();
    Some(ComputeScopes::parse(&grants).unwrap_or_default())
}
