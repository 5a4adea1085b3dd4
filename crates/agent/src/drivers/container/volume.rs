//! Block volumes of the container driver: a sparse file per volume under
//! `<state dir>/volumes`, which an instance sees as a raw disk
//! (`/dev/vdb`, ...) through a loop device while it runs.
//!
//! Loop devices are made when an instance starts and released when it
//! stops, so a stopped instance holds none, and a volume can be detached,
//! moved or destroyed then. Growing a volume an instance uses is seen at
//! once (`losetup -c`).

use super::{blocking, fail, io_fail, validate_id};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tessera_agent_api::{AgentError, VolumeReport, VolumeSpec};

const GIB: u64 = 1 << 30;

/// A volume as a block device: the loop device and its numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LoopDevice {
    pub path: String,
    pub major: i64,
    pub minor: i64,
}

pub(super) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("volumes")
}

pub(super) fn file(state_dir: &Path, id: &str) -> PathBuf {
    dir(state_dir).join(format!("{id}.img"))
}

/// Makes a volume's file (a sparse copy of `clone_of` when new), or grows
/// it; never shrinks it.
pub(super) async fn ensure(
    state_dir: &Path,
    spec: &VolumeSpec,
) -> Result<VolumeReport, AgentError> {
    validate_id(&spec.id)?;
    if spec.size_gb == 0 {
        return Err(fail("a volume needs at least 1 GB"));
    }
    let path = file(state_dir, &spec.id);
    let wanted = spec.size_gb.saturating_mul(GIB);
    let had = fs::metadata(&path).ok().map(|m| m.len());
    match had {
        Some(size) if size > wanted => {
            return Err(fail(format!(
                "volume {} has {} GB; it cannot shrink to {}",
                spec.id,
                size / GIB,
                spec.size_gb
            )));
        }
        Some(size) if size == wanted => return Ok(VolumeReport { size_bytes: size }),
        Some(_) => {}
        None => {
            let parent = dir(state_dir);
            fs::create_dir_all(&parent).map_err(|e| io_fail("creating", &parent, e))?;
            // Tenants' disks: the host root's alone (no instance reaches
            // them but through its loop device).
            fs::set_permissions(&parent, fs::Permissions::from_mode(0o700))
                .map_err(|e| io_fail("protecting", &parent, e))?;
            // Made aside and renamed into place: a crash leaves no half copy.
            let partial = path.with_extension("partial");
            match &spec.clone_of {
                Some(source) => {
                    validate_id(source)?;
                    let from = file(state_dir, source);
                    if !from.exists() {
                        return Err(fail(format!(
                            "volume {source} to clone is not stored on this host"
                        )));
                    }
                    run(
                        "cp",
                        &[
                            "--sparse=always".as_ref(),
                            from.as_os_str(),
                            partial.as_os_str(),
                        ],
                    )
                    .await?;
                }
                None => {
                    fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&partial)
                        .map_err(|e| io_fail("creating", &partial, e))?;
                }
            }
            fs::rename(&partial, &path).map_err(|e| io_fail("renaming", &partial, e))?;
        }
    }
    let path2 = path.clone();
    blocking(move || {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&path2)
            .map_err(|e| io_fail("opening", &path2, e))?;
        let size = f
            .metadata()
            .map_err(|e| io_fail("reading", &path2, e))?
            .len();
        if size < wanted {
            f.set_len(wanted)
                .map_err(|e| io_fail("growing", &path2, e))?;
        }
        Ok(())
    })
    .await?;
    // An instance that has it running sees the new size now.
    for device in loops_of(&path).await? {
        run("losetup", &["-c".as_ref(), device.as_ref()]).await?;
    }
    tracing::info!(id = %spec.id, size_gb = spec.size_gb, "volume ready");
    Ok(VolumeReport { size_bytes: wanted })
}

/// Destroys a volume's file; gone already is success. A volume a running
/// instance uses is refused.
pub(super) async fn delete(state_dir: &Path, id: &str) -> Result<(), AgentError> {
    validate_id(id)?;
    let path = file(state_dir, id);
    if !loops_of(&path).await?.is_empty() {
        return Err(fail(format!(
            "volume {id} is in use by a running instance; stop it or detach the volume first"
        )));
    }
    match fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(%id, "volume destroyed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_fail("removing", &path, e)),
    }
}

/// The volume's loop device, made when there is none.
pub(super) async fn attach(state_dir: &Path, id: &str) -> Result<LoopDevice, AgentError> {
    validate_id(id)?;
    let path = file(state_dir, id);
    if !path.is_file() {
        return Err(fail(format!("volume {id} is not stored on this host")));
    }
    let device = match loops_of(&path).await?.into_iter().next() {
        Some(device) => device,
        None => run(
            "losetup",
            &["--find".as_ref(), "--show".as_ref(), path.as_os_str()],
        )
        .await?
        .trim()
        .to_string(),
    };
    let meta = fs::metadata(&device).map_err(|e| io_fail("reading", Path::new(&device), e))?;
    if !meta.file_type().is_block_device() {
        return Err(fail(format!("{device} is not a block device")));
    }
    let rdev = meta.rdev();
    Ok(LoopDevice {
        path: device,
        major: i64::try_from(nix::sys::stat::major(rdev)).unwrap_or(0),
        minor: i64::try_from(nix::sys::stat::minor(rdev)).unwrap_or(0),
    })
}

/// Releases every loop device over the volume's file.
pub(super) async fn detach(state_dir: &Path, id: &str) -> Result<(), AgentError> {
    validate_id(id)?;
    for device in loops_of(&file(state_dir, id)).await? {
        run("losetup", &["-d".as_ref(), device.as_ref()]).await?;
    }
    Ok(())
}

/// The loop devices over `path`.
async fn loops_of(path: &Path) -> Result<Vec<String>, AgentError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let out = run(
        "losetup",
        &[
            "-n".as_ref(),
            "-O".as_ref(),
            "NAME".as_ref(),
            "-j".as_ref(),
            path.as_os_str(),
        ],
    )
    .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

async fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, AgentError> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| fail(format!("running {program}: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "{program} {} failed: {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
