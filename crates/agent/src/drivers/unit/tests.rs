//! The unit driver on this very host: users, pinned cgroups and SSH
//! endpoints made, used over real `ssh`, released, adopted and removed.
//!
//! It runs as root with `dropbear`, `ssh` and `pgrep` installed and skips,
//! saying why, otherwise. Every user it makes has a per-run prefix, and the
//! test retires whatever the state file still lists, pass or fail.

use super::accounts::lookup_user;
use super::processes::{process_alive, signal};
use super::tools::{Tools, find_tool};
use super::*;
use std::process::Command;
use std::time::Instant;
use tessera_agent_api::HostSpec;
use tessera_core::ports::PortRange;
use tessera_core::{ComputeId, HostId};

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Why the driver cannot be exercised here, if it cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    if let Err(e) = Backend::detect(CgroupManager::Auto) {
        return Some(e.to_string());
    }
    if let Err(e) = Tools::find() {
        return Some(e.to_string());
    }
    for tool in ["ssh", "ssh-keygen", "pgrep"] {
        if find_tool(tool, "openssh-client").is_err() {
            return Some(format!("no `{tool}`"));
        }
    }
    None
}

fn unit(user: &str, cpus: &str, port: u16, generation: i64) -> UnitSpec {
    UnitSpec {
        compute_id: ComputeId::new(format!("test-{user}")),
        user: user.into(),
        cpus: CpuSet::parse_list(cpus).expect("cpus"),
        ports: PortRange {
            start: port,
            end: port + 124,
        },
        generation,
    }
}

fn host(units: Vec<UnitSpec>) -> HostSpec {
    HostSpec {
        id: HostId::new("test-host"),
        hostname: "test-host".into(),
        ip: "127.0.0.1".into(),
        cpus: online_cpus().expect("online cpus"),
        numa_nodes: vec![],
        units,
        memory_mb: None,
    }
}

fn ssh(key: &Path, port: u16, user: &str, command: &str) -> std::process::Output {
    crate::testkit::ssh_command(key, user, "127.0.0.1", port, command)
        .output()
        .expect("run ssh")
}

fn pgrep(user: &str) -> String {
    let out = Command::new("pgrep")
        .args(["-a", "-u", user])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_on_this_host() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let state = tempfile::tempdir().expect("tempdir");
    let mut config = UnitConfig::new(state.path().to_owned());
    config.user_prefix = format!("tt{}-", std::process::id());
    let outcome = tokio::spawn(scenario(config.clone())).await;
    // Whatever happened, leave nothing behind: retire what the state
    // file still lists.
    let driver = UnitDriver::new(config).expect("driver");
    driver.retire(&host(vec![])).await.expect("cleanup retire");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(config: UnitConfig) {
    let online = online_cpus().expect("online");
    let cpus: Vec<u32> = online.iter().collect();
    let (cpu_a, cpu_b) = (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]));
    let pid = std::process::id();
    let prefix = config.user_prefix.clone();
    let port_a = 42000 + (pid % 2000) as u16 * 4;
    let port_b = port_a + 2;
    let work = tempfile::tempdir().expect("tempdir");
    let driver = UnitDriver::new(config.clone()).expect("driver");
    let a = unit(&format!("c{cpu_a}"), &cpu_a.to_string(), port_a, 1);
    let b = unit(&format!("c{cpu_b}x"), &cpu_b.to_string(), port_b, 1);
    let (user_a, user_b) = (format!("{prefix}{}", a.user), format!("{prefix}{}", b.user));
    let spec = host(vec![a.clone(), b.clone()]);

    // A CPU the host lacks is refused before anything is made.
    let bad = host(vec![unit("cbad", "4000", port_a, 1)]);
    let err = driver.prepare(&bad).await.expect_err("missing CPU refused");
    eprintln!("bad CPU: {err}");
    assert!(
        lookup_user(&format!("{prefix}cbad"))
            .expect("lookup")
            .is_none()
    );

    let t = Instant::now();
    driver.prepare(&spec).await.expect("prepare");
    eprintln!("prepare: {:?}", t.elapsed());
    driver.prepare(&spec).await.expect("prepare again");
    let inner = &driver.inner;
    for (user, cpu) in [(&user_a, cpu_a), (&user_b, cpu_b)] {
        assert!(
            lookup_user(user).expect("lookup").is_some(),
            "{user} exists"
        );
        for dir in inner.extra_dirs(user) {
            assert!(dir.is_dir(), "{} exists", dir.display());
        }
        let cg = &inner.unit_cgroup_dirs(user)[0];
        assert_eq!(read_trimmed(&cg.join("cpuset.cpus")), cpu.to_string());
    }

    let (key, public) = crate::testkit::key_pair(work.path());

    let a2 = UnitSpec {
        generation: 2,
        ..a.clone()
    };
    let t = Instant::now();
    driver.activate(&a2, &public).await.expect("activate");
    eprintln!("activate (dropbear start included): {:?}", t.elapsed());
    let t = Instant::now();
    driver.activate(&a2, &public).await.expect("activate again");
    eprintln!("activate again: {:?}", t.elapsed());
    // dropbear leads its own session, outside the agent's: it survives
    // the agent.
    let dropbear_a = inner.dropbear_pid(&user_a).expect("a's dropbear");
    let stat = fs::read_to_string(format!("/proc/{dropbear_a}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[3],
        dropbear_a.to_string(),
        "dropbear leads its session"
    );
    assert_ne!(
        fields[1],
        std::process::id().to_string(),
        "not the agent's child"
    );
    let b2 = UnitSpec {
        generation: 2,
        ..b.clone()
    };
    driver.activate(&b2, &public).await.expect("activate b");

    let out = ssh(
        &key,
        port_a,
        &user_a,
        "grep Cpus_allowed_list /proc/self/status",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("ssh a: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert_eq!(stdout.trim(), format!("Cpus_allowed_list:\t{cpu_a}"));
    let out = ssh(
        &key,
        port_b,
        &user_b,
        "grep Cpus_allowed_list /proc/self/status",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("Cpus_allowed_list:\t{cpu_b}")
    );
    // B's user, though its key works on B, cannot use A's endpoint (and
    // so A's CPUs); nor can root.
    let out = ssh(&key, port_a, &user_b, "true");
    assert!(!out.status.success(), "b logged in through a's endpoint");
    let out = ssh(&key, port_a, "root", "true");
    assert!(
        !out.status.success(),
        "root logged in through a unit's endpoint"
    );

    let out = ssh(
        &key,
        port_a,
        &user_a,
        // The session waits until the sleep is `sleep` (past nohup, immune
        // to the hang-up at the session's end) before it ends.
        "touch /tmp/tessera-test-$(id -u) ~/junk /opt/$(id -un)/junk; \
         nohup sleep 1000 </dev/null >/dev/null 2>&1 & p=$!; \
         for i in $(seq 100); do [ \"$(cat /proc/$p/comm)\" = sleep ] && break; sleep 0.05; done",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(pgrep(&user_a).contains("sleep 1000"), "the sleep runs");
    let uid_a = lookup_user(&user_a).expect("lookup").expect("a").uid;

    let a3 = UnitSpec {
        generation: 3,
        ..a.clone()
    };
    let t = Instant::now();
    driver.release(&a3).await.expect("release");
    eprintln!("release: {:?}", t.elapsed());
    driver.release(&a3).await.expect("release again");
    assert!(
        !ssh(&key, port_a, &user_a, "true").status.success(),
        "ssh after release"
    );
    assert_eq!(pgrep(&user_a), "", "no process of {user_a} remains");
    assert!(!Path::new(&format!("/tmp/tessera-test-{uid_a}")).exists());
    assert!(!inner.home(&user_a).join("junk").exists());
    assert!(inner.home(&user_a).is_dir());
    assert!(!inner.extra_dirs(&user_a)[0].join("junk").exists());

    // A late key install of the previous tenant is refused.
    let err = driver
        .activate(&a2, &public)
        .await
        .expect_err("stale activate");
    eprintln!("stale: {err}");
    assert!(!inner.home(&user_a).join(".ssh/authorized_keys").exists());
    assert!(!ssh(&key, port_a, &user_a, "true").status.success());

    // An agent restart: B's dropbear died meanwhile; adopt restarts it.
    let dropbear_b = inner.dropbear_pid(&user_b).expect("b's dropbear");
    signal(dropbear_b, nix::sys::signal::Signal::SIGKILL).expect("kill");
    while process_alive(dropbear_b) {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(driver);
    let driver = UnitDriver::new(config.clone()).expect("driver again");
    driver.adopt().await.expect("adopt");
    let out = ssh(
        &key,
        port_b,
        &user_b,
        "grep Cpus_allowed_list /proc/self/status",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("Cpus_allowed_list:\t{cpu_b}")
    );
    assert!(
        driver.inner.dropbear_pid(&user_a).is_none(),
        "released a stays down"
    );

    // Dropping B from the host removes it.
    driver
        .prepare(&host(vec![a3.clone()]))
        .await
        .expect("prepare without b");
    assert!(lookup_user(&user_b).expect("lookup").is_none());
    assert!(!ssh(&key, port_b, &user_b, "true").status.success());

    driver.retire(&spec).await.expect("retire");
    driver.retire(&spec).await.expect("retire again");
    for user in [&user_a, &user_b] {
        assert!(
            lookup_user(user).expect("lookup").is_none(),
            "{user} removed"
        );
        assert!(!driver.inner.home(user).exists());
        for dir in driver.inner.extra_dirs(user) {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
        for dir in driver.inner.unit_cgroup_dirs(user) {
            assert!(!dir.exists(), "{} removed", dir.display());
        }
        assert_eq!(pgrep(user), "");
    }
    assert!(!driver.inner.state_path().exists());
    assert!(!driver.inner.unit_state_dir(&user_a).exists());
}
