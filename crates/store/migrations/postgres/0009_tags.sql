-- Tags on instances and volumes (Verda's, as its Go SDK manages them): at
-- most 10 a resource, one per key. `resource` is `instance:ID` or
-- `volume:ID`; keys are kept in lower case, as Verda keeps them.
CREATE TABLE tags (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    resource   TEXT NOT NULL,
    tag_key    TEXT NOT NULL,
    tag_value  TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (resource, tag_key)
);
CREATE INDEX tags_by_project ON tags (project_id, resource);
