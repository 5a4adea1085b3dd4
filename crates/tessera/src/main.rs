//! `tessera`: the one binary of a Tessera cloud.

use anyhow::Result;
use clap::{Parser, Subcommand};
use tessera::agent::{AgentArgs, ImageCommand};
use tessera::bench::BenchCommand;
use tessera::client::{
    self, BalanceCommand, ClientArgs, CredentialsCommand, InstanceCommand, JoinTokenCommand,
    ProjectCommand, QuotaCommand, SshKeyCommand, TokenCommand, UserCommand,
};
use tessera::settings::ServerArgs;
use tessera::{logging, server};

/// mimalloc, not glibc's allocator: a request's rows, JSON and buffers
/// are many small short-lived allocations, and glibc's malloc and free
/// were a third of a busy control plane's CPU (`tessera bench fleet`
/// under perf; README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Tessera: a self-hosted compute cloud"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The control plane and a local agent in one process: the one-command
    /// cloud.
    Up(tessera::up::UpArgs),
    /// Run the control plane.
    Server(ServerArgs),
    /// Run a host's agent: join the control plane and run what it places
    /// here.
    Agent(AgentArgs),
    /// Images on this host, for the container driver.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write every face's OpenAPI document into a directory (default `openapi`).
    Openapi {
        #[arg(default_value = "openapi")]
        dir: std::path::PathBuf,
    },
    /// Projects (workspaces), through a running server.
    Project {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Users, through a running server.
    User {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// API tokens, through a running server.
    Token {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// SSH keys, through a running server.
    SshKey {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: SshKeyCommand,
    },
    /// VPCs of your workspace, through a running server.
    Vpc {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: tessera::networks::VpcCommand,
    },
    /// Subnets of your workspace's VPCs, through a running server.
    Subnet {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: tessera::networks::SubnetCommand,
    },
    /// Security groups of your workspace (inbound rules its instances'
    /// hosts enforce), through a running server.
    SecurityGroup {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: tessera::networks::SecurityGroupCommand,
    },
    /// Keys that call your workspace's serverless deployments through the
    /// front door (`/inference/<deployment>`), through a running server.
    InferenceKey {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: tessera::deployments::InferenceKeyCommand,
    },
    /// Join tokens for new hosts' agents, through a running server.
    JoinToken {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// OAuth2 client credentials for the Verda face, through a running
    /// server.
    Credentials {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Project quotas, through a running server.
    Quota {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: QuotaCommand,
    },
    /// Project balances, through a running server.
    Balance {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: BalanceCommand,
    },
    /// Instances, through a running server.
    Instance {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: InstanceCommand,
    },
    /// Containers of the containers API (`/compute`), through a running
    /// server: create, SSH, ingress, mounts, a terminal, the status stream.
    Compute {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: tessera::compute::ComputeCommand,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse()) {
        // The chain of causes, without a backtrace: these are for users.
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => tessera::up::run(args).await,
            Command::Server(args) => run_server(args).await,
            Command::Agent(args) => run_agent(args).await,
            Command::Image(command) => tessera::agent::image(command).await,
            Command::Bench(command) => {
                logging::init(logging::LogFormat::Text);
                command.run().await
            }
            Command::Openapi { dir } => {
                std::fs::create_dir_all(&dir)?;
                for (name, text) in tessera_faces::openapi_documents() {
                    std::fs::write(dir.join(name), text)?;
                    println!("wrote {}", dir.join(name).display());
                }
                Ok(())
            }
            Command::Project { client, command } => client::project(client, command).await,
            Command::User { client, command } => client::user(client, command).await,
            Command::Token { client, command } => client::token(client, command).await,
            Command::Instance { client, command } => client::instance(client, command).await,
            Command::SshKey { client, command } => client::ssh_key(client, command).await,
            Command::Vpc { client, command } => tessera::networks::vpc(client, command).await,
            Command::Subnet { client, command } => tessera::networks::subnet(client, command).await,
            Command::SecurityGroup { client, command } => {
                tessera::networks::security_group(client, command).await
            }
            Command::InferenceKey { client, command } => {
                tessera::deployments::inference_key(client, command).await
            }
            Command::JoinToken { client, command } => client::join_token(client, command).await,
            Command::Credentials { client, command } => client::credentials(client, command).await,
            Command::Balance { client, command } => client::balance(client, command).await,
            Command::Quota { client, command } => client::quota(client, command).await,
            Command::Compute { client, command } => tessera::compute::run(client, command).await,
        }
    })
}

async fn run_server(args: ServerArgs) -> Result<()> {
    let settings = args.resolve()?;
    logging::init(settings.log_format);
    let running = server::start(&settings).await?;
    if let Some(token) = &running.new_admin_token {
        println!(
            "\nThe bootstrap admin token, shown this once (only its hash is stored):\n\n    \
             export TESSERA_TOKEN={token}\n"
        );
    }
    println!("Tessera is serving on {}", running.url());
    if let Some(gateway) = &running.gateway {
        println!(
            "Ingress gateway for *.{}: {}",
            running.app.compute_config().domain,
            gateway.describe()
        );
    }
    server::stop_signal().await;
    tracing::info!("stopping");
    running.shutdown().await
}

async fn run_agent(args: AgentArgs) -> Result<()> {
    logging::init(logging::LogFormat::Text);
    args.warn_of_a_visible_token();
    let options = args.options()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let stopping = stop.clone();
    tokio::spawn(async move {
        server::stop_signal().await;
        stopping.cancel();
    });
    tessera_agent::runtime::run(options, stop).await
}
