-- PostgreSQL's migration 0052, in SQLite's trigger syntax: a Kloigos unit
-- allocated to a tenant has a meter that runs while it is ALLOCATED, at
-- its CPU count times `unit_prices` (the catalog's price per CPU and
-- hour, written by each control plane at its start). See that migration.
CREATE TABLE unit_prices (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    micros_per_cpu_hour INTEGER NOT NULL
);

CREATE TRIGGER compute_units_metered_added AFTER INSERT ON compute_units
WHEN NEW.status = 'ALLOCATED' AND NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL
BEGIN
    INSERT INTO meters (resource_id, project_id, kind, micros_per_hour, running_since,
        charged_micros)
    VALUES ('unit:' || NEW.compute_id || '@' || COALESCE(NEW.started_at, ''),
        NEW.project_id, 'unit',
        NEW.cpu_count * COALESCE((SELECT p.micros_per_cpu_hour FROM unit_prices p
            WHERE p.id = 1), 0),
        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 0)
    ON CONFLICT (resource_id) DO UPDATE SET running_since = excluded.running_since
        WHERE meters.running_since IS NULL;
END;

CREATE TRIGGER compute_units_metered_removed AFTER DELETE ON compute_units
WHEN OLD.status = 'ALLOCATED' AND OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL
BEGIN
    UPDATE meters SET charged_micros = charged_micros + MAX(0,
            (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - running_since)
            * micros_per_hour / 3600000),
        running_since = NULL
    WHERE resource_id = 'unit:' || OLD.compute_id || '@' || COALESCE(OLD.started_at, '')
        AND running_since IS NOT NULL;
END;

CREATE TRIGGER compute_units_metered_changed
AFTER UPDATE OF status, project_id, instance_id ON compute_units
WHEN (OLD.status = 'ALLOCATED' OR NEW.status = 'ALLOCATED')
    AND (OLD.status IS NOT NEW.status OR OLD.project_id IS NOT NEW.project_id
        OR OLD.instance_id IS NOT NEW.instance_id)
BEGIN
    UPDATE meters SET charged_micros = charged_micros + MAX(0,
            (CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) - running_since)
            * micros_per_hour / 3600000),
        running_since = NULL
    WHERE OLD.status = 'ALLOCATED' AND OLD.project_id IS NOT NULL AND OLD.instance_id IS NULL
        AND resource_id = 'unit:' || OLD.compute_id || '@' || COALESCE(OLD.started_at, '')
        AND running_since IS NOT NULL;
    INSERT INTO meters (resource_id, project_id, kind, micros_per_hour, running_since,
        charged_micros)
    SELECT 'unit:' || NEW.compute_id || '@' || COALESCE(NEW.started_at, ''),
        NEW.project_id, 'unit',
        NEW.cpu_count * COALESCE((SELECT p.micros_per_cpu_hour FROM unit_prices p
            WHERE p.id = 1), 0),
        CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER), 0
    WHERE NEW.status = 'ALLOCATED' AND NEW.project_id IS NOT NULL AND NEW.instance_id IS NULL
    ON CONFLICT (resource_id) DO UPDATE SET running_since = excluded.running_since
        WHERE meters.running_since IS NULL;
END;
