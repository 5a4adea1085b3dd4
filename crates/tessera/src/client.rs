//! The client commands (`tessera project|user|token|instance ...`): the
//! native API from a shell, so an operator never edits the database.
//!
//! They talk to a running server given by `--server` / `TESSERA_SERVER`,
//! authenticated by `--token` / `TESSERA_TOKEN`; `--json` prints the API's
//! answers as they are, for scripts.

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::io::BufRead;

#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(
        long,
        env = "TESSERA_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// An API token or access token.
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print the API's JSON answers.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project (a workspace); you become a member of it.
    Create {
        name: String,
        /// The workspace path the provisioning API shows.
        #[arg(long)]
        path: Option<String>,
        /// Make it your active workspace.
        #[arg(long)]
        activate: bool,
    },
    /// List your projects.
    List,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user; the password is read from stdin (one line).
    Create {
        name: String,
        /// admin, operator, member or viewer.
        #[arg(long)]
        role: String,
        #[arg(long)]
        project: String,
        /// Create the user without a password (API tokens only).
        #[arg(long)]
        no_password: bool,
        /// admin or operator over the whole install (install admins only).
        #[arg(long)]
        install_role: Option<String>,
    },
    /// List users.
    List,
    /// Change a user: its role in a project (`none` takes it out), its
    /// install role (`none` takes it away), or whether it is disabled.
    Update {
        /// The user's id.
        id: String,
        /// With --project: admin, operator, member, viewer or none.
        #[arg(long, requires = "project")]
        role: Option<String>,
        #[arg(long, requires = "role")]
        project: Option<String>,
        /// admin, operator or none (install admins only).
        #[arg(long)]
        install_role: Option<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuotaCommand {
    /// Show a project's quota and what it uses.
    Show {
        /// The project [default: your current one].
        #[arg(long)]
        project: Option<String>,
    },
    /// Set a project's limits (install admins): a number, -1 for unlimited,
    /// or `default`.
    Set {
        #[arg(long)]
        project: String,
        #[arg(long, allow_hyphen_values = true)]
        instances: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        vcpus: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        memory_mb: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        volumes: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        volume_gb: Option<String>,
        /// Containers of the containers API (`/compute`).
        #[arg(long, allow_hyphen_values = true)]
        containers: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        ssh_keys: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token and print its secret (shown once).
    Create {
        #[arg(long)]
        project: Option<String>,
        /// Limit the token to a permission; repeat for several.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Another user's id (admins only).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        expires_in_days: Option<i64>,
    },
    /// List API tokens.
    List,
    /// Revoke an API token.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SshKeyCommand {
    /// Add a public key; prints its id (for `instance create --ssh-key`).
    Add {
        name: String,
        /// An OpenSSH public key file (`~/.ssh/id_ed25519.pub`).
        #[arg(long)]
        public_key_file: std::path::PathBuf,
    },
    /// List your project's keys.
    List,
    /// Delete a key.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum JoinTokenCommand {
    /// Create a join token for new hosts' agents and print its secret
    /// (shown once).
    Create {
        #[arg(long)]
        description: Option<String>,
        /// Seconds until it expires (a day by default).
        #[arg(long)]
        ttl_seconds: Option<u64>,
        /// Also let it give this registered host a new agent (replacing
        /// one that is gone): no other token can.
        #[arg(long, value_name = "HOSTNAME")]
        replace: Option<String>,
        /// How many hosts may join with it (by default any number until it
        /// expires).
        #[arg(long)]
        uses: Option<i64>,
        /// Admit an agent under this host name only (register the server
        /// first, with its CPUs, to keep its capacity yours to say).
        #[arg(long, value_name = "HOSTNAME")]
        hostname: Option<String>,
    },
    /// List join tokens.
    List,
    /// Revoke a join token.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum CredentialsCommand {
    /// Create OAuth2 client credentials for the Verda face and print them
    /// as JSON: `{"client_id": ..., "client_secret": ...}` (the secret is
    /// shown once).
    Create {
        /// The project they act in [default: yours].
        #[arg(long)]
        project: Option<String>,
        /// admin, operator, member or viewer [default: member for an
        /// admin, else your own role].
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Keep the role whatever becomes of you: the credential acts for
        /// no user (install admins). Without it, it acts with your current
        /// role in the project and dies with your account.
        #[arg(long)]
        fixed_role: bool,
    },
    /// List credentials.
    List,
    /// Revoke credentials: their tokens stop working.
    Revoke { client_id: String },
}

#[derive(Subcommand, Debug)]
pub enum BalanceCommand {
    /// Add money to a project's balance (admins).
    Add {
        #[arg(long)]
        project: String,
        /// In the catalog's currency.
        amount: f64,
    },
    /// Show a project's balance.
    Show {
        #[arg(long)]
        project: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Create an instance and wait until it runs (or failed).
    Create {
        name: String,
        #[arg(long = "type", default_value = "cx11")]
        instance_type: String,
        #[arg(long, default_value = "ubuntu-22.04")]
        image: String,
        #[arg(long)]
        vcpus: Option<u32>,
        #[arg(long)]
        memory_mb: Option<u64>,
        /// A region or zone.
        #[arg(long)]
        location: Option<String>,
        /// An SSH key id; repeat for several.
        #[arg(long = "ssh-key")]
        ssh_keys: Vec<String>,
        /// Its VPC (id or name) [default: the workspace's default VPC].
        #[arg(long)]
        vpc: Option<String>,
        /// Its subnet (id or name) [default: the VPC's first].
        #[arg(long)]
        subnet: Option<String>,
        /// A security group (id or name); repeat for several [default: the
        /// workspace's default group].
        #[arg(long = "security-group")]
        security_groups: Vec<String>,
        /// A label `key=value`; repeat for several.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A startup script to run at first boot.
        #[arg(long)]
        user_data_file: Option<std::path::PathBuf>,
        /// Answer at once instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// List instances.
    List {
        /// Label selector, e.g. `env=production,team=platform`.
        #[arg(long)]
        labels: Option<String>,
    },
    /// Show an instance.
    Get {
        /// The instance's id, or its name (of one not terminated).
        #[arg(value_name = "ID_OR_NAME")]
        id: String,
    },
    /// Delete an instance and wait until it is gone.
    Delete {
        /// The instance's id, or its name (of one not terminated).
        #[arg(value_name = "ID_OR_NAME")]
        id: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Stop an instance (its disk stays) and wait.
    Stop {
        /// The instance's id, or its name (of one not terminated).
        #[arg(value_name = "ID_OR_NAME")]
        id: String,
    },
    /// Start a stopped instance and wait.
    Start {
        /// The instance's id, or its name (of one not terminated).
        #[arg(value_name = "ID_OR_NAME")]
        id: String,
    },
    /// SSH into an instance as root: at its address, or with `--forwarded`
    /// through the port its host forwards (from another machine).
    Ssh {
        /// The instance's id, or its name (of one not terminated).
        #[arg(value_name = "ID_OR_NAME")]
        id: String,
        /// The private key to log in with.
        #[arg(short = 'i', long)]
        identity: Option<std::path::PathBuf>,
        #[arg(long)]
        forwarded: bool,
        /// A command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

pub(crate) struct Client {
    http: reqwest::Client,
    pub(crate) args: ClientArgs,
}

impl Client {
    pub(crate) fn new(args: ClientArgs) -> Client {
        Client {
            http: reqwest::Client::new(),
            args,
        }
    }

    fn base(&self) -> &str {
        self.args.server.trim_end_matches('/')
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.args.server.trim_end_matches('/'));
        let mut request = self.http.request(method, &url);
        if let Some(token) = self.args.token.as_deref().filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the Tessera server at {}", self.args.server))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            // The native faces' `message`, the containers API's `error`.
            let message = value["message"]
                .as_str()
                .or(value["error"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            if status == reqwest::StatusCode::UNAUTHORIZED
                && self.args.token.as_deref().is_none_or(str::is_empty)
            {
                bail!("{message} (set TESSERA_TOKEN or pass --token)");
            }
            bail!("{message} ({status})");
        }
        Ok(value)
    }

    pub(crate) fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            human(value);
        }
    }

    async fn wait(&self, operation_id: &str) -> Result<Value> {
        loop {
            let op = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/operations/{operation_id}/wait?timeout=60"),
                    None,
                )
                .await?;
            if matches!(
                op["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return Ok(op);
            }
        }
    }
}

pub(crate) fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

pub async fn project(args: ClientArgs, command: ProjectCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        ProjectCommand::Create {
            name,
            path,
            activate,
        } => {
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/v1/workspaces/create",
                    Some(json!({"name": name, "path": path, "activate": activate})),
                )
                .await?;
            client.print(&created, |p| {
                println!("project {} created", text(&p["name"]))
            });
        }
        ProjectCommand::List => {
            let list = client
                .call(reqwest::Method::GET, "/v1/workspaces", None)
                .await?;
            client.print(&list, |list| {
                for p in list.as_array().into_iter().flatten() {
                    let active = if p["active"] == true { "*" } else { " " };
                    println!("{active} {:<24} {}", text(&p["name"]), text(&p["role"]));
                }
            });
        }
    }
    Ok(())
}

pub async fn user(args: ClientArgs, command: UserCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        UserCommand::Create {
            name,
            role,
            project,
            no_password,
            install_role,
        } => {
            let password = if no_password {
                None
            } else {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("reading the password from stdin")?;
                let password = line.trim_end_matches(['\r', '\n']).to_string();
                if password.is_empty() {
                    bail!("no password on stdin (or pass --no-password)");
                }
                Some(password)
            };
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/v1/users",
                    Some(json!({"username": name, "password": password, "workspace": project, "role": role, "install_role": install_role})),
                )
                .await?;
            client.print(&created, |u| {
                println!(
                    "user {} ({}) created: {role} in {project}",
                    text(&u["username"]),
                    text(&u["id"])
                );
            });
        }
        UserCommand::List => {
            let list = client.call(reqwest::Method::GET, "/v1/users", None).await?;
            client.print(&list, |list| {
                for u in list.as_array().into_iter().flatten() {
                    let roles: Vec<String> = u["workspaces"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|m| format!("{}:{}", text(&m["workspace"]), text(&m["role"])))
                        .collect();
                    let disabled = if u["disabled"] == true {
                        " (disabled)"
                    } else {
                        ""
                    };
                    let install = match u["install_role"].as_str() {
                        Some(role) => format!(" install:{role}"),
                        None => String::new(),
                    };
                    println!(
                        "{:<24} {:<22} {}{install}{disabled}",
                        text(&u["username"]),
                        text(&u["id"]),
                        roles.join(" ")
                    );
                }
            });
        }
        UserCommand::Update {
            id,
            role,
            project,
            install_role,
            disable,
            enable,
        } => {
            let mut body = serde_json::Map::new();
            if let (Some(role), Some(project)) = (role, project) {
                body.insert("workspace".into(), json!(project));
                body.insert("role".into(), json!(role));
            }
            if let Some(role) = install_role {
                body.insert("install_role".into(), json!(role));
            }
            if disable || enable {
                body.insert("disabled".into(), json!(disable));
            }
            let updated = client
                .call(
                    reqwest::Method::PATCH,
                    &format!("/v1/users/{id}"),
                    Some(serde_json::Value::Object(body)),
                )
                .await?;
            client.print(&updated, |u| {
                println!("user {} ({}) updated", text(&u["username"]), text(&u["id"]));
            });
        }
    }
    Ok(())
}

/// A limit as `quota set` takes it: a number, `-1`, or `default` (null).
fn limit_value(name: &str, value: &str) -> Result<serde_json::Value> {
    if value == "default" {
        return Ok(serde_json::Value::Null);
    }
    value
        .parse::<i64>()
        .map(|n| json!(n))
        .map_err(|_| anyhow::anyhow!("--{name} takes a number, -1 (unlimited) or default"))
}

pub async fn quota(args: ClientArgs, command: QuotaCommand) -> Result<()> {
    let client = Client::new(args);
    let quota = match command {
        QuotaCommand::Show { project } => {
            let project = match project {
                Some(project) => project,
                None => {
                    let list = client
                        .call(reqwest::Method::GET, "/v1/workspaces", None)
                        .await?;
                    list.as_array()
                        .into_iter()
                        .flatten()
                        .find(|w| w["active"] == true)
                        .map(|w| text(&w["name"]).to_string())
                        .context("you have no current project; pass --project")?
                }
            };
            client
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/workspaces/{project}/quota"),
                    None,
                )
                .await?
        }
        QuotaCommand::Set {
            project,
            instances,
            vcpus,
            memory_mb,
            volumes,
            volume_gb,
            containers,
            ssh_keys,
        } => {
            let mut body = serde_json::Map::new();
            for (name, value) in [
                ("instances", instances),
                ("vcpus", vcpus),
                ("memory_mb", memory_mb),
                ("volumes", volumes),
                ("volume_gb", volume_gb),
                ("containers", containers),
                ("ssh_keys", ssh_keys),
            ] {
                if let Some(value) = value {
                    body.insert(name.into(), limit_value(&name.replace('_', "-"), &value)?);
                }
            }
            client
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/workspaces/{project}/quota"),
                    Some(serde_json::Value::Object(body)),
                )
                .await?
        }
    };
    client.print(&quota, |q| {
        println!("project {}", text(&q["workspace"]));
        for name in [
            "instances",
            "vcpus",
            "memory_mb",
            "volumes",
            "volume_gb",
            "containers",
            "ssh_keys",
        ] {
            let limit = match q["limits"][name].as_i64() {
                Some(-1) => "unlimited".to_string(),
                Some(n) => n.to_string(),
                None => "?".to_string(),
            };
            let source = match q["overrides"][name].is_null() {
                true => "default",
                false => "set",
            };
            println!(
                "  {name:<10} {:>8} used of {limit} ({source})",
                q["usage"][name].as_i64().unwrap_or(0)
            );
        }
    });
    Ok(())
}

pub async fn token(args: ClientArgs, command: TokenCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        TokenCommand::Create {
            project,
            scopes,
            name,
            user,
            expires_in_days,
        } => {
            let scopes = (!scopes.is_empty()).then_some(scopes);
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/v1/tokens",
                    Some(json!({"name": name, "workspace": project, "scopes": scopes, "user_id": user, "expires_in_days": expires_in_days})),
                )
                .await?;
            client.print(&created, |t| {
                eprintln!(
                    "token {} for project {} (shown once):",
                    text(&t["id"]),
                    text(&t["workspace"])
                );
                println!("{}", text(&t["token"]));
            });
        }
        TokenCommand::List => {
            let list = client
                .call(reqwest::Method::GET, "/v1/tokens", None)
                .await?;
            client.print(&list, |list| {
                for t in list.as_array().into_iter().flatten() {
                    let state = if t["revoked_at"].is_string() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<22} {:<16} {:<16} {state}",
                        text(&t["id"]),
                        text(&t["name"]),
                        text(&t["workspace"])
                    );
                }
            });
        }
        TokenCommand::Revoke { id } => {
            client
                .call(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"), None)
                .await?;
            if !client.args.json {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

fn print_instance(i: &Value) {
    let ssh = match i["status"]["ssh_endpoint"].as_str() {
        Some(endpoint) => format!(" ssh={endpoint}"),
        None => String::new(),
    };
    println!(
        "{:<22} {:<20} {:<13} host={} cpus={} ip={}{ssh}",
        text(&i["id"]),
        text(&i["metadata"]["name"]),
        text(&i["status"]["state"]),
        text(&i["status"]["host_id"]),
        text(&i["status"]["cpus"]),
        text(&i["status"]["private_ip"]),
    );
}

pub async fn instance(args: ClientArgs, command: InstanceCommand) -> Result<()> {
    let client = Client::new(args);
    let command_verb = match &command {
        InstanceCommand::Stop { .. } => Some("stop"),
        InstanceCommand::Start { .. } => Some("start"),
        _ => None,
    };
    match command {
        InstanceCommand::Create {
            name,
            instance_type,
            image,
            vcpus,
            memory_mb,
            location,
            ssh_keys,
            vpc,
            subnet,
            security_groups,
            labels,
            user_data_file,
            no_wait,
        } => {
            let mut label_map = serde_json::Map::new();
            for label in labels {
                let (k, v) = label
                    .split_once('=')
                    .with_context(|| format!("label {label:?} is not key=value"))?;
                label_map.insert(k.to_string(), Value::String(v.to_string()));
            }
            let user_data = match user_data_file {
                Some(path) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                None => None,
            };
            let body = json!({
                "metadata": {"name": name, "labels": label_map},
                "spec": {"type": instance_type, "image": image, "vcpus": vcpus, "memory_mb": memory_mb,
                         "location": location, "ssh_key_ids": ssh_keys, "user_data": user_data,
                         "vpc_id": vpc, "subnet_id": subnet, "security_groups": security_groups},
            });
            let created = client
                .call(reqwest::Method::POST, "/v1/instances", Some(body))
                .await?;
            let id = text(&created["id"]).to_string();
            let shown = match (no_wait, created["operation_id"].as_str()) {
                (false, Some(op)) => {
                    let op = client.wait(op).await?;
                    if op["status"] != "completed" {
                        bail!("instance {id} was not created: {}", text(&op["error"]));
                    }
                    client
                        .call(reqwest::Method::GET, &format!("/v1/instances/{id}"), None)
                        .await?
                }
                _ => created,
            };
            client.print(&shown, print_instance);
        }
        InstanceCommand::List { labels } => {
            let items = all_instances(&client, labels.as_deref()).await?;
            let list = json!({ "items": items });
            client.print(&list, |list| {
                for i in list["items"].as_array().into_iter().flatten() {
                    print_instance(i);
                }
            });
        }
        InstanceCommand::Get { id } => {
            let id = instance_id(&client, &id).await?;
            let got = client
                .call(reqwest::Method::GET, &format!("/v1/instances/{id}"), None)
                .await?;
            client.print(&got, print_instance);
        }
        InstanceCommand::Delete { id, no_wait } => {
            let id = instance_id(&client, &id).await?;
            let deleting = client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/instances/{id}"),
                    None,
                )
                .await?;
            if let (false, Some(op)) = (no_wait, deleting["operation_id"].as_str()) {
                let op = client.wait(op).await?;
                if op["status"] != "completed" {
                    bail!("instance {id} was not deleted: {}", text(&op["error"]));
                }
            }
            if !client.args.json {
                println!("instance {id} deleted");
            }
        }
        InstanceCommand::Stop { id } | InstanceCommand::Start { id } => {
            let id = instance_id(&client, &id).await?;
            let verb = match &command_verb {
                Some(verb) => *verb,
                None => "start",
            };
            let changing = client
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/instances/{id}/{verb}"),
                    None,
                )
                .await?;
            if let Some(op) = changing["operation_id"].as_str() {
                let op = client.wait(op).await?;
                if op["status"] != "completed" {
                    bail!("instance {id} did not {verb}: {}", text(&op["error"]));
                }
            }
            let shown = client
                .call(reqwest::Method::GET, &format!("/v1/instances/{id}"), None)
                .await?;
            client.print(&shown, print_instance);
        }
        InstanceCommand::Ssh {
            id,
            identity,
            forwarded,
            command,
        } => {
            let id = instance_id(&client, &id).await?;
            let shown = client
                .call(reqwest::Method::GET, &format!("/v1/instances/{id}"), None)
                .await?;
            let status = &shown["status"];
            let (host, port) = match (forwarded, status["ssh_endpoint"].as_str()) {
                (true, Some(endpoint)) => {
                    let (host, port) = endpoint
                        .rsplit_once(':')
                        .context("the instance's ssh_endpoint is not HOST:PORT")?;
                    (host.trim_matches(['[', ']']).to_string(), port.to_string())
                }
                (true, None) => bail!("instance {id}'s host forwards no SSH port"),
                (false, _) => match status["private_ip"].as_str().filter(|ip| !ip.is_empty()) {
                    Some(ip) => (ip.to_string(), "22".to_string()),
                    None => bail!(
                        "instance {id} has no address yet (it is {})",
                        text(&status["state"])
                    ),
                },
            };
            let mut ssh = std::process::Command::new("ssh");
            if let Some(identity) = identity {
                ssh.arg("-i").arg(identity);
            }
            // Host keys are remembered by instance, not by address: an
            // address a deleted instance had may come back with a new key.
            ssh.args(["-o", &format!("HostKeyAlias=tessera-{id}")])
                .args(["-o", "StrictHostKeyChecking=accept-new"])
                .args(["-p", &port, &format!("root@{host}")])
                .args(command);
            let ended = ssh
                .status()
                .context("cannot run ssh (is an SSH client installed?)")?;
            if !ended.success() {
                std::process::exit(ended.code().unwrap_or(255));
            }
        }
    }
    Ok(())
}

/// Every instance of the caller's workspace that is not terminated (with
/// `labels`, those the selector matches), page after page.
async fn all_instances(client: &Client, labels: Option<&str>) -> Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut page_token: Option<String> = None;
    loop {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", "1000");
        if let Some(selector) = labels {
            query.append_pair("labels", selector);
        }
        if let Some(token) = &page_token {
            query.append_pair("page_token", token);
        }
        let path = format!("/v1/instances?{}", query.finish());
        let mut page = client.call(reqwest::Method::GET, &path, None).await?;
        if let Value::Array(more) = page["items"].take() {
            items.extend(more);
        }
        match page["next_page_token"].as_str() {
            Some(token) => page_token = Some(token.to_string()),
            None => return Ok(items),
        }
    }
}

/// The id of the instance `id_or_name` names: an id (`inst-` and 28 hex
/// digits) as it is, else the one instance of the workspace, not
/// terminated, of that name (`inst-web` is a name).
async fn instance_id(client: &Client, id_or_name: &str) -> Result<String> {
    let id_shaped = id_or_name
        .strip_prefix("inst-")
        .is_some_and(|digits| digits.len() == 28 && digits.bytes().all(|b| b.is_ascii_hexdigit()));
    if id_shaped {
        return Ok(id_or_name.to_string());
    }
    let named: Vec<String> = all_instances(client, None)
        .await?
        .iter()
        .filter(|i| i["metadata"]["name"] == id_or_name)
        .map(|i| text(&i["id"]).to_string())
        .collect();
    match named.as_slice() {
        [id] => Ok(id.clone()),
        [] => {
            bail!("no instance is named {id_or_name:?} (a terminated one is known by its id only)")
        }
        ids => bail!(
            "{} instances are named {id_or_name:?} ({}): give the id of one",
            ids.len(),
            ids.join(", ")
        ),
    }
}

pub async fn join_token(args: ClientArgs, command: JoinTokenCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        JoinTokenCommand::Create {
            description,
            ttl_seconds,
            replace,
            uses,
            hostname,
        } => {
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/v1/servers/join-tokens",
                    Some(json!({"description": description, "ttl_seconds": ttl_seconds, "replaces": replace, "uses": uses, "hostname": hostname})),
                )
                .await?;
            client.print(&created, |t| {
                eprintln!(
                    "join token {} (shown once), valid until {}; on the new host run\n  \
                     TESSERA_JOIN_TOKEN=TOKEN tessera agent --server {}",
                    text(&t["id"]),
                    text(&t["expires_at"]),
                    client.base()
                );
                println!("{}", text(&t["token"]));
            });
        }
        JoinTokenCommand::List => {
            let list = client
                .call(reqwest::Method::GET, "/v1/servers/join-tokens", None)
                .await?;
            client.print(&list, |list| {
                for t in list.as_array().into_iter().flatten() {
                    let state = match t["revoked"].as_bool() {
                        Some(true) => "revoked",
                        _ => "active",
                    };
                    println!(
                        "{:<22} {:<28} {state} {}",
                        text(&t["id"]),
                        text(&t["expires_at"]),
                        text(&t["description"])
                    );
                }
            });
        }
        JoinTokenCommand::Revoke { id } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/servers/join-tokens/{id}"),
                    None,
                )
                .await?;
            eprintln!("join token {id} revoked");
        }
    }
    Ok(())
}

pub async fn ssh_key(args: ClientArgs, command: SshKeyCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        SshKeyCommand::Add {
            name,
            public_key_file,
        } => {
            let public_key = std::fs::read_to_string(&public_key_file)
                .with_context(|| format!("cannot read {}", public_key_file.display()))?;
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/v1/ssh-keys",
                    Some(json!({"name": name, "public_key": public_key.trim()})),
                )
                .await?;
            client.print(&created, |k| println!("{}", text(&k["id"])));
        }
        SshKeyCommand::List => {
            let list = client
                .call(reqwest::Method::GET, "/v1/ssh-keys", None)
                .await?;
            client.print(&list, |list| {
                let items = list.get("items").unwrap_or(list);
                for k in items.as_array().into_iter().flatten() {
                    println!(
                        "{:<22} {:<20} {}",
                        text(&k["id"]),
                        text(&k["name"]),
                        text(&k["fingerprint"])
                    );
                }
            });
        }
        SshKeyCommand::Delete { id } => {
            client
                .call(reqwest::Method::DELETE, &format!("/v1/ssh-keys/{id}"), None)
                .await?;
            eprintln!("ssh key {id} deleted");
        }
    }
    Ok(())
}

pub async fn credentials(args: ClientArgs, command: CredentialsCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        CredentialsCommand::Create {
            project,
            role,
            description,
            fixed_role,
        } => {
            let created = client
                .call(
                    reqwest::Method::POST,
                    "/v1/credentials",
                    Some(json!({"project": project, "role": role, "description": description, "fixed_role": fixed_role})),
                )
                .await?;
            eprintln!(
                "credentials for project {} (role {}); the secret is shown once",
                text(&created["project"]),
                text(&created["role"])
            );
            println!(
                "{}",
                json!({"client_id": created["client_id"], "client_secret": created["client_secret"]})
            );
        }
        CredentialsCommand::List => {
            let list = client
                .call(reqwest::Method::GET, "/v1/credentials", None)
                .await?;
            client.print(&list, |list| {
                for c in list.as_array().into_iter().flatten() {
                    let state = match c["revoked"].as_bool() {
                        Some(true) => "revoked",
                        _ => "active",
                    };
                    println!(
                        "{:<22} {:<16} {:<9} {state} {}",
                        text(&c["client_id"]),
                        text(&c["project"]),
                        text(&c["role"]),
                        text(&c["description"])
                    );
                }
            });
        }
        CredentialsCommand::Revoke { client_id } => {
            client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/v1/credentials/{client_id}"),
                    None,
                )
                .await?;
            eprintln!("credentials {client_id} revoked");
        }
    }
    Ok(())
}

pub async fn balance(args: ClientArgs, command: BalanceCommand) -> Result<()> {
    let client = Client::new(args);
    let shown = match command {
        BalanceCommand::Add { project, amount } => {
            client
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/workspaces/{project}/balance/top-ups"),
                    Some(json!({ "amount": amount })),
                )
                .await?
        }
        BalanceCommand::Show { project } => {
            client
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/workspaces/{project}/balance"),
                    None,
                )
                .await?
        }
    };
    client.print(&shown, |b| {
        println!(
            "{}: {} {}",
            text(&b["project"]),
            b["amount"].as_f64().unwrap_or_default(),
            text(&b["currency"])
        );
    });
    Ok(())
}
