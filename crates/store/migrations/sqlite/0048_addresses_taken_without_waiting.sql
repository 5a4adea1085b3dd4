-- PostgreSQL's migration 0048 lets a creation pass over an address that
-- a transaction in flight holds, rather than wait for it while holding
-- counter rows. SQLite has one writer: no transaction is ever in flight
-- beside another, and nothing here changes.
SELECT 1;
