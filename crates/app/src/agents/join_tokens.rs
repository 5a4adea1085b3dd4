//! Join tokens: an admin's permission for new hosts' agents to register
//! (and, for one named host, to replace its agent). Kept as hashes only.

use super::secret;
use crate::error::{Error, Result};
use crate::identity::{Principal, hash_token};
use crate::{App, new_id};
use std::time::Duration;
use tessera_core::Permission;
use tessera_core::status::HostStatus;
use tessera_store::NewJoinToken;

/// A new join token.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JoinToken {
    pub id: String,
    /// The secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub description: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked: bool,
    /// Past its expiry: no host joins with it any more.
    pub expired: bool,
    /// The one host whose agent it may replace, if any.
    pub replaces: Option<String>,
    /// How many more hosts it admits; `None`: any number until it expires.
    pub uses_left: Option<i64>,
    /// The one host name an agent may join under with it; `None`: any
    /// name no host has had an agent under.
    pub hostname: Option<String>,
}

/// The most hosts one join token may be made to admit by count.
const MAX_USES: i64 = 100_000;

impl App {
    /// Creates a join token a new host's agent registers with. With
    /// `replaces`, it also admits a new agent for that one registered host,
    /// which no other token does once the host has had an agent. With
    /// `hostname`, it admits an agent under that name only (a token that
    /// replaces a host's agent is for that host's name).
    pub async fn create_join_token(
        &self,
        caller: &Principal,
        description: Option<String>,
        ttl: Option<Duration>,
        (replaces, hostname): (Option<String>, Option<String>),
        uses: Option<i64>,
    ) -> Result<JoinToken> {
        caller.require(Permission::ServerCreate)?;
        if let Some(name) = &hostname {
            crate::hosts::validate_hostname(name)
                .map_err(|_| Error::invalid("hostname", format!("{name:?} is not a host name")))?;
        }
        if let Some(uses) = uses
            && !(1..=MAX_USES).contains(&uses)
        {
            return Err(Error::invalid(
                "uses",
                format!("uses must be between 1 and {MAX_USES}"),
            ));
        }
        if let Some(hostname) = &replaces {
            let host = self.find_server(hostname).await.map_err(|_| {
                Error::invalid(
                    "replaces",
                    format!("replaces names server {hostname}, which is not registered"),
                )
            })?;
            if host.status == HostStatus::Decommissioned {
                return Err(Error::invalid(
                    "replaces",
                    format!("server {hostname} is decommissioned; register it again instead"),
                ));
            }
        }
        let replaces = match replaces {
            Some(name) => Some(self.find_server(&name).await?.hostname),
            None => None,
        };
        let hostname = match (hostname, &replaces) {
            (Some(name), Some(host)) if !name.eq_ignore_ascii_case(host) => {
                return Err(Error::invalid(
                    "hostname",
                    format!(
                        "the token replaces the agent of {host}: its hostname is {host}, not {name}"
                    ),
                ));
            }
            (_, Some(host)) => Some(host.clone()),
            (name, None) => name,
        };
        let description = description.unwrap_or_default();
        if description.len() > 200 || description.chars().any(char::is_control) {
            return Err(Error::invalid(
                "description",
                "description must be at most 200 printable characters",
            ));
        }
        let ttl = ttl.unwrap_or(Duration::from_secs(24 * 3600));
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(365 * 24 * 3600) {
            return Err(Error::invalid(
                "ttl_seconds",
                "ttl_seconds must be between 60 and 31536000",
            ));
        }
        let token = secret("tsj");
        let id = new_id("jt");
        let expires_at = tessera_store::timestamp(
            chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default(),
        );
        self.store
            .insert_join_token(&NewJoinToken {
                id: &id,
                token_hash: &hash_token(&token),
                description: &description,
                created_by: Some(&caller.username),
                expires_at: &expires_at,
                replaces: replaces.as_deref(),
                uses,
                hostname: hostname.as_deref(),
            })
            .await?;
        if let Some(hostname) = &replaces {
            tracing::warn!(%hostname, by = %caller.username, "join token made to replace a host's agent");
        }
        Ok(JoinToken {
            id,
            token: Some(token),
            description,
            created_at: tessera_store::now(),
            expires_at,
            revoked: false,
            expired: false,
            replaces,
            uses_left: uses,
            hostname,
        })
    }

    /// A join token for the agent `tessera up` starts beside the control
    /// plane, valid for an hour. It may replace the agent of `hostname`, this
    /// machine (one that lost its state directory): the token never leaves
    /// the process.
    pub async fn local_join_token(&self, hostname: &str) -> Result<String> {
        let token = secret("tsj");
        let expires_at = tessera_store::timestamp(chrono::Utc::now() + chrono::Duration::hours(1));
        self.store
            .insert_join_token(&NewJoinToken {
                id: &new_id("jt"),
                token_hash: &hash_token(&token),
                description: "tessera up: the local agent",
                created_by: None,
                expires_at: &expires_at,
                replaces: Some(hostname),
                uses: None,
                hostname: None,
            })
            .await?;
        Ok(token)
    }

    pub async fn join_tokens(&self, caller: &Principal) -> Result<Vec<JoinToken>> {
        caller.require(Permission::ServerRead)?;
        Ok(self
            .store
            .join_tokens()
            .await?
            .into_iter()
            .map(|t| JoinToken {
                id: t.id,
                token: None,
                description: t.description,
                created_at: t.created_at,
                expired: t.expires_at.as_str() <= tessera_store::now().as_str(),
                expires_at: t.expires_at,
                revoked: t.revoked_at.is_some(),
                replaces: t.replaces,
                uses_left: t.uses_left,
                hostname: t.hostname,
            })
            .collect())
    }

    pub async fn revoke_join_token(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::ServerCreate)?;
        let revoked = match crate::has_nul(id) {
            true => false,
            false => self.store.revoke_join_token(id).await?,
        };
        match revoked {
            true => Ok(()),
            false => Err(Error::NotFound(format!(
                "join token {} not found or already revoked",
                id.escape_debug()
            ))),
        }
    }
}
