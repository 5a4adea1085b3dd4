-- Superseded before release: an instance's meter that also counted the
-- volumes made with it is repaired at each start by the app
-- (`App::repair_instance_meters`), which knows each type's catalog price.
-- Taking the volumes' current prices off here could take off more than was
-- ever added (a volume grown since).
SELECT 1;
