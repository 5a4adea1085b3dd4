//! Unprivileged instances: each runs in its own user namespace, with its
//! own range of [`RANGE`] host ids, so root inside is an unprivileged id
//! outside that no other instance and no host account has.
//!
//! Files stay where and as they are on disk (an image's files owned by 0,
//! shared by hard links between instances): the instance sees them through
//! idmapped mounts, which show on-disk id `n` as host id `base + n`. Its
//! root is an overlay over idmapped layers, mounted with the instance
//! root's credentials ([`as_instance_root`]); its persistent storage is
//! bound in through an idmapped clone of its mount.
//!
//! Ranges are claimed machine-wide (under [`CLAIMS`]), so that several
//! agents on one machine never give two instances the same ids; a claim
//! whose instance directory is gone is free again.

use super::{blocking, fail, io_fail};
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera_agent_api::AgentError;

/// How many ids an instance has: a whole 16-bit range, as a distribution's
/// accounts (`nobody` is 65534) expect.
pub(super) const RANGE: u32 = 65536;
/// The first host id given to instances. Far above the ids of host accounts
/// and of the usual `/etc/subuid` ranges (100000 and up).
const FIRST: u32 = 1 << 30;
/// How many ranges fit below `u32::MAX`.
const SLOTS: u32 = (u32::MAX - FIRST) / RANGE;
/// Where ranges are claimed, one file per range naming its instance's
/// directory.
const CLAIMS: &str = "/var/lib/tessera/idmaps";

/// An instance's host ids: `base` is root inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct IdRange {
    pub base: u32,
}

impl IdRange {
    fn map_line(&self) -> String {
        format!("0 {} {RANGE}\n", self.base)
    }
}

fn claims_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("TESSERA_IDMAP_CLAIMS").unwrap_or_else(|| CLAIMS.into()))
}

/// Claims a free range for the instance whose directory is `owner` (or
/// answers the one it has).
pub(super) async fn claim(owner: PathBuf) -> Result<IdRange, AgentError> {
    blocking(move || {
        let dir = claims_dir();
        fs::create_dir_all(&dir).map_err(|e| io_fail("creating", &dir, e))?;
        let _lock = lock(&dir)?;
        let want = owner.to_string_lossy().into_owned();
        // The slots held by instances that still exist; a claim whose
        // instance directory is gone is free.
        let mut held = std::collections::BTreeSet::new();
        let entries = fs::read_dir(&dir).map_err(|e| io_fail("listing", &dir, e))?;
        for entry in entries.flatten() {
            let Some(slot) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(owner) = fs::read_to_string(entry.path()) else {
                continue;
            };
            if owner == want {
                return Ok(range(slot));
            }
            if Path::new(&owner).is_dir() {
                held.insert(slot);
            }
        }
        let slot = (0..SLOTS)
            .find(|s| !held.contains(s))
            .ok_or_else(|| fail("no free id range left for an instance"))?;
        let path = dir.join(slot.to_string());
        let tmp = dir.join(format!(".{slot}.tmp"));
        let mut f = fs::File::create(&tmp).map_err(|e| io_fail("writing", &tmp, e))?;
        f.write_all(want.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_fail("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_fail("writing", &path, e))?;
        Ok(range(slot))
    })
    .await
}

/// Gives a range back (if `owner` still holds it).
pub(super) async fn release(range: IdRange, owner: PathBuf) -> Result<(), AgentError> {
    blocking(move || {
        let dir = claims_dir();
        let _lock = lock(&dir)?;
        let path = dir.join(((range.base - FIRST) / RANGE).to_string());
        if fs::read_to_string(&path).is_ok_and(|held| Path::new(&held) == owner) {
            fs::remove_file(&path).map_err(|e| io_fail("removing", &path, e))?;
        }
        Ok(())
    })
    .await
}

fn range(slot: u32) -> IdRange {
    IdRange {
        base: FIRST + slot * RANGE,
    }
}

fn lock(dir: &Path) -> Result<Flock<fs::File>, AgentError> {
    let path = dir.join(".lock");
    let file = fs::File::create(&path).map_err(|e| io_fail("opening", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| fail(format!("locking {}: {e}", path.display())))
}

/// A user namespace with a range's mapping, held by a sleeping process
/// while idmapped mounts are made from it (a mount keeps the mapping, not
/// the namespace).
pub(super) struct Userns {
    child: Child,
    fd: OwnedFd,
}

impl Userns {
    pub fn new(range: IdRange) -> Result<Userns, AgentError> {
        let ours = fs::read_link("/proc/self/ns/user")
            .map_err(|e| fail(format!("reading our user namespace: {e}")))?;
        let mut child = Command::new("unshare")
            .args(["--user", "--", "sleep", "3600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(format!("starting `unshare --user` (util-linux): {e}")))?;
        let result = (|| {
            let ns = format!("/proc/{}/ns/user", child.id());
            // `unshare` makes the namespace before it runs `sleep`.
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::read_link(&ns).map_or(true, |l| l == ours) {
                if Instant::now() > deadline {
                    return Err(fail("`unshare --user` made no user namespace in 5 s"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            for map in ["uid_map", "gid_map"] {
                let path = PathBuf::from(format!("/proc/{}/{map}", child.id()));
                fs::write(&path, range.map_line()).map_err(|e| io_fail("writing", &path, e))?;
            }
            let fd: OwnedFd = fs::File::open(&ns)
                .map_err(|e| io_fail("opening", Path::new(&ns), e))?
                .into();
            Ok(fd)
        })();
        match result {
            Ok(fd) => Ok(Userns { child, fd }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Mounts `source` again at `target`, showing on-disk id `n` as the
    /// range's `base + n`.
    pub fn bind(&self, source: &Path, target: &Path) -> Result<(), AgentError> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
        let what = |e: &dyn std::fmt::Display| {
            fail(format!(
                "idmapped mount of {} at {}: {e}",
                source.display(),
                target.display()
            ))
        };
        let tree = open_tree(
            rustix::fs::CWD,
            source,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| what(&e))?;
        composefs_ioctls::mount::mount_setattr_idmap(&tree, &self.fd).map_err(|e| what(&e))?;
        move_mount(
            &tree,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| what(&e))
    }
}

impl Drop for Userns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on a thread of its own whose file-system ids are the range's
/// root (with root's file capabilities kept): what it creates belongs to
/// the instance's root, and it may create through the instance's idmapped
/// mounts, where the host's root has no id. The thread ends with `f`.
pub(super) fn as_instance_root<T: Send + 'static>(
    range: IdRange,
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    std::thread::spawn(move || {
        nix::unistd::setfsgid(Gid::from_raw(range.base));
        nix::unistd::setfsuid(Uid::from_raw(range.base));
        // Changing the fs uid from 0 drops the file capabilities from the
        // effective set of this thread; take them back from the permitted.
        let mut caps = rustix::thread::capabilities(None)
            .map_err(|e| fail(format!("reading capabilities: {e}")))?;
        caps.effective = caps.permitted;
        rustix::thread::set_capabilities(None, caps)
            .map_err(|e| fail(format!("restoring file capabilities: {e}")))?;
        f()
    })
    .join()
    .map_err(|_| fail("a task as the instance's root panicked"))?
}

/// The command line prefix that runs a program as the range's root with
/// the file capabilities (`setpriv`, util-linux).
pub(super) fn setpriv_args(range: IdRange) -> Vec<String> {
    const CAPS: &str = "+chown,+dac_override,+dac_read_search,+fowner,+fsetid";
    vec![
        format!("--reuid={}", range.base),
        format!("--regid={}", range.base),
        "--clear-groups".to_string(),
        format!("--inh-caps={CAPS}"),
        format!("--ambient-caps={CAPS}"),
        "--".to_string(),
    ]
}

/// Whether this host can run unprivileged instances with their files in
/// `state_dir`: user namespaces, idmapped mounts on its file system, and an
/// overlay over idmapped layers. `Err` says what is missing.
pub(super) fn probe(state_dir: &Path) -> Result<(), String> {
    let dir = state_dir.join("idmap-probe");
    let _ = super::unmount_all(&dir.join("merged"));
    for d in ["lower", "ilower", "rw", "irw", "merged"] {
        let _ = super::unmount_all(&dir.join(d));
    }
    let _ = fs::remove_dir_all(&dir);
    let result = probe_in(&dir);
    for d in ["merged", "ilower", "irw"] {
        let _ = super::unmount_all(&dir.join(d));
    }
    let _ = fs::remove_dir_all(&dir);
    result
}

fn probe_in(dir: &Path) -> Result<(), String> {
    let range = IdRange { base: FIRST };
    for d in ["lower", "ilower", "rw/upper", "rw/work", "irw", "merged"] {
        fs::create_dir_all(dir.join(d)).map_err(|e| format!("creating the probe: {e}"))?;
    }
    fs::write(dir.join("lower/file"), b"x").map_err(|e| format!("creating the probe: {e}"))?;
    let ns = Userns::new(range).map_err(|e| format!("no user namespaces: {e}"))?;
    ns.bind(&dir.join("lower"), &dir.join("ilower"))
        .map_err(|e| format!("no idmapped mounts on this file system: {e}"))?;
    ns.bind(&dir.join("rw"), &dir.join("irw"))
        .map_err(|e| format!("no idmapped mounts on this file system: {e}"))?;
    let uid = fs::metadata(dir.join("ilower/file"))
        .map_err(|e| format!("reading the probe: {e}"))?
        .uid();
    if uid != range.base {
        return Err(format!(
            "an idmapped mount showed id 0 as {uid}, not {}",
            range.base
        ));
    }
    let merged = dir.join("merged");
    mount_overlay(
        range,
        &merged,
        &dir.join("ilower"),
        &dir.join("irw/upper"),
        &dir.join("irw/work"),
    )
    .map_err(|e| format!("no overlay over idmapped layers: {e}"))?;
    as_instance_root(range, move || {
        fs::write(merged.join("written"), b"x").map_err(|e| io_fail("writing", &merged, e))
    })
    .map_err(|e| format!("an overlay over idmapped layers is not writable: {e}"))?;
    let written = fs::metadata(dir.join("rw/upper/written"))
        .map_err(|e| format!("reading the probe: {e}"))?
        .uid();
    if written != 0 {
        return Err(format!(
            "a file the instance's root wrote is owned by {written} on disk, not 0"
        ));
    }
    Ok(())
}

/// Mounts an overlay at `target` with the range root's credentials, so
/// that the overlay can write through idmapped layers (mounted by the
/// host's root, it would come up read-only).
pub(super) fn mount_overlay(
    range: IdRange,
    target: &Path,
    lower: &Path,
    upper: &Path,
    work: &Path,
) -> Result<(), AgentError> {
    let paths = [target, lower, upper, work].map(Path::to_path_buf);
    as_instance_root(range, move || {
        let [target, lower, upper, work] = paths;
        super::mount_overlay(&target, &lower, &upper, &work)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_whole_and_apart() {
        let a = range(0);
        let b = range(1);
        assert_eq!(a.base, 1 << 30);
        assert_eq!(b.base - a.base, RANGE);
        assert_eq!(a.map_line(), format!("0 {} 65536\n", 1u32 << 30));
        let last = range(SLOTS - 1);
        assert!(u64::from(last.base) + u64::from(RANGE) <= u64::from(u32::MAX));
    }
}
