//! Persistent storage of the container driver: one ext4 file system per
//! instance, in a sparse file `containers/<id>/storage.img` formatted on
//! first use and loop-mounted at `containers/<id>/storage` while the
//! instance runs. Each of the instance's mount paths is a directory of it,
//! `paths/<name>`, bind-mounted into the instance at that path.
//!
//! The design decision: a path's directory name is the path without its
//! leading `/`, with `%` and `/` percent-encoded (`/var/data` is
//! `var%2Fdata`, `/var-data` is `var-data`): no two paths share one, and it
//! reads back. A path whose name would be longer than a file name may be is
//! named `%h` and the SHA-256 of the path instead, which no encoded name
//! can be (they have `%` only before `25` or `2F`). The file system's size is the limit (ext4 with no blocks
//! reserved for root), so writing past it fails with ENOSPC inside the
//! instance. It is unmounted (its loop device released) when the instance
//! stops and goes with the instance's directory when it is deleted. A
//! larger size grows it when it is next mounted (offline: `e2fsck` and
//! `resize2fs` on the file, as growing a mounted ext4 needs
//! CAP_SYS_RESOURCE, which an agent in a container may lack); a smaller one
//! is ignored (data might not fit).

use super::bundle::Bind;
use super::{blocking, fail, io_fail, is_mounted, run};
use crate::drivers::instances::check_storage;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use tessera_agent_api::{AgentError, InstanceStorage};

pub(super) const GIB: u64 = 1 << 30;
/// The longest name a directory may have (ext4's `NAME_MAX`).
const NAME_MAX: usize = 255;

/// The storage's file (under the instance's directory `dir`).
pub(super) fn image(dir: &Path) -> PathBuf {
    dir.join("storage.img")
}

/// Where the storage is mounted on the host while the instance runs.
pub(super) fn mount_point(dir: &Path) -> PathBuf {
    dir.join("storage")
}

/// Checks a storage request (see [`check_storage`]); answers each mount
/// path with the name of its directory in the file system.
pub(super) fn validate(storage: &InstanceStorage) -> Result<Vec<(String, String)>, AgentError> {
    check_storage(storage)?;
    Ok(storage
        .mount_paths
        .iter()
        .map(|path| (path.clone(), dir_name(path)))
        .collect())
}

/// The directory of a (valid) mount path in the storage: the path without
/// its leading `/`, `%` and `/` percent-encoded (decoding it gives the path
/// back), or `%h` and the path's SHA-256 when that would be too long.
pub(super) fn dir_name(path: &str) -> String {
    let mut name = String::with_capacity(path.len());
    for c in path.trim_start_matches('/').chars() {
        match c {
            '%' => name.push_str("%25"),
            '/' => name.push_str("%2F"),
            c => name.push(c),
        }
    }
    if name.len() > NAME_MAX {
        use sha2::Digest;
        return format!("%h{}", hex::encode(sha2::Sha256::digest(path.as_bytes())));
    }
    name
}

/// Makes the instance's storage (formatting it when new), mounts it on the
/// host, grows it to `size_gb` when larger, and makes a directory per
/// mount path; answers what to bind into the instance.
pub(super) async fn mount(
    dir: &Path,
    id: &str,
    storage: &InstanceStorage,
) -> Result<Vec<Bind>, AgentError> {
    let paths = validate(storage)?;
    let mount_point = mount_point(dir);
    let wanted = storage.size_gb.saturating_mul(GIB);
    ensure_fs(&image(dir), &mount_point, wanted, "loop,nosuid,nodev")
        .await
        .map_err(|e| fail(format!("the persistent storage of {id}: {e}")))?;
    let root = mount_point.join("paths");
    let mut binds = Vec::new();
    for (path, name) in paths {
        let source = root.join(&name);
        let source2 = source.clone();
        let fresh = blocking(move || {
            let fresh = fs::symlink_metadata(&source2).is_err();
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&source2)
                .map_err(|e| io_fail("creating", &source2, e))?;
            // A directory, not a symlink someone left in its place.
            let meta =
                fs::symlink_metadata(&source2).map_err(|e| io_fail("reading", &source2, e))?;
            if !meta.is_dir() {
                return Err(fail(format!("{} is not a directory", source2.display())));
            }
            Ok(fresh)
        })
        .await?;
        binds.push(Bind {
            source,
            destination: path,
            fresh,
            readonly: false,
        });
    }
    Ok(binds)
}

/// Makes sure the ext4 file system in the file `image` is mounted at
/// `mount_point` with `options`: made (sparse, `bytes`) when new, grown to
/// `bytes` when smaller and not mounted (a mounted one grows at its next
/// mount; none ever shrinks, data might not fit).
pub(super) async fn ensure_fs(
    image: &Path,
    mount_point: &Path,
    bytes: u64,
    options: &str,
) -> Result<(), AgentError> {
    if !image.exists() {
        format(image, bytes).await?;
    }
    let mounted = is_mounted(mount_point);
    let had = fs::metadata(image)
        .map_err(|e| io_fail("reading", image, e))?
        .len();
    if had < bytes && mounted {
        tracing::warn!(image = %image.display(), gb = bytes / GIB, "a mounted file system grows when next mounted");
    } else if had < bytes {
        grow(image, had, bytes).await?;
        tracing::info!(image = %image.display(), gb = bytes / GIB, "file system grown");
    } else if had > bytes {
        tracing::warn!(image = %image.display(), gb = bytes / GIB, had_gb = had / GIB, "a file system cannot shrink; keeping its size");
    }
    if !mounted {
        check_loop_devices()?;
        fs::create_dir_all(mount_point).map_err(|e| io_fail("creating", mount_point, e))?;
        run(
            "mount",
            &[
                "-t".as_ref(),
                "ext4".as_ref(),
                "-o".as_ref(),
                OsStr::new(&format!("loop,{options}")),
                image.as_os_str(),
                mount_point.as_os_str(),
            ],
        )
        .await
        .map_err(|e| fail(format!("mounting {}: {e}", image.display())))?;
    }
    Ok(())
}

/// A sparse file of `bytes`, formatted ext4 with no blocks reserved for
/// root; made aside and renamed into place, so a crash leaves no half of
/// one.
async fn format(image: &Path, bytes: u64) -> Result<(), AgentError> {
    let mkfs = find_tool("mkfs.ext4").ok_or_else(|| {
        fail("persistent storage needs mkfs.ext4, which is not installed (the Debian package e2fsprogs)")
    })?;
    let partial = image.with_extension("img.partial");
    let partial2 = partial.clone();
    blocking(move || {
        let f = fs::File::create(&partial2).map_err(|e| io_fail("creating", &partial2, e))?;
        f.set_len(bytes)
            .map_err(|e| io_fail("sizing", &partial2, e))
    })
    .await?;
    let mkfs = mkfs.to_string_lossy().into_owned();
    run(
        &mkfs,
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-E".as_ref(),
            "root_owner=0:0".as_ref(),
            "-L".as_ref(),
            "tessera".as_ref(),
            partial.as_os_str(),
        ],
    )
    .await?;
    fs::rename(&partial, image).map_err(|e| io_fail("renaming", &partial, e))
}

/// Grows an unmounted storage from `had` to `bytes`: its file, then its
/// file system (checked first, as `resize2fs` wants). A failure puts the
/// file back to its size, so the next start tries again.
async fn grow(image: &Path, had: u64, bytes: u64) -> Result<(), AgentError> {
    let set_len = |bytes: u64| {
        let image = image.to_path_buf();
        blocking(move || {
            fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .and_then(|f| f.set_len(bytes))
                .map_err(|e| io_fail("sizing", &image, e))
        })
    };
    set_len(bytes).await?;
    let resized = async {
        let e2fsck = find_tool("e2fsck")
            .ok_or_else(|| fail("growing persistent storage needs e2fsck (e2fsprogs)"))?;
        let resize2fs = find_tool("resize2fs")
            .ok_or_else(|| fail("growing persistent storage needs resize2fs (e2fsprogs)"))?;
        // 0: clean; 1: errors fixed. Anything else needs a person.
        let checked = tokio::process::Command::new(&e2fsck)
            .args(["-f", "-p"])
            .arg(image)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| fail(format!("running e2fsck: {e}")))?;
        if !matches!(checked.status.code(), Some(0 | 1)) {
            return Err(fail(format!(
                "e2fsck {} failed ({}): {}",
                image.display(),
                checked.status,
                String::from_utf8_lossy(&checked.stdout).trim()
            )));
        }
        run(&resize2fs.to_string_lossy(), &[image.as_os_str()]).await
    }
    .await;
    if let Err(e) = resized {
        if let Err(undo) = set_len(had).await {
            tracing::warn!(error = %undo, "putting the storage's file back to its size");
        }
        return Err(e);
    }
    Ok(())
}

/// Unmounts the storage (which releases its loop device); not mounted is
/// fine.
pub(super) async fn unmount(dir: &Path) -> Result<(), AgentError> {
    let mount_point = mount_point(dir);
    blocking(move || super::unmount_all(&mount_point)).await
}

/// What the storage holds, while it is mounted: the file system's used
/// blocks (never the host disk's: an unmounted mount point answers `None`).
pub(super) fn used_bytes(dir: &Path) -> Option<u64> {
    let mount_point = mount_point(dir);
    let opened = fs::File::open(&mount_point).ok()?;
    let here = opened.metadata().ok()?.dev();
    let parent = fs::metadata(dir).ok()?.dev();
    if here == parent {
        return None;
    }
    let stat = rustix::fs::fstatvfs(&opened).ok()?;
    Some(
        stat.f_blocks
            .saturating_sub(stat.f_bfree)
            .saturating_mul(stat.f_frsize),
    )
}

/// Loop devices are what the storage is mounted through.
fn check_loop_devices() -> Result<(), AgentError> {
    if Path::new("/dev/loop-control").exists() {
        return Ok(());
    }
    Err(fail(
        "persistent storage needs loop devices, and this host has none (/dev/loop-control is \
         missing: load the `loop` kernel module, or give the agent's container the loop devices)",
    ))
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_names_never_collide() {
        let paths = [
            "/var/data",
            "/var-data",
            "/var%2Fdata",
            "/var%data",
            "/var%25data",
            "/a/b/c",
            "/a/b%2Fc",
            "/a%2Fb/c",
            "/a b",
        ];
        let names: std::collections::HashSet<String> = paths.iter().map(|p| dir_name(p)).collect();
        assert_eq!(names.len(), paths.len(), "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| !n.contains('/') && n != "." && n != "..")
        );
        let storage = InstanceStorage {
            size_gb: 1,
            mount_paths: vec!["/var/data".into(), "/var-data".into(), "/srv".into()],
        };
        let named: Vec<String> = validate(&storage)
            .expect("fine paths")
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        assert_eq!(named, vec!["var%2Fdata", "var-data", "srv"]);
        // Too long to encode: hashed, apart from every encoded name.
        let long = format!("/{}a", "a/".repeat(100));
        let longer = format!("/{}b", "a/".repeat(100));
        let (a, b) = (dir_name(&long), dir_name(&longer));
        assert!(a.starts_with("%h") && a.len() <= NAME_MAX, "{a}");
        assert_ne!(a, b);
        assert!(!names.contains(&a));
    }
}
