-- A project's usage (migration 0028) and a subnet's address count (0023,
-- 0044) were kept by row triggers: each instance or address written ran a
-- PL/pgSQL call and an upsert of its counter row. A batch of creations
-- (one statement writing the instances and addresses of many) upserted
-- the same row once per instance: sixteen times for sixteen creations of
-- one project in one subnet. The counts of instances added, and of
-- addresses given and freed, are now kept per statement, from the rows it
-- wrote (its transition table): one upsert per project or subnet, taken
-- in their order, with the same shard per transaction as before. A
-- statement writing one row counts as before. Removals and changes of
-- instances stay row triggers: an instance is deleted or changes state
-- one statement at a time, and a trigger on chosen columns cannot see a
-- transition table.
DROP TRIGGER instances_usage_added ON instances;

CREATE FUNCTION count_instances_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, volumes,
        volume_gb, containers, ssh_keys)
    SELECT a.project_id, CAST(mod(txid_current(), 16) AS INTEGER), COUNT(*), SUM(a.vcpus),
        SUM(a.memory_mb), 0, 0, 0, 0
    FROM added a WHERE a.state <> 'terminated'
    GROUP BY a.project_id ORDER BY a.project_id
    ON CONFLICT (project_id, shard) DO UPDATE SET
        instances = project_usage.instances + excluded.instances,
        vcpus = project_usage.vcpus + excluded.vcpus,
        memory_mb = project_usage.memory_mb + excluded.memory_mb;
    RETURN NULL;
END;
$$;
CREATE TRIGGER instances_usage_added AFTER INSERT ON instances
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_instances_added();

DROP TRIGGER instance_addresses_counted ON instance_addresses;
DROP FUNCTION count_subnet_addresses();

-- One function for addresses given and freed: each trigger names its
-- rows `changed`, and the operation gives the sign.
CREATE FUNCTION count_addresses_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subnet_address_counts (subnet_id, shard, used)
    SELECT c.subnet_id, CAST(mod(txid_current(), 16) AS INTEGER),
        CASE WHEN TG_OP = 'INSERT' THEN COUNT(*) ELSE -COUNT(*) END
    FROM changed c GROUP BY c.subnet_id ORDER BY c.subnet_id
    ON CONFLICT (subnet_id, shard)
    DO UPDATE SET used = subnet_address_counts.used + excluded.used;
    RETURN NULL;
END;
$$;
CREATE TRIGGER instance_addresses_given AFTER INSERT ON instance_addresses
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION count_addresses_changed();
CREATE TRIGGER instance_addresses_freed AFTER DELETE ON instance_addresses
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION count_addresses_changed();
