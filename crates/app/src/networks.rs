//! A project's private networks: VPCs, subnets and security groups.
//!
//! Every project has a default VPC (`default`, a /20 of the install's VPC
//! pool) with one default subnet over all of it, and a default security
//! group (`default`: SSH and ping from anywhere, everything from its own
//! members), made the first time the project needs them. An instance that
//! names none of them goes there. Its address is the first free one of its
//! subnet, given when it is recorded, and its hosts route it there; its
//! security groups' inbound rules are enforced on its host (`firewall.rs`
//! of the container driver). Instances of different VPCs never reach each
//! other. No two VPCs of the install overlap, whichever projects own them:
//! hosts route instances' addresses without an overlay.
//!
//! References (`vpc_id`, `subnet_id`, `security_groups`, a rule's
//! `source_security_group`) take an id or a name. An instance's spec shows
//! them as asked (the defaults' ids where none were); its membership and
//! address are kept by id.
//!
//! VPC blocks lie within the install's VPC pool (`--vpc-pool`): hosts route
//! instances' addresses, so a block elsewhere could take over addresses of
//! the operator's network or of the internet on the hosts.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::instances::{Instance, InstanceSpecInput};
use crate::{App, has_nul, new_id};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::sync::PoisonError;
use tessera_agent_api::NetworkAttachment;
use tessera_core::Permission;
use tessera_core::network::{self, GroupRules, InboundRule, Ports, Protocol, Source};
use tessera_core::status::InstanceState;
use tessera_store::{
    Block, NetworkAdded, NetworkRemoved, NewAttachment, NewVpc, SecurityGroupRecord, SubnetRecord,
    VpcRecord,
};

/// The size of a VPC's block when none is asked for (a sixteenth of a
/// narrower pool, down to /28).
pub const DEFAULT_VPC_PREFIX: u8 = 20;

/// The most projects whose defaults one process keeps; past it, it starts
/// over.
const KNOWN_DEFAULTS: usize = 10_000;

/// A project's default network, as a new instance is attached to it.
#[derive(Clone)]
struct KnownDefaults {
    vpc: VpcRecord,
    subnet: SubnetRecord,
    /// `None`: the project has no default group (a group of its own took
    /// the name), so new instances must name theirs.
    group: Option<String>,
}

/// The most subnets named by new instances that one process keeps; past
/// it, it starts over.
const KNOWN_SUBNETS: usize = 10_000;

/// Projects' default networks, and the subnets new instances named, as
/// this process read them. A subnet never changes (its block, VPC and
/// name are fixed); it can only go, and an instance's write refuses a
/// subnet that is gone (`NetworkGone`), which forgets its project's.
#[derive(Default)]
pub(crate) struct KnownNetworks {
    defaults: std::sync::Mutex<HashMap<String, KnownDefaults>>,
    /// By project, the VPC a name is looked for in, and the id or name.
    subnets: std::sync::Mutex<HashMap<(String, String, String), SubnetRecord>>,
}

impl KnownNetworks {
    fn get(&self, project_id: &str) -> Option<KnownDefaults> {
        self.defaults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(project_id)
            .cloned()
    }

    fn keep(&self, project_id: &str, known: &KnownDefaults) {
        let mut map = self.defaults.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= KNOWN_DEFAULTS {
            map.clear();
        }
        map.insert(project_id.to_string(), known.clone());
    }

    fn subnet(&self, project_id: &str, within: &str, reference: &str) -> Option<SubnetRecord> {
        self.subnets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(project_id.into(), within.into(), reference.into()))
            .cloned()
    }

    fn keep_subnet(&self, project_id: &str, within: &str, reference: &str, subnet: &SubnetRecord) {
        let mut map = self.subnets.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= KNOWN_SUBNETS {
            map.clear();
        }
        map.insert(
            (project_id.into(), within.into(), reference.into()),
            subnet.clone(),
        );
    }

    fn forget(&self, project_id: &str) {
        self.defaults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(project_id);
        self.subnets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(project, _, _), _| project != project_id);
    }
}

/// The size of VPCs' blocks when none is asked for, in `pool`.
fn default_vpc_prefix(pool: &Ipv4Net) -> u8 {
    (pool.prefix_len() + 4).clamp(DEFAULT_VPC_PREFIX, network::NARROWEST_PREFIX)
}
/// The size of a subnet's block when none is asked for (or the VPC's, if
/// narrower).
pub const DEFAULT_SUBNET_PREFIX: u8 = 24;
/// The most VPCs a project may have, its default one included (as AWS's
/// default quota per region): the install's VPC pool is shared by every
/// project.
pub const MAX_VPCS_PER_PROJECT: i64 = 5;
/// The name of a project's default VPC, subnet and security group.
pub const DEFAULT_NAME: &str = "default";

#[derive(Clone, Debug)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub cidr_block: String,
    pub is_default: bool,
    pub created_at: String,
}

impl From<VpcRecord> for Vpc {
    fn from(r: VpcRecord) -> Vpc {
        Vpc {
            id: r.id,
            name: r.name,
            cidr_block: r.cidr,
            is_default: r.is_default != 0,
            created_at: r.created_at,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub cidr_block: String,
    pub is_default: bool,
    /// Addresses still free for instances.
    pub available_ips: u64,
    pub created_at: String,
}

#[derive(Clone, Debug)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: Vec<InboundRule>,
    pub is_default: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl SecurityGroup {
    fn from_record(r: SecurityGroupRecord) -> Result<SecurityGroup> {
        let rules = stored_rules(&r.id, &r.rules)?;
        Ok(SecurityGroup {
            id: r.id,
            name: r.name,
            description: r.description,
            rules,
            is_default: r.is_default != 0,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A security group's rules as the store keeps them (JSON).
fn stored_rules(id: &str, rules: &str) -> Result<Vec<InboundRule>> {
    serde_json::from_str(rules)
        .map_err(|e| Error::corrupt(format!("rules of security group {id}: {e}")))
}

#[derive(Clone, Debug, Default)]
pub struct CreateVpc {
    pub name: String,
    pub cidr_block: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateSubnet {
    pub vpc_id: String,
    pub name: String,
    pub cidr_block: Option<String>,
}

/// A rule as asked for.
#[derive(Clone, Debug, Default)]
pub struct RuleInput {
    /// `tcp`, `udp`, `icmp` or `all`.
    pub protocol: String,
    /// `22` or `8000-8100`, for TCP and UDP; none: every port.
    pub port_range: Option<String>,
    /// Where from; neither this nor `source_security_group`: anywhere.
    pub cidr: Option<String>,
    /// Instances of this group (id or name; the group itself by its own
    /// name before it exists).
    pub source_security_group: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateSecurityGroup {
    pub name: String,
    pub description: Option<String>,
    /// None: SSH from anywhere, as clouds' new groups do not; say `[]` for
    /// a group that lets nothing in.
    pub rules: Option<Vec<RuleInput>>,
}

#[derive(Clone, Debug, Default)]
pub struct SetRules {
    pub description: Option<String>,
    pub rules: Vec<RuleInput>,
}

/// A VPC's, subnet's or group's name (`id_prefix`: its kind's ids). Each
/// is found by id or name, so a name may not have the shape of the kind's
/// ids (a `vpc-abc123` of the seed's examples may).
fn check_name(field: &'static str, name: &str, id_prefix: &str) -> Result<String> {
    let name = name.trim();
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(Error::invalid(
            field,
            format!("{field} must be 1 to 63 letters, digits, '-', '_' or '.'"),
        ));
    }
    if crate::has_id_shape(id_prefix, name) {
        return Err(Error::invalid(
            field,
            format!(
                "{field} {name:?} has the shape of an id ({id_prefix}- and 28 hex digits); \
                 ids are found by name too, so choose another"
            ),
        ));
    }
    Ok(name.to_string())
}

fn block(field: &'static str, text: &str) -> Result<Ipv4Net> {
    let net = network::parse_block(text).map_err(|e| Error::invalid(field, e.0))?;
    network::check_block_size(&net).map_err(|e| Error::invalid(field, e.0))?;
    Ok(net)
}

/// A reference that names nothing is the request's fault (400, naming
/// `field`); any other failure stays what it is.
fn missing(field: &'static str, message: String) -> impl FnOnce(Error) -> Error {
    move |e| match e {
        Error::NotFound(_) => Error::invalid(field, message),
        other => other,
    }
}

fn parse_stored_block(what: &str, text: &str) -> Result<Ipv4Net> {
    text.parse()
        .map_err(|_| Error::corrupt(format!("{what} has the block {text:?}")))
}

impl App {
    /// The project's default VPC, subnet and group, made if missing.
    pub(crate) async fn default_network(
        &self,
        project_id: &str,
    ) -> Result<(VpcRecord, SubnetRecord)> {
        for _ in 0..3 {
            if let Some(vpc) = self.store.default_vpc(project_id).await? {
                let subnets = self.store.subnets(project_id, Some(&vpc.id)).await?;
                let subnet = subnets
                    .into_iter()
                    .find(|s| s.is_default != 0)
                    .ok_or_else(|| {
                        Error::corrupt(format!("VPC {} has no default subnet", vpc.id))
                    })?;
                return Ok((vpc, subnet));
            }
            let now = tessera_store::now();
            let vpc_id = new_id("vpc");
            let group_id = new_id("sg");
            let rules = serde_json::to_string(&network::default_rules(&group_id))
                .unwrap_or_else(|_| "[]".into());
            let new = NewVpc {
                vpc: VpcRecord {
                    id: vpc_id.clone(),
                    project_id: project_id.to_string(),
                    name: DEFAULT_NAME.into(),
                    cidr: String::new(),
                    is_default: 1,
                    created_at: now.clone(),
                },
                block: Block::From {
                    pool: self.config.vpc_pool,
                    prefix: default_vpc_prefix(&self.config.vpc_pool),
                },
                subnet: Some(SubnetRecord {
                    id: new_id("subnet"),
                    project_id: project_id.to_string(),
                    vpc_id,
                    name: DEFAULT_NAME.into(),
                    cidr: String::new(),
                    is_default: 1,
                    created_at: now.clone(),
                }),
                group: Some(SecurityGroupRecord {
                    id: group_id,
                    project_id: project_id.to_string(),
                    name: DEFAULT_NAME.into(),
                    description: "SSH and ping from anywhere; everything from its members".into(),
                    rules,
                    is_default: 1,
                    created_at: now.clone(),
                    updated_at: now,
                }),
                limit: None,
            };
            match self.store.insert_vpc(&new).await? {
                NetworkAdded::Added { cidr } => {
                    tracing::info!(project = %project_id, %cidr, "default VPC made");
                }
                // Made meanwhile, or the name was taken by the project's
                // own VPC: read again.
                NetworkAdded::DefaultExists => {}
                NetworkAdded::NameTaken => {
                    return Err(Error::Conflict(format!(
                        "the project has a VPC named {DEFAULT_NAME} that is not its default; \
                         name the VPC and subnet of new instances (spec.vpc_id, spec.subnet_id)"
                    )));
                }
                NetworkAdded::Full
                | NetworkAdded::Overlaps { .. }
                | NetworkAdded::Limit(_)
                | NetworkAdded::Gone => {
                    return Err(Error::NoCapacity(format!(
                        "the cloud's VPC pool {} has no free /{} left for this workspace's \
                         default VPC; the operator can widen --vpc-pool",
                        self.config.vpc_pool,
                        default_vpc_prefix(&self.config.vpc_pool)
                    )));
                }
            }
        }
        Err(Error::Unavailable(
            "making the default VPC; try again".into(),
        ))
    }

    /// A project's default VPC, subnet and group, as this process last
    /// read them. None of them can be deleted or changed, so they are read
    /// once per project, not at each creation; should the project go (and
    /// them with it), the store refuses the attachment and
    /// [`App::forget_networks`] drops what was known.
    async fn known_defaults(&self, project_id: &str) -> Result<KnownDefaults> {
        if let Some(known) = self.networks.get(project_id) {
            return Ok(known);
        }
        let (vpc, subnet) = self.default_network(project_id).await?;
        let group = match self.default_group(project_id).await {
            Ok(group) => Some(group.id),
            // A group of the project's own took the name: kept as known.
            Err(Error::Conflict(_)) => None,
            Err(err) => return Err(err),
        };
        let known = KnownDefaults { vpc, subnet, group };
        self.networks.keep(project_id, &known);
        Ok(known)
    }

    /// Forgets what this process knew of a project's networks: the store
    /// said some are gone, or one was deleted here.
    pub(crate) fn forget_networks(&self, project_id: &str) {
        self.networks.forget(project_id);
    }

    /// The project's default security group, made with its default VPC
    /// (the caller has made sure of that).
    async fn default_group(&self, project_id: &str) -> Result<SecurityGroupRecord> {
        self.store
            .security_groups(project_id)
            .await?
            .into_iter()
            .find(|g| g.is_default != 0)
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "the project has no default security group (a group of its own is named \
                     {DEFAULT_NAME}); name the groups of new instances (spec.security_groups)"
                ))
            })
    }

    pub async fn vpcs(&self, caller: &Principal) -> Result<Vec<Vpc>> {
        caller.require(Permission::NetworkRead)?;
        self.default_network(&caller.project_id).await?;
        let vpcs = self.store.vpcs(&caller.project_id).await?;
        Ok(vpcs.into_iter().map(Vpc::from).collect())
    }

    async fn project_vpc(&self, project_id: &str, id: &str) -> Result<VpcRecord> {
        let found = match has_nul(id) {
            true => None,
            false => self.store.vpc(project_id, id).await?,
        };
        found.ok_or_else(|| Error::NotFound(format!("VPC {id} not found")))
    }

    pub async fn vpc(&self, caller: &Principal, id: &str) -> Result<Vpc> {
        caller.require(Permission::NetworkRead)?;
        self.default_network(&caller.project_id).await?;
        Ok(self.project_vpc(&caller.project_id, id).await?.into())
    }

    pub async fn create_vpc(&self, caller: &Principal, req: CreateVpc) -> Result<Vpc> {
        caller.require(Permission::NetworkWrite)?;
        let name = check_name("name", &req.name, "vpc")?;
        let pool = self.config.vpc_pool;
        let chosen = match &req.cidr_block {
            // Within the pool only: hosts route VPC addresses, so a block
            // elsewhere could take over addresses of the operator's own
            // network, or of the internet, on the hosts.
            Some(text) => match block("cidr_block", text)? {
                net if pool.contains(&net) => Block::Given(net),
                net => {
                    return Err(Error::invalid(
                        "cidr_block",
                        format!("cidr_block {net} is not within this cloud's VPC pool {pool}"),
                    ));
                }
            },
            None => Block::From {
                pool: self.config.vpc_pool,
                prefix: default_vpc_prefix(&self.config.vpc_pool),
            },
        };
        // The default comes first, so that it is the project's first.
        self.default_network(&caller.project_id).await?;
        let vpc = VpcRecord {
            id: new_id("vpc"),
            project_id: caller.project_id.clone(),
            name: name.clone(),
            cidr: String::new(),
            is_default: 0,
            created_at: tessera_store::now(),
        };
        let new = NewVpc {
            vpc: vpc.clone(),
            block: chosen,
            subnet: None,
            group: None,
            limit: Some(MAX_VPCS_PER_PROJECT),
        };
        match self.store.insert_vpc(&new).await? {
            NetworkAdded::Added { cidr } => {
                tracing::info!(vpc = %vpc.id, %cidr, project = %caller.project_name, "VPC made");
                Ok(Vpc {
                    cidr_block: cidr,
                    ..vpc.into()
                })
            }
            NetworkAdded::NameTaken => Err(Error::Conflict(format!(
                "a VPC named {name} already exists"
            ))),
            NetworkAdded::Overlaps { block, own: true } => Err(Error::Conflict(format!(
                "cidr_block {} overlaps {block}, the block of another VPC of this workspace",
                req.cidr_block.unwrap_or_default()
            ))),
            // Another project's block is not named.
            NetworkAdded::Overlaps { own: false, .. } => Err(Error::Conflict(format!(
                "cidr_block {} overlaps a VPC block in use in this cloud (VPCs never overlap); choose another block, or none to be given a free one",
                req.cidr_block.unwrap_or_default()
            ))),
            NetworkAdded::Limit(have) => {
                Err(Error::QuotaExceeded(tessera_core::quota::QuotaExceeded {
                    resource: "vpcs",
                    limit: MAX_VPCS_PER_PROJECT,
                    used: have,
                    requested: 1,
                }))
            }
            NetworkAdded::Full => Err(Error::NoCapacity(format!(
                "the cloud's VPC pool {} has no free /{} left; give a cidr_block",
                self.config.vpc_pool,
                default_vpc_prefix(&self.config.vpc_pool)
            ))),
            NetworkAdded::DefaultExists | NetworkAdded::Gone => {
                Err(Error::corrupt("a VPC added as no VPC is"))
            }
        }
    }

    pub async fn delete_vpc(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::NetworkWrite)?;
        let vpc = self.project_vpc(&caller.project_id, id).await?;
        if vpc.is_default != 0 {
            return Err(Error::Conflict(format!(
                "VPC {} is the project's default; it cannot be deleted",
                vpc.id
            )));
        }
        match self.store.delete_vpc(&caller.project_id, &vpc.id).await? {
            NetworkRemoved::Removed => {
                // What this process knew of its subnets is forgotten.
                self.forget_networks(&caller.project_id);
                Ok(())
            }
            NetworkRemoved::NotFound => Err(Error::NotFound(format!("VPC {id} not found"))),
            NetworkRemoved::InUse(instance) => Err(Error::Conflict(format!(
                "VPC {} has instances (such as {instance}); delete them first",
                vpc.id
            ))),
        }
    }

    async fn subnet_of(&self, record: SubnetRecord) -> Result<Subnet> {
        let net = parse_stored_block("a subnet", &record.cidr)?;
        let used = self.store.subnet_addresses_used(&record.id).await?;
        Ok(Subnet {
            available_ips: network::instance_capacity(&net).saturating_sub(used.max(0) as u64),
            id: record.id,
            vpc_id: record.vpc_id,
            name: record.name,
            cidr_block: record.cidr,
            is_default: record.is_default != 0,
            created_at: record.created_at,
        })
    }

    /// The project's subnets, or one VPC's (by id or name).
    pub async fn subnets(&self, caller: &Principal, vpc: Option<&str>) -> Result<Vec<Subnet>> {
        caller.require(Permission::NetworkRead)?;
        self.default_network(&caller.project_id).await?;
        let vpc_id = match vpc {
            Some(vpc) => Some(self.project_vpc(&caller.project_id, vpc).await?.id),
            None => None,
        };
        let records = self
            .store
            .subnets(&caller.project_id, vpc_id.as_deref())
            .await?;
        let mut subnets = Vec::with_capacity(records.len());
        for record in records {
            subnets.push(self.subnet_of(record).await?);
        }
        Ok(subnets)
    }

    async fn project_subnet(
        &self,
        project_id: &str,
        id: &str,
        vpc: Option<&str>,
    ) -> Result<SubnetRecord> {
        let found = match has_nul(id) {
            true => None,
            false => self.store.subnet(project_id, id, vpc).await?,
        };
        found.ok_or_else(|| Error::NotFound(format!("subnet {id} not found")))
    }

    pub async fn subnet(&self, caller: &Principal, id: &str) -> Result<Subnet> {
        caller.require(Permission::NetworkRead)?;
        self.default_network(&caller.project_id).await?;
        let record = self.project_subnet(&caller.project_id, id, None).await?;
        self.subnet_of(record).await
    }

    pub async fn create_subnet(&self, caller: &Principal, req: CreateSubnet) -> Result<Subnet> {
        caller.require(Permission::NetworkWrite)?;
        let name = check_name("name", &req.name, "subnet")?;
        if req.vpc_id.trim().is_empty() {
            return Err(Error::invalid("vpc_id", "vpc_id names the subnet's VPC"));
        }
        let given = match &req.cidr_block {
            Some(text) => Some(block("cidr_block", text)?),
            None => None,
        };
        self.default_network(&caller.project_id).await?;
        let vpc = self
            .project_vpc(&caller.project_id, &req.vpc_id)
            .await
            .map_err(missing("vpc_id", format!("VPC {} not found", req.vpc_id)))?;
        let vpc_block = parse_stored_block("a VPC", &vpc.cidr)?;
        let chosen = match given {
            Some(net) if !vpc_block.contains(&net) => {
                return Err(Error::invalid(
                    "cidr_block",
                    format!("cidr_block {net} is not within the VPC's block {vpc_block}"),
                ));
            }
            Some(net) => Block::Given(net),
            None => Block::From {
                pool: vpc_block,
                prefix: DEFAULT_SUBNET_PREFIX.max(vpc_block.prefix_len()),
            },
        };
        let record = SubnetRecord {
            id: new_id("subnet"),
            project_id: caller.project_id.clone(),
            vpc_id: vpc.id.clone(),
            name: name.clone(),
            cidr: String::new(),
            is_default: 0,
            created_at: tessera_store::now(),
        };
        match self.store.insert_subnet(&record, &chosen).await? {
            NetworkAdded::Added { cidr } => {
                tracing::info!(subnet = %record.id, %cidr, vpc = %vpc.id, "subnet made");
                self.subnet_of(SubnetRecord { cidr, ..record }).await
            }
            NetworkAdded::NameTaken => Err(Error::Conflict(format!(
                "VPC {} has a subnet named {name} already",
                vpc.id
            ))),
            NetworkAdded::Overlaps { block, .. } => Err(Error::Conflict(format!(
                "cidr_block overlaps {block}, another subnet of VPC {}",
                vpc.id
            ))),
            NetworkAdded::Gone => Err(Error::Conflict(format!(
                "VPC {} was deleted meanwhile",
                vpc.id
            ))),
            NetworkAdded::Full => Err(Error::Conflict(format!(
                "VPC {} has no free /{} left; give a cidr_block",
                vpc.id,
                DEFAULT_SUBNET_PREFIX.max(vpc_block.prefix_len())
            ))),
            NetworkAdded::DefaultExists | NetworkAdded::Limit(_) => {
                Err(Error::corrupt("a subnet added as a VPC is"))
            }
        }
    }

    pub async fn delete_subnet(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::NetworkWrite)?;
        let subnet = self.project_subnet(&caller.project_id, id, None).await?;
        if subnet.is_default != 0 {
            return Err(Error::Conflict(format!(
                "subnet {} is the default VPC's; it cannot be deleted",
                subnet.id
            )));
        }
        match self
            .store
            .delete_subnet(&caller.project_id, &subnet.id)
            .await?
        {
            NetworkRemoved::Removed => {
                // What this process knew of its subnets is forgotten.
                self.forget_networks(&caller.project_id);
                Ok(())
            }
            NetworkRemoved::NotFound => Err(Error::NotFound(format!("subnet {id} not found"))),
            NetworkRemoved::InUse(instance) => Err(Error::Conflict(format!(
                "subnet {} has instances (such as {instance}); delete them first",
                subnet.id
            ))),
        }
    }

    pub async fn security_groups(&self, caller: &Principal) -> Result<Vec<SecurityGroup>> {
        caller.require(Permission::NetworkRead)?;
        self.default_network(&caller.project_id).await?;
        self.store
            .security_groups(&caller.project_id)
            .await?
            .into_iter()
            .map(SecurityGroup::from_record)
            .collect()
    }

    async fn project_group(&self, project_id: &str, id: &str) -> Result<SecurityGroupRecord> {
        let found = match has_nul(id) {
            true => None,
            false => self.store.security_group(project_id, id).await?,
        };
        found.ok_or_else(|| Error::NotFound(format!("security group {id} not found")))
    }

    pub async fn security_group(&self, caller: &Principal, id: &str) -> Result<SecurityGroup> {
        caller.require(Permission::NetworkRead)?;
        self.default_network(&caller.project_id).await?;
        SecurityGroup::from_record(self.project_group(&caller.project_id, id).await?)
    }

    /// Checks rules as asked for; `own` is the group's id and name, which
    /// a rule may name as its source.
    async fn check_rules(
        &self,
        project_id: &str,
        own: (&str, &str),
        inputs: &[RuleInput],
    ) -> Result<Vec<InboundRule>> {
        if inputs.len() > network::MAX_RULES {
            return Err(Error::invalid(
                "rules",
                format!("a security group has at most {} rules", network::MAX_RULES),
            ));
        }
        let mut rules = Vec::with_capacity(inputs.len());
        for input in inputs {
            let protocol =
                Protocol::parse(&input.protocol).map_err(|e| Error::invalid("rules", e.0))?;
            let ports = match &input.port_range {
                None => None,
                Some(_) if !protocol.has_ports() => {
                    return Err(Error::invalid(
                        "rules",
                        format!("a {} rule has no port_range", protocol.as_str()),
                    ));
                }
                Some(text) => Some(Ports::parse(text).map_err(|e| Error::invalid("rules", e.0))?),
            };
            let source = match (&input.cidr, &input.source_security_group) {
                (Some(_), Some(_)) => {
                    return Err(Error::invalid(
                        "rules",
                        "a rule has a cidr or a source_security_group, not both",
                    ));
                }
                (Some(text), None) => {
                    let net = text
                        .trim()
                        .parse::<Ipv4Net>()
                        .or_else(|_| text.trim().parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
                        .map_err(|_| {
                            Error::invalid(
                                "rules",
                                format!("cidr {text:?} is not an IPv4 block like 203.0.113.0/24"),
                            )
                        })?;
                    Source::Cidr(net.trunc().to_string())
                }
                (None, Some(group)) if group == own.0 || group == own.1 => {
                    Source::Group(own.0.to_string())
                }
                (None, Some(group)) => {
                    let found = self
                        .project_group(project_id, group)
                        .await
                        .map_err(missing(
                            "rules",
                            format!("source_security_group {group} not found"),
                        ))?;
                    Source::Group(found.id)
                }
                (None, None) => Source::Cidr("0.0.0.0/0".into()),
            };
            rules.push(InboundRule {
                protocol,
                ports,
                source,
            });
        }
        Ok(rules)
    }

    fn check_description(description: Option<&str>) -> Result<String> {
        let description = description.unwrap_or("").trim();
        if description.len() > 255 || description.chars().any(char::is_control) {
            return Err(Error::invalid(
                "description",
                "description is at most 255 printable characters",
            ));
        }
        Ok(description.to_string())
    }

    pub async fn create_security_group(
        &self,
        caller: &Principal,
        req: CreateSecurityGroup,
    ) -> Result<SecurityGroup> {
        caller.require(Permission::NetworkWrite)?;
        let name = check_name("name", &req.name, "sg")?;
        let description = Self::check_description(req.description.as_deref())?;
        self.default_network(&caller.project_id).await?;
        let id = new_id("sg");
        let rules = match &req.rules {
            Some(inputs) => {
                self.check_rules(&caller.project_id, (&id, &name), inputs)
                    .await?
            }
            None => network::default_rules(&id)[..1].to_vec(),
        };
        let now = tessera_store::now();
        let record = SecurityGroupRecord {
            id,
            project_id: caller.project_id.clone(),
            name: name.clone(),
            description,
            rules: serde_json::to_string(&rules).unwrap_or_else(|_| "[]".into()),
            is_default: 0,
            created_at: now.clone(),
            updated_at: now,
        };
        if !self.store.insert_security_group(&record).await? {
            return Err(Error::Conflict(format!(
                "a security group named {name} already exists"
            )));
        }
        SecurityGroup::from_record(record)
    }

    /// Replaces a group's rules; its members' hosts apply them at once.
    pub async fn set_security_group_rules(
        &self,
        caller: &Principal,
        id: &str,
        req: SetRules,
    ) -> Result<SecurityGroup> {
        caller.require(Permission::NetworkWrite)?;
        let group = self.project_group(&caller.project_id, id).await?;
        let description = match &req.description {
            Some(d) => Self::check_description(Some(d))?,
            None => group.description.clone(),
        };
        let rules = self
            .check_rules(&caller.project_id, (&group.id, &group.name), &req.rules)
            .await?;
        let text = serde_json::to_string(&rules).unwrap_or_else(|_| "[]".into());
        if !self
            .store
            .set_security_group_rules(&caller.project_id, &group.id, &description, &text)
            .await?
        {
            return Err(Error::NotFound(format!("security group {id} not found")));
        }
        tracing::info!(group = %group.id, rules = rules.len(), by = %caller.username, "security group rules set");
        for member in self.store.security_group_members(&group.id).await? {
            let Some(instance) = self.stored_instance(&member).await? else {
                continue;
            };
            if instance.state != InstanceState::Running {
                continue;
            }
            if let Err(e) = self.converge_running(&instance).await {
                // Its host applies the rules when it next starts it.
                tracing::warn!(instance = %instance.id, error = %e, "applying security group rules");
            }
        }
        SecurityGroup::from_record(self.project_group(&caller.project_id, &group.id).await?)
    }

    pub async fn delete_security_group(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::NetworkWrite)?;
        let group = self.project_group(&caller.project_id, id).await?;
        if group.is_default != 0 {
            return Err(Error::Conflict(format!(
                "security group {} is the project's default; it cannot be deleted",
                group.id
            )));
        }
        for other in self.store.security_groups(&caller.project_id).await? {
            let other = SecurityGroup::from_record(other)?;
            let refers = other
                .rules
                .iter()
                .any(|r| r.source == Source::Group(group.id.clone()));
            if other.id != group.id && refers {
                return Err(Error::Conflict(format!(
                    "security group {} is the source of a rule of {}; change that rule first",
                    group.id, other.id
                )));
            }
        }
        match self
            .store
            .delete_security_group(&caller.project_id, &group.id)
            .await?
        {
            NetworkRemoved::Removed => Ok(()),
            NetworkRemoved::NotFound => {
                Err(Error::NotFound(format!("security group {id} not found")))
            }
            NetworkRemoved::InUse(instance) => Err(Error::Conflict(format!(
                "security group {} has members (such as {instance}); delete them first",
                group.id
            ))),
        }
    }

    /// Resolves a new instance's `vpc_id`, `subnet_id` and
    /// `security_groups` (ids or names; the defaults when not given) to
    /// ids, writing them into the spec, and answers what the store gives it.
    pub(crate) async fn attach_new_instance(
        &self,
        project_id: &str,
        spec: &mut InstanceSpecInput,
    ) -> Result<NewAttachment> {
        let known = self.known_defaults(project_id).await?;
        let (default_vpc, default_subnet) = (known.vpc, known.subnet);
        let vpc = match &spec.vpc_id {
            None => None,
            Some(id) => Some(
                self.project_vpc(project_id, id)
                    .await
                    .map_err(missing("spec.vpc_id", format!("VPC {id:?} not found")))?,
            ),
        };
        let subnet = match &spec.subnet_id {
            None => match &vpc {
                None => default_subnet,
                Some(vpc) if vpc.id == default_vpc.id => default_subnet,
                Some(vpc) => {
                    let subnets = self.store.subnets(project_id, Some(&vpc.id)).await?;
                    subnets.into_iter().next().ok_or_else(|| {
                        Error::invalid(
                            "spec.subnet_id",
                            format!("VPC {} has no subnet; make one first", vpc.id),
                        )
                    })?
                }
            },
            Some(id) => {
                let within = vpc
                    .as_ref()
                    .map_or(default_vpc.id.as_str(), |v| v.id.as_str());
                let subnet = match self.networks.subnet(project_id, within, id) {
                    Some(known) => known,
                    None => {
                        let subnet = self
                            .project_subnet(project_id, id, Some(within))
                            .await
                            .map_err(missing(
                                "spec.subnet_id",
                                format!("subnet {id:?} not found"),
                            ))?;
                        self.networks.keep_subnet(project_id, within, id, &subnet);
                        subnet
                    }
                };
                if let Some(vpc) = &vpc
                    && subnet.vpc_id != vpc.id
                {
                    return Err(Error::invalid(
                        "spec.subnet_id",
                        format!("subnet {id} is not in VPC {}", vpc.id),
                    ));
                }
                subnet
            }
        };
        let mut groups = Vec::new();
        if spec.security_groups.is_empty() {
            groups.push(match known.group {
                Some(group) => group,
                // Says why there is none.
                None => self.default_group(project_id).await?.id,
            });
        }
        for name in &spec.security_groups {
            let group = self.project_group(project_id, name).await.map_err(missing(
                "spec.security_groups",
                format!("security group {name:?} not found"),
            ))?;
            if !groups.contains(&group.id) {
                groups.push(group.id);
            }
        }
        let subnet_cidr = parse_stored_block("a subnet", &subnet.cidr)?;
        // The spec keeps what was asked (ids or names), and shows the
        // defaults where nothing was.
        spec.vpc_id.get_or_insert_with(|| subnet.vpc_id.clone());
        spec.subnet_id.get_or_insert_with(|| subnet.id.clone());
        if spec.security_groups.is_empty() {
            spec.security_groups = groups.clone();
        }
        Ok(NewAttachment {
            subnet_id: subnet.id,
            subnet_cidr,
            groups,
        })
    }

    /// Where an instance sits in its network (`place`), and its groups'
    /// rules (`groups`: id and stored rules), as read with its other
    /// surroundings, as its host is told. An instance recorded before
    /// networks existed has neither (its host gives it an address and the
    /// old defaults).
    pub(crate) fn instance_network(
        &self,
        instance: &Instance,
        place: Option<tessera_store::InstancePlace>,
        groups: Vec<(String, String)>,
    ) -> Result<(Option<NetworkAttachment>, Vec<GroupRules>)> {
        let Some(place) = place else {
            return Ok((None, Vec::new()));
        };
        let net = parse_stored_block("a subnet", &place.subnet_cidr)?;
        let address = place.address;
        let address = address.parse().map_err(|_| {
            Error::corrupt(format!(
                "instance {} has the address {address:?}",
                instance.id
            ))
        })?;
        let groups = groups
            .into_iter()
            .map(|(id, rules)| {
                let rules = stored_rules(&id, &rules)?;
                Ok(GroupRules { id, rules })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((
            Some(NetworkAttachment {
                vpc_id: place.vpc_id,
                vpc_cidr: place.vpc_cidr,
                pool: self.config.vpc_pool.to_string(),
                address,
                prefix: net.prefix_len(),
            }),
            groups,
        ))
    }
}
