-- Who made an instance (a user id; none for what the control plane makes
-- itself, and for instances made before this): what Verda shows as
-- `created_by_user_id`.
ALTER TABLE instances ADD COLUMN created_by TEXT;
