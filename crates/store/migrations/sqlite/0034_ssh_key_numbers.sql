-- The last number a project gave an SSH key (the containers API's integer
-- id): a number is never given twice, so an id a client kept of a deleted
-- key never names a newer one. Numbers were the highest kept plus one.
ALTER TABLE projects ADD COLUMN ssh_keys_numbered INTEGER NOT NULL DEFAULT 0;
UPDATE projects SET ssh_keys_numbered =
    COALESCE((SELECT MAX(number) FROM ssh_keys WHERE ssh_keys.project_id = projects.id), 0);
