//! Giving a released unit back as new: its home from `/etc/skel`, its
//! `/opt/<user>` and `/mnt/<user>` empty, and nothing of its user left in
//! the shared temporary directories or the cron spool.
//!
//! The design decision: the shared directories (`/tmp`, `/var/tmp`,
//! `/dev/shm`) are searched only where the user could have written (its own
//! entries, and directories writable by all or by its group), since a busy
//! `/tmp` may hold millions of files.

use super::accounts::Account;
use super::files::{chown, ensure_owned_dir, mkdir, remove_tree};
use super::{Inner, Result, io_failed};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const SKEL: &str = "/etc/skel";

impl Inner {
    /// A released unit's directories, as new.
    pub(super) fn wipe(&self, user: &str, account: &Account) -> Result<()> {
        clear_dir(&account.home)?;
        ensure_owned_dir(&account.home, account, 0o700)?;
        copy_skel(Path::new(SKEL), &account.home, account)?;
        for dir in self.extra_dirs(user) {
            clear_dir(&dir)?;
            ensure_owned_dir(&dir, account, 0o700)?;
        }
        self.wipe_shared(account)?;
        let _ = fs::remove_file(Path::new("/var/spool/cron/crontabs").join(user));
        Ok(())
    }

    /// What the user left in the shared temporary directories.
    pub(super) fn wipe_shared(&self, account: &Account) -> Result<()> {
        for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
            remove_owned(Path::new(dir), account, 0)?;
        }
        Ok(())
    }
}

/// Removes what is in a directory, keeping it.
fn clear_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_failed(format!("reading {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_failed(format!("reading {}", dir.display()), e))?;
        remove_tree(&entry.path())?;
    }
    Ok(())
}

/// Copies the skeleton into a fresh home, owned by the account.
fn copy_skel(from: &Path, to: &Path, account: &Account) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let source = entry.path();
        let target = to.join(entry.file_name());
        let Ok(meta) = fs::symlink_metadata(&source) else {
            continue;
        };
        if meta.is_dir() {
            mkdir(&target, Some(meta.permissions().mode() & 0o7777))?;
            chown(&target, account)?;
            copy_skel(&source, &target, account)?;
        } else if meta.is_file() {
            fs::copy(&source, &target)
                .map_err(|e| io_failed(format!("copying {}", source.display()), e))?;
            chown(&target, account)?;
        }
    }
    Ok(())
}

/// Removes everything under `dir` owned by the account (not following
/// symlinks). The user can only have made entries in directories it may
/// write to: its own (removed whole) and those writable by all (or by its
/// group), so only these are searched; a shared `/tmp` may hold millions of
/// files.
fn remove_owned(dir: &Path, account: &Account, depth: u32) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.mode();
        let writable = mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() == account.gid);
        if meta.uid() == account.uid {
            remove_tree(&path)?;
        } else if meta.is_dir() && writable {
            remove_owned(&path, account, depth + 1)?;
        }
    }
    Ok(())
}
