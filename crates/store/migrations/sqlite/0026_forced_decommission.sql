-- A host deleted with force leaves the fleet even when its agent does not
-- answer (gone for good, or never done preparing): it is retired without
-- the agent, whose credential stops working; what it made on the machine
-- stays there. The flag outlives a restart of the control plane mid-way.
ALTER TABLE hosts ADD COLUMN decommission_forced INTEGER NOT NULL DEFAULT 0;
