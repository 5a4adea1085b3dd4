-- Host names are DNS names, which know no case: a registration looks for
-- a host of its name in any case.
CREATE INDEX hosts_by_lower_hostname ON hosts (lower(hostname));
