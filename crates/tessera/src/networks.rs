//! `tessera vpc|subnet|security-group ...`: a workspace's private networks
//! from a shell. A security group's rules are written
//! `PROTOCOL[:PORTS][@SOURCE]`: `tcp:22`, `tcp:80-443@203.0.113.0/24`,
//! `icmp`, `all@web` (the members of group `web`).

use crate::client::{Client, ClientArgs, text};
use anyhow::{Result, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub enum VpcCommand {
    /// Make a VPC; prints its id.
    Create {
        name: String,
        /// Its block, within the cloud's VPC pool [default: a free /20 of it].
        #[arg(long)]
        cidr_block: Option<String>,
    },
    /// List your workspace's VPCs (the default one first).
    List,
    /// Delete a VPC and its subnets.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SubnetCommand {
    /// Make a subnet in a VPC; prints its id.
    Create {
        name: String,
        /// Its VPC (id or name).
        #[arg(long)]
        vpc: String,
        /// Its block, within the VPC's [default: the first free /24].
        #[arg(long)]
        cidr_block: Option<String>,
    },
    /// List your workspace's subnets.
    List {
        /// Only this VPC's (id or name).
        #[arg(long)]
        vpc: Option<String>,
    },
    /// Delete a subnet.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum SecurityGroupCommand {
    /// Make a security group; prints its id.
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A rule, `PROTOCOL[:PORTS][@SOURCE]`; repeat for several [default:
        /// tcp:22 from anywhere].
        #[arg(long = "allow")]
        rules: Vec<String>,
        /// Let nothing in (no rule at all).
        #[arg(long, conflicts_with = "rules")]
        closed: bool,
    },
    /// List your workspace's groups with their rules.
    List,
    /// Replace a group's rules (its running members apply them at once).
    SetRules {
        id: String,
        /// A rule, `PROTOCOL[:PORTS][@SOURCE]`; none: let nothing in.
        #[arg(long = "allow")]
        rules: Vec<String>,
    },
    /// Delete a group.
    Delete { id: String },
}

/// A rule as the API takes it, from `PROTOCOL[:PORTS][@SOURCE]`; a source
/// with a `/` or that is an address is a block, anything else a group.
pub fn parse_rule(text: &str) -> Result<Value> {
    let (what, source) = match text.split_once('@') {
        Some((what, source)) => (what, Some(source)),
        None => (text, None),
    };
    let (protocol, ports) = match what.split_once(':') {
        Some((protocol, ports)) => (protocol, Some(ports)),
        None => (what, None),
    };
    if protocol.is_empty() || ports.is_some_and(str::is_empty) || source.is_some_and(str::is_empty)
    {
        bail!("rule {text:?} is not PROTOCOL[:PORTS][@SOURCE], as tcp:22@203.0.113.0/24");
    }
    let mut rule = json!({"protocol": protocol});
    if let Some(ports) = ports {
        rule["port_range"] = json!(ports);
    }
    match source {
        Some(s) if s.contains('/') || s.parse::<std::net::Ipv4Addr>().is_ok() => {
            rule["cidr"] = json!(s);
        }
        Some(group) => rule["source_security_group"] = json!(group),
        None => {}
    }
    Ok(rule)
}

/// A rule as [`parse_rule`] reads it.
fn show_rule(rule: &Value) -> String {
    let mut out = rule["protocol"].as_str().unwrap_or("?").to_string();
    if let Some(ports) = rule["port_range"].as_str() {
        out = format!("{out}:{ports}");
    }
    match (
        rule["cidr"].as_str(),
        rule["source_security_group"].as_str(),
    ) {
        (Some(cidr), _) => format!("{out}@{cidr}"),
        (None, Some(group)) => format!("{out}@{group}"),
        (None, None) => out,
    }
}

/// A group's rules in the short form, space-separated.
fn show_rules(group: &Value) -> String {
    let rules: Vec<String> = group["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(show_rule)
        .collect();
    rules.join(" ")
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

fn default_mark(value: &Value) -> &'static str {
    match value["is_default"].as_bool() {
        Some(true) => " (default)",
        _ => "",
    }
}

pub async fn vpc(args: ClientArgs, command: VpcCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        VpcCommand::Create { name, cidr_block } => {
            let body = json!({"name": name, "cidr_block": cidr_block});
            let made = client.call(Method::POST, "/v1/vpcs", Some(body)).await?;
            client.print(&made, |v| println!("{}", text(&v["id"])));
        }
        VpcCommand::List => {
            let list = client.call(Method::GET, "/v1/vpcs", None).await?;
            client.print(&list, |list| {
                for v in items(list) {
                    let (id, name, block) =
                        (text(&v["id"]), text(&v["name"]), text(&v["cidr_block"]));
                    println!("{id:<22} {name:<20} {block}{}", default_mark(v));
                }
            });
        }
        VpcCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("/v1/vpcs/{id}"), None)
                .await?;
            eprintln!("VPC {id} deleted");
        }
    }
    Ok(())
}

pub async fn subnet(args: ClientArgs, command: SubnetCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        SubnetCommand::Create {
            name,
            vpc,
            cidr_block,
        } => {
            let body = json!({"name": name, "vpc_id": vpc, "cidr_block": cidr_block});
            let made = client.call(Method::POST, "/v1/subnets", Some(body)).await?;
            client.print(&made, |s| println!("{}", text(&s["id"])));
        }
        SubnetCommand::List { vpc } => {
            let path = match vpc {
                Some(vpc) => format!(
                    "/v1/subnets?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("vpc_id", &vpc)
                        .finish()
                ),
                None => "/v1/subnets".to_string(),
            };
            let list = client.call(Method::GET, &path, None).await?;
            client.print(&list, |list| {
                for s in items(list) {
                    println!(
                        "{:<25} {:<16} {:<20} {:<18} free={}{}",
                        text(&s["id"]),
                        text(&s["name"]),
                        text(&s["vpc_id"]),
                        text(&s["cidr_block"]),
                        s["available_ips"],
                        default_mark(s)
                    );
                }
            });
        }
        SubnetCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("/v1/subnets/{id}"), None)
                .await?;
            eprintln!("subnet {id} deleted");
        }
    }
    Ok(())
}

pub async fn security_group(args: ClientArgs, command: SecurityGroupCommand) -> Result<()> {
    let client = Client::new(args);
    match command {
        SecurityGroupCommand::Create {
            name,
            description,
            rules,
            closed,
        } => {
            let mut body = json!({"name": name, "description": description});
            if closed || !rules.is_empty() {
                let rules: Vec<Value> =
                    rules.iter().map(|r| parse_rule(r)).collect::<Result<_>>()?;
                body["rules"] = json!(rules);
            }
            let made = client
                .call(Method::POST, "/v1/security-groups", Some(body))
                .await?;
            client.print(&made, |g| println!("{}", text(&g["id"])));
        }
        SecurityGroupCommand::List => {
            let list = client
                .call(Method::GET, "/v1/security-groups", None)
                .await?;
            client.print(&list, |list| {
                for g in items(list) {
                    println!(
                        "{:<22} {:<16} {}{}",
                        text(&g["id"]),
                        text(&g["name"]),
                        show_rules(g),
                        default_mark(g)
                    );
                }
            });
        }
        SecurityGroupCommand::SetRules { id, rules } => {
            let rules: Vec<Value> = rules.iter().map(|r| parse_rule(r)).collect::<Result<_>>()?;
            let set = client
                .call(
                    Method::PUT,
                    &format!("/v1/security-groups/{id}"),
                    Some(json!({"rules": rules})),
                )
                .await?;
            client.print(&set, |g| println!("{} {}", text(&g["id"]), show_rules(g)));
        }
        SecurityGroupCommand::Delete { id } => {
            client
                .call(Method::DELETE, &format!("/v1/security-groups/{id}"), None)
                .await?;
            eprintln!("security group {id} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_read_from_the_short_form() {
        assert_eq!(
            parse_rule("tcp:22").expect("rule"),
            json!({"protocol": "tcp", "port_range": "22"})
        );
        assert_eq!(
            parse_rule("tcp:80-443@203.0.113.0/24").expect("rule"),
            json!({"protocol": "tcp", "port_range": "80-443", "cidr": "203.0.113.0/24"})
        );
        assert_eq!(
            parse_rule("udp@192.0.2.7").expect("rule"),
            json!({"protocol": "udp", "cidr": "192.0.2.7"})
        );
        assert_eq!(
            parse_rule("all@web").expect("rule"),
            json!({"protocol": "all", "source_security_group": "web"})
        );
        for bad in ["", ":22", "tcp:", "tcp@", "@web"] {
            assert!(parse_rule(bad).is_err(), "{bad:?}");
        }
        for text in ["tcp:22", "tcp:80-443@203.0.113.0/24", "all@web", "icmp"] {
            assert_eq!(show_rule(&parse_rule(text).expect("rule")), text);
        }
    }
}
