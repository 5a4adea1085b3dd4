-- PostgreSQL's migration 0025 makes changes of agents' desired states and
-- reports notify every replica. An SQLite store is written by one process,
-- whose own changes wake its waiters directly: nothing to add here.
SELECT 1;
