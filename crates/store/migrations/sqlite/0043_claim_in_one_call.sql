-- PostgreSQL's migration 0043 adds a function that places an instance on
-- CPUs of a host in one call. SQLite runs the same writes in its one
-- writer, with no round trips to save: nothing to change here.
SELECT 1;
