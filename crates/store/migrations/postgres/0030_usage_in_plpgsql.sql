-- Migration 0028's add_project_usage was an SQL function: PostgreSQL plans
-- an SQL function's body afresh at every call (and, planning the trigger's
-- PERFORM of it, tries to inline it, parsing the body again), so each
-- instance created or deleted spent about 0.1 ms of PostgreSQL's CPU
-- planning one INSERT (pg_stat_statements' plan time: 0.087 ms a call for
-- the PERFORM, 0.019 ms for the INSERT). In PL/pgSQL the INSERT's plan is
-- made once per session and kept. Same arguments, same rows, same result.
CREATE OR REPLACE FUNCTION add_project_usage(project TEXT, d_instances BIGINT, d_vcpus BIGINT,
    d_memory_mb BIGINT, d_volumes BIGINT, d_volume_gb BIGINT, d_containers BIGINT,
    d_ssh_keys BIGINT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
END;
$$;
