//! A unit's Linux identity: its user and private group.
//!
//! Users are made with `useradd -m` (password locked: logins are by key
//! only) and removed with `userdel -r`; a group of the user's name left by
//! an earlier run is joined rather than refused. The design decision: the
//! driver never edits `/etc/passwd` itself; the system's tools do, under
//! their own lock, which the driver waits for when another holds it.

use super::tools::run_retrying_lock;
use super::{Inner, Result, failed};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A unit's Linux identity.
pub(super) struct Account {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: PathBuf,
}

impl Inner {
    pub(super) fn ensure_user(&self, user: &str) -> Result<Account> {
        if let Some(account) = lookup_user(user)? {
            return Ok(account);
        }
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let home = self.home(user);
        let mut cmd = Command::new(&self.tools.useradd);
        cmd.arg("-m").arg("-d").arg(&home).arg("-s").arg(shell);
        // A group of the name left behind by an earlier run: join it rather
        // than fail.
        if nix::unistd::Group::from_name(user).ok().flatten().is_some() {
            cmd.arg("-g").arg(user);
        } else {
            cmd.arg("-U");
        }
        cmd.arg(user);
        run_retrying_lock(&mut cmd, &format!("creating user {user}"))?;
        // useradd leaves the password locked (`!`); logins are by key only.
        lookup_user(user)?.ok_or_else(|| failed(format!("user {user} missing right after useradd")))
    }

    /// Removes the user, its group and its home; gone already is success.
    pub(super) fn remove_user(&self, user: &str) -> Result<()> {
        let mut cmd = Command::new(&self.tools.userdel);
        cmd.arg("-r").arg(user);
        match run_retrying_lock(&mut cmd, &format!("removing user {user}")) {
            Ok(_) => Ok(()),
            // 6: no such user (gone meanwhile); 12: could not remove the
            // home directory (the caller removes it).
            Err(_) if matches!(lookup_user(user), Ok(None)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

pub(super) fn lookup_user(user: &str) -> Result<Option<Account>> {
    let found = nix::unistd::User::from_name(user)
        .map_err(|e| failed(format!("looking up user {user}: {e}")))?;
    Ok(found.map(|u| Account {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    }))
}
