//! `/v1/vpcs`, `/v1/subnets` and `/v1/security-groups`: the workspace's
//! private networks, which instances name in `spec.vpc_id`,
//! `spec.subnet_id` and `spec.security_groups` (by id or name).

use super::{Body, Caller, ErrorBody, Path, Query, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::networks::{
    CreateSecurityGroup, CreateSubnet, CreateVpc, RuleInput, SecurityGroup, SetRules, Subnet, Vpc,
};
use tessera_core::network::{InboundRule, Source};
use utoipa::{IntoParams, ToSchema};

/// Lists, as the instances API answers them: `{"items": [...]}`.
#[derive(Serialize, ToSchema)]
pub struct VpcList {
    pub items: Vec<VpcBody>,
}

#[derive(Serialize, ToSchema)]
pub struct SubnetList {
    pub items: Vec<SubnetBody>,
}

#[derive(Serialize, ToSchema)]
pub struct SecurityGroupList {
    pub items: Vec<SecurityGroupBody>,
}

#[derive(Serialize, ToSchema)]
pub struct VpcBody {
    #[schema(example = "vpc-abc123")]
    pub id: String,
    pub name: String,
    /// The VPC's IPv4 block; no two VPCs of the cloud overlap.
    #[schema(example = "10.128.0.0/20")]
    pub cidr_block: String,
    /// The workspace's default VPC, where instances that name none go.
    pub is_default: bool,
    pub created_at: String,
}

impl From<Vpc> for VpcBody {
    fn from(v: Vpc) -> Self {
        VpcBody {
            id: v.id,
            name: v.name,
            cidr_block: v.cidr_block,
            is_default: v.is_default,
            created_at: v.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpcRequest {
    pub name: String,
    /// A private IPv4 block between /16 and /28 that overlaps no VPC of
    /// the cloud; none: a free /20 of the cloud's VPC pool.
    #[schema(example = "10.20.0.0/16")]
    pub cidr_block: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SubnetBody {
    #[schema(example = "subnet-def456")]
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    #[schema(example = "10.128.0.0/24")]
    pub cidr_block: String,
    /// The default VPC's subnet, where instances that name none go.
    pub is_default: bool,
    /// Addresses still free for instances (all but the first two and the
    /// last of the block).
    pub available_ips: u64,
    pub created_at: String,
}

impl From<Subnet> for SubnetBody {
    fn from(s: Subnet) -> Self {
        SubnetBody {
            id: s.id,
            vpc_id: s.vpc_id,
            name: s.name,
            cidr_block: s.cidr_block,
            is_default: s.is_default,
            available_ips: s.available_ips,
            created_at: s.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnetRequest {
    /// Its VPC, by id or name.
    pub vpc_id: String,
    pub name: String,
    /// Within the VPC's block, overlapping none of its subnets; none: the
    /// first free /24 of the VPC.
    pub cidr_block: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubnetQuery {
    /// Only this VPC's subnets (id or name).
    pub vpc_id: Option<String>,
}

/// One inbound rule.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// `tcp`, `udp`, `icmp` or `all`.
    #[schema(example = "tcp")]
    pub protocol: String,
    /// A port or a range, for TCP and UDP; none: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "22")]
    pub port_range: Option<String>,
    /// Where from, an IPv4 block; none (and no `source_security_group`):
    /// anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0.0.0.0/0")]
    pub cidr: Option<String>,
    /// From instances of this security group (id or name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_security_group: Option<String>,
}

impl From<InboundRule> for RuleBody {
    fn from(r: InboundRule) -> Self {
        let (cidr, source_security_group) = match r.source {
            Source::Cidr(c) => (Some(c), None),
            Source::Group(g) => (None, Some(g)),
        };
        RuleBody {
            protocol: r.protocol.as_str().to_string(),
            port_range: r.ports.map(|p| p.to_string()),
            cidr,
            source_security_group,
        }
    }
}

impl From<RuleBody> for RuleInput {
    fn from(r: RuleBody) -> Self {
        RuleInput {
            protocol: r.protocol,
            port_range: r.port_range,
            cidr: r.cidr,
            source_security_group: r.source_security_group,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SecurityGroupBody {
    #[schema(example = "sg-web")]
    pub id: String,
    pub name: String,
    pub description: String,
    /// What its members let in; everything else from outside is dropped
    /// (replies to their own connections always pass).
    pub rules: Vec<RuleBody>,
    /// The workspace's default group, which instances that name none join.
    pub is_default: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<SecurityGroup> for SecurityGroupBody {
    fn from(g: SecurityGroup) -> Self {
        SecurityGroupBody {
            id: g.id,
            name: g.name,
            description: g.description,
            rules: g.rules.into_iter().map(RuleBody::from).collect(),
            is_default: g.is_default,
            created_at: g.created_at,
            updated_at: g.updated_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroupRequest {
    pub name: String,
    pub description: Option<String>,
    /// None: SSH from anywhere; `[]`: nothing.
    pub rules: Option<Vec<RuleBody>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRulesRequest {
    pub description: Option<String>,
    /// Replaces every rule; the members' hosts apply them at once.
    pub rules: Vec<RuleBody>,
}

/// List the workspace's VPCs (its default one first).
#[utoipa::path(get, path = "/v1/vpcs", tag = "networks",
    responses(
        (status = 200, description = "VPCs", body = VpcList),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_vpcs(State(app): State<App>, Caller(caller): Caller) -> Result<Json<VpcList>> {
    let items = app.vpcs(&caller).await?;
    Ok(Json(VpcList {
        items: items.into_iter().map(VpcBody::from).collect(),
    }))
}

/// Make a VPC.
#[utoipa::path(post, path = "/v1/vpcs", tag = "networks", request_body = CreateVpcRequest,
    responses(
        (status = 201, description = "Created", body = VpcBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 409, description = "The name is taken, or the block overlaps a VPC", body = ErrorBody),
        (status = 503, description = "The cloud's VPC pool is full", body = ErrorBody),
    ))]
pub async fn create_vpc(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateVpcRequest>,
) -> Result<(StatusCode, Json<VpcBody>)> {
    let vpc = app
        .create_vpc(
            &caller,
            CreateVpc {
                name: req.name,
                cidr_block: req.cidr_block,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(vpc.into())))
}

/// Get a VPC (by id or name).
#[utoipa::path(get, path = "/v1/vpcs/{id}", tag = "networks",
    params(("id" = String, Path, description = "VPC id or name")),
    responses(
        (status = 200, description = "The VPC", body = VpcBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_vpc(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<VpcBody>> {
    Ok(Json(app.vpc(&caller, &id).await?.into()))
}

/// Delete a VPC and its subnets (not the default one, nor one with
/// instances).
#[utoipa::path(delete, path = "/v1/vpcs/{id}", tag = "networks",
    params(("id" = String, Path, description = "VPC id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The default VPC, or one with instances", body = ErrorBody),
    ))]
pub async fn delete_vpc(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_vpc(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the workspace's subnets, or one VPC's.
#[utoipa::path(get, path = "/v1/subnets", tag = "networks", params(SubnetQuery),
    responses(
        (status = 200, description = "Subnets", body = SubnetList),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such VPC", body = ErrorBody),
    ))]
pub async fn list_subnets(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(query): Query<SubnetQuery>,
) -> Result<Json<SubnetList>> {
    let items = app.subnets(&caller, query.vpc_id.as_deref()).await?;
    Ok(Json(SubnetList {
        items: items.into_iter().map(SubnetBody::from).collect(),
    }))
}

/// Make a subnet in a VPC.
#[utoipa::path(post, path = "/v1/subnets", tag = "networks", request_body = CreateSubnetRequest,
    responses(
        (status = 201, description = "Created", body = SubnetBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 409, description = "The name is taken, or the block overlaps a subnet", body = ErrorBody),
    ))]
pub async fn create_subnet(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateSubnetRequest>,
) -> Result<(StatusCode, Json<SubnetBody>)> {
    let subnet = app
        .create_subnet(
            &caller,
            CreateSubnet {
                vpc_id: req.vpc_id,
                name: req.name,
                cidr_block: req.cidr_block,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(subnet.into())))
}

/// Get a subnet.
#[utoipa::path(get, path = "/v1/subnets/{id}", tag = "networks",
    params(("id" = String, Path, description = "Subnet id")),
    responses(
        (status = 200, description = "The subnet", body = SubnetBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_subnet(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<SubnetBody>> {
    Ok(Json(app.subnet(&caller, &id).await?.into()))
}

/// Delete a subnet (not the default one, nor one with instances).
#[utoipa::path(delete, path = "/v1/subnets/{id}", tag = "networks",
    params(("id" = String, Path, description = "Subnet id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The default subnet, or one with instances", body = ErrorBody),
    ))]
pub async fn delete_subnet(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_subnet(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the workspace's security groups.
#[utoipa::path(get, path = "/v1/security-groups", tag = "networks",
    responses(
        (status = 200, description = "Security groups", body = SecurityGroupList),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_security_groups(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<SecurityGroupList>> {
    let items = app.security_groups(&caller).await?;
    Ok(Json(SecurityGroupList {
        items: items.into_iter().map(SecurityGroupBody::from).collect(),
    }))
}

/// Make a security group.
#[utoipa::path(post, path = "/v1/security-groups", tag = "networks", request_body = CreateSecurityGroupRequest,
    responses(
        (status = 201, description = "Created", body = SecurityGroupBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_security_group(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateSecurityGroupRequest>,
) -> Result<(StatusCode, Json<SecurityGroupBody>)> {
    let group = app
        .create_security_group(
            &caller,
            CreateSecurityGroup {
                name: req.name,
                description: req.description,
                rules: req
                    .rules
                    .map(|rules| rules.into_iter().map(RuleInput::from).collect()),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(group.into())))
}

/// Get a security group (by id or name).
#[utoipa::path(get, path = "/v1/security-groups/{id}", tag = "networks",
    params(("id" = String, Path, description = "Security group id or name")),
    responses(
        (status = 200, description = "The group", body = SecurityGroupBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_security_group(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<SecurityGroupBody>> {
    Ok(Json(app.security_group(&caller, &id).await?.into()))
}

/// Replace a security group's rules; running members apply them at once.
#[utoipa::path(put, path = "/v1/security-groups/{id}", tag = "networks", request_body = SetRulesRequest,
    params(("id" = String, Path, description = "Security group id or name")),
    responses(
        (status = 200, description = "The group", body = SecurityGroupBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn set_security_group(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<SetRulesRequest>,
) -> Result<Json<SecurityGroupBody>> {
    let group = app
        .set_security_group_rules(
            &caller,
            &id,
            SetRules {
                description: req.description,
                rules: req.rules.into_iter().map(RuleInput::from).collect(),
            },
        )
        .await?;
    Ok(Json(group.into()))
}

/// Delete a security group (not the default one, nor one with members or
/// named by another group's rule).
#[utoipa::path(delete, path = "/v1/security-groups/{id}", tag = "networks",
    params(("id" = String, Path, description = "Security group id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "In use", body = ErrorBody),
    ))]
pub async fn delete_security_group(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_security_group(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
