-- An instance's meter ran at its type's price plus the rates of the
-- volumes made with it, which bill through their own meters too: those
-- volumes were charged twice. What each meter accrued so far is booked at
-- the rate it had, and it runs on at its rate less those volumes' rates.
-- (A volume grown since is taken off at its new rate: such an instance is
-- charged a little less from now on, never more.)
UPDATE meters SET
    charged_micros = charged_micros + CASE
        WHEN running_since IS NULL OR running_since > CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) THEN 0
        ELSE (CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - running_since) * micros_per_hour / 3600000 END,
    running_since = CASE
        WHEN running_since IS NULL OR running_since > CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) THEN running_since
        ELSE CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) END,
    micros_per_hour = GREATEST(0, micros_per_hour - (
        SELECT CAST(COALESCE(SUM(vm.micros_per_hour), 0) AS BIGINT) FROM instances, jsonb_array_elements_text(COALESCE(CAST(instances.spec AS jsonb) -> 'volumes_made', '[]'::jsonb)) AS made(id) JOIN meters AS vm ON vm.resource_id = made.id AND vm.kind = 'volume'
        WHERE instances.id = meters.resource_id))
WHERE kind = 'instance'
  AND resource_id IN (SELECT id FROM instances WHERE state <> 'terminated');
