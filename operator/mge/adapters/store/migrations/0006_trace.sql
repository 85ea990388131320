-- Operator-wide rows (executor reports, scaling decisions) get a trace_id of their own, so that every row
-- of every table carries one and trace coverage can reach 100%; lookups by trace_id get indexes.
UPDATE executor_status SET trace_id = gen_random_uuid() WHERE trace_id IS NULL;
ALTER TABLE executor_status ALTER COLUMN trace_id SET DEFAULT gen_random_uuid(), ALTER COLUMN trace_id SET NOT NULL;
UPDATE scaling_decisions SET trace_id = gen_random_uuid() WHERE trace_id IS NULL;
ALTER TABLE scaling_decisions ALTER COLUMN trace_id SET DEFAULT gen_random_uuid(), ALTER COLUMN trace_id SET NOT NULL;

CREATE INDEX masterplans_by_trace ON masterplans (trace_id);
CREATE INDEX atom_attempts_by_trace ON atom_attempts (trace_id);
CREATE INDEX cost_events_by_trace ON cost_events (trace_id);
