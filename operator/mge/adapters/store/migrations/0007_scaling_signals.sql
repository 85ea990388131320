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
