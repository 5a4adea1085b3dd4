-- PostgreSQL's migration 0030 rewrites its usage function in PL/pgSQL (its
-- plan kept, not made at every call). SQLite counts usage in its triggers'
-- own statements: nothing to change here.
SELECT 1;
