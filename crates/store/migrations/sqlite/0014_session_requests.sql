-- Terminal sessions asked of a replica that does not hold the host's agent
-- channel: the replica that holds it takes the request (deleting its row)
-- and sends it down the channel; the agent dials `dial_back` directly.
CREATE TABLE session_requests (
    session     TEXT PRIMARY KEY,
    hostname    TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    -- The SessionRequest, JSON.
    request     TEXT NOT NULL,
    dial_back   TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX session_requests_by_host ON session_requests (hostname);
