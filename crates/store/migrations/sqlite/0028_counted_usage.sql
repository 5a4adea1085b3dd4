-- What each project uses (its live instances, their vCPUs and memory, the
-- Kloigos units it holds, its volumes and their size, its live containers
-- and its SSH keys), kept by the store as rows change, whichever statement
-- changes them, so that a quota check or a project's usage reads a few rows
-- rather than counting the project's instances and volumes: with quotas
-- on, every creation counted every live instance of its project. The
-- usage is the sum of up to 16 rows per project, each change going to one
-- at random (on PostgreSQL, one per transaction, by its id): on PostgreSQL
-- changes outside a quota check (a termination, a purge) seldom wait for
-- one another's row. What a row counts is what the quota's count counted:
-- instances not terminated; units of a project no instance holds (as
-- instances of their CPU count); volumes not purged; containers whose
-- instance is not terminated; every SSH key.
CREATE TABLE project_usage (
    project_id TEXT NOT NULL,
    shard      INTEGER NOT NULL,
    instances  BIGINT NOT NULL,
    vcpus      BIGINT NOT NULL,
    memory_mb  BIGINT NOT NULL,
    volumes    BIGINT NOT NULL,
    volume_gb  BIGINT NOT NULL,
    containers BIGINT NOT NULL,
    ssh_keys   BIGINT NOT NULL,
    PRIMARY KEY (project_id, shard)
);
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, COUNT(*), SUM(vcpus), SUM(memory_mb), 0, 0, 0, 0
FROM instances
WHERE state <> 'terminated'
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = instances + excluded.instances, vcpus = vcpus + excluded.vcpus, memory_mb = memory_mb + excluded.memory_mb, volumes = volumes + excluded.volumes, volume_gb = volume_gb + excluded.volume_gb, containers = containers + excluded.containers, ssh_keys = ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, COUNT(*), SUM(cpu_count), 0, 0, 0, 0, 0
FROM compute_units
WHERE project_id IS NOT NULL AND instance_id IS NULL
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = instances + excluded.instances, vcpus = vcpus + excluded.vcpus, memory_mb = memory_mb + excluded.memory_mb, volumes = volumes + excluded.volumes, volume_gb = volume_gb + excluded.volume_gb, containers = containers + excluded.containers, ssh_keys = ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, 0, 0, 0, COUNT(*), SUM(size_gb), 0, 0
FROM volumes
WHERE purged_at IS NULL
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = instances + excluded.instances, vcpus = vcpus + excluded.vcpus, memory_mb = memory_mb + excluded.memory_mb, volumes = volumes + excluded.volumes, volume_gb = volume_gb + excluded.volume_gb, containers = containers + excluded.containers, ssh_keys = ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT c.project_id, 0, 0, 0, 0, 0, 0, COUNT(*), 0
FROM containers c
WHERE EXISTS (SELECT 1 FROM instances i WHERE i.id = c.id AND i.state <> 'terminated')
GROUP BY c.project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = instances + excluded.instances, vcpus = vcpus + excluded.vcpus, memory_mb = memory_mb + excluded.memory_mb, volumes = volumes + excluded.volumes, volume_gb = volume_gb + excluded.volume_gb, containers = containers + excluded.containers, ssh_keys = ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, 0, 0, 0, 0, 0, 0, COUNT(*)
FROM ssh_keys
WHERE true
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = instances + excluded.instances, vcpus = vcpus + excluded.vcpus, memory_mb = memory_mb + excluded.memory_mb, volumes = volumes + excluded.volumes, volume_gb = volume_gb + excluded.volume_gb, containers = containers + excluded.containers, ssh_keys = ssh_keys + excluded.ssh_keys;

-- A change to a project's usage, added to one of its rows at random: each
-- trigger below inserts its change here.
CREATE VIEW project_usage_changes AS
SELECT project_id, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys FROM project_usage WHERE 0;

CREATE TRIGGER project_usage_changes_added INSTEAD OF INSERT ON project_usage_changes
BEGIN
    INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
    VALUES (NEW.project_id, abs(random() % 16), NEW.instances, NEW.vcpus, NEW.memory_mb, NEW.volumes, NEW.volume_gb, NEW.containers, NEW.ssh_keys)
    ON CONFLICT (project_id, shard) DO UPDATE SET
        instances = instances + excluded.instances,
        vcpus = vcpus + excluded.vcpus,
        memory_mb = memory_mb + excluded.memory_mb,
        volumes = volumes + excluded.volumes,
        volume_gb = volume_gb + excluded.volume_gb,
        containers = containers + excluded.containers,
        ssh_keys = ssh_keys + excluded.ssh_keys;
END;

-- Instances: an instance's container row goes in after it and out before
-- it (it refers to the instance), and counts itself; an instance crossing
-- into or out of `terminated` takes its container with it.
CREATE TRIGGER instances_usage_added AFTER INSERT ON instances
WHEN NEW.state <> 'terminated'
BEGIN
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 1, NEW.vcpus, NEW.memory_mb, 0, 0, 0, 0;
END;

CREATE TRIGGER instances_usage_removed AFTER DELETE ON instances
WHEN OLD.state <> 'terminated'
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, -(1), -(OLD.vcpus), -(OLD.memory_mb), 0, 0, 0, 0;
END;

CREATE TRIGGER instances_usage_changed AFTER UPDATE OF state, vcpus, memory_mb, project_id ON instances
WHEN (OLD.state = 'terminated') <> (NEW.state = 'terminated')
    OR (NEW.state <> 'terminated' AND (OLD.vcpus <> NEW.vcpus OR OLD.memory_mb <> NEW.memory_mb
        OR OLD.project_id <> NEW.project_id))
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, -(1), -(OLD.vcpus), -(OLD.memory_mb), 0, 0, -((SELECT COUNT(*) FROM containers c WHERE c.id = OLD.id)), 0
    WHERE OLD.state <> 'terminated';
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 1, NEW.vcpus, NEW.memory_mb, 0, 0, (SELECT COUNT(*) FROM containers c WHERE c.id = NEW.id), 0
    WHERE NEW.state <> 'terminated';
END;

-- Kloigos units: one a project holds and no instance does counts as an
-- instance of its CPU count.
CREATE TRIGGER compute_units_usage_added AFTER INSERT ON compute_units
WHEN NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL
BEGIN
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 1, NEW.cpu_count, 0, 0, 0, 0, 0;
END;

CREATE TRIGGER compute_units_usage_removed AFTER DELETE ON compute_units
WHEN OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, -(1), -(OLD.cpu_count), 0, 0, 0, 0, 0;
END;

CREATE TRIGGER compute_units_usage_changed AFTER UPDATE OF project_id, instance_id, cpu_count ON compute_units
WHEN OLD.project_id IS NOT NEW.project_id OR OLD.instance_id IS NOT NEW.instance_id
    OR OLD.cpu_count <> NEW.cpu_count
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, -(1), -(OLD.cpu_count), 0, 0, 0, 0, 0
    WHERE OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL;
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 1, NEW.cpu_count, 0, 0, 0, 0, 0
    WHERE NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL;
END;

-- Volumes until purged (the trash holds storage).
CREATE TRIGGER volumes_usage_added AFTER INSERT ON volumes
WHEN NEW.purged_at IS NULL
BEGIN
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 0, 0, 0, 1, NEW.size_gb, 0, 0;
END;

CREATE TRIGGER volumes_usage_removed AFTER DELETE ON volumes
WHEN OLD.purged_at IS NULL
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, 0, 0, 0, -(1), -(OLD.size_gb), 0, 0;
END;

CREATE TRIGGER volumes_usage_changed AFTER UPDATE OF purged_at, size_gb, project_id ON volumes
WHEN (OLD.purged_at IS NULL) <> (NEW.purged_at IS NULL)
    OR (NEW.purged_at IS NULL AND (OLD.size_gb <> NEW.size_gb OR OLD.project_id <> NEW.project_id))
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, 0, 0, 0, -(1), -(OLD.size_gb), 0, 0
    WHERE OLD.purged_at IS NULL;
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 0, 0, 0, 1, NEW.size_gb, 0, 0
    WHERE NEW.purged_at IS NULL;
END;

-- Containers whose instance is not terminated.
CREATE TRIGGER containers_usage_added AFTER INSERT ON containers
BEGIN
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 0, 0, 0, 0, 0, 1, 0
    WHERE EXISTS (SELECT 1 FROM instances i WHERE i.id = NEW.id AND i.state <> 'terminated');
END;

CREATE TRIGGER containers_usage_removed AFTER DELETE ON containers
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, 0, 0, 0, 0, 0, -1, 0
    WHERE EXISTS (SELECT 1 FROM instances i WHERE i.id = OLD.id AND i.state <> 'terminated');
END;

CREATE TRIGGER containers_usage_changed AFTER UPDATE OF project_id, id ON containers
WHEN OLD.project_id <> NEW.project_id OR OLD.id <> NEW.id
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, 0, 0, 0, 0, 0, -1, 0
    WHERE EXISTS (SELECT 1 FROM instances i WHERE i.id = OLD.id AND i.state <> 'terminated');
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 0, 0, 0, 0, 0, 1, 0
    WHERE EXISTS (SELECT 1 FROM instances i WHERE i.id = NEW.id AND i.state <> 'terminated');
END;

-- SSH keys.
CREATE TRIGGER ssh_keys_usage_added AFTER INSERT ON ssh_keys
BEGIN
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 0, 0, 0, 0, 0, 0, 1;
END;

CREATE TRIGGER ssh_keys_usage_removed AFTER DELETE ON ssh_keys
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, 0, 0, 0, 0, 0, 0, -1;
END;

CREATE TRIGGER ssh_keys_usage_changed AFTER UPDATE OF project_id ON ssh_keys
WHEN OLD.project_id <> NEW.project_id
BEGIN
    INSERT INTO project_usage_changes
    SELECT OLD.project_id, 0, 0, 0, 0, 0, 0, -1;
    INSERT INTO project_usage_changes
    SELECT NEW.project_id, 0, 0, 0, 0, 0, 0, 1;
END;
