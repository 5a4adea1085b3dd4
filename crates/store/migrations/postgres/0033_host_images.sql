-- The images a host's agent said it has (a JSON list of names), or none
-- when its driver runs no image of its own: placement sends an instance
-- of an image no registry reference lets a host pull only where it is.
ALTER TABLE agents ADD COLUMN images TEXT;
