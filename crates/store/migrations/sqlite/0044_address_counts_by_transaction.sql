-- PostgreSQL's migration 0044 picks a subnet's address count row by
-- transaction rather than at random, so that a transaction giving several
-- addresses holds one row per subnet. SQLite's one writer takes no row
-- locks: its rows stay picked at random, and mean the same.
SELECT 1;
