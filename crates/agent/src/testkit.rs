//! For tests that log into what the drivers made: a fresh key pair, and an
//! `ssh` command that trusts whatever host key it meets and never prompts;
//! and a local OCI registry (Debian's `docker-registry`) that tests push
//! their own images to.
//! Built for this crate's tests and, with the `testkit` feature, for the
//! integration tests of the `tessera` crate.

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A fresh ed25519 key pair in `dir`: the private key's path and the public
/// key line.
pub fn key_pair(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "tessera-test", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(made.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (path, public.trim().to_string())
}

/// `ssh -i key -p port user@host command`, batch mode, any host key, stdin
/// closed.
pub fn ssh_command(key: &Path, user: &str, host: &str, port: u16, command: &str) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(key)
        .args(["-p", &port.to_string()])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "IdentitiesOnly=yes"])
        .args(["-o", "ConnectTimeout=5"])
        .args(["-o", "LogLevel=ERROR"])
        .arg(format!("{user}@{host}"))
        .arg(command)
        .stdin(Stdio::null());
    ssh
}

// --- A local OCI registry ---

/// Why a registry cannot be started here, if it cannot.
pub fn registry_missing() -> Option<String> {
    if !Path::new(REGISTRY).exists() {
        return Some(format!(
            "{REGISTRY} is not installed (Debian's docker-registry; scripts/test-packages installs it)"
        ));
    }
    None
}

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A registry serving a directory on a free port, stopped when dropped.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub storage: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// `users`: a user name and password it asks for; none: open.
    pub async fn start(dir: &Path, users: Option<(&str, &str)>) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).expect("storage");
        let auth = match users {
            None => String::new(),
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                let file = dir.join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: tessera-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                storage.display()
            ),
        )
        .expect("config");
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry");
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Registry {
            child,
            addr,
            storage,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.addr.clone()]),
            ..ClientConfig::default()
        })
    }

    /// Pushes an image of `layers` (each a list of files, bottom first) as
    /// `repo:tag`; answers its manifest's digest.
    pub async fn push(
        &self,
        repo: &str,
        tag: &str,
        layers: &[&[(&str, &[u8])]],
        auth: &RegistryAuth,
    ) -> String {
        let reference: Reference = format!("{}/{repo}:{tag}", self.addr).parse().expect("ref");
        let layers: Vec<ImageLayer> = layers
            .iter()
            .map(|files| ImageLayer::oci_v1_gzip(gzip_tar(files), None))
            .collect();
        let config = serde_json::json!({
            "architecture": go_arch(), "os": "linux",
            "config": {"Entrypoint": ["/bin/app"], "Cmd": ["serve"], "Env": ["MODE=test"]},
            "rootfs": {"type": "layers", "diff_ids": []},
        });
        let client = self.client();
        client
            .push(
                &reference,
                &layers,
                Config::oci_v1(config.to_string().into_bytes(), None),
                auth,
                None,
            )
            .await
            .expect("push");
        client
            .pull_image_manifest(&reference, auth)
            .await
            .expect("the pushed manifest")
            .1
    }
}

/// The architecture as OCI images name it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    }
}

fn gzip_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, path, *data).expect("tar");
    }
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&tar.into_inner().expect("tar")).expect("gzip");
    gz.finish().expect("gzip")
}

/// Removes what a `container`-driver agent keeping `state_dir` left on the
/// machine: its runc containers, the network namespaces `netns`, mounts
/// under the directory, its bridge and its nftables table. For tests,
/// whose agents' state directories go with them.
pub fn remove_container_leftovers(state_dir: &Path, bridge: &str, netns: &[String]) {
    let quiet = |program: &Path, args: &[&std::ffi::OsStr]| {
        let _ = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    let root = state_dir.join("runc");
    if let Some(runc) = crate::drivers::container::find_runc()
        && let Ok(out) = Command::new(&runc)
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            quiet(
                &runc,
                &[
                    "--root".as_ref(),
                    root.as_os_str(),
                    "delete".as_ref(),
                    "--force".as_ref(),
                    id.as_ref(),
                ],
            );
        }
    }
    let ip = Path::new("ip");
    for ns in netns {
        quiet(ip, &["netns".as_ref(), "del".as_ref(), ns.as_ref()]);
    }
    let prefix = state_dir.to_string_lossy().to_string();
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        for mp in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if mp.starts_with(&prefix) {
                let _ = nix::mount::umount2(mp, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    quiet(ip, &["link".as_ref(), "del".as_ref(), bridge.as_ref()]);
    if let Ok(state_dir) = std::fs::canonicalize(state_dir) {
        let table = crate::drivers::container::firewall_table(&state_dir);
        quiet(
            Path::new("nft"),
            &[
                "delete".as_ref(),
                "table".as_ref(),
                "inet".as_ref(),
                table.as_ref(),
            ],
        );
    }
}
