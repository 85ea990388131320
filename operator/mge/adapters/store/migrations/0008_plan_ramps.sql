-- Fleet-wide ramp-up of Masterplans: while a plan has a row here, all executors together run at most
-- `allowance` of its atoms at once. A row is (re)started when a plan is registered with new work or resumed,
-- grows by one for each of the plan's calls that answers, and is dropped when the ramp no longer limits.
-- Claims lock the rows they read (SKIP LOCKED), so concurrent claims cannot both use the same room.
CREATE TABLE plan_ramps (
    masterplan_id  uuid        PRIMARY KEY REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id       uuid        NOT NULL,
    allowance      integer     NOT NULL CHECK (allowance >= 1),
    started_at     timestamptz NOT NULL DEFAULT now()
);

-- The claim counts each ramping plan's running atoms.
CREATE INDEX atoms_running_by_plan ON atoms (masterplan_id) WHERE state = 'running';
