-- The process driving an operation: only it may record progress or end it.
ALTER TABLE operations ADD COLUMN lease_owner TEXT;
