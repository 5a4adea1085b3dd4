-- Instances on hosts carved into Kloigos units: the instance holding a
-- unit (it holds the unit's CPUs in the ledger too).
ALTER TABLE compute_units ADD COLUMN instance_id TEXT;
CREATE INDEX compute_units_by_instance ON compute_units (instance_id);
