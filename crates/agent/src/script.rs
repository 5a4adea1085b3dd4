//! Running a host script (a taskserv's install or remove step) as root.

use std::path::Path;
use tessera_agent_api::{AgentError, HostScript, ScriptOutcome};

/// The most output kept of a script: its last 16 KiB.
const OUTPUT_KEPT: usize = 16 * 1024;

/// Runs `script` with bash (`-euo pipefail`) in `root`, which is also its
/// `TESSERA_HOST_ROOT` (`/` on a real host). A script that fails is an
/// outcome, not an error.
pub async fn run(
    script: &HostScript,
    root: &Path,
    hostname: &str,
) -> Result<ScriptOutcome, AgentError> {
    let failed = |e: std::io::Error| {
        AgentError::Failed(format!("{hostname} cannot run {}: {e}", script.label))
    };
    tokio::fs::create_dir_all(root).await.map_err(failed)?;
    let output = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script.body)
        .current_dir(root)
        .envs(script.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TESSERA_HOST_ROOT", root)
        .env("TESSERA_HOSTNAME", hostname)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(failed)?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let cut = text.len().saturating_sub(OUTPUT_KEPT);
    let cut = (cut..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    Ok(ScriptOutcome {
        exit_code: output.status.code().unwrap_or(-1),
        output: text[cut..].to_string(),
    })
}
