-- A join token may be made for one host name (`hostname`): only an agent
-- registering under that name joins with it. With a server registered
-- beforehand (its CPUs and memory as the operator says), a leaked token
-- then lets nobody declare a host of their own choosing, whose capacity
-- and images would draw tenants' instances. NULL: any new name, as before.
ALTER TABLE join_tokens ADD COLUMN hostname TEXT;
