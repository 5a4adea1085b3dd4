-- A prepaid project's instances and containers need its balance to cover
-- an hour of them, whichever face makes them (Verda's deploys, volumes and
-- serverless replicas always do): a tenant refused by Verda for its balance
-- made the same instances through the native or containers API.
ALTER TABLE project_policies ADD COLUMN prepaid BIGINT NOT NULL DEFAULT 0;
