-- As PostgreSQL's migration 0046: the operations under way on a partial
-- index, in the order they are read (SQLite has no heap-only updates or
-- fill factor; the index is smaller and the schemas stay alike).
DROP INDEX operations_by_status;
CREATE INDEX operations_in_flight ON operations (created_at, id)
    WHERE status IN ('pending', 'running');
