-- A new instance whose first address was taken looks for another after
-- its own statement. Two changes make that search safe beside other
-- transactions in flight:
--
-- * It takes its subnet's address count (of its transaction's shard,
--   migration 0047) before it tries an address, waiting for it as
--   usual. Creations now take their project's usage row first, then
--   addresses, then address counts (the store's statements take the
--   usage row as their first step): the same order everywhere.
-- * An address a transaction in flight holds (just given, or being
--   freed) is busy, not free: it is passed over after a millisecond and
--   the next one is tried. The search holds its usage row by then, and
--   that transaction may be about to wait for it. An address a
--   rolled-back transaction leaves free is found again by the store's
--   lowest-free search.
CREATE FUNCTION take_address_unless_busy(wanted_subnet TEXT, wanted TEXT, holder TEXT)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
DECLARE
    waited TEXT := current_setting('lock_timeout');
    taken BOOLEAN := false;
BEGIN
    INSERT INTO subnet_address_counts (subnet_id, shard, used)
    VALUES (wanted_subnet, CAST(mod(txid_current(), 16) AS INTEGER), 0)
    ON CONFLICT (subnet_id, shard) DO UPDATE SET used = subnet_address_counts.used;
    PERFORM set_config('lock_timeout', '1ms', true);
    BEGIN
        INSERT INTO instance_addresses (subnet_id, address, instance_id)
        VALUES (wanted_subnet, wanted, holder)
        ON CONFLICT (subnet_id, address) DO NOTHING;
        taken := FOUND;
    EXCEPTION WHEN lock_not_available THEN
        taken := false;
    END;
    PERFORM set_config('lock_timeout', waited, true);
    IF taken THEN
        UPDATE instances SET private_ip = wanted WHERE id = holder;
    END IF;
    RETURN taken;
END;
$$;
