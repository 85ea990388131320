-- What executors and the operator's scaler report about concurrency, for /api/v2/concurrency/status.

CREATE TABLE executor_status (
    executor     text PRIMARY KEY,
    trace_id     uuid,
    llm_limit    integer     NOT NULL,
    in_flight    integer     NOT NULL,
    queue_size   integer     NOT NULL,
    adjustments  jsonb       NOT NULL DEFAULT '[]',
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE scaling_decisions (
    id         bigserial PRIMARY KEY,
    trace_id   uuid,
    desired    integer     NOT NULL,
    actual     integer     NOT NULL,
    reason     text        NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
