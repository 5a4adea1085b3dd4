//! The official Verda Python SDK (`verda` from PyPI, unmodified) drives
//! `tests/verda_sdk/scenario.py` against a running Tessera: on simulated
//! hosts over both stores, and with the real container driver, where the
//! instance it deploys is reached over SSH with the key it was given.
//!
//! `scripts/test` makes the virtualenv (`scripts/lib/python.sh`) and names
//! it in `TESSERA_VERDA_VENV`; without it these print why they are skipped.

use crate::harness::{Backend, TOKEN, TestServer};
use crate::on_both_backends;
use crate::verda::{credentials, top_up};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

on_both_backends!(the_verda_sdk_runs_its_scenario_on_simulated_hosts);

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
    let (status, op) = server
        .call(
            Method::POST,
            "/v1/servers/create",
            Some(&json!({"hostname": "sdk-fin", "ip_address": "192.0.2.40", "zone": "FIN-01", "plan": "16xCPU-64GB"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
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
