//! Making a host run what the store says it runs, after its agent lost
//! track (a restarted simulated host).

use crate::App;
use crate::error::Result;
use tessera_core::status::InstanceState;
use tessera_store::InstanceFilter;

impl App {
    /// Makes a host run the settled instances the store gives it (running
    /// or stopped): an agent that lost its state gets them back.
    pub(crate) async fn resync_instances(
        &self,
        host_id: &str,
        agent: std::sync::Arc<dyn tessera_agent_api::HostAgent>,
    ) -> Result<()> {
        let on_host = self
            .stored_instances(&InstanceFilter {
                host_id: Some(host_id.to_string()),
                ..InstanceFilter::default()
            })
            .await?;
        self.resync_volumes(host_id, &agent).await?;
        for listed in on_host {
            // Under the instance's guard, as it is now: an operation that
            // started meanwhile (a delete) drives it instead.
            let _guard = self.instance_guard(&listed.id).await?;
            let Some(instance) = self.stored_instance(&listed.id).await? else {
                continue;
            };
            if instance.operation_id.is_some()
                || instance.host_id.as_ref().map(|h| h.as_str()) != Some(host_id)
                || !matches!(
                    instance.state,
                    InstanceState::Running | InstanceState::Stopped
                )
            {
                continue;
            }
            // One instance's spec that cannot be made (a replica whose
            // secret is gone) holds up no other.
            let spec = match self.instance_spec(&instance).await {
                Ok(spec) => spec,
                Err(err) => {
                    tracing::warn!(instance = %instance.id, error = %err, "instance resync skipped");
                    continue;
                }
            };
            let mut outcome = self
                .host_call(agent.create_instance(&spec))
                .await
                .map(|_| ());
            if outcome.is_ok() && instance.state == InstanceState::Stopped {
                outcome = self.host_call(agent.stop_instance(&spec.id)).await;
            }
            if let Err(err) = outcome {
                tracing::warn!(instance = %instance.id, error = %err, "instance resync failed");
            }
        }
        Ok(())
    }
}
