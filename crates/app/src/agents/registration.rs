//! An agent's registration: a join token exchanged for the host's own
//! credential. A host the control plane does not know joins as a pooled
//! host; one registered before gets its agent; one that has had an agent
//! is handed over only with a join token made to replace it.

use super::secret;
use crate::error::{Error, Result};
use crate::identity::hash_token;
use crate::servers::CreateServer;
use crate::{App, new_id};
use tessera_agent_api::protocol::{RegisterRequest, RegisterResponse};
use tessera_core::status::HostStatus;

impl App {
    /// Registers the agent of a host: exchanges a join token for the host's
    /// own credential. A host the control plane does not know yet is
    /// registered as a pooled host with the CPUs the agent reported (unless
    /// its agent serves units only); one
    /// registered before (Kloigos `init_server`, `POST /v1/servers`) gets
    /// its agent, and its preparation, waiting for it, goes on.
    /// Refuses a join token that is unknown, expired or revoked: what a
    /// registration checks first, before the rest of its body is read.
    pub async fn check_join_token(&self, secret: &str) -> Result<()> {
        self.live_join_token(secret).await.map(|_| ())
    }

    async fn live_join_token(&self, secret: &str) -> Result<tessera_store::JoinTokenRecord> {
        let token = self.store.join_token_by_hash(&hash_token(secret)).await?;
        token
            .filter(|t| {
                t.revoked_at.is_none()
                    && t.expires_at.as_str() > tessera_store::now().as_str()
                    && t.uses_left != Some(0)
            })
            .ok_or_else(used_up)
    }

    pub async fn register_agent(&self, req: RegisterRequest) -> Result<RegisterResponse> {
        let token = self.live_join_token(&req.join_token).await?;
        crate::hosts::validate_hostname(&req.hostname)?;
        // A token made for one host admits no other name (and gives up
        // none of its uses to one).
        if let Some(name) = &token.hostname
            && !name.eq_ignore_ascii_case(&req.hostname)
        {
            return Err(Error::Forbidden(format!(
                "this join token is for host {name}, not {}; start the agent with --hostname \
                 {name}, or create a token for {}",
                req.hostname, req.hostname
            )));
        }
        if req.ip.parse::<std::net::IpAddr>().is_err()
            && crate::hosts::validate_hostname(&req.ip).is_err()
        {
            return Err(Error::invalid(
                "ip",
                format!("{:?} is neither an IP address nor a host name", req.ip),
            ));
        }
        let previous_agent = self.store.agent(&req.hostname).await?;
        if let Some(live) = &previous_agent {
            let silence = chrono::Duration::from_std(self.config.agent_silence).unwrap_or_default();
            let quiet_since = tessera_store::timestamp(chrono::Utc::now() - silence);
            if live.reachable == 1 && live.last_seen.as_str() > quiet_since.as_str() {
                return Err(Error::Conflict(format!(
                    "{} already has a live agent (last heard from at {}); stop it, or give \
                     this one another --hostname",
                    req.hostname, live.last_seen
                )));
            }
        }
        if !matches!(req.driver.as_str(), "unit" | "container" | "sim") {
            return Err(Error::invalid(
                "driver",
                format!("driver {:?} is not one of unit, container, sim", req.driver),
            ));
        }
        if req.inventory.cpus.is_empty() {
            return Err(Error::invalid(
                "inventory",
                "the host reports no CPU for instances",
            ));
        }
        let location = req.location.clone().unwrap_or_else(|| "local".into());
        // A host registered under this name in another case: the agent
        // joins it under its name as registered (agents and hosts go by
        // one spelling).
        if let Some(other) = self.store.host_named_in_any_case(&req.hostname).await?
            && other.hostname != req.hostname
            && !matches!(
                other.status,
                HostStatus::Decommissioned | HostStatus::InitFail
            )
        {
            return Err(Error::Conflict(format!(
                "server {} is registered as {} (host names know no case); start the agent \
                 with --hostname {}",
                req.hostname, other.hostname, other.hostname
            )));
        }
        let existing = self.store.host_by_hostname(&req.hostname).await?;
        // A token made for one host admits its agent, not a host of the
        // agent's own declaring: the server must be registered (its CPUs
        // as the operator said) and not retired.
        if token.hostname.is_some()
            && token.replaces.is_none()
            && existing
                .as_ref()
                .is_none_or(|host| host.status == HostStatus::Decommissioned)
        {
            return Err(Error::Forbidden(format!(
                "this join token is for server {}, which is not registered; register it first \
                 (POST /v1/servers/create with its cpus, or Kloigos init_server)",
                req.hostname
            )));
        }
        // A host that has had an agent (or is served without one, as a
        // simulated host is) is handed to a new agent only with a join token
        // an admin made for that: holding a join token is not enough to
        // take over a host.
        let waiting_for_first_agent = |host: &tessera_store::HostRecord| {
            matches!(host.status, HostStatus::Initializing | HostStatus::InitFail)
        };
        let claimable = match &existing {
            Some(host) if host.status == HostStatus::Decommissioned => true,
            Some(host) => previous_agent.is_none() && waiting_for_first_agent(host),
            None => previous_agent.is_none(),
        };
        if !claimable && token.replaces.as_deref() != Some(req.hostname.as_str()) {
            return Err(Error::Conflict(format!(
                "{} is a registered host that has had an agent; to give it a new one, an admin \
                 makes a join token for that: `tessera join-token create --replace {}`",
                req.hostname, req.hostname
            )));
        }
        // A retired host comes back only as an admin says: registered again
        // (then `existing` is that new registration), or, for `tessera up`'s
        // own machine, with the join token it makes naming it (no user made
        // it; a token an admin made to replace the host's agent before it
        // retired does not do): registered again from what its agent
        // reports, as `up` starting again means.
        let returning = existing.as_ref().is_some_and(|host| {
            host.status == HostStatus::Decommissioned
                && token.replaces.as_deref() == Some(host.hostname.as_str())
                && token.created_by.is_none()
                && req.driver != "unit"
        });
        let new_host = match &existing {
            Some(host) if host.status != HostStatus::Decommissioned => None,
            Some(host) if !returning => {
                return Err(Error::Conflict(format!(
                    "server {} was decommissioned; register it again (POST /v1/servers/create \
                     or Kloigos init_server) before its agent rejoins",
                    host.hostname
                )));
            }
            // A units-only host serves the Kloigos partition an operator
            // registers for it (`init_server`), and nothing before that.
            None if req.driver == "unit" => None,
            _ => {
                let numa_nodes = req
                    .inventory
                    .numa_nodes
                    .iter()
                    .map(|n| n.intersection(&req.inventory.cpus))
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_string())
                    .collect();
                let create = CreateServer {
                    hostname: req.hostname.clone(),
                    ip_address: req.ip.clone(),
                    provider: Some("tessera-agent".into()),
                    region: Some(location.clone()),
                    zone: location.clone(),
                    cpus: Some(req.inventory.cpus.to_string()),
                    numa_nodes,
                    server_id: new_id("host"),
                    arch: Some(req.inventory.arch.clone()),
                    ..CreateServer::default()
                };
                let mut host = self.new_host(&create)?;
                host.memory_mb = i64::try_from(req.inventory.memory_mb).unwrap_or(i64::MAX);
                Some(host)
            }
        };
        // A token of counted uses gives one up, whatever comes of the
        // rest (an admin makes another).
        if token.uses_left.is_some() && !self.store.use_join_token(&token.id).await? {
            return Err(used_up());
        }
        // A new host first: of two agents registering one new name at
        // once, the one whose host is refused writes nothing more.
        if let Some(new) = &new_host
            && !self.store.insert_host(new).await?
        {
            return Err(self.name_taken(&new.hostname).await?);
        }
        let credential = secret("tsh");
        let inventory = serde_json::to_string(&req.inventory).unwrap_or_default();
        let registered = self
            .store
            .register_agent(
                &req.hostname,
                &hash_token(&credential),
                &req.driver,
                &inventory,
                &super::offer(&req.inventory),
                previous_agent.as_ref().map(|a| a.credential_hash.as_str()),
            )
            .await?;
        if !registered {
            return Err(Error::Conflict(format!(
                "another agent registered as {} meanwhile; stop one of them",
                req.hostname
            )));
        }
        // The host's earlier credential stops working here at once.
        self.liveness.forget(&req.hostname);
        let host_id = match (new_host, existing) {
            (Some(new), _) => {
                self.placement.refresh_host(&self.store, &new.id).await?;
                new.id
            }
            (None, Some(host)) => {
                if host.ip.is_empty()
                    && self
                        .store
                        .set_host_address_if_unknown(&host.id, &req.ip)
                        .await?
                {
                    tracing::info!(hostname = %req.hostname, ip = %req.ip, "server takes the address its agent reported");
                }
                // The agent knows the host's architecture better than
                // whoever registered it.
                if host.arch != req.inventory.arch {
                    self.store
                        .set_host_arch(&host.id, &req.inventory.arch)
                        .await?;
                    tracing::info!(hostname = %req.hostname, arch = %req.inventory.arch, "server takes the architecture its agent reported");
                }
                host.id
            }
            (None, None) => {
                tracing::info!(hostname = %req.hostname, "units-only agent registered; its host waits for init_server");
                return Ok(RegisterResponse {
                    credential,
                    hostname: req.hostname,
                });
            }
        };
        tracing::info!(hostname = %req.hostname, driver = %req.driver, "agent registered");
        self.forget_agent(&tessera_core::HostId::new(host_id.as_str()));
        let app = self.clone();
        self.tasks
            .spawn(async move { app.drive_host(&host_id).await });
        Ok(RegisterResponse {
            credential,
            hostname: req.hostname,
        })
    }
}

fn used_up() -> Error {
    Error::Unauthenticated(
        "the join token is unknown, expired, revoked or used up; create one with `tessera \
         join-token create`"
            .into(),
    )
}
