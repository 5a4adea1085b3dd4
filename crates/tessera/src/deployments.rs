//! `tessera inference-key ...`: the keys that call a workspace's
//! serverless deployments through the front door, from a shell.

use crate::client::{Client, ClientArgs, text};
use anyhow::Result;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub enum InferenceKeyCommand {
    /// Make a key; prints it (it is shown this once).
    Create { name: String },
    /// List your workspace's keys (their names and first characters).
    List,
    /// Revoke a key (by id or name): the front door refuses it at once.
    Revoke { id: String },
}

pub async fn inference_key(args: ClientArgs, command: InferenceKeyCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        InferenceKeyCommand::Create { name } => {
            let body = json!({ "name": name });
            let made = client
                .call(Method::POST, "/v1/inference-keys", Some(body))
                .await?;
            client.print(&made, |k| println!("{}", text(&k["key"])));
        }
        InferenceKeyCommand::List => {
            let list = client.call(Method::GET, "/v1/inference-keys", None).await?;
            client.print(&list, |list| {
                for k in list["items"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let k: &Value = k;
                    println!(
                        "{:<38} {:<20} {}…",
                        text(&k["id"]),
                        text(&k["name"]),
                        text(&k["prefix"])
                    );
                }
            });
        }
        InferenceKeyCommand::Revoke { id } => {
            client
                .call(Method::DELETE, &format!("/v1/inference-keys/{id}"), None)
                .await?;
            eprintln!("inference key {id} revoked");
        }
    }
    Ok(())
}
