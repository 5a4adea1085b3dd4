//! Real containers: these tests run as root with runc, dropbear, ssh and
//! busybox installed (persistent storage also wants mkfs.ext4 and loop
//! devices), and skip (saying why) otherwise.

use super::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command as StdCommand;
use tessera_agent_api::{SessionRequest, TtySize};
use tessera_core::CpuSet;

fn have(tool: &str) -> bool {
    StdCommand::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub(super) fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if find_runc().is_none() {
        return Some("runc is not installed".into());
    }
    for tool in [
        "dropbear",
        "dropbearkey",
        "ssh",
        "ssh-keygen",
        "busybox",
        "ip",
        "bash",
        "nft",
        "setpriv",
        "unshare",
    ] {
        if !have(tool) {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus").exists()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        return Some("no cpuset cgroup".into());
    }
    if !Path::new("/sys/devices/system/cpu/cpu1").exists() {
        return Some("the host has no CPU 1".into());
    }
    None
}

macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// Removes whatever a failed test left on the host.
pub(super) struct Cleanup {
    pub state_dir: PathBuf,
    pub bridge: String,
    pub netns: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        crate::testkit::remove_container_leftovers(&self.state_dir, &self.bridge, &self.netns);
    }
}

pub(super) struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: ContainerConfig,
    pub key: PathBuf,
    pub public_key: String,
}

pub(super) fn fixture(bridge: &str, subnet: &str, ssh_port_base: u16) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = dir.path().join("tiny.tar.gz");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/images/tiny");
    let built = StdCommand::new("bash")
        .arg(&script)
        .arg(&tarball)
        .output()
        .expect("running scripts/images/tiny");
    assert!(
        built.status.success(),
        "scripts/images/tiny failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image_dir = dir.path().join("images");
    import_image(&image_dir, "tiny", &tarball).expect("importing the tiny image");
    assert_eq!(
        list_images(&image_dir).expect("images"),
        vec!["tiny".to_string()]
    );

    let (key, public_key) = crate::testkit::key_pair(dir.path());

    let config = ContainerConfig {
        state_dir: dir.path().join("state"),
        image_dir,
        bridge: bridge.to_string(),
        subnet: subnet.to_string(),
        ssh_port_base,
        dns_upstreams: Vec::new(),
        allow_privileged: false,
        egress_denied: Vec::new(),
        registry: PullOptions::default(),
        // Tests make more (sparse) disks than a test machine's disk holds.
        disk_overcommit: f64::INFINITY,
    };
    Fixture {
        dir,
        config,
        key,
        public_key,
    }
}

pub(super) fn spec(f: &Fixture, id: &str, name: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        name: name.to_string(),
        project_id: "p1".to_string(),
        cpus: CpuSet::parse_list("1").expect("cpus"),
        memory_mb: 256,
        disk_gb: 1,
        image: "tiny".to_string(),
        ssh_keys: vec![f.public_key.trim().to_string()],
        user_data: Some(b"#!/bin/sh\necho hello >> /root/startup-ran\n".to_vec()),
        volumes: vec![],
        cpu_millis: None,
        ssh_forward: true,
        egress: true,
        privileged: false,
        network: None,
        image_ref: None,
        security_groups: Vec::new(),
        workload: None,
        sealed_workload: None,
        storage: None,
    }
}

/// Runs `command` over SSH; answers (success, stdout + stderr).
pub(super) async fn ssh(key: &Path, host: &str, port: u16, command: &str) -> (bool, String) {
    let mut ssh = tokio::process::Command::from(crate::testkit::ssh_command(
        key, "root", host, port, command,
    ));
    let out = ssh.output().await.expect("running ssh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// SSH until it works (the instance's init may still be starting dropbear).
pub(super) async fn ssh_ok(key: &Path, host: &str, port: u16, command: &str) -> String {
    let mut last = String::new();
    for _ in 0..40 {
        let (ok, text) = ssh(key, host, port, command).await;
        if ok {
            return text;
        }
        last = text;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("ssh root@{host} -p {port} never worked: {last}");
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&prefix))
        .map(str::to_string)
        .collect()
}

fn cgroup_leftovers(cgroup: &str) -> Vec<PathBuf> {
    let rel = cgroup.trim_start_matches('/');
    let mut found = Vec::new();
    for e in fs::read_dir("/sys/fs/cgroup").expect("cgroups").flatten() {
        let p = e.path().join(rel);
        if p.exists() {
            found.push(p);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle() {
    skip_unless_able!();
    let bridge = format!("tsrt{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.7.0/24", 43000);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let s = spec(&f, "i-web-1", "web-1");
    let names = driver.net_names(&s.id);
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![names.netns.clone()],
    };

    // An image that is not there.
    let mut missing = s.clone();
    missing.id = "i-missing".into();
    missing.image = "nope".into();
    let e = driver.create(&missing).await.expect_err("no image");
    assert!(e.to_string().contains("import it with"), "{e}");

    let t0 = std::time::Instant::now();
    let report = driver.create(&s).await.expect("create");
    eprintln!("created in {:?}: {report:?}", t0.elapsed());
    assert_eq!(report.private_ip, "10.250.7.2");
    let port = report.ssh_port.expect("an ssh port");
    assert!(port >= 43000);
    assert_eq!(driver.create(&s).await.expect("create again"), report);

    let cmd = "hostname; grep Cpus_allowed_list /proc/self/status; cat /root/startup-ran";
    let out = ssh_ok(&f.key, "127.0.0.1", port, cmd).await;
    eprintln!("via the forward: {out}");
    assert!(out.contains("web-1"), "{out}");
    assert!(out.contains("Cpus_allowed_list:\t1\n"), "{out}");
    assert_eq!(out.matches("hello").count(), 1, "{out}");
    let out = ssh_ok(
        &f.key,
        &report.private_ip,
        22,
        "hostname; ip -4 addr show eth0; id -u",
    )
    .await;
    eprintln!("direct: {out}");
    assert!(
        out.contains("web-1") && out.contains("10.250.7.2/24"),
        "{out}"
    );
    // Unprivileged: root inside is an id of its own outside, under the
    // seccomp filter, and its files are its root's.
    let out = ssh_ok(
        &f.key,
        &report.private_ip,
        22,
        "cat /proc/self/uid_map; grep Seccomp: /proc/self/status; ls -ln /etc/hostname /root/.ssh/authorized_keys; cat /etc/resolv.conf",
    )
    .await;
    eprintln!("isolation: {out}");
    let map: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(map.first(), Some(&"0"), "{out}");
    assert_ne!(map.get(1), Some(&"0"), "root inside is root outside: {out}");
    assert_eq!(map.get(2), Some(&"65536"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    for file in out.lines().filter(|l| l.starts_with("-rw")) {
        let fields: Vec<&str> = file.split_whitespace().collect();
        assert_eq!(fields.get(2..4), Some(&["0", "0"][..]), "not root's: {out}");
    }
    assert!(out.contains("nameserver 10.250.7.1"), "{out}");
    // The limits are in place.
    let cg = driver.cgroups_path(&s.id);
    let mem_limit = fs::read_to_string(format!("/sys/fs/cgroup/memory{cg}/memory.limit_in_bytes"))
        .unwrap_or_default();
    if !mem_limit.is_empty() {
        assert_eq!(mem_limit.trim(), (256u64 << 20).to_string());
    }

    assert_eq!(
        driver.list().await.expect("list"),
        vec![InstanceStatus {
            id: s.id.clone(),
            running: true
        }]
    );

    driver.stop(&s.id).await.expect("stop");
    driver.stop(&s.id).await.expect("stop again");
    assert!(!driver.list().await.expect("list")[0].running);
    let (ok, _) = ssh(&f.key, "127.0.0.1", port, "true").await;
    assert!(!ok, "ssh works while stopped");

    let again = driver.start(&s).await.expect("start");
    assert_eq!(again, report, "the address and port stay");
    assert_eq!(driver.start(&s).await.expect("start again"), report);
    let out = ssh_ok(
        &f.key,
        "127.0.0.1",
        port,
        "cat /root/startup-ran; ls /var/lib/tessera",
    )
    .await;
    assert_eq!(
        out.matches("hello").count(),
        1,
        "the startup script ran again: {out}"
    );
    assert!(out.contains("user-data.done"), "{out}");

    let pid = driver.pid(&s.id).await.expect("pid").expect("running");
    driver.delete(&s.id).await.expect("delete");
    driver.delete(&s.id).await.expect("delete again");

    let runc_list = StdCommand::new(find_runc().expect("runc"))
        .arg("--root")
        .arg(f.config.state_dir.join("runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    assert_eq!(String::from_utf8_lossy(&runc_list.stdout).trim(), "");
    // Dead: gone, or a zombie the host's init has yet to reap.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "init {pid} lives: {status}"
    );
    assert!(!Path::new(&names.netns_path()).exists(), "netns left");
    let link = StdCommand::new("ip")
        .args(["link", "show", &names.host_veth])
        .output()
        .expect("ip");
    assert!(!link.status.success(), "veth left");
    assert_eq!(cgroup_leftovers(&cg), Vec::<PathBuf>::new(), "cgroups left");
    assert_eq!(
        mounts_under(&f.config.state_dir),
        Vec::<String>::new(),
        "mounts left"
    );
    assert!(!driver.dir(&s.id).exists(), "instance directory left");
    assert!(driver.list().await.expect("list").is_empty());
    // The image is untouched by the instance's writes.
    assert!(
        !f.config
            .image_dir
            .join("tiny/rootfs/root/startup-ran")
            .exists()
    );

    let del = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output()
        .expect("ip");
    assert!(del.status.success());
    drop(f.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_adopt_keeps_running_instances() {
    skip_unless_able!();
    let bridge = format!("tsru{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.8.0/24", 43100);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let a = spec(&f, "i-a", "adopt-a");
    let mut b = spec(&f, "i-b", "adopt-b");
    b.cpus = CpuSet::parse_list("0").expect("cpus");
    b.user_data = None;
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![driver.net_names(&a.id).netns, driver.net_names(&b.id).netns],
    };
    let ra = driver.create(&a).await.expect("create a");
    let rb = driver.create(&b).await.expect("create b");
    assert_ne!(ra.private_ip, rb.private_ip);
    assert_ne!(ra.ssh_port, rb.ssh_port);
    let pa = ra.ssh_port.expect("port");
    ssh_ok(&f.key, "127.0.0.1", pa, "true").await;
    driver.stop(&b.id).await.expect("stop b");
    let pid = driver.pid(&a.id).await.expect("pid").expect("running");

    // The agent restarts: a new driver on the same state.
    drop(driver);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver again");
    driver.adopt().await.expect("adopt");
    assert_eq!(
        driver.pid(&a.id).await.expect("pid"),
        Some(pid),
        "a restarted"
    );
    let listed = driver.list().await.expect("list");
    assert_eq!(
        listed,
        vec![
            InstanceStatus {
                id: a.id.clone(),
                running: true
            },
            InstanceStatus {
                id: b.id.clone(),
                running: false
            },
        ]
    );
    let out = ssh_ok(&f.key, "127.0.0.1", pa, "hostname").await;
    assert!(out.contains("adopt-a"), "{out}");
    // Create on an adopted instance is a no-op answering the same.
    assert_eq!(driver.create(&a).await.expect("create again"), ra);
    assert_eq!(driver.pid(&a.id).await.expect("pid"), Some(pid));
    // The stopped one starts with its address and port.
    assert_eq!(driver.start(&b).await.expect("start b"), rb);
    let out = ssh_ok(
        &f.key,
        "127.0.0.1",
        rb.ssh_port.expect("port"),
        "hostname; grep Cpus_allowed_list /proc/self/status",
    )
    .await;
    assert!(
        out.contains("adopt-b") && out.contains("Cpus_allowed_list:\t0\n"),
        "{out}"
    );

    // Its init dies behind the driver's back (as after a host crash): it is
    // reported stopped, and starts again on request.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    for _ in 0..50 {
        if driver.pid(&a.id).await.expect("pid").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!driver.list().await.expect("list")[0].running);
    driver.adopt().await.expect("adopt with a dead instance");
    assert_eq!(
        driver.pid(&a.id).await.expect("pid"),
        None,
        "adopt restarted it"
    );
    assert_eq!(driver.start(&a).await.expect("start a"), ra);
    let out = ssh_ok(&f.key, "127.0.0.1", pa, "cat /root/startup-ran").await;
    assert_eq!(out.matches("hello").count(), 1, "{out}");

    driver.delete(&a.id).await.expect("delete a");
    driver.delete(&b.id).await.expect("delete b");
    assert_eq!(
        mounts_under(&f.config.state_dir),
        Vec::<String>::new(),
        "mounts left"
    );
    assert!(driver.list().await.expect("list").is_empty());
    let _ = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output();
}

/// The size of a block device inside an instance, in bytes.
async fn device_bytes(f: &Fixture, port: u16, name: &str) -> u64 {
    let out = ssh_ok(
        &f.key,
        "127.0.0.1",
        port,
        &format!("blockdev --getsize64 /dev/{name}"),
    )
    .await;
    out.trim()
        .parse::<u64>()
        .unwrap_or_else(|_| panic!("size of /dev/{name}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_block_devices_that_grow_keep_data_and_leave_nothing() {
    skip_unless_able!();
    let bridge = format!("tsrv{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.9.0/24", 43400);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let mut s = spec(&f, "i-vol-1", "vol-1");
    let names = driver.net_names(&s.id);
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![names.netns.clone(), driver.net_names("i-vol-missing").netns],
    };
    let volume = |size_gb, clone_of: Option<&str>| VolumeSpec {
        id: "vol-a".into(),
        size_gb,
        clone_of: clone_of.map(str::to_string),
    };
    let made = driver
        .ensure_volume(&volume(1, None))
        .await
        .expect("volume");
    assert_eq!(made.size_bytes, 1 << 30);
    let file = volume::file(&f.config.state_dir, "vol-a");
    // Sparse: it takes (almost) no room until written.
    assert!(fs::metadata(&file).expect("file").blocks() < 64);
    s.volumes = vec![tessera_agent_api::AttachedVolume {
        id: "vol-a".into(),
        target: "vdb".into(),
    }];
    let mut missing = s.clone();
    missing.id = "i-vol-missing".into();
    missing.volumes[0].id = "vol-none".into();
    let e = driver.create(&missing).await.expect_err("no such volume");
    assert!(e.to_string().contains("not stored"), "{e}");
    let missing_net = driver.net_names(&missing.id).netns_path();
    assert!(
        !Path::new(&missing_net).exists(),
        "a failed start left its network namespace"
    );
    let port = driver
        .create(&s)
        .await
        .expect("create")
        .ssh_port
        .expect("port");
    assert_eq!(device_bytes(&f, port, "vdb").await, 1 << 30);
    // Written data is there after a stop and a start.
    ssh_ok(
        &f.key,
        "127.0.0.1",
        port,
        "echo kept-across-restarts | dd of=/dev/vdb bs=512 count=1 conv=sync 2>/dev/null; sync",
    )
    .await;
    let e = driver.delete_volume("vol-a").await.expect_err("in use");
    assert!(e.to_string().contains("in use"), "{e}");
    // Growing while it runs is seen at once; shrinking is refused.
    driver.ensure_volume(&volume(2, None)).await.expect("grow");
    assert_eq!(device_bytes(&f, port, "vdb").await, 2 << 30);
    assert!(driver.ensure_volume(&volume(1, None)).await.is_err());
    driver.stop(&s.id).await.expect("stop");
    assert_eq!(
        volume_loops(&file),
        "",
        "a stopped instance holds no loop device"
    );
    let port = driver
        .start(&s)
        .await
        .expect("start")
        .ssh_port
        .expect("port");
    let data = ssh_ok(
        &f.key,
        "127.0.0.1",
        port,
        "dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c 21",
    )
    .await;
    assert_eq!(data, "kept-across-restarts\n");
    // A clone is a copy.
    driver.stop(&s.id).await.expect("stop");
    let copy = VolumeSpec {
        id: "vol-b".into(),
        size_gb: 2,
        clone_of: Some("vol-a".into()),
    };
    driver.ensure_volume(&copy).await.expect("clone");
    let head = fs::read(volume::file(&f.config.state_dir, "vol-b"))
        .map(|b| b[..21].to_vec())
        .expect("clone");
    assert_eq!(head, b"kept-across-restarts\n");
    // Gone: no loop device, no file.
    driver.delete(&s.id).await.expect("delete");
    driver.delete_volume("vol-a").await.expect("delete volume");
    driver.delete_volume("vol-a").await.expect("gone already");
    driver.delete_volume("vol-b").await.expect("delete clone");
    assert!(!file.exists());
    assert_eq!(volume_loops(&file), "");
}

fn volume_loops(file: &Path) -> String {
    let out = StdCommand::new("losetup")
        .args(["-n", "-O", "NAME", "-j"])
        .arg(file)
        .output()
        .expect("losetup");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A session that runs `words`, over pipes.
fn run_command(words: &[&str]) -> SessionRequest {
    SessionRequest {
        command: Some(words.iter().map(|w| w.to_string()).collect()),
        tty: None,
    }
}

/// Reads a session's output to its end.
async fn read_all(output: &mut (dyn tokio::io::AsyncRead + Send + Unpin)) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), output.read_to_end(&mut out))
        .await
        .expect("the session's output ends")
        .expect("reading the session");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_inside_the_instance_on_its_cpus() {
    use tokio::io::AsyncWriteExt;
    skip_unless_able!();
    let bridge = format!("tsrs{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.10.0/24", 43500);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let s = spec(&f, "i-session-1", "session-1");
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![driver.net_names(&s.id).netns],
    };
    let e = driver
        .open_session(&s.id, &SessionRequest::default())
        .await
        .err()
        .expect("no session into an instance that is not there");
    assert!(e.to_string().contains("not running"), "{e}");
    let report = driver.create(&s).await.expect("create");
    let ip = report.private_ip.clone();

    // A command: its output and errors, and its exit code.
    let command = "hostname; grep Cpus_allowed_list /proc/self/status; echo oops >&2; exit 3";
    let mut session = driver
        .open_session(&s.id, &run_command(&["sh", "-c", command]))
        .await
        .expect("session");
    assert!(!session.control.is_simulated());
    drop(session.input);
    let out = read_all(&mut session.output).await;
    assert!(out.contains("session-1"), "{out}");
    assert!(out.contains("Cpus_allowed_list:\t1\n"), "{out}");
    assert!(out.contains("oops"), "{out}");
    assert_eq!(session.control.wait().await.expect("exit"), 3);
    assert_eq!(session.control.wait().await.expect("exit again"), 3);

    // The shell, fed line by line.
    let mut session = driver
        .open_session(&s.id, &SessionRequest::default())
        .await
        .expect("shell");
    session
        .input
        .write_all(b"echo $((40 + 2)) > /root/typed\ncat /root/typed\nexit 5\n")
        .await
        .expect("typing");
    let out = read_all(&mut session.output).await;
    assert!(out.contains("42"), "{out}");
    assert_eq!(session.control.wait().await.expect("exit"), 5);
    let out = ssh_ok(&f.key, &ip, 22, "cat /root/typed").await;
    assert_eq!(out.trim(), "42", "the shell ran in the instance");

    // Dropping a session ends what it runs.
    let session = driver
        .open_session(&s.id, &run_command(&["sleep", "1001"]))
        .await
        .expect("sleep");
    let mut seen = String::new();
    for _ in 0..50 {
        seen = ssh_ok(&f.key, &ip, 22, "ps | grep '[s]leep 1001' || true").await;
        if !seen.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.contains("sleep 1001"),
        "the session's process never ran: {seen}"
    );
    drop(session);
    let mut left = String::new();
    for _ in 0..50 {
        // `[s]` keeps the pattern from matching the shell that runs it.
        left = ssh_ok(&f.key, &ip, 22, "ps | grep '[s]leep 1001' || true").await;
        if left.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left.trim(), "", "the session's process outlived it");

    driver.stop(&s.id).await.expect("stop");
    let e = driver
        .open_session(&s.id, &SessionRequest::default())
        .await
        .err()
        .expect("no session into a stopped instance");
    assert!(e.to_string().contains("not running"), "{e}");
    driver.delete(&s.id).await.expect("delete");
    let _ = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output();
}

/// Runs `command` in the instance over a session without a terminal;
/// answers its exit code and output.
pub(super) async fn in_instance(
    driver: &ContainerDriver,
    id: &str,
    command: &str,
) -> (i32, String) {
    let mut session = driver
        .open_session(id, &run_command(&["sh", "-c", command]))
        .await
        .expect("session");
    drop(session.input);
    let out = read_all(&mut session.output).await;
    let code = session.control.wait().await.expect("exit");
    (code, out)
}

/// Whether something accepts connections on the host's `port`.
fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// A cgroup file of an instance's in the first hierarchy that has it
/// (cgroup v1: `cpu`, `cpu,cpuacct`, `memory`; v2: the unified one).
fn cgroup_file(cgroup: &str, names: &[&str]) -> Option<String> {
    let base = Path::new("/sys/fs/cgroup");
    let rel = cgroup.trim_start_matches('/');
    for hierarchy in ["cpu", "cpu,cpuacct", "cpuacct,cpu", "memory", ""] {
        for name in names {
            let path = base.join(hierarchy).join(rel).join(name);
            if let Ok(text) = fs::read_to_string(&path) {
                return Some(text);
            }
        }
    }
    None
}

/// An instance's CFS quota and period, from its cgroup.
fn cpu_quota(cgroup: &str) -> Option<(i64, i64)> {
    if let Some(max) = cgroup_file(cgroup, &["cpu.max"]) {
        let mut parts = max.split_whitespace();
        return Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?));
    }
    let quota = cgroup_file(cgroup, &["cpu.cfs_quota_us"])?;
    let period = cgroup_file(cgroup, &["cpu.cfs_period_us"])?;
    Some((quota.trim().parse().ok()?, period.trim().parse().ok()?))
}

/// How often an instance's CPU quota held it back.
fn times_throttled(cgroup: &str) -> u64 {
    cgroup_file(cgroup, &["cpu.stat"])
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_cpu_instances_share_their_cpus_under_a_quota() {
    skip_unless_able!();
    let bridge = format!("tsrq{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.11.0/24", 43600);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let mut a = spec(&f, "i-shared-a", "shared-a");
    a.cpu_millis = Some(250);
    a.user_data = None;
    let mut b = spec(&f, "i-shared-b", "shared-b");
    b.cpu_millis = Some(500);
    b.user_data = None;
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![driver.net_names(&a.id).netns, driver.net_names(&b.id).netns],
    };
    let mut greedy = a.clone();
    greedy.id = "i-greedy".into();
    greedy.cpu_millis = Some(1001);
    let e = driver.create(&greedy).await.expect_err("more than its CPU");
    assert!(e.to_string().contains("more than"), "{e}");
    assert!(
        !driver.dir(&greedy.id).exists(),
        "a refused instance left a trace"
    );

    driver.create(&a).await.expect("create a");
    driver.create(&b).await.expect("create b on the same CPU");
    for (s, millis) in [(&a, 250i64), (&b, 500)] {
        let (code, out) =
            in_instance(&driver, &s.id, "grep Cpus_allowed_list /proc/self/status").await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("Cpus_allowed_list:\t1\n"), "{}: {out}", s.id);
        let cgroup = driver.cgroups_path(&s.id);
        assert_eq!(
            cpu_quota(&cgroup),
            Some((millis * 100, 100_000)),
            "{}'s quota",
            s.id
        );
        let config: serde_json::Value = serde_json::from_slice(
            &fs::read(driver.dir(&s.id).join("config.json")).expect("config.json"),
        )
        .expect("json");
        let cpu = &config["linux"]["resources"]["cpu"];
        assert_eq!(cpu["quota"], millis * 100, "{cpu}");
        assert_eq!(cpu["period"], 100_000, "{cpu}");
        assert_eq!(cpu["cpus"], "1", "{cpu}");
    }
    // A busy loop is held to its share.
    let cgroup = driver.cgroups_path(&a.id);
    let before = times_throttled(&cgroup);
    let (_, out) = in_instance(
        &driver,
        &a.id,
        "timeout 1 sh -c 'while :; do :; done'; echo spun",
    )
    .await;
    assert!(out.contains("spun"), "{out}");
    assert!(
        times_throttled(&cgroup) > before,
        "a quarter of a CPU was never throttled"
    );
    // An exclusive instance has none.
    driver.stop(&b.id).await.expect("stop b");
    b.cpu_millis = None;
    driver.start(&b).await.expect("start b exclusive");
    let (quota, _) = cpu_quota(&driver.cgroups_path(&b.id)).expect("b's quota");
    assert!(quota < 0, "an exclusive instance has a quota: {quota}");

    driver.delete(&a.id).await.expect("delete a");
    driver.delete(&b.id).await.expect("delete b");
    assert_eq!(cgroup_leftovers(&cgroup), Vec::<PathBuf>::new());
    let _ = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_forwards_open_and_close_without_a_restart() {
    skip_unless_able!();
    let bridge = format!("tsrf{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.12.0/24", 43700);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let mut s = spec(&f, "i-fwd-1", "fwd-1");
    s.user_data = None;
    s.ssh_forward = false;
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![driver.net_names(&s.id).netns],
    };
    let report = driver.create(&s).await.expect("create");
    assert_eq!(report.ssh_port, None, "no forward asked");
    let port = driver
        .load_record(&s.id)
        .expect("record")
        .expect("record")
        .ssh_port;
    assert!(!answers(port), "port {port} answers without a forward");
    // The instance itself answers on its own address.
    ssh_ok(&f.key, &report.private_ip, 22, "true").await;
    let pid = driver.pid(&s.id).await.expect("pid").expect("running");

    s.ssh_forward = true;
    let on = driver.start(&s).await.expect("forward on");
    assert_eq!(on.ssh_port, Some(port), "the port it had reserved");
    let out = ssh_ok(&f.key, "127.0.0.1", port, "hostname").await;
    assert!(out.contains("fwd-1"), "{out}");
    s.ssh_forward = false;
    let off = driver.create(&s).await.expect("forward off");
    assert_eq!(off.ssh_port, None);
    assert!(!answers(port), "the forward stayed open");
    assert_eq!(
        driver.pid(&s.id).await.expect("pid"),
        Some(pid),
        "restarted"
    );

    // An agent restart keeps it off, and then on.
    drop(driver);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver again");
    driver.adopt().await.expect("adopt");
    assert!(!answers(port), "adopt opened a forward that was off");
    s.ssh_forward = true;
    assert_eq!(driver.start(&s).await.expect("on").ssh_port, Some(port));
    drop(driver);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver again");
    driver.adopt().await.expect("adopt");
    let out = ssh_ok(&f.key, "127.0.0.1", port, "hostname").await;
    assert!(out.contains("fwd-1"), "{out}");

    // Something else took its port while it was off: it gets another.
    s.ssh_forward = false;
    driver.start(&s).await.expect("off");
    let squatter = std::net::TcpListener::bind(("0.0.0.0", port)).expect("the port is free");
    s.ssh_forward = true;
    let moved = driver
        .start(&s)
        .await
        .expect("on again")
        .ssh_port
        .expect("a port");
    assert_ne!(moved, port);
    ssh_ok(&f.key, "127.0.0.1", moved, "true").await;
    drop(squatter);
    assert_eq!(
        driver.pid(&s.id).await.expect("pid"),
        Some(pid),
        "restarted"
    );

    driver.delete(&s.id).await.expect("delete");
    assert!(!answers(moved), "the forward outlived the instance");
    let _ = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output();
}

/// The observation of one instance.
async fn observed(driver: &ContainerDriver, id: &str) -> InstanceObservation {
    driver
        .observe()
        .await
        .expect("observe")
        .into_iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("{id} is not observed"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_storage_outlives_restarts_and_goes_with_the_instance() {
    use tessera_agent_api::InstanceStorage;
    skip_unless_able!();
    if !have("mkfs.ext4") || !Path::new("/dev/loop-control").exists() {
        eprintln!("skipped: no mkfs.ext4 or no loop devices");
        return;
    }
    let bridge = format!("tsrp{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.13.0/24", 43800);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let mut s = spec(&f, "i-store-1", "store-1");
    s.user_data = None;
    s.storage = Some(InstanceStorage {
        size_gb: 1,
        mount_paths: vec!["/var/data".into(), "/var-data".into()],
    });
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![driver.net_names(&s.id).netns],
    };
    let mut nested = s.clone();
    nested.id = "i-nested".into();
    nested.storage = Some(InstanceStorage {
        size_gb: 1,
        mount_paths: vec!["/var".into(), "/var/data".into()],
    });
    let e = driver
        .create(&nested)
        .await
        .expect_err("nested mount paths");
    assert!(e.to_string().contains("inside"), "{e}");
    assert!(!driver.dir(&nested.id).exists());

    driver.create(&s).await.expect("create");
    let dir = driver.dir(&s.id);
    // Two paths that an encoding by '-' would confuse stay apart.
    let (code, out) = in_instance(
        &driver,
        &s.id,
        "echo one > /var/data/kept && echo two > /var-data/kept && sync && \
         cat /var/data/kept /var-data/kept",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "one\ntwo\n"));

    let seen = observed(&driver, &s.id).await;
    assert!(seen.running && seen.detail.is_none(), "{seen:?}");
    assert!(seen.memory_used_bytes.is_some_and(|m| m > 0), "{seen:?}");
    // How busy its CPU was since the last look: a spinning shell shows,
    // and so does rest.
    let (code, out) = in_instance(
        &driver,
        &s.id,
        "timeout 2 sh -c 'while :; do :; done'; true",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let busy = observed(&driver, &s.id)
        .await
        .cpu_percent
        .expect("measured");
    assert!((30..=110).contains(&busy), "spinning: {busy}%");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let idle = observed(&driver, &s.id)
        .await
        .cpu_percent
        .expect("measured");
    assert!(idle < 20, "at rest: {idle}%");
    let used = seen.storage_used_bytes.expect("storage used");
    let (code, out) = in_instance(
        &driver,
        &s.id,
        "dd if=/dev/urandom of=/var/data/blob bs=1M count=20 2>&1 && sync",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let grown = observed(&driver, &s.id)
        .await
        .storage_used_bytes
        .expect("storage used");
    assert!(grown >= used + (19 << 20), "{used} -> {grown}");
    assert!(grown < 1 << 30, "the host's disk, not the storage: {grown}");

    // Its size is the limit, inside.
    let (code, out) = in_instance(
        &driver,
        &s.id,
        "dd if=/dev/zero of=/var/data/big bs=1M count=1200 2>&1; echo status=$?; rm -f /var/data/big",
    )
    .await;
    assert!(out.contains("No space left on device"), "{out}");
    assert!(!out.contains("status=0"), "{out}");
    assert_eq!(code, 0);

    // A stop and a start keep it.
    driver.stop(&s.id).await.expect("stop");
    let seen = observed(&driver, &s.id).await;
    assert!(!seen.running && seen.detail.is_none(), "{seen:?}");
    assert_eq!(seen.memory_used_bytes, None);
    assert!(
        !is_mounted(&storage::mount_point(&dir)),
        "mounted while stopped"
    );
    driver.start(&s).await.expect("start");
    let (_, out) = in_instance(&driver, &s.id, "cat /var/data/kept").await;
    assert_eq!(out, "one\n");

    // So does an agent restart.
    let pid = driver.pid(&s.id).await.expect("pid").expect("running");
    drop(driver);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver again");
    driver.adopt().await.expect("adopt");
    assert_eq!(driver.pid(&s.id).await.expect("pid"), Some(pid));
    let (_, out) = in_instance(&driver, &s.id, "cat /var/data/kept").await;
    assert_eq!(out, "one\n");

    // Other mount paths (and a larger size) at the next start; a kept path
    // keeps its data, a dropped one is no longer mounted.
    driver.stop(&s.id).await.expect("stop");
    s.storage = Some(InstanceStorage {
        size_gb: 2,
        mount_paths: vec!["/var/data".into(), "/srv/new".into()],
    });
    driver.start(&s).await.expect("start with other paths");
    let (code, out) = in_instance(
        &driver,
        &s.id,
        "cat /var/data/kept; test -d /srv/new && echo new-there; \
         grep -c ' /var-data ' /proc/mounts; df -k /var/data | awk 'NR==2 {print \"kb=\" $2}'",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("one\nnew-there\n0\n"), "{out}");
    let kb: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("kb="))
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no size: {out}"));
    assert!(kb > 3 << 19, "not grown to 2 GB: {kb} KiB");

    // Its init exits on its own: it is seen stopped, and why.
    let pid = driver.pid(&s.id).await.expect("pid").expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let mut seen = observed(&driver, &s.id).await;
    for _ in 0..50 {
        if !seen.running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = observed(&driver, &s.id).await;
    }
    eprintln!("after its init died: {seen:?}");
    assert!(!seen.running, "{seen:?}");
    assert!(
        seen.detail.as_deref().is_some_and(|d| d.contains("exited")),
        "{seen:?}"
    );
    assert_eq!(seen.memory_used_bytes, None);

    // It goes with the instance.
    let image = storage::image(&dir);
    assert!(image.exists());
    driver.delete(&s.id).await.expect("delete");
    assert!(!image.exists(), "the storage outlived its instance");
    assert_eq!(volume_loops(&image), "");
    assert_eq!(
        mounts_under(&f.config.state_dir),
        Vec::<String>::new(),
        "mounts left"
    );
    assert!(driver.observe().await.expect("observe").is_empty());
    let _ = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output();
}

/// Reads a session's output until it holds `want`; answers all it read.
async fn read_until(output: &mut (dyn tokio::io::AsyncRead + Send + Unpin), want: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains(want) {
            return text;
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, output.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in: {text:?}"))
            .expect("reading the session");
        assert!(n > 0, "the output ended without {want:?}: {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_terminal_is_a_terminal() {
    use tokio::io::AsyncWriteExt;
    skip_unless_able!();
    let bridge = format!("tsry{}", std::process::id() % 100_000);
    let f = fixture(&bridge, "10.250.14.0/24", 43900);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    let mut s = spec(&f, "i-tty-1", "tty-1");
    s.user_data = None;
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: vec![driver.net_names(&s.id).netns],
    };
    driver.create(&s).await.expect("create");
    let terminal = |cols, rows, command: Option<&[&str]>| SessionRequest {
        command: command.map(|c| c.iter().map(|w| w.to_string()).collect()),
        tty: Some(TtySize { cols, rows }),
    };
    let mut session = driver
        .open_session(&s.id, &terminal(80, 24, None))
        .await
        .expect("a shell with a terminal");
    // `h""i` echoes as typed, and prints `hi`.
    session
        .input
        .write_all(b"tty; stty size; echo $TERM; cut -d' ' -f7 /proc/self/stat; echo h\"\"i\n")
        .await
        .expect("typing");
    // A terminal ends lines with "\r\n" (or "\r\r\n", which shows the
    // same, when the shell restores settings it read before runc cleared
    // ONLCR on its side): compared here without the "\r"s.
    let raw = read_until(&mut session.output, "\nhi\r").await;
    eprintln!("with a terminal: {raw:?}");
    assert!(raw.contains("\r\n"), "{raw:?}");
    let out = raw.replace('\r', "");
    assert!(out.contains("\n/dev/pts/"), "{out:?}");
    assert!(!out.contains("not a tty"), "{out:?}");
    assert!(out.contains("\n24 80\n"), "{out:?}");
    assert!(out.contains("\nxterm-256color\n"), "{out:?}");
    // Its terminal is its controlling one (a device number, not 0).
    let ctty: Vec<i64> = out
        .lines()
        .filter_map(|l| l.trim().parse::<i64>().ok())
        .collect();
    assert!(
        ctty.iter().any(|n| *n > 0),
        "no controlling terminal: {out:?}"
    );
    session
        .control
        .resize(TtySize {
            cols: 100,
            rows: 30,
        })
        .expect("resize");
    session
        .input
        .write_all(b"stty size; echo do\"\"ne\n")
        .await
        .expect("typing");
    let out = read_until(&mut session.output, "\ndone\r")
        .await
        .replace('\r', "");
    assert!(out.contains("\n30 100\n"), "{out:?}");
    session.input.write_all(b"exit 3\n").await.expect("typing");
    read_all(&mut session.output).await;
    assert_eq!(session.control.wait().await.expect("exit"), 3);

    // A command with a terminal; its output ends with it.
    let mut session = driver
        .open_session(
            &s.id,
            &terminal(40, 10, Some(&["sh", "-c", "tty; stty size"])),
        )
        .await
        .expect("a command with a terminal");
    let out = read_all(&mut session.output).await;
    assert!(
        out.contains("/dev/pts/") && out.contains("10 40"),
        "{out:?}"
    );
    assert_eq!(session.control.wait().await.expect("exit"), 0);

    // Closing the input of a shell's terminal is its end of file.
    let mut session = driver
        .open_session(&s.id, &terminal(80, 24, None))
        .await
        .expect("shell");
    drop(session.input);
    let ended = tokio::time::timeout(Duration::from_secs(20), session.control.wait()).await;
    assert_eq!(ended.expect("the shell ends").expect("exit"), 0);

    // Without a terminal there is none to resize.
    let mut session = driver
        .open_session(&s.id, &run_command(&["sleep", "5"]))
        .await
        .expect("pipes");
    assert!(
        session
            .control
            .resize(TtySize { cols: 1, rows: 1 })
            .is_err()
    );
    drop(session);

    driver.delete(&s.id).await.expect("delete");
    let _ = StdCommand::new("ip")
        .args(["link", "del", &bridge])
        .output();
}

#[test]
fn root_keys_go_to_the_mount_path_that_covers_them() {
    let bind = |source: &str, destination: &str| bundle::Bind {
        source: PathBuf::from(source),
        destination: destination.to_string(),
        fresh: false,
        readonly: false,
    };
    let binds = [bind("/s/root", "/root"), bind("/s/data", "/data")];
    assert_eq!(
        covering_bind(&binds, "/root/.ssh"),
        Some((PathBuf::from("/s/root"), ".ssh".to_string()))
    );
    let binds = [bind("/s/root", "/root"), bind("/s/ssh", "/root/.ssh")];
    assert_eq!(
        covering_bind(&binds, "/root/.ssh"),
        Some((PathBuf::from("/s/ssh"), String::new())),
        "the closest mount wins"
    );
    let binds = [bind("/s/rootfoo", "/rootfoo"), bind("/s/data", "/data")];
    assert_eq!(
        covering_bind(&binds, "/root/.ssh"),
        None,
        "not a prefix by name"
    );
}

#[tokio::test]
async fn new_storage_starts_with_the_images_files_never_the_hosts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir_all(rootfs.join("root/.config")).expect("mkdir");
    fs::write(rootfs.join("root/.profile"), "export A=1\n").expect("write");
    std::os::unix::fs::symlink("/etc", rootfs.join("linked")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", rootfs.join("root/host-file")).expect("symlink");
    let bind = |name: &str, destination: &str| {
        let source = tmp.path().join("storage").join(name);
        fs::create_dir_all(&source).expect("mkdir");
        bundle::Bind {
            source,
            destination: destination.to_string(),
            fresh: true,
            readonly: false,
        }
    };
    let home = bind("root", "/root");
    seed_from_image(&rootfs, &home, None).await;
    assert_eq!(
        fs::read_to_string(home.source.join(".profile")).expect("copied"),
        "export A=1\n"
    );
    assert!(home.source.join(".config").is_dir());
    let link = fs::symlink_metadata(home.source.join("host-file")).expect("link copied");
    assert!(link.file_type().is_symlink(), "a link stays a link");
    // A path that is a symlink in the image would be resolved on the host:
    // nothing is copied.
    let linked = bind("linked", "/linked");
    seed_from_image(&rootfs, &linked, None).await;
    assert_eq!(fs::read_dir(&linked.source).expect("dir").count(), 0);
    let missing = bind("none", "/not/there");
    seed_from_image(&rootfs, &missing, None).await;
    assert_eq!(fs::read_dir(&missing.source).expect("dir").count(), 0);
}

#[test]
fn a_pull_tells_how_far_it_got() {
    let mut p = PullProgress::new("registry.example/app:v1");
    assert_eq!(
        p.text(),
        "pulling image registry.example/app:v1: reading its manifest"
    );
    p.add(&Progress::Manifest {
        digest: "sha256:m".into(),
        layers: 2,
        bytes: 3_000_000,
    });
    p.add(&Progress::Cached {
        digest: "sha256:config".into(),
        bytes: 900,
    });
    assert_eq!(
        p.text(),
        "pulling image registry.example/app:v1: 0 of 2 layers, 0.0 of 3.0 MB"
    );
    p.add(&Progress::Fetched {
        digest: "sha256:l1".into(),
        bytes: 1_000_000,
    });
    assert_eq!(
        p.text(),
        "pulling image registry.example/app:v1: 1 of 2 layers, 1.0 of 3.0 MB"
    );
    p.add(&Progress::Unpacking);
    assert_eq!(p.text(), "pulling image registry.example/app:v1: unpacking");
}

#[test]
fn cpu_use_is_a_share_of_what_an_instance_is_given() {
    let at = std::time::Instant::now();
    let before = CpuSample {
        used_us: 1_000_000,
        at,
        given_millis: 500,
    };
    let later = |used_us, secs| CpuSample {
        used_us,
        at: at + std::time::Duration::from_secs(secs),
        given_millis: 500,
    };
    // Half a CPU for two seconds is all of a half-CPU instance's share.
    assert_eq!(later(2_000_000, 2).busy_since(&before), Some(100));
    assert_eq!(later(1_250_000, 1).busy_since(&before), Some(50));
    assert_eq!(
        later(1_000_000, 0).busy_since(&before),
        None,
        "no time passed"
    );
    assert_eq!(
        later(500, 1).busy_since(&before),
        None,
        "a counter that went back"
    );
}
