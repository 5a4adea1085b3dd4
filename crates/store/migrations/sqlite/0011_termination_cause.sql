-- Why a terminated instance ended, as a code every face maps to its own
-- words (never read from the message). Instances terminated before were
-- told apart by their message; that is done here once.
ALTER TABLE instances ADD COLUMN end_cause TEXT;
UPDATE instances SET end_cause = CASE
    WHEN state_detail LIKE 'no host%' THEN 'no_capacity'
    WHEN state_detail LIKE '%could not create%' OR state_detail LIKE '%could not prepare%'
        THEN 'host_failed'
    WHEN state_detail LIKE '%cancelled%' THEN 'cancelled'
    ELSE 'deleted'
END
WHERE state = 'terminated';
