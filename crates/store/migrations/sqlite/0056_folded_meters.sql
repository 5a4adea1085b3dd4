-- A project's balance summed every meter it ever had: one per instance,
-- volume and unit allocation, kept for ever, so a prepaid creation's
-- check (in its transaction, under the project's lock) and every balance
-- read grew with the project's history. Meters that can never run again
-- (of terminated instances, purged volumes, ended unit allocations) are
-- now folded into the balance's `spent_micros` and deleted, by the
-- reconciler, in the transaction that deletes them; the balance is what
-- was put in less what is folded and what the meters left have charged.
ALTER TABLE balances ADD COLUMN spent_micros BIGINT NOT NULL DEFAULT 0;
