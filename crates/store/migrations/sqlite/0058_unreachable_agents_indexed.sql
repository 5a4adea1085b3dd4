-- Instances on a host whose agent misses its heartbeats are shown
-- `unknown`, so every read of instances asks which agents are unreachable:
-- usually none. An index of those alone answers from an empty index; the
-- read scanned every agent before (3.6 ms at 10,000 agents on PostgreSQL,
-- for each instance read).
CREATE INDEX agents_unreachable ON agents (hostname) WHERE reachable = 0;
