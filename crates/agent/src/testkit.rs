//! For tests that log into what the drivers made: a fresh key pair, and an
//! `ssh` command that trusts whatever host key it meets and never prompts.
//! Built for this crate's tests and, with the `testkit` feature, for the
//! integration tests of the `tessera` crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A fresh ed25519 key pair in `dir`: the private key's path and the public
/// key line.
pub fn key_pair(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tessera-test", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(made.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_string())
}

/// `ssh -i key -p port user@host command`, batch mode, any host key, stdin
/// closed.
pub fn ssh_command(key: &Path, user: &str, host: &str, port: u16, command: &str) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=5"])
        .args(["-o", "LogLevel=ERROR"])
        .arg(format!("{user}@{host}"))
        .arg(command)
        .stdin(Stdio::null());
    ssh
}
