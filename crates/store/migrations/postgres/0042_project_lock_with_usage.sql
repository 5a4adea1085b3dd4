-- A quota check on PostgreSQL locked its project (reading the project's
-- own limits) in one statement and read what the project uses in another:
-- the usage has to be read once the lock is held, to see what the write
-- that held it before committed, and a statement that waits for a row lock
-- still reads the rest with the snapshot it started with. Each creation of
-- a project holds that lock from the first statement to its commit, so the
-- round trip between the two was spent by every creation of the project,
-- one after the other. This function does both in one call: each of its
-- statements takes a fresh snapshot (READ COMMITTED, a volatile function),
-- the second once the first holds the lock. No row when the project does
-- not exist; its own limits NULL where it set none.
CREATE FUNCTION lock_project_usage(project TEXT)
RETURNS TABLE (instances BIGINT, vcpus BIGINT, memory_mb BIGINT, volumes BIGINT,
               volume_gb BIGINT, containers BIGINT, ssh_keys BIGINT,
               used_instances BIGINT, used_vcpus BIGINT, used_memory_mb BIGINT,
               used_volumes BIGINT, used_volume_gb BIGINT, used_containers BIGINT,
               used_ssh_keys BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM projects p WHERE p.id = project FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT q.instances, q.vcpus, q.memory_mb, q.volumes, q.volume_gb, q.containers, q.ssh_keys,
           u.instances, u.vcpus, u.memory_mb, u.volumes, u.volume_gb, u.containers, u.ssh_keys
    FROM (SELECT CAST(COALESCE(SUM(pu.instances), 0) AS BIGINT) AS instances,
                 CAST(COALESCE(SUM(pu.vcpus), 0) AS BIGINT) AS vcpus,
                 CAST(COALESCE(SUM(pu.memory_mb), 0) AS BIGINT) AS memory_mb,
                 CAST(COALESCE(SUM(pu.volumes), 0) AS BIGINT) AS volumes,
                 CAST(COALESCE(SUM(pu.volume_gb), 0) AS BIGINT) AS volume_gb,
                 CAST(COALESCE(SUM(pu.containers), 0) AS BIGINT) AS containers,
                 CAST(COALESCE(SUM(pu.ssh_keys), 0) AS BIGINT) AS ssh_keys
          FROM project_usage pu WHERE pu.project_id = project) AS u
    LEFT JOIN project_quotas q ON q.project_id = project;
END;
$$;
