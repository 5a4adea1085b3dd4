//! Per-project policies: whether a project's instances may reach beyond
//! their host and their project (egress), and whether its new instances run
//! as the host's root (privileged) instead of in user namespaces of their
//! own, and whether its instances and containers need its balance on every
//! face (prepaid). Install admins (`quota_admin`) set them, explicitly; a project's
//! members see their own. A change of egress reaches running instances at
//! once; privileged applies to instances made afterwards (an instance keeps
//! the ids it was made with).

use crate::App;
use crate::error::Result;
use crate::identity::Principal;
use tessera_core::Permission;
use tessera_core::status::InstanceState;
use tessera_store::{InstanceFilter, ProjectPolicyRecord};

/// A project's policy as shown.
#[derive(Clone, Debug)]
pub struct ProjectPolicy {
    pub project: String,
    pub egress: bool,
    pub privileged: bool,
    pub prepaid: bool,
}

/// Changes to a policy; `None` keeps what there is.
#[derive(Clone, Debug, Default)]
pub struct SetPolicy {
    pub egress: Option<bool>,
    pub privileged: Option<bool>,
    pub prepaid: Option<bool>,
}

impl App {
    /// Whether a new instance of `image` in the project runs as the host's
    /// root: its project is privileged, or its image is.
    pub(crate) async fn runs_privileged(&self, project_id: &str, image: &str) -> Result<bool> {
        Ok(self.new_instance_policy(project_id, image).await?.0)
    }

    /// For a new instance of `image` in the project: whether it runs as the
    /// host's root, and whether the project's balance must cover it
    /// (prepaid), in one read.
    pub(crate) async fn new_instance_policy(
        &self,
        project_id: &str,
        image: &str,
    ) -> Result<(bool, bool)> {
        let image = self.catalog.image(image).is_some_and(|i| i.privileged);
        let policy = self.store.project_policy(project_id).await?;
        Ok((image || policy.privileged, policy.prepaid))
    }

    /// A project's policy: the caller's own (`workspace_read`), or any
    /// (`quota_admin`, install admins).
    pub async fn project_policy(&self, caller: &Principal, project: &str) -> Result<ProjectPolicy> {
        let record = self.project_to_read(caller, project).await?;
        let policy = self.store.project_policy(&record.id).await?;
        Ok(ProjectPolicy {
            project: record.name,
            egress: policy.egress,
            privileged: policy.privileged,
            prepaid: policy.prepaid,
        })
    }

    /// Sets a project's policy (`quota_admin`: install admins). Turning
    /// egress on or off reaches its running instances' hosts at once.
    pub async fn set_project_policy(
        &self,
        caller: &Principal,
        project: &str,
        req: SetPolicy,
    ) -> Result<ProjectPolicy> {
        caller.require(Permission::QuotaAdmin)?;
        let record = self.project_named(project).await?;
        let before = self.store.project_policy(&record.id).await?;
        let after = ProjectPolicyRecord {
            egress: req.egress.unwrap_or(before.egress),
            privileged: req.privileged.unwrap_or(before.privileged),
            prepaid: req.prepaid.unwrap_or(before.prepaid),
        };
        self.store.set_project_policy(&record.id, &after).await?;
        tracing::info!(project = %record.name, by = %caller.username, ?after, "project policy set");
        if after.egress != before.egress {
            let running = self
                .stored_instances(&InstanceFilter {
                    project_id: Some(record.id.clone()),
                    ..InstanceFilter::default()
                })
                .await?;
            for instance in running.iter().filter(|i| i.state == InstanceState::Running) {
                if let Err(e) = self.converge_running(instance).await {
                    // Its host applies the policy when it next starts it.
                    tracing::warn!(instance = %instance.id, error = %e, "applying the project's egress");
                }
            }
        }
        self.project_policy(caller, project).await
    }
}
