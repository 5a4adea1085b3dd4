-- A unit allocated with `"deployment_id": null` in its tags has no
-- deployment id (as upstream's `tags->>'deployment_id'` reads it); those
-- allocated before kept the text "null".
UPDATE compute_units SET deployment_id = NULL
    WHERE deployment_id = 'null' AND tags IS NOT NULL
      AND json_type(tags, '$.deployment_id') = 'null';
