-- What each project uses (its live instances, their vCPUs and memory, the
-- Kloigos units it holds, its volumes and their size, its live containers
-- and its SSH keys), kept by the store as rows change, whichever statement
-- changes them, so that a quota check or a project's usage reads a few rows
-- rather than counting the project's instances and volumes: with quotas
-- on, every creation counted every live instance of its project. The
-- usage is the sum of up to 17 rows per project, each transaction's
-- changes going to one of them (below): on PostgreSQL changes outside a quota
-- check (a termination, a purge) seldom wait for one another's row. What
-- a row counts is what the quota's count counted: instances not
-- terminated; units of a project no instance holds (as
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
ON CONFLICT (project_id, shard) DO UPDATE SET instances = project_usage.instances + excluded.instances, vcpus = project_usage.vcpus + excluded.vcpus, memory_mb = project_usage.memory_mb + excluded.memory_mb, volumes = project_usage.volumes + excluded.volumes, volume_gb = project_usage.volume_gb + excluded.volume_gb, containers = project_usage.containers + excluded.containers, ssh_keys = project_usage.ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, COUNT(*), SUM(cpu_count), 0, 0, 0, 0, 0
FROM compute_units
WHERE project_id IS NOT NULL AND instance_id IS NULL
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = project_usage.instances + excluded.instances, vcpus = project_usage.vcpus + excluded.vcpus, memory_mb = project_usage.memory_mb + excluded.memory_mb, volumes = project_usage.volumes + excluded.volumes, volume_gb = project_usage.volume_gb + excluded.volume_gb, containers = project_usage.containers + excluded.containers, ssh_keys = project_usage.ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, 0, 0, 0, COUNT(*), SUM(size_gb), 0, 0
FROM volumes
WHERE purged_at IS NULL
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = project_usage.instances + excluded.instances, vcpus = project_usage.vcpus + excluded.vcpus, memory_mb = project_usage.memory_mb + excluded.memory_mb, volumes = project_usage.volumes + excluded.volumes, volume_gb = project_usage.volume_gb + excluded.volume_gb, containers = project_usage.containers + excluded.containers, ssh_keys = project_usage.ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT c.project_id, 0, 0, 0, 0, 0, 0, COUNT(*), 0
FROM containers c
WHERE EXISTS (SELECT 1 FROM instances i WHERE i.id = c.id AND i.state <> 'terminated')
GROUP BY c.project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = project_usage.instances + excluded.instances, vcpus = project_usage.vcpus + excluded.vcpus, memory_mb = project_usage.memory_mb + excluded.memory_mb, volumes = project_usage.volumes + excluded.volumes, volume_gb = project_usage.volume_gb + excluded.volume_gb, containers = project_usage.containers + excluded.containers, ssh_keys = project_usage.ssh_keys + excluded.ssh_keys;
INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
SELECT project_id, 0, 0, 0, 0, 0, 0, 0, COUNT(*)
FROM ssh_keys
WHERE true
GROUP BY project_id
ON CONFLICT (project_id, shard) DO UPDATE SET instances = project_usage.instances + excluded.instances, vcpus = project_usage.vcpus + excluded.vcpus, memory_mb = project_usage.memory_mb + excluded.memory_mb, volumes = project_usage.volumes + excluded.volumes, volume_gb = project_usage.volume_gb + excluded.volume_gb, containers = project_usage.containers + excluded.containers, ssh_keys = project_usage.ssh_keys + excluded.ssh_keys;

-- Adds to a project's usage, in one of its 16 rows: the same one for
-- every change of a transaction (by its id), so that a transaction holds
-- one row of a project, and two creations, each adding an instance and its
-- volume, never hold one row each and wait for the other's. SSH keys
-- count in a 17th row of their own: a key goes in under the project's
-- lock (it numbers itself), while a creation takes that lock last,
-- holding its own row; were the key's row the creation's, each would wait
-- for the other.
CREATE FUNCTION add_project_usage(project TEXT, d_instances BIGINT, d_vcpus BIGINT,
    d_memory_mb BIGINT, d_volumes BIGINT, d_volume_gb BIGINT, d_containers BIGINT,
    d_ssh_keys BIGINT) RETURNS void LANGUAGE sql AS $$
    INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)
    VALUES (project, CASE WHEN d_ssh_keys <> 0 THEN 16 ELSE mod(txid_current(), 16)::INTEGER END,
            d_instances, d_vcpus, d_memory_mb,
            d_volumes, d_volume_gb, d_containers, d_ssh_keys)
    ON CONFLICT (project_id, shard) DO UPDATE SET
        instances = project_usage.instances + excluded.instances,
        vcpus = project_usage.vcpus + excluded.vcpus,
        memory_mb = project_usage.memory_mb + excluded.memory_mb,
        volumes = project_usage.volumes + excluded.volumes,
        volume_gb = project_usage.volume_gb + excluded.volume_gb,
        containers = project_usage.containers + excluded.containers,
        ssh_keys = project_usage.ssh_keys + excluded.ssh_keys;
$$;

-- Instances: an instance's container row goes in after it and out before
-- it (it refers to the instance; when both go in by one statement, both
-- triggers run after it, and the container's sees the instance), and
-- counts itself; an instance crossing into or out of `terminated` takes
-- its container with it.
CREATE FUNCTION count_instance_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state <> 'terminated' THEN
        PERFORM add_project_usage(OLD.project_id, -1, -OLD.vcpus, -OLD.memory_mb, 0, 0,
            CASE WHEN TG_OP = 'UPDATE'
                 THEN -(SELECT COUNT(*) FROM containers c WHERE c.id = OLD.id)
                 ELSE 0 END, 0);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.state <> 'terminated' THEN
        PERFORM add_project_usage(NEW.project_id, 1, NEW.vcpus, NEW.memory_mb, 0, 0,
            CASE WHEN TG_OP = 'UPDATE'
                 THEN (SELECT COUNT(*) FROM containers c WHERE c.id = NEW.id)
                 ELSE 0 END, 0);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER instances_usage_added AFTER INSERT ON instances
    FOR EACH ROW WHEN (NEW.state <> 'terminated')
    EXECUTE FUNCTION count_instance_usage();
CREATE TRIGGER instances_usage_removed AFTER DELETE ON instances
    FOR EACH ROW WHEN (OLD.state <> 'terminated')
    EXECUTE FUNCTION count_instance_usage();
CREATE TRIGGER instances_usage_changed AFTER UPDATE OF state, vcpus, memory_mb, project_id
    ON instances FOR EACH ROW
    WHEN ((OLD.state = 'terminated') <> (NEW.state = 'terminated')
        OR (NEW.state <> 'terminated' AND (OLD.vcpus <> NEW.vcpus
            OR OLD.memory_mb <> NEW.memory_mb OR OLD.project_id <> NEW.project_id)))
    EXECUTE FUNCTION count_instance_usage();

-- Kloigos units: one a project holds and no instance does counts as an
-- instance of its CPU count.
CREATE FUNCTION count_unit_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE')
        AND OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL THEN
        PERFORM add_project_usage(OLD.project_id, -1, -OLD.cpu_count, 0, 0, 0, 0, 0);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT')
        AND NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL THEN
        PERFORM add_project_usage(NEW.project_id, 1, NEW.cpu_count, 0, 0, 0, 0, 0);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER compute_units_usage_added AFTER INSERT ON compute_units
    FOR EACH ROW WHEN (NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL)
    EXECUTE FUNCTION count_unit_usage();
CREATE TRIGGER compute_units_usage_removed AFTER DELETE ON compute_units
    FOR EACH ROW WHEN (OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL)
    EXECUTE FUNCTION count_unit_usage();
CREATE TRIGGER compute_units_usage_changed
    AFTER UPDATE OF project_id, instance_id, cpu_count ON compute_units FOR EACH ROW
    WHEN (OLD.project_id IS DISTINCT FROM NEW.project_id
        OR OLD.instance_id IS DISTINCT FROM NEW.instance_id
        OR OLD.cpu_count <> NEW.cpu_count)
    EXECUTE FUNCTION count_unit_usage();

-- Volumes until purged (the trash holds storage).
CREATE FUNCTION count_volume_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.purged_at IS NULL THEN
        PERFORM add_project_usage(OLD.project_id, 0, 0, 0, -1, -OLD.size_gb, 0, 0);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.purged_at IS NULL THEN
        PERFORM add_project_usage(NEW.project_id, 0, 0, 0, 1, NEW.size_gb, 0, 0);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER volumes_usage_added AFTER INSERT ON volumes
    FOR EACH ROW WHEN (NEW.purged_at IS NULL)
    EXECUTE FUNCTION count_volume_usage();
CREATE TRIGGER volumes_usage_removed AFTER DELETE ON volumes
    FOR EACH ROW WHEN (OLD.purged_at IS NULL)
    EXECUTE FUNCTION count_volume_usage();
CREATE TRIGGER volumes_usage_changed AFTER UPDATE OF purged_at, size_gb, project_id
    ON volumes FOR EACH ROW
    WHEN ((OLD.purged_at IS NULL) <> (NEW.purged_at IS NULL)
        OR (NEW.purged_at IS NULL AND (OLD.size_gb <> NEW.size_gb
            OR OLD.project_id <> NEW.project_id)))
    EXECUTE FUNCTION count_volume_usage();

-- Containers whose instance is not terminated.
CREATE FUNCTION count_container_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND EXISTS (
        SELECT 1 FROM instances i WHERE i.id = OLD.id AND i.state <> 'terminated') THEN
        PERFORM add_project_usage(OLD.project_id, 0, 0, 0, 0, 0, -1, 0);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND EXISTS (
        SELECT 1 FROM instances i WHERE i.id = NEW.id AND i.state <> 'terminated') THEN
        PERFORM add_project_usage(NEW.project_id, 0, 0, 0, 0, 0, 1, 0);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER containers_usage_added AFTER INSERT ON containers
    FOR EACH ROW EXECUTE FUNCTION count_container_usage();
CREATE TRIGGER containers_usage_removed AFTER DELETE ON containers
    FOR EACH ROW EXECUTE FUNCTION count_container_usage();
CREATE TRIGGER containers_usage_changed AFTER UPDATE OF project_id, id ON containers
    FOR EACH ROW WHEN (OLD.project_id <> NEW.project_id OR OLD.id <> NEW.id)
    EXECUTE FUNCTION count_container_usage();

-- SSH keys.
CREATE FUNCTION count_ssh_key_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM add_project_usage(OLD.project_id, 0, 0, 0, 0, 0, 0, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM add_project_usage(NEW.project_id, 0, 0, 0, 0, 0, 0, 1);
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER ssh_keys_usage_added AFTER INSERT ON ssh_keys
    FOR EACH ROW EXECUTE FUNCTION count_ssh_key_usage();
CREATE TRIGGER ssh_keys_usage_removed AFTER DELETE ON ssh_keys
    FOR EACH ROW EXECUTE FUNCTION count_ssh_key_usage();
CREATE TRIGGER ssh_keys_usage_changed AFTER UPDATE OF project_id ON ssh_keys
    FOR EACH ROW WHEN (OLD.project_id <> NEW.project_id)
    EXECUTE FUNCTION count_ssh_key_usage();
