-- PostgreSQL's migration 0059 tells replicas of new desired states and
-- reports after their writes commit, not from triggers in them. An SQLite
-- store is written by one process and notifies nothing: nothing to change
-- here.
SELECT 1;
