-- A replica the scaler is letting go: since when (ms) it gets no new
-- requests; it is deleted once no front door has one in flight to it
-- (0: it serves).
ALTER TABLE deployment_replicas ADD COLUMN draining_ms INTEGER NOT NULL DEFAULT 0;
-- The replicas a front door has requests in flight to, comma-separated.
ALTER TABLE deployment_load ADD COLUMN busy TEXT NOT NULL DEFAULT '';

-- The control-plane process sending an async request to a replica: when
-- it stops (its front door's load reports stop), another one takes the
-- request over and sends it again.
ALTER TABLE inference_requests ADD COLUMN owner TEXT NOT NULL DEFAULT '';
