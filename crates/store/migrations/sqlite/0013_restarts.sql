-- An instance's operations, newest last: the restarts after deaths within
-- a window are counted by every replica alike.
CREATE INDEX operations_by_resource ON operations (resource_id, created_at);
