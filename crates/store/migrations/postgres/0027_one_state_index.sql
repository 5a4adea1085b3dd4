-- `instances_by_project_state_created` (project, state, created_at, id)
-- answers every lookup `instances_by_project_state` (project, state) did,
-- by its prefix; the shorter one only cost every insert and change of
-- state an index write more.
DROP INDEX instances_by_project_state;
