-- PostgreSQL's migration 0042 adds a function that locks a project and
-- reads its usage in one call. SQLite's one writer runs quota checks one
-- after the other and reads the usage with the limits already: nothing to
-- change here.
SELECT 1;
