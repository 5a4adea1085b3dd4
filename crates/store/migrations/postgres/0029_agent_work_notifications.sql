-- Migration 0025's notifications named the host whatever had changed, and
-- each replica took every one as "its credential may be another now": it
-- forgot the agent's verified credential as well as waking its waiters.
-- So every desired state written and every report made the agent's next
-- request read its credential again (three or four reads a creation with
-- real agents), and woke every waiter of the host for every change: a
-- long-poll read the store for a report, an operation waiting for a report
-- for a new desired state. Now a new desired state notifies
-- `desired <hostname>`, which wakes the host's long-polls; a report
-- `report <hostname>`, which wakes whoever waits for one; a new
-- credential or the agent's removal notifies the bare host name, as
-- before, which every replica, of this version or an older one, takes as
-- "forget its credential and wake its waiters". (Host names have no
-- spaces.)
CREATE OR REPLACE FUNCTION notify_agent_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tessera_agents', OLD.hostname);
    ELSIF NEW.credential_hash IS DISTINCT FROM OLD.credential_hash THEN
        PERFORM pg_notify('tessera_agents', NEW.hostname);
    ELSE
        PERFORM pg_notify('tessera_agents', 'desired ' || NEW.hostname);
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION notify_agent_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tessera_agents', 'report ' || NEW.hostname);
    RETURN NULL;
END;
$$;

DROP TRIGGER agent_work_observed ON agent_work;
CREATE TRIGGER agent_work_observed
    AFTER UPDATE OF observed_generation ON agent_work
    FOR EACH ROW EXECUTE FUNCTION notify_agent_report();
