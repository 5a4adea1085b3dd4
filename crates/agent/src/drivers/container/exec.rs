//! Sessions into running containers: `runc exec` over pipes.
//!
//! The process joins the instance as its init's configuration says (user,
//! environment, working directory, cgroup: it is pinned to the instance's
//! CPUs like everything else there), with its standard input a pipe from
//! the agent and its standard output and error one pipe back. The design
//! decision: no `-t`. `runc exec -t` wants a terminal on its own side (or a
//! console socket to hand the pty over), which the agent does not have;
//! plain pipes keep the session a pair of byte streams (see
//! [`crate::drivers::session`]).

use super::{ContainerDriver, fail, validate_id};
use crate::drivers::session::{Session, SessionEnd};
use std::process::Stdio;
use tessera_agent_api::AgentError;

/// What a session runs when it names no command: an interactive shell,
/// which prompts on standard error (part of the session's output).
fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-i".to_string()]
}

impl ContainerDriver {
    /// Starts `command` (or the shell) in the running instance `id`.
    pub(super) async fn exec(
        &self,
        id: &str,
        command: Option<Vec<String>>,
    ) -> Result<Session, AgentError> {
        validate_id(id)?;
        let command = command.unwrap_or_else(default_shell);
        if command.first().is_none_or(|program| program.is_empty()) {
            return Err(fail("a session needs a command to run"));
        }
        // Checked and started under the instance's lock: a stop waits for
        // the session to have started (and then ends it with the instance).
        let lock = self.lock(id);
        let _held = lock.lock().await;
        match self.runc_state(id).await? {
            Some(state) if state.status == "running" => {}
            _ => return Err(fail(format!("instance {id} is not running on this host"))),
        }
        let piped = |e: std::io::Error| fail(format!("making the session's pipe: {e}"));
        let (to_output, output) = tokio::net::unix::pipe::pipe().map_err(piped)?;
        let stdout = to_output.into_blocking_fd().map_err(piped)?;
        let stderr = stdout.try_clone().map_err(piped)?;
        let mut runc = tokio::process::Command::new(&self.runc);
        runc.arg("--root")
            .arg(self.runc_root())
            .arg("exec")
            .arg(id)
            .args(&command)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let mut child = runc
            .spawn()
            .map_err(|e| fail(format!("running `runc exec {id}`: {e}")))?;
        // The command holds the pipe's write ends: the output ends only
        // once they are all closed.
        drop(runc);
        let input = child
            .stdin
            .take()
            .ok_or_else(|| fail("`runc exec` was started without its standard input"))?;
        tracing::info!(%id, program = %command[0], "session opened");
        Ok(Session {
            input: Box::new(input),
            output: Box::new(output),
            end: SessionEnd::process(child),
        })
    }
}
