//! Balances and what things cost.
//!
//! Every instance and volume has a meter in the store that accrues at its
//! catalog price (the spot price for spot instances) while it runs; see
//! `tessera_store::billing`. An instance runs up cost while `running`; a
//! volume from its creation until its storage is destroyed, trash included.
//! A project's balance is what was put in less what its meters show now.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, new_id};
use tessera_core::Permission;
use tessera_core::catalog::{from_micros, to_micros};

/// The largest single top-up.
const MAX_TOP_UP: f64 = 1_000_000_000.0;

/// A project's balance, in the catalog's currency.
#[derive(Clone, Debug, PartialEq)]
pub struct Balance {
    pub project: String,
    pub amount: f64,
    pub currency: String,
}

impl App {
    pub async fn balance(&self, caller: &Principal) -> Result<Balance> {
        caller.require(Permission::BalanceRead)?;
        self.project_balance(&caller.project_id, &caller.project_name)
            .await
    }

    async fn project_balance(&self, project_id: &str, name: &str) -> Result<Balance> {
        let balance = self.store.balance(project_id).await?;
        Ok(Balance {
            project: name.to_string(),
            amount: from_micros(balance.amount_micros()),
            currency: self.catalog.currency.clone(),
        })
    }

    /// Any project's balance, by name: an admin's view.
    pub async fn balance_of(&self, caller: &Principal, project: &str) -> Result<Balance> {
        if project != caller.project_name {
            caller.require(Permission::BalanceAdmin)?;
        } else {
            caller.require(Permission::BalanceRead)?;
        }
        let record = self.project_named(project).await?;
        self.project_balance(&record.id, &record.name).await
    }

    /// Adds `amount` to a project's balance.
    pub async fn top_up(&self, caller: &Principal, project: &str, amount: f64) -> Result<Balance> {
        caller.require(Permission::BalanceAdmin)?;
        if !amount.is_finite() || amount <= 0.0 || amount > MAX_TOP_UP {
            return Err(Error::invalid(
                "amount",
                format!("amount must be a number above 0 and at most {MAX_TOP_UP}"),
            ));
        }
        let record = self.project_named(project).await?;
        self.store
            .top_up(
                &new_id("topup"),
                &record.id,
                to_micros(amount),
                Some(&caller.user_id),
            )
            .await?;
        tracing::info!(project = %record.name, amount, by = %caller.username, "balance topped up");
        self.project_balance(&record.id, &record.name).await
    }

    /// `InsufficientFunds` unless the caller's balance covers an hour of
    /// the stopped instances of `ids`, on top of what the
    /// project already runs: a start is a deploy's spending again, so
    /// shutting down, spending the money and starting again cannot run
    /// past it. Ids not of the project count nothing (their action says
    /// why). Answers what they add per hour.
    pub async fn check_start_funds(&self, caller: &Principal, ids: &[String]) -> Result<i64> {
        caller.require(Permission::InstanceCreate)?;
        let mut seen = std::collections::HashSet::new();
        let mut adds = 0i64;
        let mut count = 0;
        for id in ids.iter().filter(|id| seen.insert(id.as_str())) {
            if let Some(rate) = self
                .store
                .stopped_instance_rate(&caller.project_id, id)
                .await?
            {
                adds = adds.saturating_add(rate);
                count += 1;
            }
        }
        if adds == 0 {
            return Ok(0);
        }
        let what = match (count, ids) {
            (1, [id]) => format!("instance {id}"),
            _ => format!("starting {count} instances"),
        };
        self.check_funds(caller, adds, &what).await?;
        Ok(adds)
    }

    /// `InsufficientFunds` unless the project's balance covers an hour of
    /// `micros_per_hour` on top of what it already runs.
    pub(crate) async fn check_funds(
        &self,
        caller: &Principal,
        micros_per_hour: i64,
        what: &str,
    ) -> Result<()> {
        self.check_project_funds(
            &caller.project_id,
            Some(&caller.project_name),
            micros_per_hour,
            what,
        )
        .await
    }

    /// [`App::check_funds`] for `project_id` (named `project_name`, or as
    /// the store names it).
    pub(crate) async fn check_project_funds(
        &self,
        project_id: &str,
        project_name: Option<&str>,
        micros_per_hour: i64,
        what: &str,
    ) -> Result<()> {
        let balance = self.store.balance(project_id).await?;
        let hourly = balance
            .committed_micros_per_hour
            .saturating_add(micros_per_hour);
        if balance.amount_micros() < hourly {
            let name = match project_name {
                Some(name) => name.to_string(),
                None => self
                    .store
                    .project(project_id)
                    .await?
                    .map_or_else(|| project_id.to_string(), |p| p.name),
            };
            return Err(Error::InsufficientFunds(format!(
                "{what} costs {:.4} {cur} per hour, and what project {} runs or is creating \
                 {:.4} more; its balance of {:.4} {cur} does not cover an hour of both",
                from_micros(micros_per_hour),
                name,
                from_micros(balance.committed_micros_per_hour),
                from_micros(balance.amount_micros()),
                cur = self.catalog.currency,
            )));
        }
        Ok(())
    }

    /// Instances made with volumes of their own (Verda's OS volume) before
    /// 2026-12-06 had a meter at their type's price plus those volumes'
    /// prices, which their volumes' own meters charged too. Each such meter
    /// over its type's catalog price books what it accrued and runs on at
    /// that price. Run at every start (a replica of the version before may
    /// still have made some); answers how many were repaired.
    pub(crate) async fn repair_instance_meters(&self) -> Result<usize> {
        let mut repaired = 0;
        for (id, micros, spec) in self.store.meters_of_instances_made_with_volumes().await? {
            let Ok(spec) = serde_json::from_str::<crate::instances::InstanceSpecInput>(&spec)
            else {
                continue;
            };
            let Some(kind) = self.catalog.instance_type(&spec.instance_type) else {
                continue;
            };
            let os_volume = self
                .store
                .instance_volumes(&id)
                .await?
                .iter()
                .any(|v| v.is_os_volume != 0);
            let price = to_micros(spec.hourly(kind, os_volume));
            if micros > price {
                self.store.rerate_meter(&id, price).await?;
                repaired += 1;
            }
        }
        Ok(repaired)
    }
}
