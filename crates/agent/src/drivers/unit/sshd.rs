//! A unit's SSH endpoint: a `dropbear` of its own on the unit's first
//! port, admitting only the unit's user, by key.
//!
//! The design decision: dropbear is started inside the unit's cgroups and
//! outside the agent's session, so every SSH session is born pinned to the
//! unit's CPUs and survives an agent restart. With cgroupfs, a `setsid`
//! shell writes its own pid into the unit's `cgroup.procs` files, then
//! `exec`s dropbear; with systemd, dropbear is a transient service in the
//! unit's slice. The endpoint is ready when its port accepts a connection.

use super::accounts::lookup_user;
use super::files::set_mode;
use super::processes::{process_alive, signal};
use super::systemd::{self, Systemd};
use super::tools::run;
use super::{Backend, Inner, Result, failed, io_failed};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera_agent_api::UnitSpec;

impl Inner {
    pub(super) fn ensure_host_key(&self, user: &str) -> Result<()> {
        let dir = self.unit_state_dir(user);
        fs::create_dir_all(&dir)
            .map_err(|e| io_failed(format!("creating {}", dir.display()), e))?;
        set_mode(&dir, 0o700)?;
        let key = self.host_key(user);
        if key.exists() {
            return Ok(());
        }
        let tmp = dir.join("host_key.tmp");
        let _ = fs::remove_file(&tmp);
        run(
            Command::new(&self.tools.dropbearkey)
                .arg("-t")
                .arg("ed25519")
                .arg("-f")
                .arg(&tmp),
            &format!("generating the SSH host key of {user}"),
        )?;
        fs::rename(&tmp, &key).map_err(|e| io_failed(format!("installing {}", key.display()), e))
    }

    /// The pid of the unit's running dropbear, if it runs.
    pub(super) fn dropbear_pid(&self, user: &str) -> Option<i32> {
        if let Backend::Systemd(systemd) = &self.backend {
            let service = systemd::ssh_service(&self.config.cgroup_name, user);
            let status = systemd.status(&service).ok()?;
            return status.main_pid.filter(|_| status.active == "active");
        }
        let text = fs::read_to_string(self.pid_file(user)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        if pid <= 1 || !process_alive(pid) {
            return None;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let key = self.host_key(user);
        let key = key.as_os_str().as_encoded_bytes();
        let ours = comm.trim() == "dropbear" && cmdline.split(|b| *b == 0).any(|arg| arg == key);
        ours.then_some(pid)
    }

    pub(super) fn ensure_dropbear(&self, unit: &UnitSpec, user: &str) -> Result<()> {
        if let Backend::Systemd(systemd) = &self.backend {
            return self.ensure_dropbear_service(systemd, unit, user);
        }
        if self.dropbear_pid(user).is_some() {
            return Ok(());
        }
        let port = unit.ports.start;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Err(failed(format!(
                "unit {} ({user}): cannot start its SSH endpoint: port {port} is already in use by another process",
                unit.compute_id
            )));
        }
        self.ensure_host_key(user)?;
        let pid_file = self.pid_file(user);
        let _ = fs::remove_file(&pid_file);
        let log_path = self.log_file(user);
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| io_failed(format!("opening {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| io_failed(format!("opening {}", log_path.display()), e))?;
        let Backend::Cgroupfs(cgroups) = &self.backend else {
            return Err(failed(
                "unit driver: cgroupfs start of dropbear under systemd",
            ));
        };
        let procs = cgroups.procs_files(&self.config.cgroup_name, user);
        // The shell writes its pid (dropbear's, after exec) to the pid file,
        // moves itself into the unit's cgroups and becomes dropbear: every
        // session dropbear forks is born in the unit's cgroups.
        const SCRIPT: &str = r#"echo $$ > "$TESSERA_PIDFILE" || exit 1
echo $$ > "$TESSERA_PROCS1" || exit 1
[ -z "$TESSERA_PROCS2" ] || echo $$ > "$TESSERA_PROCS2" || exit 1
exec "$@""#;
        let mut cmd = Command::new(&self.tools.setsid);
        cmd.arg("-f")
            .arg(&self.tools.sh)
            .arg("-c")
            .arg(SCRIPT)
            .arg("sh")
            .arg(&self.tools.dropbear)
            .args(["-F", "-E", "-s", "-w", "-m"])
            .arg("-G")
            .arg(user)
            .arg("-r")
            .arg(self.host_key(user))
            .arg("-P")
            .arg(&pid_file)
            .arg("-p")
            .arg(port.to_string())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("TESSERA_PIDFILE", &pid_file)
            .env("TESSERA_PROCS1", procs.first().cloned().unwrap_or_default())
            .env("TESSERA_PROCS2", procs.get(1).cloned().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let status = cmd
            .status()
            .map_err(|e| io_failed(format!("unit {user}: starting dropbear"), e))?;
        if !status.success() {
            return Err(failed(format!(
                "unit {user}: starting dropbear: setsid exited with {status}: {}",
                tail(&log_path)
            )));
        }
        let deadline = Instant::now() + self.config.ssh_ready_timeout;
        loop {
            let pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                if !process_alive(pid) {
                    return Err(failed(format!(
                        "unit {user}: dropbear exited at start: {}",
                        tail(&log_path)
                    )));
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                    && self.dropbear_pid(user).is_some()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "unit {user}: dropbear did not accept connections on port {port} within {:?}: {}",
                    self.config.ssh_ready_timeout,
                    tail(&log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    /// systemd: dropbear as a transient service in the unit's slice; no
    /// `setsid` shell, systemd makes it a session leader in the slice.
    fn ensure_dropbear_service(
        &self,
        systemd: &Systemd,
        unit: &UnitSpec,
        user: &str,
    ) -> Result<()> {
        let parent = &self.config.cgroup_name;
        let service = systemd::ssh_service(parent, user);
        let slice = systemd::unit_slice(parent, user);
        let port = unit.ports.start;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = self.log_file(user);
        if !systemd.status(&service)?.running() {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Err(failed(format!(
                    "unit {} ({user}): cannot start its SSH endpoint: port {port} is already in use by another process",
                    unit.compute_id
                )));
            }
            self.ensure_host_key(user)?;
            // After a reboot the slice is not started; `systemd-run` would
            // start it too, but with its file possibly missing.
            let account = lookup_user(user)?;
            self.confine(user, &unit.cpus, account.as_ref())?;
            let pid_file = self.pid_file(user);
            let _ = fs::remove_file(&pid_file);
            fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&log_path)
                .map_err(|e| io_failed(format!("opening {}", log_path.display()), e))?;
            let host_key = self.host_key(user);
            systemd.start_ssh(&systemd::SshService {
                service: &service,
                slice: &slice,
                user,
                dropbear: &self.tools.dropbear,
                host_key: &host_key,
                pid_file: &pid_file,
                log_file: &log_path,
                port,
            })?;
        }
        let deadline = Instant::now() + self.config.ssh_ready_timeout;
        let mut checked = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if checked.elapsed() > Duration::from_millis(50) {
                checked = Instant::now();
                if !systemd.status(&service)?.running() {
                    return Err(failed(format!(
                        "unit {user}: dropbear ({service}) exited at start: {}",
                        tail(&log_path)
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "unit {user}: dropbear ({service}) did not accept connections on port {port} within {:?}: {}",
                    self.config.ssh_ready_timeout,
                    tail(&log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    pub(super) fn stop_dropbear(&self, user: &str) -> Result<()> {
        if let Backend::Systemd(systemd) = &self.backend {
            // Stops the sessions in the service's cgroup too.
            systemd.stop_ssh(&self.config.cgroup_name, user)?;
            let _ = fs::remove_file(self.pid_file(user));
            return Ok(());
        }
        if let Some(pid) = self.dropbear_pid(user) {
            let _ = signal(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(1);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if process_alive(pid) {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = fs::remove_file(self.pid_file(user));
        Ok(())
    }
}

pub(super) fn validate_key(key: &str) -> Result<&str, &'static str> {
    let key = key.trim();
    if key.is_empty() {
        return Err("it is empty");
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("it is not a single line");
    }
    if !["ssh-", "ecdsa-", "sk-"].iter().any(|p| key.starts_with(p)) {
        return Err("it does not start with ssh-, ecdsa- or sk-");
    }
    Ok(key)
}

/// The end of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    let start = text.len().saturating_sub(1000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    if text.is_empty() {
        "(no output)".into()
    } else {
        text[start..].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_single_lines_of_known_types() {
        assert!(validate_key("ssh-ed25519 AAAA me@x\n").is_ok());
        assert!(validate_key("ecdsa-sha2-nistp256 AAAA").is_ok());
        assert!(validate_key("sk-ssh-ed25519@openssh.com AAAA").is_ok());
        assert!(validate_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
        assert!(validate_key("command=\"x\" ssh-ed25519 AAAA").is_err());
        assert!(validate_key("").is_err());
    }
}
