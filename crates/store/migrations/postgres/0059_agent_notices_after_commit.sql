-- A new desired state and an agent's report were told to every replica by
-- triggers in the writes themselves (migrations 0025 and 0029). PostgreSQL
-- lets one transaction that notified commit at a time: it holds a lock on
-- the notification queue from its commit's start until its end, the WAL's
-- flush included. So every desired state written and every report, two a
-- creation on a host with an agent, committed one after another, each
-- waiting for its own flush; sampled during creations with 1,000 agents,
-- backends waiting for that lock were nearly all the waits PostgreSQL had.
-- The store now tells the replicas of those two changes itself, once each
-- write has committed, in a transaction of notices alone that does not
-- wait for the flush (`Store::tell_replicas`). A change of an agent's
-- credential, or its removal, is rare, and stays told by the trigger, in
-- the transaction that makes it.
DROP TRIGGER agent_work_observed ON agent_work;
DROP TRIGGER agents_desired_changed ON agents;
CREATE TRIGGER agents_replaced
    AFTER UPDATE OF credential_hash OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION notify_agent_change();
