-- Partitioned hosts (those with Kloigos units) by zone and by region: a
-- list of units filtered by either, with no project to start from (the
-- install's admin), walks only the hosts that can have units, not every
-- pooled host of the zone.
CREATE INDEX partitioned_hosts_by_zone ON hosts (zone, hostname) WHERE cpu_ranges <> '[]';
CREATE INDEX partitioned_hosts_by_region ON hosts (region, hostname) WHERE cpu_ranges <> '[]';
