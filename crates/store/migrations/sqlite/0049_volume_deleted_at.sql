-- When a volume was deleted: to the trash, or for good. A permanent
-- delete keeps no trash time, so Verda's `deleted_at` had nothing to show
-- but the volume's creation. Volumes deleted before this migration get
-- the best time known: their trash time, or their purge.
ALTER TABLE volumes ADD COLUMN deleted_at TEXT;
UPDATE volumes SET deleted_at = COALESCE(trashed_at, purged_at) WHERE status = 'deleted';
