//! What instances' disks promise of the host's disk.
//!
//! An instance's root disk, its persistent storage and its volumes are
//! sparse files: made at their full size, they take the host's blocks only
//! as they are written. Each is a promise of the rest of its size, and
//! together they could promise more than the host has, so that one tenant
//! filling its own disk fills the host's (its database's, every other
//! instance's). So a disk is made or grown only while what the host's disk
//! has free covers what every disk on it may still write, this one's
//! growth included: `free * overcommit >= promised + growth` (`overcommit`
//! is 1 for an agent unless the operator says otherwise, `--disk-overcommit`;
//! 4 for `tessera up`'s single machine), and no one disk grows by more than
//! is free, whatever the overcommit.

use super::fail;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tessera_agent_api::AgentError;

/// GB as the API counts them (2^30 bytes).
const GB: f64 = (1u64 << 30) as f64;

/// What the disks under `state_dir` may still write: each file's size
/// less the blocks it holds (instances' root disks and storage, volumes,
/// and the half-made ones of each).
pub(super) fn promised_bytes(state_dir: &Path) -> u64 {
    let containers = fs::read_dir(state_dir.join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|entry| {
            let root = entry.path().join("rw.img");
            let storage = super::storage::image(&entry.path());
            // Each as its partial too, while it is being made.
            [root, storage]
                .map(|f| [f.with_extension("img.partial"), f])
                .into_iter()
                .flatten()
        });
    let volumes = fs::read_dir(super::volume::dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path());
    containers
        .chain(volumes)
        .filter_map(|path| fs::symlink_metadata(path).ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len().saturating_sub(meta.blocks().saturating_mul(512)))
        .sum()
}

/// `Err` unless the host's disk can take `growth` more bytes of disks on
/// top of what those under `state_dir` already promise.
pub(super) fn check_room(
    state_dir: &Path,
    growth: u64,
    overcommit: f64,
    what: &str,
) -> Result<(), AgentError> {
    // `unlimited`: the operator's choice to promise anything.
    if growth == 0 || overcommit.is_infinite() {
        return Ok(());
    }
    let stat = nix::sys::statvfs::statvfs(state_dir).map_err(|e| {
        fail(format!(
            "reading the free space of {}: {e}",
            state_dir.display()
        ))
    })?;
    let free = stat.blocks_available().saturating_mul(stat.fragment_size());
    let promised = promised_bytes(state_dir);
    // No one disk may be larger than what is free, whatever the
    // overcommit: one tenant alone never fills the host's disk.
    let room = free as f64 * overcommit.max(0.0);
    if growth <= free && promised as f64 + growth as f64 <= room {
        return Ok(());
    }
    Err(fail(format!(
        "{what} needs {:.1} GB of this host's disk, which has {:.1} GB free and {:.1} GB \
         promised to its instances' disks and volumes already (an operator may promise more \
         than is free with the agent's --disk-overcommit)",
        growth as f64 / GB,
        free as f64 / GB,
        promised as f64 / GB,
    )))
}

/// How much a file grows to reach `bytes`: all of it when it is not there.
pub(super) fn growth(path: &Path, bytes: u64) -> u64 {
    let had = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    bytes.saturating_sub(had)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_promise_what_they_may_still_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        assert_eq!(promised_bytes(state), 0);
        let instance = state.join("containers/i-1");
        fs::create_dir_all(&instance).expect("dir");
        fs::create_dir_all(super::super::volume::dir(state)).expect("dir");
        let gib = 1u64 << 30;
        fs::File::create(instance.join("rw.img"))
            .and_then(|f| f.set_len(10 * gib))
            .expect("sparse");
        fs::File::create(super::super::volume::dir(state).join("v-1.img"))
            .and_then(|f| f.set_len(5 * gib))
            .expect("sparse");
        // A file written in full promises nothing more.
        fs::write(instance.join("storage.img"), vec![1u8; 1 << 20]).expect("written");
        let promised = promised_bytes(state);
        assert!(
            (15 * gib - (1 << 20)..=15 * gib).contains(&promised),
            "{promised}"
        );
        // Nothing fits past the free space; with overcommit it may.
        let free = {
            let s = nix::sys::statvfs::statvfs(state).expect("statvfs");
            s.blocks_available() * s.fragment_size()
        };
        let refused = check_room(state, free, 1.0, "a disk").expect_err("more than is free");
        assert!(
            refused.to_string().contains("--disk-overcommit"),
            "{refused}"
        );
        assert!(check_room(state, gib, 1000.0, "a disk").is_ok());
        // One disk larger than what is free, whatever the overcommit.
        assert!(check_room(state, free + gib, 1000.0, "a disk").is_err());
        assert!(check_room(state, 0, 0.0, "nothing").is_ok());
        assert!(check_room(state, free * 10, f64::INFINITY, "unlimited").is_ok());
        assert_eq!(growth(&instance.join("rw.img"), 12 * gib), 2 * gib);
        assert_eq!(growth(&instance.join("none.img"), gib), gib);
    }
}
