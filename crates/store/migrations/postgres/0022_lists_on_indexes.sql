-- Lists that page on an index whatever their filters. An instance's labels,
-- one row each: a label selector walks its first label's index in creation
-- order and looks the others up by key, so a page reads about a page of
-- rows at any fleet size. Labels never change once an instance is made.
CREATE TABLE instance_labels (
    instance_id TEXT NOT NULL REFERENCES instances (id),
    project_id  TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (instance_id, key)
);
CREATE INDEX instance_labels_by_value
    ON instance_labels (project_id, key, value, created_at, instance_id);
INSERT INTO instance_labels (instance_id, project_id, key, value, created_at)
SELECT i.id, i.project_id, j.key, j.value, i.created_at
FROM instances i
CROSS JOIN LATERAL jsonb_each_text(
    CASE WHEN jsonb_typeof(i.labels::jsonb) = 'object' THEN i.labels::jsonb ELSE '{}'::jsonb END
) j
WHERE jsonb_typeof(i.labels::jsonb -> j.key) = 'string';

-- Instances of one state in creation order (`?state=running`).
CREATE INDEX instances_by_project_state_created
    ON instances (project_id, state, created_at, id);

-- A terminated instance's address is free: its row goes when it ends (it
-- used to stay until the address was given again), so a subnet's count of
-- used addresses reads only its own key.
DELETE FROM instance_addresses
WHERE instance_id IN (SELECT id FROM instances WHERE state = 'terminated');
