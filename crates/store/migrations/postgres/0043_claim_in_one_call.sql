-- Placing an instance on whole CPUs of a host was a transaction of four
-- round trips on PostgreSQL: BEGIN; one statement recording the operation's
-- progress, the instance on the host, its CPUs in the ledger and the host's
-- row lock; the host's memory check, a statement of its own because it must
-- read once that lock is held (a statement that waits for a row lock reads
-- the rest with the snapshot it started with); COMMIT. This function is all
-- of it in one call, run as one statement outside any transaction: each
-- statement in it takes a fresh snapshot (READ COMMITTED, a volatile
-- function), the memory check once the host's lock is held. Locks are
-- taken in the same order as before: operation, instance, ledger, host.
--
-- It answers 1 when the CPUs are the instance's, and 0, having changed
-- nothing, when the operation is no longer the caller's. It fails with
-- SQLSTATE TS001, changing nothing, when the instance was placed
-- meanwhile, a CPU is taken, the host is not READY, or its memory would be
-- overcommitted. The memory check counts what the
-- store's own check counts (`claim_cpus` in crates/store/src/instances.rs):
-- the host's instances, and those holding its CPUs or shares (moving in).
CREATE FUNCTION claim_instance_cpus(p_operation TEXT, p_owner TEXT, p_steps TEXT,
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
    -- Past the first write, a refusal is an error (TS001) that ends the
    -- statement, undoing it all: cheaper than a block that catches it,
    -- which PostgreSQL runs as a subtransaction at every call.
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
    SELECT CAST(COALESCE(SUM(held.memory_mb), 0) AS BIGINT) INTO used FROM (
        SELECT i.id, i.memory_mb FROM instances i WHERE i.host_id = p_host
        UNION SELECT c.id, (SELECT i.memory_mb FROM instances i WHERE i.id = c.id)
        FROM (SELECT DISTINCT SUBSTR(cc.holder, 10) AS id FROM cpu_claims cc
              WHERE cc.host_id = p_host AND SUBSTR(cc.holder, 1, 9) = 'instance:') c
        UNION SELECT s.id, (SELECT i.memory_mb FROM instances i WHERE i.id = s.id)
        FROM (SELECT DISTINCT cs.instance_id AS id FROM cpu_shares cs
              WHERE cs.host_id = p_host) s) held;
    IF used > capacity THEN
        RAISE EXCEPTION 'the host''s memory would be overcommitted' USING ERRCODE = 'TS001';
    END IF;
    RETURN 1;
END;
$$;
