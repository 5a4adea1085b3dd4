//! The client commands against a running server: an operator creates a
//! project, a user and a token from a shell, and they work.

use crate::harness::{ServerProcess, TOKEN};
use std::io::Write;
use std::process::{Command, Stdio};

fn tessera(url: &str, token: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_SERVER", url)
        .env("TESSERA_TOKEN", token)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_up_a_team_from_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = tessera_store::Store::sqlite_url(&dir.path().join("tessera.db"));
    let server = ServerProcess::start(&url, dir.path(), &[]);
    let (ok, out, err) = tessera(&server.url, TOKEN, &["project", "create", "research"], None);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = tessera(
        &server.url,
        TOKEN,
        &[
            "user",
            "create",
            "ada",
            "--role",
            "member",
            "--project",
            "research",
        ],
        Some("ada-password-1\n"),
    );
    assert!(ok, "{out}{err}");
    let (ok, secret, err) = tessera(
        &server.url,
        TOKEN,
        &[
            "token",
            "create",
            "--project",
            "research",
            "--scope",
            "instance_read",
        ],
        None,
    );
    assert!(ok, "{secret}{err}");
    let secret = secret.trim();
    assert!(secret.starts_with("tsr_"), "{secret}");
    // The token lists the project's (empty) instances; it may do nothing else.
    let (ok, out, err) = tessera(&server.url, secret, &["instance", "list", "--json"], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"items\": []"), "{out}");
    let (ok, _, err) = tessera(&server.url, secret, &["user", "list"], None);
    assert!(!ok);
    assert!(
        err.starts_with("error: permission user_admin is required"),
        "{err}"
    );
    // Ada logs in with the password given on stdin.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", server.url))
        .json(&serde_json::json!({"username": "ada", "password": "ada-password-1"}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // Mistakes are errors with the server's message and exit 1.
    let (ok, _, err) = tessera(
        &server.url,
        TOKEN,
        &[
            "user",
            "create",
            "bob",
            "--role",
            "root",
            "--project",
            "research",
        ],
        Some("bob-password-1\n"),
    );
    assert!(!ok);
    assert!(err.contains("unknown role"), "{err}");
    server.stop();
}

/// `tessera bench gateway` runs end to end (a few requests: the figures
/// are for people, never asserted on).
#[test]
fn the_gateway_benchmark_runs_and_prints_its_rows() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "gateway", "--requests", "20", "--clients", "2"])
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("tessera bench gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in ["direct (http)", "gateway http :80", "gateway https :443"] {
        assert_eq!(stdout.matches(row).count(), 3, "{row}: {stdout}");
    }
}
