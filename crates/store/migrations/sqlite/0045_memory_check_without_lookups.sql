-- PostgreSQL's migration 0045 changes how its placement function counts a
-- host's memory. SQLite runs the same count from crates/store/src
-- (`HOST_MEMORY_HELD`): nothing to change here.
SELECT 1;
