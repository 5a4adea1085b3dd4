-- The process driving an operation: only it may record progress or end it.
ALTER TABLE operations ADD COLUMN lease_owner TEXT;

-- The project a Kloigos unit is allocated to: only it (and the fleet's
-- operators) sees and deallocates the unit.
ALTER TABLE compute_units ADD COLUMN project_id TEXT;

-- How many times a process took the operation up, and why the last
-- attempt stopped short (shown while it is retried).
ALTER TABLE operations ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE operations ADD COLUMN last_error TEXT;
