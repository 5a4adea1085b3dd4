-- A Kloigos unit a tenant allocated was not metered: any member with
-- `instance_create` held pinned CPUs for nothing, where the same CPUs as
-- an instance cost its price. A unit now has a meter (kind `unit`) that
-- runs while the unit is ALLOCATED to a tenant (not while it is being
-- allocated, nor once its deallocation began) at its CPU count times the
-- price per CPU and hour the catalog sets, which each control plane
-- writes into `unit_prices` at its start. One meter per allocation, named
-- after the unit and the allocation's start (`unit:<compute_id>@<started_at>`),
-- so a unit allocated again gets a new one and the old one keeps what it
-- charged. A unit an instance holds is the instance's, metered as the
-- instance. The meters are kept by triggers, as the usage rows are
-- (migration 0028), so every write that moves a unit keeps them: the
-- claims and releases alone and in batches, and a host's removal.
CREATE TABLE unit_prices (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    micros_per_cpu_hour BIGINT NOT NULL
);

CREATE FUNCTION meter_unit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at BIGINT := CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT);
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'ALLOCATED'
        AND OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL THEN
        UPDATE meters SET charged_micros = charged_micros + CASE WHEN running_since > at THEN 0
                ELSE (at - running_since) * micros_per_hour / 3600000 END,
            running_since = NULL
        WHERE resource_id = 'unit:' || OLD.compute_id || '@' || COALESCE(OLD.started_at, '')
            AND running_since IS NOT NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.status = 'ALLOCATED'
        AND NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL THEN
        INSERT INTO meters (resource_id, project_id, kind, micros_per_hour, running_since,
            charged_micros)
        VALUES ('unit:' || NEW.compute_id || '@' || COALESCE(NEW.started_at, ''),
            NEW.project_id, 'unit',
            NEW.cpu_count * COALESCE((SELECT p.micros_per_cpu_hour FROM unit_prices p
                WHERE p.id = 1), 0),
            at, 0)
        ON CONFLICT (resource_id) DO UPDATE SET running_since = excluded.running_since
            WHERE meters.running_since IS NULL;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER compute_units_metered_added AFTER INSERT ON compute_units
    FOR EACH ROW WHEN (NEW.status = 'ALLOCATED')
    EXECUTE FUNCTION meter_unit();
CREATE TRIGGER compute_units_metered_removed AFTER DELETE ON compute_units
    FOR EACH ROW WHEN (OLD.status = 'ALLOCATED')
    EXECUTE FUNCTION meter_unit();
CREATE TRIGGER compute_units_metered_changed
    AFTER UPDATE OF status, project_id, instance_id ON compute_units FOR EACH ROW
    WHEN ((OLD.status = 'ALLOCATED' OR NEW.status = 'ALLOCATED')
        AND (OLD.status IS DISTINCT FROM NEW.status
            OR OLD.project_id IS DISTINCT FROM NEW.project_id
            OR OLD.instance_id IS DISTINCT FROM NEW.instance_id))
    EXECUTE FUNCTION meter_unit();
