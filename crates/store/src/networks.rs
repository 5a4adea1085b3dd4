//! A project's private networks: VPCs, their subnets, security groups,
//! which groups an instance is a member of, and the addresses instances
//! are given in their subnets.

use crate::db::{Arg, Conn, DbError};
use crate::writer::Commit;
use crate::{Result, Store, now};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tessera_core::network;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VpcRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub cidr: String,
    pub is_default: i64,
    pub created_at: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SubnetRecord {
    pub id: String,
    pub project_id: String,
    pub vpc_id: String,
    pub name: String,
    pub cidr: String,
    pub is_default: i64,
    pub created_at: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SecurityGroupRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub description: String,
    /// JSON: `Vec<tessera_core::network::InboundRule>`.
    pub rules: String,
    pub is_default: i64,
    pub created_at: String,
    pub updated_at: String,
}

const VPC_COLUMNS: &str = "id, project_id, name, cidr, is_default, created_at";
const SUBNET_COLUMNS: &str = "id, project_id, vpc_id, name, cidr, is_default, created_at";
const GROUP_COLUMNS: &str =
    "id, project_id, name, description, rules, is_default, created_at, updated_at";

/// Where an instance sits in its network.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct InstancePlace {
    pub address: String,
    pub subnet_cidr: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
}

/// Where a new VPC's or subnet's block comes from.
#[derive(Clone, Debug)]
pub enum Block {
    /// As the user gave it.
    Given(Ipv4Net),
    /// The first free block of this size in a pool (the install's VPC
    /// pool, or the VPC of a subnet).
    From { pool: Ipv4Net, prefix: u8 },
}

/// A new VPC, with the subnet and security group made with it (the
/// project's default ones).
#[derive(Clone, Debug)]
pub struct NewVpc {
    /// Its `cidr` is set from `block`.
    pub vpc: VpcRecord,
    pub block: Block,
    /// Its `cidr` empty: the VPC's whole block.
    pub subnet: Option<SubnetRecord>,
    pub group: Option<SecurityGroupRecord>,
    /// The most VPCs its project may have, this one included.
    pub limit: Option<i64>,
}

/// How adding a VPC or subnet went; nothing changed unless `Added`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkAdded {
    Added {
        cidr: String,
    },
    NameTaken,
    /// The block overlaps this one (a VPC's anywhere in the install, or a
    /// subnet's in the same VPC), of this project or another.
    Overlaps {
        block: String,
        own: bool,
    },
    /// The project has this many VPCs already: its limit.
    Limit(i64),
    /// The subnet's VPC was deleted meanwhile.
    Gone,
    /// No free block of the size is left in the pool.
    Full,
    /// The project already has a default VPC: nothing was added.
    DefaultExists,
}

/// How recording an instance's attachment went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attached {
    Address(String),
    /// The subnet has no free address.
    Full,
    /// The subnet or a group was deleted meanwhile.
    Gone,
}

/// How deleting a network object went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkRemoved {
    Removed,
    NotFound,
    /// Instances that are not terminated use it (one of their ids).
    InUse(String),
}

/// What the store gives an instance in its network when recording it.
#[derive(Clone, Debug)]
pub struct NewAttachment {
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Net,
    pub groups: Vec<String>,
}

impl Store {
    pub async fn vpcs(&self, project_id: &str) -> Result<Vec<VpcRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {VPC_COLUMNS} FROM vpcs WHERE project_id = $1 ORDER BY created_at, id"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// A project's VPC by its id or name.
    pub async fn vpc(&self, project_id: &str, id_or_name: &str) -> Result<Option<VpcRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {VPC_COLUMNS} FROM vpcs WHERE project_id = $1 AND (id = $2 OR name = $2) \
                 ORDER BY (id = $2) DESC LIMIT 1"
            ),
            &[project_id.into(), id_or_name.into()],
        )
        .await
    }

    pub async fn default_vpc(&self, project_id: &str) -> Result<Option<VpcRecord>> {
        self.fetch_optional(
            &format!("SELECT {VPC_COLUMNS} FROM vpcs WHERE project_id = $1 AND is_default = 1"),
            &[project_id.into()],
        )
        .await
    }

    /// A project's subnets, or one VPC's.
    pub async fn subnets(
        &self,
        project_id: &str,
        vpc_id: Option<&str>,
    ) -> Result<Vec<SubnetRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {SUBNET_COLUMNS} FROM subnets WHERE project_id = $1 \
                 AND ($2 = '' OR vpc_id = $2) ORDER BY created_at, id"
            ),
            &[project_id.into(), vpc_id.unwrap_or("").into()],
        )
        .await
    }

    /// A project's subnet by its id, or by its name within `vpc_id`.
    pub async fn subnet(
        &self,
        project_id: &str,
        id_or_name: &str,
        vpc_id: Option<&str>,
    ) -> Result<Option<SubnetRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {SUBNET_COLUMNS} FROM subnets WHERE project_id = $1 \
                 AND (id = $2 OR (name = $2 AND vpc_id = $3)) ORDER BY (id = $2) DESC LIMIT 1"
            ),
            &[
                project_id.into(),
                id_or_name.into(),
                vpc_id.unwrap_or("").into(),
            ],
        )
        .await
    }

    /// How many instances that are not terminated have an address in a
    /// subnet (a terminated instance's address row goes with it): the sum
    /// of the counts the schema's triggers keep (migration 0023), a few
    /// rows whatever the subnet's size.
    pub async fn subnet_addresses_used(&self, subnet_id: &str) -> Result<i64> {
        let row: Option<(i64,)> = self
            .fetch_optional(
                "SELECT CAST(COALESCE(SUM(used), 0) AS BIGINT) FROM subnet_address_counts \
                 WHERE subnet_id = $1",
                &[subnet_id.into()],
            )
            .await?;
        Ok(row.map_or(0, |r| r.0))
    }

    pub async fn security_groups(&self, project_id: &str) -> Result<Vec<SecurityGroupRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM security_groups WHERE project_id = $1 \
                 ORDER BY created_at, id"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// A project's security group by its id or name.
    pub async fn security_group(
        &self,
        project_id: &str,
        id_or_name: &str,
    ) -> Result<Option<SecurityGroupRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {GROUP_COLUMNS} FROM security_groups WHERE project_id = $1 \
                 AND (id = $2 OR name = $2) ORDER BY (id = $2) DESC LIMIT 1"
            ),
            &[project_id.into(), id_or_name.into()],
        )
        .await
    }

    /// The security groups an instance is a member of, in the order of
    /// their ids.
    pub async fn instance_security_groups(
        &self,
        instance_id: &str,
    ) -> Result<Vec<SecurityGroupRecord>> {
        let columns = GROUP_COLUMNS
            .split(", ")
            .map(|c| format!("g.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.fetch_all(
            &format!(
                "SELECT {columns} FROM security_groups g \
                 JOIN instance_security_groups m ON m.group_id = g.id \
                 WHERE m.instance_id = $1 ORDER BY g.id"
            ),
            &[instance_id.into()],
        )
        .await
    }

    /// The ids of instances that are not terminated and are members of a
    /// group.
    pub async fn security_group_members(&self, group_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT m.instance_id FROM instance_security_groups m \
                 JOIN instances i ON i.id = m.instance_id \
                 WHERE m.group_id = $1 AND i.state <> 'terminated' ORDER BY m.instance_id",
                &[group_id.into()],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// Adds a VPC (with its subnet and group), choosing its block when
    /// asked. VPCs are made one at a time across the install, so two never
    /// overlap.
    pub async fn insert_vpc(&self, new: &NewVpc) -> Result<NetworkAdded> {
        let new = Arc::new(new.clone());
        self.write("insert_vpc", move |mut conn| {
            let new = new.clone();
            Box::pin(async move { insert_vpc(&mut conn, &new).await })
        })
        .await
    }

    /// Adds a subnet in its VPC, choosing its block when asked.
    pub async fn insert_subnet(
        &self,
        subnet: &SubnetRecord,
        block: &Block,
    ) -> Result<NetworkAdded> {
        let work = Arc::new((subnet.clone(), block.clone()));
        self.write("insert_subnet", move |mut conn| {
            let work = work.clone();
            Box::pin(async move {
                let (subnet, block) = &*work;
                // The VPC is held against its deletion meanwhile.
                let lock = lock_clause(&conn, "FOR UPDATE");
                let vpc = conn
                    .fetch_text(
                        &format!("SELECT id FROM vpcs WHERE id = $1{lock}"),
                        &[(&subnet.vpc_id).into()],
                    )
                    .await?;
                if vpc.is_none() {
                    return Ok(Commit::Undo(NetworkAdded::Gone));
                }
                insert_subnet(&mut conn, subnet, block).await
            })
        })
        .await
    }

    /// Deletes a VPC and its subnets, unless an instance is in one.
    pub async fn delete_vpc(&self, project_id: &str, id: &str) -> Result<NetworkRemoved> {
        self.remove_unless_used(
            "delete_vpc",
            Removal {
                table: "vpcs",
                in_use: "SELECT i.id FROM instances i JOIN instance_addresses a \
                         ON a.instance_id = i.id JOIN subnets s ON s.id = a.subnet_id \
                         WHERE s.vpc_id = $1 AND i.state <> 'terminated' LIMIT 1",
                // Its subnets are held against instances given addresses
                // there meanwhile (which hold them FOR SHARE).
                locked: Some("SELECT id FROM subnets WHERE vpc_id = $1"),
                dependents: &[
                    "DELETE FROM instance_addresses WHERE subnet_id IN \
                     (SELECT id FROM subnets WHERE vpc_id = $1)",
                    "DELETE FROM subnets WHERE vpc_id = $1",
                ],
            },
            project_id,
            id,
        )
        .await
    }

    /// Deletes a subnet, unless an instance is in it.
    pub async fn delete_subnet(&self, project_id: &str, id: &str) -> Result<NetworkRemoved> {
        self.remove_unless_used(
            "delete_subnet",
            Removal {
                table: "subnets",
                in_use: "SELECT i.id FROM instances i JOIN instance_addresses a \
                         ON a.instance_id = i.id \
                         WHERE a.subnet_id = $1 AND i.state <> 'terminated' LIMIT 1",
                locked: None,
                dependents: &["DELETE FROM instance_addresses WHERE subnet_id = $1"],
            },
            project_id,
            id,
        )
        .await
    }

    /// Deletes a row of the project (held against concurrent use) unless
    /// an instance that is not terminated uses it; its dependents go first.
    async fn remove_unless_used(
        &self,
        what: &'static str,
        removal: Removal,
        project_id: &str,
        id: &str,
    ) -> Result<NetworkRemoved> {
        let work = Arc::new((project_id.to_string(), id.to_string()));
        self.write(what, move |mut conn| {
            let work = work.clone();
            Box::pin(async move {
                let (project_id, id) = &*work;
                let lock = lock_clause(&conn, "FOR UPDATE");
                let table = removal.table;
                let found = conn
                    .fetch_text(
                        &format!("SELECT id FROM {table} WHERE id = $1 AND project_id = $2{lock}"),
                        &[id.into(), project_id.into()],
                    )
                    .await?;
                if found.is_none() {
                    return Ok(Commit::Undo(NetworkRemoved::NotFound));
                }
                if let Some(locked) = removal.locked {
                    conn.fetch_texts(&format!("{locked}{lock}"), &[id.into()])
                        .await?;
                }
                if let Some(user) = conn.fetch_text(removal.in_use, &[id.into()]).await? {
                    return Ok(Commit::Undo(NetworkRemoved::InUse(user)));
                }
                for statement in removal.dependents {
                    conn.execute(statement, &[id.into()]).await?;
                }
                conn.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[id.into()])
                    .await?;
                Ok(Commit::Keep(NetworkRemoved::Removed))
            })
        })
        .await
    }

    /// Adds a security group; `false` when the project has one of its name.
    pub async fn insert_security_group(&self, group: &SecurityGroupRecord) -> Result<bool> {
        let group = Arc::new(group.clone());
        self.write("insert_security_group", move |mut conn| {
            let group = group.clone();
            Box::pin(async move {
                Ok(match insert_group(&mut conn, &group).await? {
                    true => Commit::Keep(true),
                    false => Commit::Undo(false),
                })
            })
        })
        .await
    }

    /// Replaces a group's rules (JSON); `false` when it is gone.
    pub async fn set_security_group_rules(
        &self,
        project_id: &str,
        id: &str,
        description: &str,
        rules: &str,
    ) -> Result<bool> {
        let counts = self
            .run_statements(
                "set_security_group_rules",
                vec![(
                    "UPDATE security_groups SET rules = $1, description = $2, updated_at = $3 \
                     WHERE id = $4 AND project_id = $5"
                        .into(),
                    vec![
                        rules.into(),
                        description.into(),
                        now().into(),
                        id.into(),
                        project_id.into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Deletes a security group no instance that is not terminated is a
    /// member of.
    pub async fn delete_security_group(
        &self,
        project_id: &str,
        id: &str,
    ) -> Result<NetworkRemoved> {
        self.remove_unless_used(
            "delete_security_group",
            Removal {
                table: "security_groups",
                in_use: "SELECT i.id FROM instances i JOIN instance_security_groups m \
                         ON m.instance_id = i.id \
                         WHERE m.group_id = $1 AND i.state <> 'terminated' LIMIT 1",
                locked: None,
                dependents: &["DELETE FROM instance_security_groups WHERE group_id = $1"],
            },
            project_id,
            id,
        )
        .await
    }
}

/// What [`Store::remove_unless_used`] removes: a row of `table`, unless
/// `in_use` (its id as `$1`) names an instance; `locked` rows (by its id)
/// are held first, and `dependents` (by its id) go before it.
#[derive(Clone, Copy)]
struct Removal {
    table: &'static str,
    in_use: &'static str,
    locked: Option<&'static str>,
    dependents: &'static [&'static str],
}

async fn insert_vpc(conn: &mut Conn<'_>, new: &NewVpc) -> Result<Commit<NetworkAdded>, DbError> {
    if conn.is_postgres() {
        // One VPC at a time across the install: blocks never overlap.
        conn.execute("LOCK TABLE vpcs IN SHARE ROW EXCLUSIVE MODE", &[])
            .await?;
    }
    let vpc = &new.vpc;
    if vpc.is_default == 1
        && conn
            .fetch_text(
                "SELECT id FROM vpcs WHERE project_id = $1 AND is_default = 1",
                &[(&vpc.project_id).into()],
            )
            .await?
            .is_some()
    {
        return Ok(Commit::Undo(NetworkAdded::DefaultExists));
    }
    if let Some(limit) = new.limit {
        let have = conn
            .fetch_int(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM vpcs WHERE project_id = $1",
                &[(&vpc.project_id).into()],
            )
            .await?
            .unwrap_or(0);
        if have >= limit {
            return Ok(Commit::Undo(NetworkAdded::Limit(have)));
        }
    }
    let own = blocks(
        conn.fetch_texts(
            "SELECT cidr FROM vpcs WHERE project_id = $1",
            &[(&vpc.project_id).into()],
        )
        .await?,
    );
    let taken = blocks(conn.fetch_texts("SELECT cidr FROM vpcs", &[]).await?);
    let block = match choose(&new.block, &taken) {
        Ok(block) => block,
        Err(NetworkAdded::Overlaps { block, .. }) => {
            let own = own.iter().any(|b| b.to_string() == block);
            return Ok(Commit::Undo(NetworkAdded::Overlaps { block, own }));
        }
        Err(refused) => return Ok(Commit::Undo(refused)),
    };
    let cidr = block.to_string();
    let added = conn
        .execute(
            &format!(
                "INSERT INTO vpcs ({VPC_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (project_id, name) DO NOTHING"
            ),
            &[
                (&vpc.id).into(),
                (&vpc.project_id).into(),
                (&vpc.name).into(),
                (&cidr).into(),
                vpc.is_default.into(),
                (&vpc.created_at).into(),
            ],
        )
        .await?;
    if added != 1 {
        return Ok(Commit::Undo(NetworkAdded::NameTaken));
    }
    if let Some(subnet) = &new.subnet {
        let mut subnet = subnet.clone();
        subnet.vpc_id = vpc.id.clone();
        let whole = Block::Given(block);
        if let Commit::Undo(refused) = insert_subnet(conn, &subnet, &whole).await? {
            return Ok(Commit::Undo(refused));
        }
    }
    if let Some(group) = &new.group
        && !insert_group(conn, group).await?
    {
        // The project made a group of that name itself: it keeps it, and
        // the default VPC is made without one.
        tracing::info!(project = %vpc.project_id, name = %group.name, "a security group of the default's name exists");
    }
    Ok(Commit::Keep(NetworkAdded::Added { cidr }))
}

async fn insert_subnet(
    conn: &mut Conn<'_>,
    subnet: &SubnetRecord,
    block: &Block,
) -> Result<Commit<NetworkAdded>, DbError> {
    let taken = blocks(
        conn.fetch_texts(
            "SELECT cidr FROM subnets WHERE vpc_id = $1",
            &[(&subnet.vpc_id).into()],
        )
        .await?,
    );
    let block = match choose(block, &taken) {
        Ok(block) => block,
        Err(refused) => return Ok(Commit::Undo(refused)),
    };
    let cidr = block.to_string();
    let added = conn
        .execute(
            &format!(
                "INSERT INTO subnets ({SUBNET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (vpc_id, name) DO NOTHING"
            ),
            &[
                (&subnet.id).into(),
                (&subnet.project_id).into(),
                (&subnet.vpc_id).into(),
                (&subnet.name).into(),
                (&cidr).into(),
                subnet.is_default.into(),
                (&subnet.created_at).into(),
            ],
        )
        .await?;
    Ok(match added {
        1 => Commit::Keep(NetworkAdded::Added { cidr }),
        _ => Commit::Undo(NetworkAdded::NameTaken),
    })
}

async fn insert_group(conn: &mut Conn<'_>, g: &SecurityGroupRecord) -> Result<bool, DbError> {
    let added = conn
        .execute(
            &format!(
                "INSERT INTO security_groups ({GROUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (project_id, name) DO NOTHING"
            ),
            &[
                (&g.id).into(),
                (&g.project_id).into(),
                (&g.name).into(),
                (&g.description).into(),
                (&g.rules).into(),
                g.is_default.into(),
                (&g.created_at).into(),
                (&g.updated_at).into(),
            ],
        )
        .await?;
    Ok(added == 1)
}

fn blocks(texts: Vec<String>) -> Vec<Ipv4Net> {
    texts.iter().filter_map(|t| t.parse().ok()).collect()
}

/// The block to use: the one given if it overlaps none taken, or the first
/// free one of the pool.
fn choose(block: &Block, taken: &[Ipv4Net]) -> std::result::Result<Ipv4Net, NetworkAdded> {
    match block {
        Block::Given(net) => match taken.iter().find(|t| network::overlap(net, t)) {
            Some(other) => Err(NetworkAdded::Overlaps {
                block: other.to_string(),
                own: true,
            }),
            None => Ok(*net),
        },
        Block::From { pool, prefix } => {
            network::first_free_block(pool, *prefix, taken).ok_or(NetworkAdded::Full)
        }
    }
}

/// Gives a new instance (written in this transaction) the first free
/// address of its subnet and makes it a member of its groups. `None`: the
/// subnet is full. An address whose instance is terminated is free again.
pub(crate) async fn attach_instance(
    conn: &mut Conn<'_>,
    instance_id: &str,
    attachment: &NewAttachment,
) -> Result<Attached, DbError> {
    // The subnet and groups are held against their deletion meanwhile,
    // in one statement: the subnet's row and every group's.
    let lock = lock_clause(conn, "FOR SHARE");
    let groups: std::collections::BTreeSet<&String> = attachment.groups.iter().collect();
    let mut args: Vec<Arg> = vec![(&attachment.subnet_id).into()];
    let mut listed = Vec::new();
    for group in &groups {
        args.push((*group).into());
        listed.push(format!("${}", args.len()));
    }
    let group_rows = match listed.is_empty() {
        true => "SELECT id FROM security_groups WHERE 1 = 0".to_string(),
        false => format!(
            "SELECT id FROM security_groups WHERE id IN ({}){lock}",
            listed.join(", ")
        ),
    };
    // On PostgreSQL the instance joins its groups in the same statement
    // (one round trip, not two): when the subnet or a group is gone the
    // caller undoes the whole write, memberships with it.
    let join_now = conn.is_postgres() && !groups.is_empty();
    let joined = match join_now {
        true => {
            args.push(instance_id.into());
            format!(
                ", m AS (INSERT INTO instance_security_groups (instance_id, group_id) \
                 SELECT ${}, id FROM g WHERE EXISTS (SELECT 1 FROM s) \
                 ON CONFLICT (instance_id, group_id) DO NOTHING RETURNING 1)",
                args.len()
            )
        }
        false => String::new(),
    };
    let counted_joins = match join_now {
        true => ", (SELECT COUNT(*) FROM m)",
        false => "",
    };
    let found = conn
        .fetch_ints(
            &format!(
                "WITH s AS (SELECT id FROM subnets WHERE id = $1{lock}), g AS ({group_rows}){joined} \
                 SELECT (SELECT COUNT(*) FROM s), (SELECT COUNT(*) FROM g){counted_joins}"
            ),
            &args,
        )
        .await?;
    if found.get(..2) != Some(&[1, groups.len() as i64][..]) {
        return Ok(Attached::Gone);
    }
    if !groups.is_empty() && !join_now {
        let values: Vec<String> = (0..groups.len())
            .map(|i| format!("($1, ${})", i + 2))
            .collect();
        let mut args: Vec<Arg> = vec![instance_id.into()];
        args.extend(groups.iter().map(|g| Arg::from(*g)));
        conn.execute(
            &format!(
                "INSERT INTO instance_security_groups (instance_id, group_id) VALUES {} \
                 ON CONFLICT (instance_id, group_id) DO NOTHING",
                values.join(", ")
            ),
            &args,
        )
        .await?;
    }
    take_free_address(conn, instance_id, attachment).await
}

/// [`attach_instance`]'s first round trip as common table expressions of
/// the PostgreSQL statement that writes the instance (the `n`th of its
/// instances), after the statement's `usage` (its usage rows, taken before
/// any address: `quotas::usage_rows_first`): the subnet and the groups
/// held against their deletion, the groups joined, and the address this
/// process's hint gives tried. The statement's instance row takes
/// [`AttachInStatement::private_ip`] as its address, and the statement
/// answers [`AttachInStatement::counts`]; [`attached_after`] reads them
/// and, when the tried address was taken, looks further. Two round trips
/// fewer per creation.
pub(crate) struct AttachInStatement {
    /// `name AS (...)` each, parameters from `$1`.
    pub ctes: Vec<(String, Vec<Arg>)>,
    /// What the instance's `private_ip` is written as.
    pub private_ip: String,
    /// The subnet held, the groups held, the address taken: a count each.
    pub counts: [String; 3],
    groups: usize,
    tried: Option<String>,
}

pub(crate) fn attach_in_statement(
    n: usize,
    instance_id: &str,
    attachment: &NewAttachment,
    tried: Option<String>,
) -> AttachInStatement {
    let groups: std::collections::BTreeSet<&String> = attachment.groups.iter().collect();
    let (subnet, held, joined, taken) = (
        format!("a{n}_s"),
        format!("a{n}_g"),
        format!("a{n}_m"),
        format!("a{n}_t"),
    );
    let mut ctes = vec![(
        format!(
            "{subnet} AS (SELECT id FROM subnets WHERE id = $1 AND {} FOR SHARE)",
            crate::quotas::AFTER_USAGE_ROWS
        ),
        vec![Arg::from(&attachment.subnet_id)],
    )];
    match groups.is_empty() {
        true => ctes.push((
            format!("{held} AS (SELECT id FROM security_groups WHERE 1 = 0)"),
            Vec::new(),
        )),
        false => {
            let listed: Vec<String> = (1..=groups.len()).map(|i| format!("${i}")).collect();
            ctes.push((
                format!(
                    "{held} AS (SELECT id FROM security_groups WHERE id IN ({}) FOR SHARE)",
                    listed.join(", ")
                ),
                groups.iter().map(|g| Arg::from(*g)).collect(),
            ));
            ctes.push((
                format!(
                    "{joined} AS (INSERT INTO instance_security_groups (instance_id, group_id) \
                     SELECT $1, id FROM {held} WHERE EXISTS (SELECT 1 FROM {subnet}) \
                     ON CONFLICT (instance_id, group_id) DO NOTHING RETURNING 1)"
                ),
                vec![instance_id.into()],
            ));
        }
    }
    let private_ip = match &tried {
        Some(address) => {
            ctes.push((
                format!(
                    "{taken} AS (INSERT INTO instance_addresses (subnet_id, address, instance_id) \
                     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM {subnet}) \
                     ON CONFLICT (subnet_id, address) DO NOTHING RETURNING address)"
                ),
                vec![
                    Arg::from(&attachment.subnet_id),
                    address.into(),
                    instance_id.into(),
                ],
            ));
            format!("COALESCE((SELECT address FROM {taken}), '')")
        }
        None => {
            ctes.push((
                format!("{taken} AS (SELECT address FROM instance_addresses WHERE 1 = 0)"),
                Vec::new(),
            ));
            "''".to_string()
        }
    };
    AttachInStatement {
        ctes,
        private_ip,
        counts: [
            format!("(SELECT COUNT(*) FROM {subnet})"),
            format!("(SELECT COUNT(*) FROM {held})"),
            format!("(SELECT COUNT(*) FROM {taken})"),
        ],
        groups: groups.len(),
        tried,
    }
}

/// The address this process's hint gives a new instance in its subnet, to
/// try first; `None` until the process has looked at the subnet's used
/// addresses once.
pub(crate) fn address_hint(attachment: &NewAttachment) -> Option<String> {
    let last = network::last_instance_address(&attachment.subnet_cidr).map_or(0, u32::from);
    next_address_hint(&attachment.subnet_id, last).map(|n| Ipv4Addr::from(n).to_string())
}

/// How the attachment begun in the instance's statement went, from its
/// [`AttachInStatement::counts`], looking further for an address (as
/// [`attach_instance`] does) when the one tried was taken.
pub(crate) async fn attached_after(
    conn: &mut Conn<'_>,
    instance_id: &str,
    attachment: &NewAttachment,
    begun: &AttachInStatement,
    counts: &[i64],
) -> Result<Attached, DbError> {
    if counts.get(..2) != Some(&[1, begun.groups as i64][..]) {
        return Ok(Attached::Gone);
    }
    if let (Some(address), Some(1)) = (&begun.tried, counts.get(2)) {
        return Ok(Attached::Address(address.clone()));
    }
    take_free_address(conn, instance_id, attachment).await
}

/// Gives a new instance, held in its subnet, the first free address there
/// ([`attach_instance`]).
pub(crate) async fn take_free_address(
    conn: &mut Conn<'_>,
    instance_id: &str,
    attachment: &NewAttachment,
) -> Result<Attached, DbError> {
    let subnet = &attachment.subnet_id;
    // First the addresses after the last one this process gave in the
    // subnet: while the subnet has not wrapped, the first of them is free,
    // and a creation reads nothing of the subnet's other instances.
    let last = network::last_instance_address(&attachment.subnet_cidr).map_or(0, u32::from);
    for _ in 0..HINTED_PROBES {
        let Some(n) = next_address_hint(subnet, last) else {
            break;
        };
        let address = Ipv4Addr::from(n);
        if take_address(conn, subnet, &address, instance_id).await? {
            return Ok(Attached::Address(address.to_string()));
        }
    }
    // Then read which are used: the hint starts again at the lowest free
    // address (unless it is still live) and hands out the free ones from
    // there, so creations that got here together each try their own.
    let used: std::collections::HashSet<u32> = conn
        .fetch_texts(
            "SELECT address FROM instance_addresses WHERE subnet_id = $1",
            &[subnet.into()],
        )
        .await?
        .iter()
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .map(u32::from)
        .collect();
    let free = || {
        network::instance_addresses(&attachment.subnet_cidr)
            .map(u32::from)
            .filter(|n| !used.contains(n))
    };
    if let Some(lowest) = free().next() {
        restart_address_hint(subnet, lowest, last);
    }
    while let Some(n) = next_address_hint(subnet, last) {
        if used.contains(&n) {
            continue;
        }
        let address = Ipv4Addr::from(n);
        if take_address(conn, subnet, &address, instance_id).await? {
            return Ok(Attached::Address(address.to_string()));
        }
    }
    // The hint ran out: free addresses it passed (those of creations that
    // rolled back), lowest first.
    for n in free() {
        let address = Ipv4Addr::from(n);
        if take_address(conn, subnet, &address, instance_id).await? {
            return Ok(Attached::Address(address.to_string()));
        }
    }
    Ok(Attached::Full)
}

/// How many addresses after the hint are tried before reading the subnet.
const HINTED_PROBES: usize = 8;

/// The next address this process will try in each subnet: after the last
/// one it gave or tried. Only a hint of where a free one likely is: the
/// store's key on (subnet, address) decides, whatever other processes gave
/// meanwhile.
static ADDRESS_HINTS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, u32>>> =
    std::sync::LazyLock::new(Default::default);

/// An address to try in `subnet`, up to `last`, that no other creation in
/// this process is trying: each is handed out once, so that concurrent
/// creations do not all insert the same address and, on PostgreSQL, wait
/// for each other's commit to learn that they lost. One whose transaction
/// rolls back stays free, for the lowest-free search once the hint has
/// passed the subnet's end.
fn next_address_hint(subnet: &str, last: u32) -> Option<u32> {
    let mut hints = ADDRESS_HINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let next = hints.get_mut(subnet)?;
    let n = *next;
    if n > last {
        return None;
    }
    *next = n.saturating_add(1);
    Some(n)
}

/// Starts `subnet`'s hint at `lowest`, the lowest free address a read
/// found, unless it is still live (it has not passed the subnet's end).
fn restart_address_hint(subnet: &str, lowest: u32, last: u32) {
    let mut hints = ADDRESS_HINTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let next = hints.entry(subnet.to_string()).or_insert(lowest);
    if *next > last {
        *next = lowest;
    }
}

/// Gives `address` to the instance unless another instance holds it (one
/// given it meanwhile by another replica) or, on PostgreSQL, a transaction
/// in flight is giving or freeing it. Terminated instances hold none.
async fn take_address(
    conn: &mut Conn<'_>,
    subnet: &str,
    address: &Ipv4Addr,
    instance_id: &str,
) -> Result<bool, DbError> {
    let address = address.to_string();
    let args: [Arg; 3] = [subnet.into(), (&address).into(), instance_id.into()];
    if conn.is_postgres() {
        // One round trip: the instance shows the address only if it got
        // it. An address a transaction in flight holds is passed over, not
        // waited for: this transaction holds its counter rows by now, and
        // that one may be about to wait for them (migration 0048).
        let taken = conn
            .fetch_int(
                "SELECT CASE WHEN take_address_unless_busy($1, $2, $3) THEN 1 ELSE 0 END",
                &args,
            )
            .await?;
        return Ok(taken == Some(1));
    }
    let taken = conn
        .execute(
            "INSERT INTO instance_addresses (subnet_id, address, instance_id) \
             VALUES ($1, $2, $3) ON CONFLICT (subnet_id, address) DO NOTHING",
            &args,
        )
        .await?;
    if taken == 1 {
        conn.execute(
            "UPDATE instances SET private_ip = $1 WHERE id = $2",
            &[(&address).into(), instance_id.into()],
        )
        .await?;
    }
    Ok(taken == 1)
}

/// A row lock on PostgreSQL (SQLite has one writer: nothing to lock).
fn lock_clause(conn: &Conn<'_>, lock: &str) -> String {
    match conn.is_postgres() {
        true => format!(" {lock}"),
        false => String::new(),
    }
}
