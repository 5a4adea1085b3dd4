//! `tessera`: the one binary of a Tessera cloud.

use anyhow::Result;
use clap::{Parser, Subcommand};
use tessera::bench::BenchCommand;
use tessera::settings::ServerArgs;
use tessera::{logging, server};

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
    /// Run the control plane.
    Server(ServerArgs),
    /// Run benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Write every face's OpenAPI document into a directory (default `openapi`).
    Openapi {
        #[arg(default_value = "openapi")]
        dir: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Server(args) => run_server(args).await,
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
    server::stop_signal().await;
    tracing::info!("stopping");
    running.shutdown().await
}
