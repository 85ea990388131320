-- A run is one Kubernetes object (its metadata.uid): deleting a Masterplan retires its run, and a new object
-- of the same name is a new run. A retired run keeps its masterplans row and its cost_events (the audit
-- trail); its queue rows (atoms, reservations, ramps, acceptance claims) are deleted when it is retired.
ALTER TABLE masterplans DROP CONSTRAINT IF EXISTS masterplans_namespace_name_key;
ALTER TABLE masterplans
    -- metadata.uid of the object this run belongs to; NULL for local runs (`mge run`), which are never swept.
    ADD COLUMN uid text,
    ADD COLUMN retired_at timestamptz;
-- One live run per name; retired runs of the same name stay beside it.
CREATE UNIQUE INDEX masterplans_live_name ON masterplans (namespace, name) WHERE retired_at IS NULL;
CREATE INDEX masterplans_live_uid ON masterplans (namespace) WHERE retired_at IS NULL AND uid IS NOT NULL;
