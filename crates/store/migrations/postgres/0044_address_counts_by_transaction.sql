-- A subnet's address count (migration 0023) took a random one of its 16
-- rows at each address given or freed. A transaction that gives several
-- addresses in one subnet (a batch of creations) then held several of
-- them, taken in a random order, and two such transactions could wait for
-- each other until PostgreSQL's deadlock check (a second). The row is now
-- chosen by the transaction, as a project's usage rows are (migration
-- 0028): one row per subnet a transaction touches, and concurrent
-- transactions still spread over the 16.
CREATE OR REPLACE FUNCTION count_subnet_addresses() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO subnet_address_counts (subnet_id, shard, used)
        VALUES (NEW.subnet_id, CAST(mod(txid_current(), 16) AS INTEGER), 1)
        ON CONFLICT (subnet_id, shard)
        DO UPDATE SET used = subnet_address_counts.used + 1;
    ELSE
        INSERT INTO subnet_address_counts (subnet_id, shard, used)
        VALUES (OLD.subnet_id, CAST(mod(txid_current(), 16) AS INTEGER), -1)
        ON CONFLICT (subnet_id, shard)
        DO UPDATE SET used = subnet_address_counts.used - 1;
    END IF;
    RETURN NULL;
END;
$$;
