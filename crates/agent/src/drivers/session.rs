//! An interactive session into an instance: what a terminal attaches to.
//!
//! A session is two byte streams and an ending: `input` goes to the
//! process's standard input, `output` carries its standard output and
//! standard error interleaved as written, and [`SessionEnd::wait`] answers
//! its exit code. The design decision a reader must know: there is no
//! pseudo-terminal. Drivers join an instance over plain pipes (the
//! container driver runs `runc exec` without `-t`), so the process sees no
//! tty: no echo, no line editing, no window size, and programs that ask
//! `isatty` get "no". A terminal in front of a session does its own echo;
//! a pty needs `runc exec -t` with a console socket, and is not built yet.
//!
//! Dropping a [`SessionEnd`] whose process still runs sends it SIGTERM
//! (`runc exec` passes it on to the process in the instance).

use std::process::ExitStatus;
use tessera_agent_api::AgentError;
use tokio::io::{AsyncRead, AsyncWrite};

/// An open session into an instance.
pub struct Session {
    /// The process's standard input; dropping it closes it (end of file).
    pub input: Box<dyn AsyncWrite + Send + Unpin>,
    /// The process's standard output and standard error, interleaved.
    pub output: Box<dyn AsyncRead + Send + Unpin>,
    /// How the session ends.
    pub end: SessionEnd,
}

impl Session {
    /// Whether nothing real runs behind the session (the simulated host).
    pub fn is_simulated(&self) -> bool {
        self.end.is_simulated()
    }
}

/// The end of a session: a process on the host, or a simulated shell.
pub struct SessionEnd {
    ending: Ending,
}

enum Ending {
    /// A process of the agent's (`runc exec`), reaped by tokio.
    Process(tokio::process::Child),
    /// A task of the agent's that plays the instance's side.
    Simulated {
        task: tokio::task::JoinHandle<i32>,
        /// Its exit code, once seen (a finished task cannot be awaited
        /// again).
        code: Option<i32>,
    },
}

impl SessionEnd {
    pub(crate) fn process(child: tokio::process::Child) -> SessionEnd {
        SessionEnd {
            ending: Ending::Process(child),
        }
    }

    pub(crate) fn simulated(task: tokio::task::JoinHandle<i32>) -> SessionEnd {
        SessionEnd {
            ending: Ending::Simulated { task, code: None },
        }
    }

    /// Whether nothing real runs behind the session (the simulated host).
    pub fn is_simulated(&self) -> bool {
        matches!(self.ending, Ending::Simulated { .. })
    }

    /// Waits until the session's process ends; answers its exit code, or
    /// 128 + N when signal N ended it, as a shell does. Waiting again
    /// answers the same.
    pub async fn wait(&mut self) -> Result<i32, AgentError> {
        match &mut self.ending {
            Ending::Process(child) => {
                let status = child.wait().await.map_err(|e| {
                    AgentError::Failed(format!("waiting for the session's process: {e}"))
                })?;
                Ok(exit_code(status))
            }
            Ending::Simulated { task, code } => {
                if let Some(code) = code {
                    return Ok(*code);
                }
                let ended = task.await.map_err(|e| {
                    AgentError::Failed(format!("the simulated session failed: {e}"))
                })?;
                *code = Some(ended);
                Ok(ended)
            }
        }
    }
}

impl Drop for SessionEnd {
    fn drop(&mut self) {
        match &mut self.ending {
            // `id` is `None` once the process has been reaped: nothing to
            // stop, and its pid may belong to another process by now.
            Ending::Process(child) => {
                if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
            }
            Ending::Simulated { task, .. } => task.abort(),
        }
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}
