//! The programs the unit driver runs, found once at start-up, and how it
//! runs them.
//!
//! A missing program fails the driver's start with the Debian package to
//! install, rather than a unit step later. `useradd` and `userdel` are run
//! through [`run_retrying_lock`]: another tool holding `/etc/passwd`'s lock
//! is a reason to wait, not to fail.

use super::{Result, failed, io_failed};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tessera_agent_api::AgentError;

/// The programs the driver runs.
#[derive(Debug)]
pub(super) struct Tools {
    pub(super) dropbear: PathBuf,
    pub(super) dropbearkey: PathBuf,
    pub(super) setsid: PathBuf,
    pub(super) useradd: PathBuf,
    pub(super) userdel: PathBuf,
    pub(super) sh: PathBuf,
}

const SEARCH_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
];

pub(super) fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = SEARCH_DIRS.iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(failed(format!(
        "unit driver: `{name}` not found (looked in {} and PATH); install the Debian package `{package}`",
        SEARCH_DIRS.join(", ")
    )))
}

impl Tools {
    pub(super) fn find() -> Result<Tools> {
        Ok(Tools {
            dropbear: find_tool("dropbear", "dropbear-bin")?,
            dropbearkey: find_tool("dropbearkey", "dropbear-bin")?,
            setsid: find_tool("setsid", "util-linux")?,
            useradd: find_tool("useradd", "passwd")?,
            userdel: find_tool("userdel", "passwd")?,
            sh: find_tool("sh", "dash")?,
        })
    }
}

pub(super) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_failed(format!("{what}: running {:?}", cmd.get_program()), e))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let args: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(failed(format!(
        "{what}: `{}` exited with {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// `useradd` and `userdel` fail when another one holds `/etc/passwd`'s lock.
pub(super) fn run_retrying_lock(cmd: &mut Command, what: &str) -> Result<String> {
    let mut attempt = 0;
    loop {
        match run(cmd, what) {
            Err(AgentError::Failed(msg)) if attempt < 50 && msg.contains("lock") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
