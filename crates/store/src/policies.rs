//! Per-project policies an install admin sets: egress and privileged
//! instances.

use crate::{Result, Store, now};

/// A project's policy; the default (no row) is egress on, unprivileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProjectPolicyRecord {
    /// Its instances may reach beyond their host and their project.
    pub egress: bool,
    /// Its new instances run as the host's root (no user namespace).
    pub privileged: bool,
    /// Its instances and containers need its balance to cover an hour of
    /// them, on every face.
    pub prepaid: bool,
}

impl Default for ProjectPolicyRecord {
    fn default() -> Self {
        ProjectPolicyRecord {
            egress: true,
            privileged: false,
            prepaid: false,
        }
    }
}

impl Store {
    /// A project's policy (the default when none was set).
    pub async fn project_policy(&self, project_id: &str) -> Result<ProjectPolicyRecord> {
        let row: Option<(i64, i64, i64)> = self
            .fetch_optional(
                "SELECT egress, privileged, prepaid FROM project_policies WHERE project_id = $1",
                &[project_id.into()],
            )
            .await?;
        Ok(row
            .map(|(egress, privileged, prepaid)| ProjectPolicyRecord {
                egress: egress != 0,
                privileged: privileged != 0,
                prepaid: prepaid != 0,
            })
            .unwrap_or_default())
    }

    /// Sets a project's policy.
    pub async fn set_project_policy(
        &self,
        project_id: &str,
        policy: &ProjectPolicyRecord,
    ) -> Result<()> {
        self.run_statements(
            "set_project_policy",
            vec![(
                "INSERT INTO project_policies (project_id, egress, privileged, updated_at, prepaid) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (project_id) DO UPDATE SET egress = $2, privileged = $3, \
                 updated_at = $4, prepaid = $5"
                    .into(),
                vec![
                    project_id.into(),
                    i64::from(policy.egress).into(),
                    i64::from(policy.privileged).into(),
                    now().into(),
                    i64::from(policy.prepaid).into(),
                ],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }
}
