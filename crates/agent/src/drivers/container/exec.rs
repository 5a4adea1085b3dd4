//! Sessions into running containers: `runc exec`, over pipes or a terminal.
//!
//! The process joins the instance as its init's configuration says (user,
//! environment, working directory, cgroup: it is pinned to the instance's
//! CPUs like everything else there). Without a terminal its standard input
//! is a pipe from the agent and its standard output and error one pipe
//! back. With one, the design decision: the agent allocates a pty on the
//! host ([`Pty`]) and runs `runc exec` with a terminal and the slave as
//! runc's own terminal. runc then makes a second pty inside the container
//! (in the container's devpts, so `tty` there names `/dev/pts/N`), sized
//! before the process starts, makes it the process's controlling terminal
//! (so a shell's job control works), puts the agent's side in raw mode and
//! copies between the two, copying the window size again on SIGWINCH. The
//! process is given as a file (`runc exec --process`): the instance's
//! `config.json` process with the command, `terminal`, `TERM` and the
//! `consoleSize` that the runc command line cannot give. A resize sets the
//! agent's side, the container's terminal directly (through
//! `/proc/PID/fd/0` of the process, which `runc exec --pid-file` names, so
//! the new size holds when `resize` returns), and signals runc.
//!
//! A session's `runc` is in a process group of its own (a `^C` at the
//! agent's terminal is not the session's). Dropping the control sends it
//! SIGHUP (with a terminal: the line hung up) and SIGTERM, which runc passes
//! on to the process; one that still runs 5 s later is killed.

use super::{ContainerDriver, blocking, fail, validate_id};
use crate::drivers::session::{Pty, PtyMaster, PtyWriter, exit_code, winsize};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tessera_agent_api::{AgentError, Session, SessionControl, SessionRequest, TtySize};

/// What a session runs when it names no command: an interactive shell,
/// which prompts on standard error (part of the session's output).
fn default_shell() -> Vec<String> {
    vec!["/bin/sh".to_string(), "-i".to_string()]
}

/// The terminal type a session with a terminal announces.
const TERM: &str = "xterm-256color";
/// How long runc has to start the session's process.
const START_WAIT: Duration = Duration::from_secs(10);
/// How long a dropped session's process has to end after SIGHUP/SIGTERM.
const END_GRACE: Duration = Duration::from_secs(5);

impl ContainerDriver {
    /// Starts the request's command (or the shell) in the running instance
    /// `id`.
    pub(super) async fn exec(
        &self,
        id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        validate_id(id)?;
        let command = request.command.clone().unwrap_or_else(default_shell);
        if command.first().is_none_or(|program| program.is_empty()) {
            return Err(fail("a session needs a command to run"));
        }
        if let Some(size) = request.tty {
            check_size(size)?;
        }
        // Checked and started under the instance's lock: a stop waits for
        // the session to have started (and then ends it with the instance).
        let lock = self.lock(id);
        let _held = lock.lock().await;
        match self.runc_state(id).await? {
            Some(state) if state.status == "running" => {}
            _ => return Err(fail(format!("instance {id} is not running on this host"))),
        }
        let name = format!("session-{:016x}", rand::random::<u64>());
        let pid_file = self.dir(id).join(format!("{name}.pid"));
        let process_file = self.dir(id).join(format!("{name}.json"));
        let mut runc = tokio::process::Command::new(&self.runc);
        runc.arg("--root")
            .arg(self.runc_root())
            .arg("exec")
            .arg("--pid-file")
            .arg(&pid_file);
        let (output, terminal): (
            Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Option<(PtyWriter, PtyMaster)>,
        ) = match request.tty {
            None => {
                let piped = |e: std::io::Error| fail(format!("making the session's pipe: {e}"));
                let (to_output, output) = tokio::net::unix::pipe::pipe().map_err(piped)?;
                let stdout = to_output.into_blocking_fd().map_err(piped)?;
                let stderr = stdout.try_clone().map_err(piped)?;
                runc.arg(id)
                    .args(&command)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(stderr));
                (Box::new(output), None)
            }
            Some(size) => {
                let pty = Pty::open(size)?;
                // The host's terminal only carries bytes to runc, which
                // relays them to the instance's own terminal: raw from the
                // start, so that keys typed before runc makes it raw (a ^D
                // at once) reach the instance rather than the host's line
                // discipline.
                let mut modes = rustix::termios::tcgetattr(&pty.slave)
                    .map_err(|e| fail(format!("reading the session's terminal: {e}")))?;
                modes.make_raw();
                rustix::termios::tcsetattr(
                    &pty.slave,
                    rustix::termios::OptionalActions::Now,
                    &modes,
                )
                .map_err(|e| fail(format!("setting up the session's terminal: {e}")))?;
                let config = self.dir(id).join("config.json");
                let (process_file2, command2) = (process_file.clone(), command.clone());
                blocking(move || write_process(&config, &process_file2, command2, size)).await?;
                let copy = |e: std::io::Error| fail(format!("sharing the session's terminal: {e}"));
                let stdin = pty.slave.try_clone().map_err(copy)?;
                let stdout = pty.slave.try_clone().map_err(copy)?;
                runc.arg("--process")
                    .arg(&process_file)
                    .arg(id)
                    .stdin(Stdio::from(stdin))
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(pty.slave));
                (Box::new(pty.output), Some((pty.input, pty.master)))
            }
        };
        runc.process_group(0);
        let spawned = runc.spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = tokio::fs::remove_file(&process_file).await;
                return Err(fail(format!("running `runc exec {id}`: {e}")));
            }
        };
        // The command holds the pipe's write ends (or the terminal's
        // slave): the output ends only once they are all closed.
        drop(runc);
        let (input, master): (Box<dyn tokio::io::AsyncWrite + Send + Unpin>, _) =
            match (terminal, child.stdin.take()) {
                (Some((input, master)), _) => (Box::new(input), Some(master)),
                (None, Some(stdin)) => (Box::new(stdin), None),
                (None, None) => {
                    return Err(fail("`runc exec` was started without its standard input"));
                }
            };
        let process = find_process(&mut child, &pid_file).await;
        // runc has read it by the time the process runs (or it gave up).
        let _ = tokio::fs::remove_file(&process_file).await;
        let console = match (&master, process) {
            (Some(_), Some(pid)) => ContainerConsole::find(pid).await,
            _ => None,
        };
        tracing::info!(%id, program = %command[0], tty = master.is_some(), "session opened");
        Ok(Session {
            input,
            output,
            control: Box::new(RuncExec {
                child: Some(child),
                process,
                terminal: master.map(|master| Terminal { master, console }),
            }),
        })
    }
}

/// Writes the process of a session with a terminal for `runc exec
/// --process`: the instance's own (from its `config.json`: user, cwd,
/// capabilities, limits, environment, as `runc exec` would take them) with
/// `command`, a terminal of `size` and `TERM`.
fn write_process(
    config: &Path,
    to: &Path,
    command: Vec<String>,
    size: TtySize,
) -> Result<(), AgentError> {
    let spec = oci_spec::runtime::Spec::load(config)
        .map_err(|e| fail(format!("reading {}: {e}", config.display())))?;
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| fail(format!("{} has no process", config.display())))?;
    let mut env = process.env().clone().unwrap_or_default();
    env.retain(|e| !e.starts_with("TERM="));
    env.push(format!("TERM={TERM}"));
    process.set_env(Some(env));
    process.set_args(Some(command));
    process.set_terminal(Some(true));
    let console = oci_spec::runtime::BoxBuilder::default()
        .height(u64::from(size.rows))
        .width(u64::from(size.cols))
        .build()
        .map_err(|e| fail(format!("sizing the session's terminal: {e}")))?;
    process.set_console_size(Some(console));
    let json = serde_json::to_vec(&process).map_err(|e| fail(e.to_string()))?;
    std::fs::write(to, json).map_err(|e| fail(format!("writing {}: {e}", to.display())))
}

fn check_size(size: TtySize) -> Result<(), AgentError> {
    if size.rows == 0 || size.cols == 0 {
        return Err(fail(format!(
            "a terminal of {} columns and {} rows is no terminal",
            size.cols, size.rows
        )));
    }
    Ok(())
}

/// The host pid of the session's process, once runc has written it (it
/// does just before it starts copying its terminal); `None` when runc ends
/// first or takes too long. The pid file is removed.
async fn find_process(child: &mut tokio::process::Child, pid_file: &Path) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let found = loop {
        if let Ok(text) = tokio::fs::read_to_string(pid_file).await
            && let Ok(pid) = text.trim().parse::<i32>()
            && pid > 1
        {
            break Some(pid);
        }
        if !matches!(child.try_wait(), Ok(None)) || tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = tokio::fs::remove_file(pid_file).await;
    found
}

/// The terminal runc made for the process inside the container, found as
/// the process's standard input.
struct ContainerConsole {
    /// The process's host pid.
    pid: i32,
    /// The terminal's device number: the process's standard input is only
    /// resized while it still is this terminal.
    rdev: u64,
}

impl ContainerConsole {
    /// Finds it; `None` when the process's standard input is no pty slave
    /// (it is gone, or runc did otherwise).
    async fn find(pid: i32) -> Option<ContainerConsole> {
        let path = stdin_path(pid);
        let rdev = tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path).ok()?;
            let rdev = meta.rdev();
            // Unix98 pty slaves have majors 136 to 143.
            let major = nix::sys::stat::major(rdev);
            (meta.file_type().is_char_device() && (136..=143).contains(&major)).then_some(rdev)
        })
        .await
        .ok()
        .flatten()?;
        Some(ContainerConsole { pid, rdev })
    }

    fn resize(&self, size: TtySize) -> Result<(), AgentError> {
        let path = stdin_path(self.pid);
        let open = |e: std::io::Error| fail(format!("opening {}: {e}", path.display()));
        // The process is the tenant's: what its fd 0 is now is checked on
        // a handle that opens nothing (O_PATH) before the file itself is
        // opened, through that handle, so a device planted there is never
        // opened by the agent.
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_PATH)
            .open(&path)
            .map_err(open)?;
        let rdev = rustix::fs::fstat(&handle)
            .map_err(|e| open(e.into()))?
            .st_rdev;
        if rdev != self.rdev {
            return Err(fail(format!(
                "{} is no longer the session's terminal",
                path.display()
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
            .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
            .map_err(open)?;
        rustix::termios::tcsetwinsize(&file, winsize(size))
            .map_err(|e| fail(format!("resizing the container's terminal: {e}")))
    }
}

fn stdin_path(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/fd/0"))
}

/// A session's terminal: the agent's side, and the container's when found.
struct Terminal {
    master: PtyMaster,
    console: Option<ContainerConsole>,
}

/// A `runc exec` process of the agent's, reaped by tokio.
struct RuncExec {
    /// `None` once dropped (handed to the task that ends it).
    child: Option<tokio::process::Child>,
    /// The host pid of the process runc runs in the instance, if known.
    process: Option<i32>,
    terminal: Option<Terminal>,
}

impl RuncExec {
    fn runs(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

#[async_trait::async_trait]
impl SessionControl for RuncExec {
    async fn wait(&mut self) -> Result<i32, AgentError> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| fail("the session's process is gone"))?;
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("waiting for the session's process: {e}")))?;
        Ok(exit_code(status))
    }

    fn resize(&mut self, size: TtySize) -> Result<(), AgentError> {
        check_size(size)?;
        let runs = self.runs();
        let Some(terminal) = &self.terminal else {
            return Err(fail(
                "this session has no terminal to resize (open it with one)",
            ));
        };
        terminal.master.resize(size)?;
        if !runs {
            return Ok(());
        }
        if let Some(console) = &terminal.console
            && let Err(e) = console.resize(size)
        {
            tracing::debug!(error = %e, "resizing the container's terminal directly");
        }
        // runc copies the size again on SIGWINCH (and covers a console the
        // driver did not find).
        if let Some(pid) = self.child.as_ref().and_then(tokio::process::Child::id) {
            signal(pid, nix::sys::signal::Signal::SIGWINCH);
        }
        Ok(())
    }
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

impl Drop for RuncExec {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `id` is `None` once the process has been reaped: nothing to stop,
        // and its pid may belong to another process by now.
        let Some(pid) = child.id() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.terminal.is_some() {
            signal(pid, nix::sys::signal::Signal::SIGHUP);
        }
        signal(pid, nix::sys::signal::Signal::SIGTERM);
        let process = self.process;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if tokio::time::timeout(END_GRACE, child.wait()).await.is_ok() {
                return;
            }
            // runc still waits for it: the process lives (and its pid is
            // its own). runc does not pass KILL on, so it goes to both.
            if let Some(process) = process {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(process),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
        });
    }
}
