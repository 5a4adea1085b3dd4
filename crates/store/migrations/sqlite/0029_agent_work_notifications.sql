-- PostgreSQL's migration 0029 tells a change of an agent's work from one
-- of its credential in its notifications. An SQLite store is written by
-- one process and notifies nothing: nothing to change here.
SELECT 1;
