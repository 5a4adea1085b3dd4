//! File helpers of the unit driver: none follows a symlink.
//!
//! A unit's user owns its home and can plant symlinks anywhere in it, while
//! the driver works as root: every helper here acts on the link itself
//! (`lchown`, `symlink_metadata`, `remove_file`), never on what it points
//! to. State files are written atomically (a temporary file, then a rename).

use super::accounts::Account;
use super::{Result, io_failed};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writes a file through a temporary one and a rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_failed(format!("creating {}", tmp.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_failed(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| io_failed(format!("renaming to {}", path.display()), e))
}

pub(super) fn mkdir(path: &Path, mode: Option<u32>) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_failed(format!("creating {}", path.display()), e)),
    }
    if let Some(mode) = mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_failed(format!("chmod {mode:o} {}", path.display()), e))
}

pub(super) fn chown(path: &Path, account: &Account) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
        .map_err(|e| io_failed(format!("chown {}", path.display()), e))
}

/// A real directory (not a symlink) owned by the account, with `mode`.
pub(super) fn ensure_owned_dir(path: &Path, account: &Account, mode: u32) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.is_dir()
    {
        fs::remove_file(path).map_err(|e| io_failed(format!("removing {}", path.display()), e))?;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| io_failed(format!("creating {}", parent.display()), e))?;
    }
    mkdir(path, None)?;
    let meta = fs::symlink_metadata(path)
        .map_err(|e| io_failed(format!("reading {}", path.display()), e))?;
    if meta.uid() != account.uid || meta.gid() != account.gid {
        chown(path, account)?;
    }
    if meta.permissions().mode() & 0o7777 != mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

/// Removes a file, symlink or directory tree (never following symlinks);
/// absent is fine.
pub(super) fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_failed(format!("reading {}", path.display()), e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_failed(format!("removing {}", path.display()), e)),
    }
}
