-- Cost guardrails: a reservation ledger so concurrent executors can never overshoot the hard cap,
-- and an audit trail of every reservation, settlement, cap crossing and override.

ALTER TABLE masterplans
    ADD COLUMN reserved_cost_usd numeric(14, 6) NOT NULL DEFAULT 0 CHECK (reserved_cost_usd >= 0),
    -- Set when a reservation was refused at the hard cap; executors stop claiming the plan's atoms.
    ADD COLUMN budget_exhausted boolean NOT NULL DEFAULT false,
    ADD COLUMN budget_override_limit_usd numeric(14, 6),
    ADD COLUMN budget_override_reason text;

CREATE TABLE cost_reservations (
    id            bigserial PRIMARY KEY,
    masterplan_id uuid           NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    atom_id       text           NOT NULL,
    trace_id      uuid           NOT NULL,
    executor      text           NOT NULL,
    amount_usd    numeric(14, 6) NOT NULL CHECK (amount_usd >= 0),
    expires_at    timestamptz    NOT NULL,
    created_at    timestamptz    NOT NULL DEFAULT now()
);
CREATE INDEX cost_reservations_expiry ON cost_reservations (masterplan_id, expires_at);

CREATE TABLE cost_events (
    id                  bigserial PRIMARY KEY,
    masterplan_id       uuid           NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id            uuid           NOT NULL,
    atom_id             text,
    wave_index          integer,
    model               text,
    kind                text           NOT NULL CHECK (kind IN
                        ('reserve', 'settle', 'release', 'soft_cap', 'hard_cap', 'override', 'resume')),
    amount_usd          numeric(14, 6) NOT NULL DEFAULT 0,
    prompt_tokens       integer        NOT NULL DEFAULT 0,
    completion_tokens   integer        NOT NULL DEFAULT 0,
    cached_tokens       integer        NOT NULL DEFAULT 0,
    cumulative_cost_usd numeric(14, 6) NOT NULL,
    budget_limit_usd    numeric(14, 6) NOT NULL,
    detail              jsonb          NOT NULL DEFAULT '{}',
    created_at          timestamptz    NOT NULL DEFAULT now()
);
CREATE INDEX cost_events_by_plan ON cost_events (masterplan_id, id);
