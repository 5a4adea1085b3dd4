//! Ending every process of a unit, for a release or a removal.
//!
//! The design decision: two sources, re-read until both are empty. A
//! process of the unit's user may run outside the unit's cgroups (cron,
//! `su`, anything not born of the unit's dropbear), and one in the cgroups
//! may run as another uid (a setuid program), so [`Inner::kill_all`] sends
//! SIGKILL to the union of the cgroups' members and the processes with the
//! user's uid, and repeats until none is alive (or fails after 10 s).

use super::{Backend, Inner, Result, failed};
use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

impl Inner {
    /// Kills every process of the user and every process in the unit's
    /// cgroups, until none is left.
    pub(super) fn kill_all(&self, user: &str, uid: Option<u32>) -> Result<()> {
        let me = std::process::id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Backend::Systemd(systemd) = &self.backend {
            systemd.kill_slice(&self.config.cgroup_name, user);
        }
        loop {
            let mut pids = self.confined_pids(user);
            if let Some(uid) = uid {
                pids.extend(processes_of(uid));
            }
            pids.retain(|&pid| pid > 1 && pid != me);
            let live: Vec<i32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
            if live.is_empty() {
                if !pids.is_empty() {
                    self.await_reaping(user, &pids);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "unit {user}: processes {pids:?} survive SIGKILL after 10 s"
                )));
            }
            for &pid in &live {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Killed processes stay zombies until their parent (often init) reaps
    /// them: give it a moment, so that none of the user's is listed when the
    /// step returns, but do not fail for it.
    fn await_reaping(&self, user: &str, zombies: &BTreeSet<i32>) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let left: Vec<i32> = zombies
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    user,
                    ?left,
                    "killed processes of the unit are not reaped yet"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether the process exists and is not a zombie.
pub(super) fn process_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The live processes whose real, effective, saved or file-system uid is
/// `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    let mut buf = String::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        buf.clear();
        let Ok(mut file) = fs::File::open(entry.path().join("status")) else {
            continue;
        };
        if file.read_to_string(&mut buf).is_err() {
            continue;
        }
        let owned = buf
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().any(|id| id.parse() == Ok(uid)));
        if owned {
            pids.push(pid);
        }
    }
    pids
}

pub(super) fn signal(pid: i32, sig: nix::sys::signal::Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_state_is_read_past_the_command_name() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
