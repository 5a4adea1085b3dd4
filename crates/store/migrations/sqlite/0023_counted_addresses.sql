-- Hosts by zone and by region, for lists filtered by either (Kloigos'
-- units): without, such a list walked every host.
CREATE INDEX hosts_by_zone ON hosts (zone, hostname);
CREATE INDEX hosts_by_region ON hosts (region, hostname);

-- How many addresses each subnet has given, kept by the store as addresses
-- are given and freed, whichever statement does it, so that a subnet's
-- free count reads a few rows rather than counting its instances. The
-- count is the sum of up to 16 rows per subnet, each change going to one
-- at random: on PostgreSQL concurrent creations then seldom wait for one
-- another's row (the schemas are kept alike).
CREATE TABLE subnet_address_counts (
    subnet_id TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    used      INTEGER NOT NULL,
    PRIMARY KEY (subnet_id, shard)
);
INSERT INTO subnet_address_counts (subnet_id, shard, used)
SELECT subnet_id, 0, COUNT(*) FROM instance_addresses GROUP BY subnet_id;

CREATE TRIGGER instance_addresses_count_given AFTER INSERT ON instance_addresses
BEGIN
    INSERT INTO subnet_address_counts (subnet_id, shard, used)
    VALUES (NEW.subnet_id, abs(random() % 16), 1)
    ON CONFLICT (subnet_id, shard) DO UPDATE SET used = used + 1;
END;

CREATE TRIGGER instance_addresses_count_freed AFTER DELETE ON instance_addresses
BEGIN
    INSERT INTO subnet_address_counts (subnet_id, shard, used)
    VALUES (OLD.subnet_id, abs(random() % 16), -1)
    ON CONFLICT (subnet_id, shard) DO UPDATE SET used = used - 1;
END;

CREATE TRIGGER subnets_counts_go AFTER DELETE ON subnets
BEGIN
    DELETE FROM subnet_address_counts WHERE subnet_id = OLD.id;
END;
