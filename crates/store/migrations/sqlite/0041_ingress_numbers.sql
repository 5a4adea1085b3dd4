-- A container's ingress rules are numbered by a counter kept on the
-- container, so a number is never given twice: the next number was the
-- highest one plus one, and deleting the last rule let the next take its
-- number again (a client holding the old rule's id saw it change meaning).
ALTER TABLE containers ADD COLUMN ingress_numbers BIGINT NOT NULL DEFAULT 0;
UPDATE containers SET ingress_numbers = COALESCE(
    (SELECT MAX(number) FROM ingress_rules WHERE ingress_rules.container_id = containers.id), 0);
