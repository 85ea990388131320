-- Executor scaling: the scaler's signal health, what each executor holds and measures, claims per plan.

-- The health of the operator's scaling signals (Prometheus or the executors' own reports): one row, read by
-- the Masterplans' ExecutorScaling condition and GET /api/v2/concurrency/status.
CREATE TABLE scaling_signals (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    trace_id   uuid        NOT NULL DEFAULT gen_random_uuid(),
    source     text        NOT NULL,
    healthy    boolean     NOT NULL,
    reason     text        NOT NULL,
    message    text        NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Atoms each executor holds (claimed, not finished), not only its LLM calls in flight: the scaler removes only
-- executors that hold none, and ranks the others' pods by it for the ReplicaSet (pod-deletion-cost).
ALTER TABLE executor_status ADD COLUMN atoms_held integer NOT NULL DEFAULT 0;

-- Each executor's own LLM p95, store (claim) p95 and LLM request/error counts over its last 5 minutes:
-- the scaler's latency and error signals when no Prometheus is configured.
ALTER TABLE executor_status
    ADD COLUMN llm_p95_s    double precision,
    ADD COLUMN db_p95_s     double precision,
    ADD COLUMN llm_requests integer NOT NULL DEFAULT 0,
    ADD COLUMN llm_errors   integer NOT NULL DEFAULT 0;

-- Claims look for each plan's unfinished atoms in priority order (the per-plan ramp caps each plan).
CREATE INDEX atoms_claimable_by_plan ON atoms (masterplan_id, priority DESC, updated_at, atom_id)
    WHERE state IN ('ready', 'running');
