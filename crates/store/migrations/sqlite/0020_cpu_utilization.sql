-- How busy an instance's CPUs were between its host's last two looks, in
-- percent of what it is given: the scaler's CPU utilization trigger.
ALTER TABLE instance_usage ADD COLUMN cpu_percent INTEGER;
