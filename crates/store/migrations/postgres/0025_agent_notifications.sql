-- Every replica learns at once when a host's desired state or a report of
-- it changes, whichever replica wrote it: the change notifies the host's
-- name on `tessera_agents` when its transaction commits (each replica
-- LISTENs on one connection). Without, each waiting long-poll and each
-- operation waiting for a report read the store every fraction of a
-- second, which at 10,000 hosts was 10,000 reads a second at rest.
-- An agent's new credential, or its removal, notifies too: a replica
-- trusts a credential it verified until it hears otherwise (for at most
-- a minute), rather than reading it again at each of its heartbeats.
CREATE FUNCTION notify_agent_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tessera_agents', OLD.hostname);
    ELSE
        PERFORM pg_notify('tessera_agents', NEW.hostname);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER agents_desired_changed
    AFTER UPDATE OF generation, credential_hash OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION notify_agent_change();

CREATE TRIGGER agent_work_observed
    AFTER UPDATE OF observed_generation ON agent_work
    FOR EACH ROW EXECUTE FUNCTION notify_agent_change();
