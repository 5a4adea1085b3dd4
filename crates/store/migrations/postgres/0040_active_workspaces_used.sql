-- A user's first workspace is its active one from its creation: it was
-- shown as never used (`last_used` null) until activated again.
UPDATE memberships SET last_used = created_at
    WHERE last_used IS NULL
      AND EXISTS (SELECT 1 FROM users WHERE users.id = memberships.user_id
                  AND users.active_project_id = memberships.project_id);
