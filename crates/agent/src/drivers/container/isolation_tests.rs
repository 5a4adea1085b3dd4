//! Attacks from inside instances, on the real container driver: each one is
//! asserted to fail, and each path an instance does need (its project's
//! other instances, egress to an "internet", DNS, SSH) is asserted to
//! work. Like `tests.rs`, these run as root with runc and busybox and skip,
//! saying why, otherwise.
//!
//! The "internet" is a network namespace the test makes outside the host's
//! instance networks, with a web server and a DNS server of the test's own
//! in it (threads that entered the namespace); the agent's DNS forwarder
//! asks that server.

use super::tests::{Cleanup, Fixture, fixture, in_instance, skip_reason, spec};
use super::*;
use std::io::{Read, Write as _};
use std::net::{TcpListener, UdpSocket};
use std::process::Command as StdCommand;
use std::sync::atomic::{AtomicUsize, Ordering};

const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(10, 253, 9, 1);
const INTERNET: Ipv4Addr = Ipv4Addr::new(10, 253, 9, 2);
const NAME: &str = "internet.tessera-test";
/// Where clouds serve their metadata (and the host's credentials).
const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// An address of the "internet" the operator denies (`--egress-deny`).
const DENIED: Ipv4Addr = Ipv4Addr::new(10, 253, 9, 200);

fn ip(args: &[&str]) {
    let out = StdCommand::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace `ts<kind>-<tag>` joined to the host by a veth
/// (`ts<kind>h<tag>` on the host with `host/24`, its peer inside with
/// `inside/24` and a default route to the host), made afresh; answers the
/// namespace, the host end and the peer.
fn linked_netns(
    kind: &str,
    tag: &str,
    host: Ipv4Addr,
    inside: Ipv4Addr,
) -> (String, String, String) {
    let ns = format!("ts{kind}-{tag}");
    let (host_if, peer) = (format!("ts{kind}h{tag}"), format!("ts{kind}p{tag}"));
    let _ = StdCommand::new("ip").args(["netns", "del", &ns]).output();
    let _ = StdCommand::new("ip")
        .args(["link", "del", &host_if])
        .output();
    ip(&["netns", "add", &ns]);
    ip(&[
        "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
    ]);
    ip(&["link", "set", &peer, "netns", &ns]);
    ip(&["addr", "add", &format!("{host}/24"), "dev", &host_if]);
    ip(&["link", "set", &host_if, "up"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{inside}/24"),
        "dev",
        &peer,
    ]);
    ip(&["-n", &ns, "link", "set", &peer, "up"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        &host.to_string(),
    ]);
    (ns, host_if, peer)
}

/// A network namespace standing for the internet, routed from the host.
struct Internet {
    ns: String,
    host_if: String,
    /// Where the web server's connections came from.
    seen: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    /// What its UDP port 9999 received.
    datagrams: Arc<Mutex<Vec<String>>>,
}

impl Internet {
    fn start(tag: &str) -> Internet {
        let (ns, host_if, peer) = linked_netns("i", tag, INTERNET_HOST, INTERNET);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{METADATA}/32"),
            "dev",
            &peer,
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{DENIED}/32"),
            "dev",
            &peer,
        ]);
        ip(&[
            "route",
            "replace",
            &format!("{METADATA}/32"),
            "dev",
            &host_if,
        ]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let netns = format!("/var/run/netns/{ns}");
        let (web, dns, sink) = in_netns(&netns, || {
            (
                TcpListener::bind(("0.0.0.0", 8080)).expect("web server"),
                UdpSocket::bind((INTERNET, 53)).expect("dns server"),
                UdpSocket::bind((INTERNET, 9999)).expect("udp sink"),
            )
        });
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let datagrams2 = datagrams.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, _)) = sink.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                datagrams2.lock().expect("datagrams").push(text);
            }
        });
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for conn in web.incoming() {
                let Ok(mut conn) = conn else { return };
                if let Ok(peer) = conn.peer_addr() {
                    seen2.lock().expect("seen").push(peer);
                }
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                let body = "hello from the internet\n";
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                if let Some(answer) = dns_answer(&buf[..n]) {
                    let _ = dns.send_to(&answer, from);
                }
            }
        });
        Internet {
            ns,
            host_if,
            seen,
            datagrams,
        }
    }

    fn connections(&self) -> Vec<std::net::SocketAddr> {
        self.seen.lock().expect("seen").clone()
    }

    fn datagrams(&self) -> Vec<String> {
        self.datagrams.lock().expect("datagrams").clone()
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        let _ = StdCommand::new("ip")
            .args(["route", "del", &format!("{METADATA}/32")])
            .output();
        let _ = StdCommand::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = StdCommand::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
    }
}

/// Runs `f` on a thread inside the network namespace at `path`: sockets it
/// makes stay in that namespace.
fn in_netns<T: Send + 'static>(path: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = fs::File::open(path).expect("netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// The test's DNS server: `NAME` has the A record `INTERNET`; any other
/// name does not exist; other record types of `NAME` are empty.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = query.get(12..at + 4)?;
    let known = labels.join(".") == NAME;
    let answers = u16::from(known && qtype == 1);
    let mut out = Vec::new();
    out.extend_from_slice(&query[..2]);
    let rd = query[2] & 1;
    out.push(0x84 | rd); // QR, AA, RD as asked
    out.push(if known { 0x80 } else { 0x83 }); // RA; NXDOMAIN when unknown
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&answers.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    if answers == 1 {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        out.extend_from_slice(&INTERNET.octets());
    }
    Some(out)
}

/// A host service standing for the agent, the control plane and the host's
/// SSH: a listener on every host address that counts who reaches it.
struct HostService {
    port: u16,
    reached: Arc<AtomicUsize>,
}

impl HostService {
    fn start() -> HostService {
        let listener = TcpListener::bind(("0.0.0.0", 0)).expect("host service");
        let port = listener.local_addr().expect("addr").port();
        let reached = Arc::new(AtomicUsize::new(0));
        let reached2 = reached.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                reached2.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(b"HOST-SERVICE\n");
            }
        });
        HostService { port, reached }
    }
}

/// Builds the syscall probe (`tests-data/syscall-probe.c`) static, if this
/// machine has a C compiler and a static libc.
fn build_probe(dir: &Path) -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests-data/syscall-probe.c");
    let out = dir.join("syscall-probe");
    let built = StdCommand::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .map_err(|e| format!("no C compiler (gcc): {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "gcc -static failed: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    Ok(out)
}

async fn run_in(driver: &ContainerDriver, id: &str, command: &str) -> (i32, String) {
    let (code, out) = in_instance(driver, id, command).await;
    eprintln!("[{id}] $ {command}\n  -> {code}: {}", out.trim());
    (code, out)
}

async fn refused(driver: &ContainerDriver, id: &str, command: &str, what: &str) {
    let (code, out) = run_in(driver, id, command).await;
    assert_ne!(code, 0, "{what} worked from inside {id}: {out}");
}

async fn works(driver: &ContainerDriver, id: &str, command: &str, what: &str) -> String {
    let (code, out) = run_in(driver, id, command).await;
    assert_eq!(code, 0, "{what} failed from inside {id}: {out}");
    out
}

async fn eventually_got(internet: &Internet, want: &str) {
    for _ in 0..50 {
        if internet.datagrams().iter().any(|d| d == want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the internet never got {want:?}: {:?}",
        internet.datagrams()
    );
}

/// A command that succeeds when TCP to `addr` gets the server's first
/// words.
fn tcp(addr: impl std::fmt::Display, port: u16) -> String {
    format!(
        "echo | timeout 3 nc {addr} {port} 2>/tmp/nc.err | head -c 64 | grep -q .; r=$?; cat /tmp/nc.err; exit $r"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_from_inside_instances_fail_and_what_they_need_works() {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let tag = (std::process::id() % 100_000).to_string();
    let bridge = format!("tsri{tag}");
    let mut f: Fixture = fixture(&bridge, "10.250.15.0/24", 42900);
    f.config.dns_upstreams = vec![SocketAddr::from((INTERNET, 53))];
    f.config.egress_denied = vec![format!("{DENIED}/32")];
    let internet = Internet::start(&tag);
    let host_service = HostService::start();
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    if let Err(why) = &driver.isolation {
        panic!("this host runs runc but cannot isolate instances: {why}");
    }
    let gateway = Ipv4Addr::new(10, 250, 15, 1);

    // Two projects, and a third without egress.
    let mut specs = Vec::new();
    for (id, project, egress) in [
        ("a1", "project-a", true),
        ("a2", "project-a", true),
        ("b1", "project-b", true),
        ("c1", "project-c", false),
    ] {
        let mut s = spec(&f, id, id);
        s.project_id = project.into();
        s.egress = egress;
        s.user_data = None;
        specs.push(s);
    }
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: specs
            .iter()
            .map(|s| driver.net_names(&s.id).netns)
            .collect(),
    };
    let mut addr = HashMap::new();
    for s in &specs {
        let report = driver.create(s).await.expect("create");
        addr.insert(s.id.clone(), report.private_ip.clone());
    }
    let (a2, b1) = (addr["a2"].clone(), addr["b1"].clone());
    let a1 = addr["a1"].clone();

    // Same project: ping and SSH.
    works(
        &driver,
        "a1",
        &format!("ping -c 1 -W 2 {a2}"),
        "ping in the project",
    )
    .await;
    works(&driver, "a1", &tcp(&a2, 22), "SSH in the project").await;
    // Another project: nothing, either way.
    refused(
        &driver,
        "a1",
        &format!("ping -c 1 -W 2 {b1}"),
        "ping to another project",
    )
    .await;
    refused(&driver, "a1", &tcp(&b1, 22), "TCP to another project").await;
    refused(&driver, "b1", &tcp(&a1, 22), "TCP to another project").await;
    refused(&driver, "c1", &tcp(&a1, 22), "TCP to another project").await;

    // The host: its services on every address are out of reach, its DNS
    // forwarder is not.
    let port = host_service.port;
    refused(
        &driver,
        "a1",
        &tcp(gateway, port),
        "the host's services on the gateway",
    )
    .await;
    refused(
        &driver,
        "a1",
        &tcp(INTERNET_HOST, port),
        "the host's services on its other address",
    )
    .await;
    let ssh_forward = driver
        .load_record("b1")
        .expect("record")
        .expect("b1")
        .ssh_port;
    refused(
        &driver,
        "a1",
        &tcp(gateway, ssh_forward),
        "another instance's SSH forward on the host",
    )
    .await;
    refused(&driver, "a1", &tcp(gateway, 22), "the host's SSH").await;
    assert_eq!(
        host_service.reached.load(Ordering::SeqCst),
        0,
        "an instance reached a host service"
    );

    // Egress and DNS.
    let resolved = works(&driver, "a1", &format!("nslookup {NAME}"), "DNS").await;
    assert!(resolved.contains(&INTERNET.to_string()), "{resolved}");
    // (nc, by address: the tiny image's static busybox crashes in libc's
    // resolver, which wget uses; nslookup above used the forwarder.)
    let page = works(
        &driver,
        "a1",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 5 nc {INTERNET} 8080"),
        "egress",
    )
    .await;
    assert!(page.contains("hello from the internet"), "{page}");
    let seen = internet.connections();
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|p| p.ip() == std::net::IpAddr::V4(INTERNET_HOST)),
        "egress is not masqueraded behind the host: {seen:?}"
    );
    // Never the cloud's metadata, nor what the operator denied (both of
    // which answer the host itself).
    for there in [METADATA, DENIED] {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((there, 8080)),
            Duration::from_secs(3),
        )
        .unwrap_or_else(|e| panic!("the host cannot reach {there}: {e}"));
    }
    refused(&driver, "a1", &tcp(METADATA, 8080), "the metadata service").await;
    refused(
        &driver,
        "a1",
        &tcp(DENIED, 8080),
        "a destination the operator denied",
    )
    .await;
    // No egress for project c, but its DNS works.
    works(
        &driver,
        "c1",
        &format!("nslookup {NAME}"),
        "DNS without egress",
    )
    .await;
    refused(
        &driver,
        "c1",
        &tcp(INTERNET, 8080),
        "egress of a project without it",
    )
    .await;

    // Its own network cannot be changed from inside.
    refused(
        &driver,
        "a1",
        "ip link set eth0 address 02:00:00:00:00:99",
        "changing its MAC",
    )
    .await;
    refused(
        &driver,
        "a1",
        &format!("ip addr add {b1}/32 dev eth0"),
        "taking another's address",
    )
    .await;
    // ARP claims for a neighbour's address change nothing: the host routes.
    let _ = run_in(
        &driver,
        "a1",
        &format!("arping -c 2 -U -s {a2} -I eth0 {gateway}"),
    )
    .await;
    let name = super::tests::ssh_ok(&f.key, &a2, 22, "hostname").await;
    assert_eq!(
        name.trim(),
        "a2",
        "the host reached someone else at a2's address"
    );
    // Forged sources, as an instance that had the power to forge them
    // would send them: the host drops them.
    let a1_ns = driver.net_names("a1").netns;
    let forged = "10.250.15.200";
    ip(&[
        "-n",
        &a1_ns,
        "addr",
        "add",
        &format!("{forged}/32"),
        "dev",
        "eth0",
    ]);
    ip(&[
        "-n",
        &a1_ns,
        "addr",
        "add",
        &format!("{b1}/32"),
        "dev",
        "eth0",
    ]);
    // (Python, on the host, in a1's namespace: it can bind any address
    // there.)
    let send_from = |source: &str| {
        let script = format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.bind(('{source}', 0)); s.sendto(b'from {source}', ('{INTERNET}', 9999))"
        );
        let sent = StdCommand::new("ip")
            .args(["netns", "exec", &a1_ns, "python3", "-c", &script])
            .output()
            .expect("python3");
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
    };
    send_from(&a1);
    eventually_got(&internet, &format!("from {a1}")).await;
    send_from(forged);
    send_from(&b1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = internet.datagrams();
    assert_eq!(
        got,
        vec![format!("from {a1}")],
        "forged sources got out: {got:?}"
    );

    // Escapes: the syscall probe, then the tools.
    match build_probe(f.dir.path()) {
        Ok(probe) => {
            let rec = driver.load_record("a1").expect("record").expect("a1");
            let ids = rec.ids.expect("a1 is unprivileged");
            let target = driver.dir("a1").join("rootfs/tmp/syscall-probe");
            let bytes = fs::read(&probe).expect("probe");
            idmap::as_instance_root(ids, move || {
                fs::write(&target, bytes).map_err(|e| io_fail("writing", &target, e))?;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755))
                    .map_err(|e| io_fail("writing", &target, e))
            })
            .expect("copying the probe in");
            let out = works(&driver, "a1", "/tmp/syscall-probe", "the probe").await;
            let results: HashMap<&str, i32> = out
                .lines()
                .filter_map(|l| {
                    let (name, errno) = l.split_once(' ')?;
                    Some((name, errno.trim().parse().ok()?))
                })
                .collect();
            const EPERM: i32 = 1;
            for call in [
                "keyctl",
                "add_key",
                "bpf",
                "kexec_load",
                "open_by_handle_at",
                "init_module",
                "finit_module",
                "unshare_user",
                "clone_newuser",
                "perf_event_open",
                "io_uring_setup",
                "mount_tmpfs",
                "mknod_disk",
                "loop_clr_fd",
                "loop_clr_fd_high_bits",
                "loop_get_status64",
                "loop_ctl_get_free",
            ] {
                assert_eq!(
                    results.get(call),
                    Some(&EPERM),
                    "{call} was not refused: {out}"
                );
            }
            assert_eq!(
                results.get("clone3"),
                Some(&38),
                "clone3 is not ENOSYS: {out}"
            );
            for call in ["unshare_mount", "write_core_pattern"] {
                assert!(
                    results.get(call).is_some_and(|e| *e != 0),
                    "{call} succeeded: {out}"
                );
            }
            assert_eq!(results.get("fork"), Some(&0), "fork is broken: {out}");
            const EBADF: i32 = 9;
            assert_eq!(
                results.get("ioctl_tcgets"),
                Some(&EBADF),
                "other ioctls are refused too: {out}"
            );
        }
        Err(why) => eprintln!(
            "!!! SYSCALL PROBE SKIPPED: {why}; the seccomp profile is checked only by the tools below"
        ),
    }
    // From the host: its directory is searchable by its own root's host
    // id alone, so no other account (a host user, another instance's
    // escaped root) reads its files through its `rootfs`.
    {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let rec = driver.load_record("a1").expect("record").expect("a1");
        let ids = rec.ids.expect("a1 is unprivileged");
        let dir = driver.dir("a1");
        let meta = fs::metadata(&dir).expect("its directory");
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o710, 0, ids.base),
            "{}",
            dir.display()
        );
        let hostname = dir.join("rootfs/etc/hostname");
        assert!(fs::read(&hostname).is_ok(), "the host's root reads it");
        // The image store (images keep their set-user-id files) is the
        // host root's alone.
        let images = &f.config.image_dir;
        let meta = fs::metadata(images).expect("the image store");
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid()),
            (0o700, 0),
            "{}",
            images.display()
        );
        for (who, uid) in [
            ("nobody", 65534),
            ("another instance's root", ids.base + 65536 * 7),
        ] {
            let listed = StdCommand::new("ls")
                .arg(images.join("tiny/rootfs/bin"))
                .uid(uid)
                .gid(uid)
                .output()
                .expect("ls runs");
            assert!(!listed.status.success(), "{who} listed the image store");
            let read = StdCommand::new("cat")
                .arg(&hostname)
                .uid(uid)
                .gid(uid)
                .output()
                .expect("cat runs");
            assert!(
                !read.status.success(),
                "{who} read {}: {}",
                hostname.display(),
                String::from_utf8_lossy(&read.stdout)
            );
        }
    }
    refused(&driver, "a1", "mount -t tmpfs none /tmp", "mounting").await;
    refused(
        &driver,
        "a1",
        "echo 1 > /proc/sys/vm/drop_caches",
        "writing /proc/sys",
    )
    .await;
    refused(
        &driver,
        "a1",
        "echo x > /proc/sys/kernel/core_pattern",
        "writing /proc/sys",
    )
    .await;
    refused(&driver, "a1", "unshare -U -r true", "a new user namespace").await;
    refused(&driver, "a1", "unshare -m true", "a new mount namespace").await;
    refused(&driver, "a1", "mknod /tmp/sda b 8 0", "a device node").await;
    refused(
        &driver,
        "a1",
        "insmod /tmp/syscall-probe",
        "loading a module",
    )
    .await;
    refused(
        &driver,
        "a1",
        "echo x > /sys/kernel/uevent_helper",
        "writing /sys",
    )
    .await;
    // The host's loop devices name the disks behind them (a neighbour's
    // among them): an instance sees none of them.
    let disk = f.config.state_dir.join("neighbours-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("a disk");
    let attached = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&disk)
        .output()
        .expect("losetup");
    assert!(attached.status.success(), "losetup: {attached:?}");
    let device = String::from_utf8_lossy(&attached.stdout).trim().to_string();
    let name = device.trim_start_matches("/dev/");
    let (_, seen) = run_in(
        &driver,
        "a1",
        &format!(
            "cat /sys/block/{name}/loop/backing_file \
             /sys/devices/virtual/block/{name}/loop/backing_file"
        ),
    )
    .await;
    let _ = std::process::Command::new("losetup")
        .args(["--detach", &device])
        .status();
    assert!(
        !seen.contains("neighbours-disk"),
        "an instance saw the host's loop device {device}: {seen}"
    );
    // Root inside owns nothing of the host's: a file of the host's root,
    // seen inside through /proc, is not root's there.
    let owner = works(
        &driver,
        "a1",
        "stat -c %u /proc/sys/kernel/hostname",
        "stat",
    )
    .await;
    assert_eq!(owner.trim(), "65534", "the host's root is root inside");
    let map = works(&driver, "a1", "cat /proc/self/uid_map", "uid_map").await;
    assert!(
        !map.split_whitespace().eq(["0", "0", "4294967295"]),
        "{map}"
    );

    // Limits: a disk filler fills its own disk, a memory hog meets its own
    // limit, a fork bomb its own pids limit; the neighbour goes on.
    let free_before = rustix::fs::statvfs(f.dir.path()).expect("statvfs");
    let (_, out) = run_in(
        &driver,
        "a2",
        "dd if=/dev/zero of=/fill bs=1M count=3000 2>&1; sync; df -m / | tail -1",
    )
    .await;
    assert!(
        out.contains("No space left"),
        "the disk filler was not stopped: {out}"
    );
    let free_after = rustix::fs::statvfs(f.dir.path()).expect("statvfs");
    let used = (free_before.f_bavail.saturating_sub(free_after.f_bavail)) * free_before.f_frsize;
    assert!(
        used < 1_300 << 20,
        "filling a 1 GB disk took {used} bytes of the host's"
    );
    works(&driver, "a2", "rm /fill", "removing the fill").await;
    let (code, out) = run_in(&driver, "a2", "head -c 600m /dev/zero | tail > /dev/null").await;
    assert_ne!(code, 0, "a 600 MB hog fit in 256 MB: {out}");
    let (_, out) = run_in(
        &driver,
        "a2",
        // The count and the clean-up use only the shell's builtins: at
        // the limit nothing can fork.
        "(for i in $(seq 1500); do sleep 60 </dev/null >/dev/null 2>&1 & done) 2>/dev/null; \
         set -- /proc/[0-9]*; echo $#; \
         for p in /proc/[0-9]*; do read c < $p/comm; [ \"$c\" = sleep ] && kill ${p#/proc/}; done 2>/dev/null; true",
    )
    .await;
    let procs: usize = out
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or(0);
    assert!(
        procs > 100 && procs <= 1024,
        "the fork bomb made {procs} processes: {out}"
    );
    works(&driver, "a1", "echo alive", "the neighbour after the bombs").await;
    works(
        &driver,
        "a2",
        "echo alive",
        "the bombed instance after the bombs",
    )
    .await;

    // SSH still works, through the forward too.
    let forward = driver
        .load_record("a1")
        .expect("record")
        .expect("a1")
        .ssh_port;
    let out = super::tests::ssh_ok(&f.key, "127.0.0.1", forward, "hostname").await;
    assert_eq!(out.trim(), "a1");

    for s in &specs {
        driver.delete(&s.id).await.expect("delete");
    }
    drop(internet);
}

/// A network namespace outside the host's instance networks, routed from
/// the host: a client of the instances that is no instance.
struct Outside {
    ns: String,
    host_if: String,
    /// Host routes to its extra addresses, removed with it.
    routes: Mutex<Vec<String>>,
}

impl Outside {
    const HOST: &str = "10.253.10.1";
    const CLIENT: &str = "10.253.10.2";

    fn start(tag: &str) -> Outside {
        let host: Ipv4Addr = Self::HOST.parse().expect("address");
        let client: Ipv4Addr = Self::CLIENT.parse().expect("address");
        let (ns, host_if, _) = linked_netns("o", tag, host, client);
        Outside {
            ns,
            host_if,
            routes: Mutex::new(Vec::new()),
        }
    }

    /// Gives the namespace another address, which the host routes to it
    /// (and does not filter by reverse path on that link).
    fn add_source(&self, address: &str) {
        ip(&[
            "-n",
            &self.ns,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "route",
            "replace",
            &format!("{address}/32"),
            "via",
            Self::CLIENT,
        ]);
        let rp = format!("/proc/sys/net/ipv4/conf/{}/rp_filter", self.host_if);
        std::fs::write(&rp, "0").expect("rp_filter");
        self.routes
            .lock()
            .expect("routes")
            .push(address.to_string());
    }

    /// Runs a shell command in the namespace; answers whether it succeeded.
    fn run(&self, command: &str) -> bool {
        let out = StdCommand::new("ip")
            .args(["netns", "exec", &self.ns, "busybox", "sh", "-c", command])
            .output()
            .expect("ip netns exec");
        eprintln!(
            "[outside] $ {command}\n  -> {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out.status.success()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for address in self.routes.lock().expect("routes").iter() {
            let _ = StdCommand::new("ip")
                .args(["route", "del", &format!("{address}/32")])
                .output();
        }
        let _ = StdCommand::new("ip")
            .args(["netns", "del", &self.ns])
            .output();
        let _ = StdCommand::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A command that succeeds when an HTTP server at `addr`, port 8080,
/// answers a request.
fn http(addr: &str) -> String {
    http_from(addr, 8080, None)
}

/// [`http`] to `port`; from the local address `source`, when given, with
/// the host's Python (in a namespace of the host: busybox's `nc` cannot
/// choose its source).
fn http_from(addr: &str, port: u16, source: Option<&str>) -> String {
    match source {
        None => format!(
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc {addr} {port} 2>/tmp/nc.err | head -c 64 | grep -q HTTP; r=$?; cat /tmp/nc.err; exit $r"
        ),
        Some(source) => format!(
            "python3 -c \"import socket, sys; s = socket.socket(); s.settimeout(3); s.bind(('{source}', 0)); \
             s.connect(('{addr}', {port})); s.sendall(b'GET / HTTP/1.0\\\\r\\\\n\\\\r\\\\n'); \
             sys.exit(0 if b'HTTP' in s.recv(64) else 1)\""
        ),
    }
}

/// Whether the host's SSH forward on `port` lets this host's client reach
/// the instance's SSH server (its banner).
async fn forward_admits(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut banner = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut banner)).await,
        Ok(Ok(_)) if banner.starts_with(b"SSH-")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_and_vpcs_decide_what_gets_in() {
    use tessera_core::network::{InboundRule, Ports, Protocol, Source};
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return;
    }
    let tag = (std::process::id() % 100_000).to_string();
    let bridge = format!("tsrg{tag}");
    let f: Fixture = fixture(&bridge, "10.250.16.0/24", 43100);
    let outside = Outside::start(&tag);
    let driver = ContainerDriver::new(f.config.clone()).expect("driver");
    if let Err(why) = &driver.isolation {
        panic!("this host runs runc but cannot isolate instances: {why}");
    }
    let tcp_rule = |port: u16, source: Source| InboundRule {
        protocol: Protocol::Tcp,
        ports: Some(Ports {
            from: port,
            to: port,
        }),
        source,
    };
    // web lets in 8080 from members of client only; client lets in
    // nothing; office lets in SSH from a block no one here has and 8080
    // from the outside's.
    let web = GroupRules {
        id: "sg-web".into(),
        rules: vec![tcp_rule(8080, Source::Group("sg-client".into()))],
    };
    let client = GroupRules {
        id: "sg-client".into(),
        rules: vec![],
    };
    let office = GroupRules {
        id: "sg-office".into(),
        rules: vec![
            tcp_rule(22, Source::Cidr("192.0.2.0/24".into())),
            tcp_rule(8080, Source::Cidr("10.253.10.0/24".into())),
            tcp_rule(8081, Source::Cidr("10.254.0.0/20".into())),
            tcp_rule(8081, Source::Cidr("10.253.11.0/24".into())),
        ],
    };
    let vpc = |id: &str, block: &str, address: [u8; 4]| NetworkAttachment {
        vpc_id: id.into(),
        vpc_cidr: block.into(),
        pool: "10.254.0.0/16".into(),
        address: Ipv4Addr::from(address),
        prefix: 24,
    };
    // One project, two VPCs: w, c and o in the first, x in the second
    // (and in client, which does not take it across).
    let mut specs = Vec::new();
    for (id, network, groups) in [
        (
            "w",
            vpc("vpc-1", "10.254.0.0/20", [10, 254, 0, 2]),
            vec![web.clone()],
        ),
        (
            "c",
            vpc("vpc-1", "10.254.0.0/20", [10, 254, 0, 3]),
            vec![client.clone()],
        ),
        (
            "o",
            vpc("vpc-1", "10.254.0.0/20", [10, 254, 0, 4]),
            vec![office.clone()],
        ),
        (
            "x",
            vpc("vpc-2", "10.254.16.0/20", [10, 254, 16, 2]),
            vec![client.clone()],
        ),
    ] {
        let mut s = spec(&f, id, id);
        s.user_data = None;
        s.network = Some(network);
        s.security_groups = groups;
        specs.push(s);
    }
    let _cleanup = Cleanup {
        state_dir: f.config.state_dir.clone(),
        bridge: bridge.clone(),
        netns: specs
            .iter()
            .map(|s| driver.net_names(&s.id).netns)
            .collect(),
    };
    for s in &specs {
        let report = driver.create(s).await.expect("create");
        let want = s.network.as_ref().expect("network").address.to_string();
        assert_eq!(report.private_ip, want, "the address its VPC gave it");
    }
    let inside = works(&driver, "w", "ip -4 -o addr show dev eth0", "its address").await;
    assert!(inside.contains("10.254.0.2/24"), "{inside}");
    for id in ["w", "o"] {
        works(&driver, id, "httpd -p 8080 -h /tmp", "a web server").await;
    }
    works(&driver, "o", "httpd -p 8081 -h /tmp", "a second web server").await;
    let (w, o) = ("10.254.0.2", "10.254.0.4");

    // Between instances of a VPC: what the target's groups say.
    works(&driver, "c", &http(w), "8080 from a member of client").await;
    refused(&driver, "c", &tcp(w, 22), "SSH, which web does not let in").await;
    refused(&driver, "o", &http(w), "8080 from a non-member").await;
    refused(&driver, "c", &http(o), "8080 from an instance, to office").await;
    refused(&driver, "w", "ping -c 1 -W 2 10.254.0.3", "ping to client").await;
    // Another VPC of the same project: nothing, whatever its groups.
    refused(&driver, "x", &http(w), "8080 from another VPC").await;
    refused(
        &driver,
        "x",
        "ping -c 1 -W 2 10.254.0.4",
        "ping from another VPC",
    )
    .await;
    // Nothing leaves for addresses of the VPC pool no instance here has:
    // its own VPC's, or another's (which the host would otherwise send out
    // its default route).
    refused(
        &driver,
        "c",
        &tcp("10.254.0.9", 22),
        "a free address of the VPC",
    )
    .await;
    refused(
        &driver,
        "c",
        &tcp("10.254.200.9", 22),
        "another VPC's address",
    )
    .await;
    // A rule naming the VPC's block lets its instances in.
    works(
        &driver,
        "c",
        &http_from(o, 8081, None),
        "8081 from the VPC's block",
    )
    .await;
    // The gateway (DNS, ping) stays, on-link from the VPC's subnet.
    works(&driver, "c", "ping -c 1 -W 2 10.250.16.1", "the gateway").await;

    // From outside the host: a block's rules.
    assert!(outside.run(&http(o)), "8080 from the outside's block");
    // Sources behind the outside's link (the host routes them there): one
    // of 10.253.11.0/24 gets in by its rule; one of the VPC pool is forged
    // (no instance sends from there, on that link), though a rule names its
    // block and its replies would route.
    for source in ["10.253.11.50", "10.254.0.50"] {
        outside.add_source(source);
    }
    assert!(
        outside.run(&http_from(o, 8081, Some("10.253.11.50"))),
        "8081 from a block a rule names, behind the outside"
    );
    assert!(
        !outside.run(&http_from(o, 8081, Some("10.254.0.50"))),
        "8081 from a forged VPC address"
    );
    assert!(!outside.run(&tcp(o, 22)), "SSH from outside office's block");
    assert!(!outside.run(&http(w)), "8080 to web from outside");
    assert!(!outside.run(&tcp(w, 22)), "SSH to web from outside");

    // The SSH forwards follow the groups too: this host's client is in no
    // block that lets SSH in.
    let forward = |id: &str| driver.load_record(id).expect("record").expect(id).ssh_port;
    for id in ["w", "c", "o"] {
        assert!(!forward_admits(forward(id)).await, "the forward of {id}");
    }

    // Changing office's rules reaches the running instance at once: SSH
    // from anywhere, and 8080 no longer.
    let mut s = specs[2].clone();
    s.security_groups = vec![GroupRules {
        id: "sg-office".into(),
        rules: vec![tcp_rule(22, Source::Cidr("0.0.0.0/0".into()))],
    }];
    driver.start(&s).await.expect("converge");
    assert!(outside.run(&tcp(o, 22)), "SSH from anywhere, once allowed");
    assert!(!outside.run(&http(o)), "8080, no longer allowed");
    assert!(
        forward_admits(forward("o")).await,
        "the forward, once allowed"
    );
    super::tests::ssh_ok(&f.key, "127.0.0.1", forward("o"), "true").await;

    for s in &specs {
        driver.delete(&s.id).await.expect("delete");
    }
}
