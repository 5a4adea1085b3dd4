-- Migration 0043's placement checked the host's memory by looking up, for
-- every instance holding a CPU of the host in the ledger, that instance's
-- memory: about one lookup per instance on the host (the ledger holds one
-- row per CPU of each), all of them instances already counted by their
-- `host_id`. The check now counts the host's instances once and looks up
-- only the holders that are not among them (instances moving in), which
-- on a full host of 16 instances read 38 buffers instead of 89. It counts
-- the same memory: the host's instances, and those holding its CPUs or
-- shares while placed elsewhere (`HOST_MEMORY_HELD` in
-- crates/store/src/instances.rs is the same statement). The rest of the
-- function is 0043's.
CREATE OR REPLACE FUNCTION claim_instance_cpus(p_operation TEXT, p_owner TEXT, p_steps TEXT,
    p_lease_until TEXT, p_at TEXT, p_instance TEXT, p_host TEXT, p_cpu_list TEXT,
    p_holder TEXT, p_cpus TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    wanted BIGINT;
    claimed BIGINT;
    capacity BIGINT;
    used BIGINT;
BEGIN
    UPDATE operations SET steps = p_steps, lease_until = p_lease_until, updated_at = p_at
    WHERE id = p_operation AND status = 'running' AND lease_owner = p_owner;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    UPDATE instances SET host_id = p_host, cpu_list = p_cpu_list, updated_at = p_at,
        generation = generation + 1
    WHERE id = p_instance AND host_id IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the instance was placed meanwhile' USING ERRCODE = 'TS001';
    END IF;
    wanted := cardinality(string_to_array(p_cpus, ','));
    INSERT INTO cpu_claims (host_id, cpu, holder)
    SELECT p_host, CAST(c AS BIGINT), p_holder FROM unnest(string_to_array(p_cpus, ',')) AS c
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS claimed = ROW_COUNT;
    IF claimed <> wanted THEN
        RAISE EXCEPTION 'a CPU is taken' USING ERRCODE = 'TS001';
    END IF;
    UPDATE hosts SET generation = generation + 1, updated_at = p_at
    WHERE id = p_host AND status = 'READY'
    RETURNING memory_mb INTO capacity;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the host is not READY' USING ERRCODE = 'TS001';
    END IF;
    WITH here AS MATERIALIZED (
        SELECT i.id, i.memory_mb FROM instances i WHERE i.host_id = p_host),
    moving AS (
        SELECT SUBSTR(cc.holder, 10) AS id FROM cpu_claims cc
        WHERE cc.host_id = p_host AND SUBSTR(cc.holder, 1, 9) = 'instance:'
        UNION SELECT cs.instance_id FROM cpu_shares cs WHERE cs.host_id = p_host
        EXCEPT SELECT h.id FROM here h)
    SELECT CAST(COALESCE((SELECT SUM(h.memory_mb) FROM here h), 0)
        + COALESCE((SELECT SUM(i.memory_mb) FROM moving m JOIN instances i ON i.id = m.id), 0)
        AS BIGINT) INTO used;
    IF used > capacity THEN
        RAISE EXCEPTION 'the host''s memory would be overcommitted' USING ERRCODE = 'TS001';
    END IF;
    RETURN 1;
END;
$$;
