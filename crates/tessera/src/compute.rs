//! `tessera compute ...`: the containers API (`/compute`) from a shell,
//! with an interactive terminal into a container in the user's own
//! terminal (`tessera compute terminal ID`) and the status stream
//! (`tessera compute watch`).

use crate::client::{Client, ClientArgs};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Subcommand, Debug)]
pub enum ComputeCommand {
    /// List your containers.
    List,
    /// Create a container and wait until it runs (or fails).
    Create {
        name: String,
        /// nano, micro, mini (arm64), tiny, small, medium (amd64).
        #[arg(long = "type", default_value = "nano")]
        instance_type: String,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long)]
        storage_gb: Option<u64>,
        /// An SSH key's integer id (repeat for more); at least one.
        #[arg(long = "ssh-key", required = true)]
        ssh_keys: Vec<i64>,
        /// Open SSH to it.
        #[arg(long)]
        ssh: bool,
        /// A path to persist (repeat for more); /root by default.
        #[arg(long = "mount")]
        mounts: Vec<String>,
        /// An ingress rule, PORT or PORT:TARGET (repeat for more).
        #[arg(long = "ingress")]
        ingress: Vec<String>,
        #[arg(long)]
        image: Option<String>,
    },
    /// Show a container.
    Get {
        id: String,
    },
    /// Delete a container.
    Delete {
        id: String,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    /// Turn SSH to a container on or off.
    Ssh {
        id: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// A container's ingress rules: list them, or add or remove one.
    Ingress {
        id: String,
        /// PORT or PORT:TARGET to add.
        #[arg(long)]
        add: Option<String>,
        /// An external port whose rule to remove.
        #[arg(long)]
        remove: Option<u16>,
    },
    /// A container's mount paths; `--set` replaces them (a running
    /// container restarts).
    Mounts {
        id: String,
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// SSH keys of the containers API.
    #[command(subcommand)]
    Key(KeyCommand),
    /// An interactive shell in a running container, in this terminal.
    Terminal {
        id: String,
    },
    /// Print the changes of your containers as they happen.
    Watch,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    List,
    /// Add a key from a public key file.
    Add {
        name: String,
        #[arg(long)]
        public_key_file: std::path::PathBuf,
    },
    Delete {
        id: i64,
    },
}

fn print_container(c: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut line = format!(
        "{}  {}  {}  {}  {}MB/{}GB",
        text(&c["id"]),
        text(&c["name"]),
        text(&c["status"]),
        text(&c["instance_type"]),
        c["memory_mb"],
        c["storage_gb"],
    );
    if let Some(ssh) = c["ssh_command"].as_str() {
        line.push_str(&format!("  `{ssh}`"));
    }
    if let Some(reason) = c["status_reason"].as_str() {
        line.push_str(&format!("  ({reason})"));
    }
    println!("{line}");
}

fn ingress_rule(spec: &str) -> Result<Value> {
    let (port, target) = match spec.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (spec, None),
    };
    let port: i64 = port
        .parse()
        .with_context(|| format!("{spec}: not a port"))?;
    let target: Option<i64> = target
        .map(|t| t.parse().with_context(|| format!("{spec}: not a port")))
        .transpose()?;
    Ok(json!({ "port": port, "target_port": target }))
}

pub async fn run(args: ClientArgs, command: ComputeCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        ComputeCommand::List => {
            let list = client
                .call(Method::GET, "/compute/containers", None)
                .await?;
            client.print(&list, |l| {
                for c in l["containers"].as_array().into_iter().flatten() {
                    print_container(c);
                }
            });
        }
        ComputeCommand::Create {
            name,
            instance_type,
            memory_mb,
            storage_gb,
            ssh_keys,
            ssh,
            mounts,
            ingress,
            image,
        } => {
            let mut body = json!({
                "name": name, "instance_type": instance_type, "ssh_key_ids": ssh_keys,
                "ssh_enabled": ssh,
                "ingress_rules": ingress.iter().map(|r| ingress_rule(r)).collect::<Result<Vec<_>>>()?,
            });
            for (key, value) in [
                ("memory_mb", memory_mb.map(Value::from)),
                ("storage_gb", storage_gb.map(Value::from)),
                ("image", image.map(Value::from)),
                ("mount_paths", (!mounts.is_empty()).then(|| json!(mounts))),
            ] {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let created = client
                .call(Method::POST, "/compute/containers", Some(body))
                .await?;
            let id = created["id"]
                .as_str()
                .context("no id in the answer")?
                .to_string();
            let path = format!("/compute/containers/{id}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
            let container = loop {
                let now = client.call(Method::GET, &path, None).await?;
                if matches!(
                    now["status"].as_str(),
                    Some("running" | "failed" | "stopped")
                ) || std::time::Instant::now() > deadline
                {
                    break now;
                }
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            };
            client.print(&container, print_container);
        }
        ComputeCommand::Get { id } => {
            let c = client
                .call(Method::GET, &format!("/compute/containers/{id}"), None)
                .await?;
            client.print(&c, print_container);
        }
        ComputeCommand::Delete { id } => {
            let answer = client
                .call(Method::DELETE, &format!("/compute/containers/{id}"), None)
                .await?;
            client.print(&answer, |_| println!("deleted {id}"));
        }
        ComputeCommand::Start { id } => {
            let c = client
                .call(
                    Method::POST,
                    &format!("/compute/containers/{id}/start"),
                    None,
                )
                .await?;
            client.print(&c, print_container);
        }
        ComputeCommand::Stop { id } => {
            let c = client
                .call(
                    Method::POST,
                    &format!("/compute/containers/{id}/stop"),
                    None,
                )
                .await?;
            client.print(&c, print_container);
        }
        ComputeCommand::Ssh { id, state } => {
            let answer = client
                .call(
                    Method::PUT,
                    &format!("/compute/containers/{id}/ssh"),
                    Some(json!({ "ssh_enabled": state == "on" })),
                )
                .await?;
            client.print(&answer, |a| println!("ssh_enabled: {}", a["ssh_enabled"]));
        }
        ComputeCommand::Ingress { id, add, remove } => {
            let path = format!("/compute/containers/{id}/ingress");
            if let Some(rule) = add {
                client
                    .call(Method::POST, &path, Some(ingress_rule(&rule)?))
                    .await?;
            }
            if let Some(port) = remove {
                client
                    .call(Method::DELETE, &format!("{path}/{port}"), None)
                    .await?;
            }
            let rules = client.call(Method::GET, &path, None).await?;
            client.print(&rules, |r| {
                for rule in r["rules"].as_array().into_iter().flatten() {
                    println!("{} -> {}", rule["port"], rule["target_port"]);
                }
            });
        }
        ComputeCommand::Mounts { id, set } => {
            let path = format!("/compute/containers/{id}/mounts");
            let answer = match set.is_empty() {
                true => client.call(Method::GET, &path, None).await?,
                false => {
                    client
                        .call(Method::PUT, &path, Some(json!({ "mount_paths": set })))
                        .await?
                }
            };
            client.print(&answer, |a| {
                for p in a["mount_paths"].as_array().into_iter().flatten() {
                    println!("{}", p.as_str().unwrap_or(""));
                }
                if a["restarted"] == true {
                    println!("(the container restarted to take them)");
                }
            });
        }
        ComputeCommand::Key(KeyCommand::List) => {
            let keys = client.call(Method::GET, "/compute/ssh-keys", None).await?;
            client.print(&keys, |k| {
                for key in k["ssh_keys"].as_array().into_iter().flatten() {
                    println!("{}  {}", key["id"], key["name"].as_str().unwrap_or(""));
                }
            });
        }
        ComputeCommand::Key(KeyCommand::Add {
            name,
            public_key_file,
        }) => {
            let public_key = std::fs::read_to_string(&public_key_file)
                .with_context(|| format!("reading {}", public_key_file.display()))?;
            let key = client
                .call(
                    Method::POST,
                    "/compute/ssh-keys",
                    Some(json!({ "name": name, "public_key": public_key.trim() })),
                )
                .await?;
            client.print(&key, |k| println!("{}", k["id"]));
        }
        ComputeCommand::Key(KeyCommand::Delete { id }) => {
            client
                .call(Method::DELETE, &format!("/compute/ssh-keys/{id}"), None)
                .await?;
        }
        ComputeCommand::Terminal { id } => terminal(&client.args, &id).await?,
        ComputeCommand::Watch => watch(&client.args).await?,
    }
    Ok(())
}

/// A WebSocket request to the server's `path`, with the token.
fn socket_request(
    args: &ClientArgs,
    path: &str,
    protocol: Option<&str>,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let base = args.server.trim_end_matches('/');
    let url = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}{path}"),
        None => format!("ws://{}{path}", base.trim_start_matches("http://")),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("{url} is not a WebSocket URL"))?;
    if let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse()?);
    }
    Ok(request)
}

async fn watch(args: &ClientArgs) -> Result<()> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(socket_request(args, "/compute/ws", None)?)
            .await
            .context("cannot open the status stream")?;
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            println!("{text}");
        }
    }
    Ok(())
}

/// Puts this terminal in raw mode until dropped.
struct RawMode {
    saved: Option<rustix::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

fn window_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

async fn terminal(args: &ClientArgs, id: &str) -> Result<()> {
    let (cols, rows) = window_size().unwrap_or((80, 24));
    let path = format!("/compute/containers/{id}/terminal?cols={cols}&rows={rows}");
    let (socket, _) =
        tokio_tungstenite::connect_async(socket_request(args, &path, Some("tessera.terminal.v1"))?)
            .await
            .context("cannot open the terminal (is the container running?)")?;
    let (mut tx, mut rx) = socket.split();
    let raw = RawMode::enter();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buffer = vec![0u8; 4096];
    let mut size = (cols, rows);
    let mut resize = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut exit = 0;
    loop {
        tokio::select! {
            read = stdin.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => tx.send(Message::Binary(buffer[..n].to_vec().into())).await?,
            },
            _ = resize.tick() => {
                if let Some(now) = window_size().filter(|now| *now != size) {
                    size = now;
                    let text = json!({"resize": {"cols": now.0, "rows": now.1}}).to_string();
                    tx.send(Message::Text(text.into())).await?;
                }
            }
            message = rx.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Some(code) = serde_json::from_str::<Value>(&text).ok().and_then(|v| v["exit"].as_i64()) {
                        exit = code;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    drop(raw);
                    bail!("the terminal closed: {err}");
                }
            }
        }
    }
    drop(raw);
    if exit != 0 {
        std::process::exit(i32::try_from(exit).unwrap_or(1));
    }
    Ok(())
}
