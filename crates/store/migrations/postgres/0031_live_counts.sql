-- What `/metrics` and `/v1/metrics` count at every scrape: instances not
-- terminated, by state, from this index alone (terminated instances are
-- history, kept for ever: a count of every row grew with it, not with the
-- fleet). Operations under way come from `operations_by_status`.
CREATE INDEX instances_live_by_state ON instances (state) WHERE state <> 'terminated';
