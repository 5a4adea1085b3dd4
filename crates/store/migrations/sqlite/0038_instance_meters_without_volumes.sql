-- An instance's meter ran at its type's price plus the rates of the
-- volumes made with it, which bill through their own meters too: those
-- volumes were charged twice. What each meter accrued so far is booked at
-- the rate it had, and it runs on at its rate less those volumes' rates.
-- (A volume grown since is taken off at its new rate: such an instance is
-- charged a little less from now on, never more.)
UPDATE meters SET
    charged_micros = charged_micros + CASE
        WHEN running_since IS NULL OR running_since > CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) THEN 0
        ELSE (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - running_since) * micros_per_hour / 3600000 END,
    running_since = CASE
        WHEN running_since IS NULL OR running_since > CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) THEN running_since
        ELSE CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) END,
    micros_per_hour = MAX(0, micros_per_hour - (
        SELECT CAST(COALESCE(SUM(vm.micros_per_hour), 0) AS BIGINT) FROM instances, json_each(instances.spec, '$.volumes_made') AS made JOIN meters AS vm ON vm.resource_id = made.value AND vm.kind = 'volume'
        WHERE instances.id = meters.resource_id))
WHERE kind = 'instance'
  AND resource_id IN (SELECT id FROM instances WHERE state <> 'terminated');
