-- A join token may admit a given number of hosts (`uses`), then no more:
-- one made for one host cannot, if it leaks, register others that would
-- receive tenants' instances. NULL: any number until it expires, as
-- before.
ALTER TABLE join_tokens ADD COLUMN uses_left BIGINT;
