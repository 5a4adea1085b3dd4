-- Hosts by zone and by region, for lists filtered by either (Kloigos'
-- units): without, such a list walked every host.
CREATE INDEX hosts_by_zone ON hosts (zone, hostname);
CREATE INDEX hosts_by_region ON hosts (region, hostname);

-- How many addresses each subnet has given, kept by the store as addresses
-- are given and freed, whichever statement does it, so that a subnet's
-- free count reads a few rows rather than counting its instances. The
-- count is the sum of up to 16 rows per subnet, each change going to one
-- at random, so that concurrent creations seldom wait for one another's
-- row lock (a deadlock between two, rare, is retried like any other).
CREATE TABLE subnet_address_counts (
    subnet_id TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    used      BIGINT NOT NULL,
    PRIMARY KEY (subnet_id, shard)
);
INSERT INTO subnet_address_counts (subnet_id, shard, used)
SELECT subnet_id, 0, COUNT(*) FROM instance_addresses GROUP BY subnet_id;

CREATE FUNCTION count_subnet_addresses() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO subnet_address_counts (subnet_id, shard, used)
        VALUES (NEW.subnet_id, floor(random() * 16)::INTEGER, 1)
        ON CONFLICT (subnet_id, shard)
        DO UPDATE SET used = subnet_address_counts.used + 1;
    ELSE
        INSERT INTO subnet_address_counts (subnet_id, shard, used)
        VALUES (OLD.subnet_id, floor(random() * 16)::INTEGER, -1)
        ON CONFLICT (subnet_id, shard)
        DO UPDATE SET used = subnet_address_counts.used - 1;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER instance_addresses_counted
    AFTER INSERT OR DELETE ON instance_addresses
    FOR EACH ROW EXECUTE FUNCTION count_subnet_addresses();

CREATE FUNCTION forget_subnet_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM subnet_address_counts WHERE subnet_id = OLD.id;
    RETURN NULL;
END;
$$;
CREATE TRIGGER subnets_counts_go
    AFTER DELETE ON subnets
    FOR EACH ROW EXECUTE FUNCTION forget_subnet_counts();
