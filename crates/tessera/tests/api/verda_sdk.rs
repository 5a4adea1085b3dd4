//! The official Verda Python SDK (`verda` from PyPI, unmodified) drives
//! `tests/verda_sdk/scenario.py` against a running Tessera: on simulated
//! hosts over both stores, and with the real container driver, where the
//! instance it deploys is reached over SSH with the key it was given.
//!
//! `scripts/test` makes the virtualenv (`scripts/lib/python.sh`) and names
//! it in `TESSERA_VERDA_VENV`; without it these print why they are skipped.

use crate::dataplane::{cannot_run, import_tiny, ssh};
use crate::harness::{AgentProcess, Backend, Options, TestServer, eventually, join_token};
use crate::on_both_backends;
use crate::verda::{add_fin_host, credentials, top_up};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

on_both_backends!(
    the_verda_sdk_runs_its_scenario_on_simulated_hosts,
    the_verda_sdk_runs_its_scenario_on_a_fleet_registered_through_kloigos,
);

/// The virtualenv's Python with the SDK, or why there is none.
fn sdk_python() -> Result<PathBuf, String> {
    let venv = std::env::var("TESSERA_VERDA_VENV")
        .map_err(|_| "TESSERA_VERDA_VENV is not set (scripts/test sets it)".to_string())?;
    let python = Path::new(&venv).join("bin/python");
    let works = Command::new(&python)
        .args(["-c", "import verda"])
        .output()
        .is_ok_and(|o| o.status.success());
    match works {
        true => Ok(python),
        false => Err(format!("{} cannot import verda", python.display())),
    }
}

fn scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verda_sdk/scenario.py")
}

/// The scenario as a child process, for the given Tessera and credentials.
fn start_scenario(
    python: &Path,
    server: &TestServer,
    client: &(String, String),
    env: &[(&str, String)],
) -> std::process::Child {
    let mut command = Command::new(python);
    command
        .arg("-u")
        .arg(scenario())
        .env("VERDA_BASE_URL", format!("{}/verda/v1", server.url))
        .env("VERDA_CLIENT_ID", &client.0)
        .env("VERDA_CLIENT_SECRET", &client.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("run the scenario")
}

/// Waits for the scenario; fails the test with its output unless it passed.
async fn finish(child: std::process::Child) -> String {
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("scenario output");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("scenario passed"),
        "the SDK scenario failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

async fn the_verda_sdk_runs_its_scenario_on_simulated_hosts(backend: Backend) {
    let python = match sdk_python() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("skipped: the Verda SDK is not available: {why}");
            return;
        }
    };
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "sdk-fin", "16xCPU-64GB").await;
    top_up(&server, "default", 50.0).await;
    let client = credentials(&server, "default").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, public) = tessera_agent::testkit::key_pair(dir.path());
    let child = start_scenario(
        &python,
        &server,
        &client,
        &[("VERDA_SSH_PUBLIC_KEY", public)],
    );
    finish(child).await;
}

/// One allocation ledger for every host: a fleet registered only through
/// Kloigos `init_server` serves the SDK's instances, each on a whole unit.
async fn the_verda_sdk_runs_its_scenario_on_a_fleet_registered_through_kloigos(backend: Backend) {
    let python = match sdk_python() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("skipped: the Verda SDK is not available: {why}");
            return;
        }
    };
    let server = TestServer::start(backend).await;
    server
        .init_host_in("kloigos-fin", "FIN-01", "FIN-01", &["0-3", "4-7", "8-15"])
        .await;
    server.wait_host_status("kloigos-fin", "FREE", 3).await;
    top_up(&server, "default", 50.0).await;
    let client = credentials(&server, "default").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, public) = tessera_agent::testkit::key_pair(dir.path());
    let child = start_scenario(
        &python,
        &server,
        &client,
        &[("VERDA_SSH_PUBLIC_KEY", public)],
    );
    finish(child).await;
    // What the scenario deployed took units, and gave them back.
    let units = server.units("?hostname=kloigos-fin").await;
    assert!(
        units.iter().all(|u| u["status"] == "FREE"),
        "every unit is free again: {units:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verda_sdk_deploys_a_container_reached_over_ssh() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: the real data plane cannot run here: {why}");
        return;
    }
    let python = match sdk_python() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("skipped: the Verda SDK is not available: {why}");
            return;
        }
    };
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.7.0/24"),
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agent");
    import_tiny(&state);
    let token = join_token(&server.url).await;
    let _agent = AgentProcess::start(
        &server.url,
        Some(&token),
        "verda-box",
        &state,
        "container",
        &[
            "--location",
            "FIN-01",
            "--bridge",
            "tsrv1",
            "--subnet",
            "10.251.7.0/24",
            "--ssh-port-base",
            "44700",
            "--user-prefix",
            "tv1-",
        ],
    );
    eventually(Duration::from_secs(20), "the host running", || async {
        let servers = server.get_ok("/v1/servers").await;
        servers
            .as_array()
            .and_then(|l| l.iter().find(|s| s["hostname"] == "verda-box"))
            .filter(|s| s["status"] == "running")
            .map(|_| ())
    })
    .await;
    top_up(&server, "default", 50.0).await;
    let client = credentials(&server, "default").await;
    let (key, public) = tessera_agent::testkit::key_pair(dir.path());
    let pause = dir.path().join("pause");
    let child = start_scenario(
        &python,
        &server,
        &client,
        &[
            ("VERDA_SSH_PUBLIC_KEY", public),
            ("VERDA_IMAGE", "tiny".into()),
            ("VERDA_INSTANCE_TYPE", "cx11".into()),
            ("VERDA_PAUSE_FILE", pause.display().to_string()),
            // A real disk on this machine: what the test needs of its free
            // space (20 GB, the scenario's own size, may not be there).
            ("VERDA_OS_VOLUME_SIZE", "2".into()),
            // Its replicas would pull from the Internet on this host.
            (
                "VERDA_SKIP_DEPLOYMENTS",
                "a real host pulls from the Internet; serverless_dataplane.rs covers it".into(),
            ),
        ],
    );
    // Once the instance runs, the scenario writes its address and waits;
    // a scenario that ends or hangs before then is shown.
    let mut child = child;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let ip = loop {
        let written = std::fs::read_to_string(&pause)
            .ok()
            .map(|ip| ip.trim().to_string())
            .filter(|ip| !ip.is_empty());
        if let Some(ip) = written {
            break ip;
        }
        let ended = child.try_wait().expect("the scenario").is_some();
        if ended || std::time::Instant::now() > deadline {
            if !ended {
                let _ = child.kill();
            }
            let output = child.wait_with_output().expect("the scenario's output");
            panic!(
                "the scenario's instance never ran ({}):\n{}\n{}",
                if ended { "it ended" } else { "timed out" },
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The deploy's key logs in; the instance is pinned, sees its data
    // volume (1 GB) as /dev/vdb, and ran the startup script.
    let command = "hostname; grep Cpus_allowed_list /proc/self/status; \
                   blockdev --getsize64 /dev/vdb; cat /root/scenario-ran";
    let mut seen = Err(String::new());
    for _ in 0..100 {
        seen = ssh(&key, "root", &ip, 22, command);
        if seen.as_ref().is_ok_and(|out| out.contains("scenario\n")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen.unwrap_or_else(|e| panic!("ssh root@{ip} with the deploy's key failed: {e}"));
    eprintln!("ssh root@{ip}: {seen}");
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.first().copied(), Some("scenario-1"), "{seen}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("Cpus_allowed_list")),
        "{seen}"
    );
    assert_eq!(lines.get(2).copied(), Some("1073741824"), "{seen}");
    assert_eq!(lines.get(3).copied(), Some("scenario"), "{seen}");
    std::fs::remove_file(&pause).expect("let the scenario go on");
    finish(child).await;
    // The volumes deleted for good lose their storage; the one in the
    // trash keeps it (for 96 hours), and no loop device is left.
    let verda = crate::verda::Verda::login(&server, "default").await;
    let trash: Vec<String> = verda
        .get("/volumes/trash")
        .await
        .as_array()
        .expect("trash")
        .iter()
        .filter_map(|v| v["id"].as_str().map(|id| format!("{id}.img")))
        .collect();
    assert_eq!(trash.len(), 1, "{trash:?}");
    let volumes = state.join("volumes");
    eventually(
        Duration::from_secs(20),
        "only the trash's storage kept",
        || async {
            let mut left: Vec<String> = std::fs::read_dir(&volumes)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            left.sort();
            (left == trash).then_some(())
        },
    )
    .await;
    let loops = Command::new("losetup").arg("-a").output().expect("losetup");
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(!loops.contains(&volumes.display().to_string()), "{loops}");
}
