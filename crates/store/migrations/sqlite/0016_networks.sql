-- A project's private networks. Blocks are unique across the install
-- (hosts route each instance's address, no overlay), so no two VPCs
-- overlap, whichever projects own them; a subnet lies within its VPC and
-- overlaps no other subnet of it. A project has one default VPC, with one
-- default subnet, made when first needed.
CREATE TABLE vpcs (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    cidr       TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE UNIQUE INDEX vpcs_one_default ON vpcs (project_id) WHERE is_default = 1;

CREATE TABLE subnets (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    vpc_id     TEXT NOT NULL REFERENCES vpcs (id),
    name       TEXT NOT NULL,
    cidr       TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (vpc_id, name)
);
CREATE INDEX subnets_project ON subnets (project_id);

-- Inbound rules (JSON, tessera_core::network::InboundRule) that hosts
-- enforce on the instances that are members.
CREATE TABLE security_groups (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    rules       TEXT NOT NULL,
    is_default  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE instance_security_groups (
    instance_id TEXT NOT NULL REFERENCES instances (id),
    group_id    TEXT NOT NULL REFERENCES security_groups (id),
    PRIMARY KEY (instance_id, group_id)
);
CREATE INDEX instance_security_groups_group ON instance_security_groups (group_id);

-- An address of a subnet given to an instance. The address is free again
-- once its instance is terminated (the row stays until the address is
-- given again).
CREATE TABLE instance_addresses (
    subnet_id   TEXT NOT NULL REFERENCES subnets (id),
    address     TEXT NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances (id),
    PRIMARY KEY (subnet_id, address)
);
CREATE INDEX instance_addresses_instance ON instance_addresses (instance_id);
