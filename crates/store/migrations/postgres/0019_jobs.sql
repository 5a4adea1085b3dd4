-- A job deployment's requests: what was asked (kept to send it to the
-- job's own replica when it is up), the replica running it, and when it
-- must end. Statuses: Queue, Starting (its replica is being made),
-- Inference (sent to it), Completed.
ALTER TABLE inference_requests ADD COLUMN request TEXT NOT NULL DEFAULT '';
ALTER TABLE inference_requests ADD COLUMN instance_id TEXT;
ALTER TABLE inference_requests ADD COLUMN deadline_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX inference_requests_deployment ON inference_requests (deployment_id, status);
CREATE INDEX inference_requests_instance ON inference_requests (instance_id);

-- How many times a deployment's queue was purged: each control-plane
-- process drops its waiting requests when it sees the count grow.
ALTER TABLE deployments ADD COLUMN purges BIGINT NOT NULL DEFAULT 0;
