-- What a host's agent offers placement, from its registration and
-- heartbeats. `images`: the images it said it has (a JSON list of names),
-- or none when its driver runs no image of its own; an instance of an
-- image no registry reference lets a host pull goes only where it is.
-- `cpus`: the CPUs it offers instances (Linux list format: online, less
-- those the operator reserved), or none for a simulated host (its agent
-- reports the machine it runs on, not the host); CPUs of the host's
-- registration it does not offer are not scheduled.
ALTER TABLE agents ADD COLUMN images TEXT;
ALTER TABLE agents ADD COLUMN cpus TEXT;
