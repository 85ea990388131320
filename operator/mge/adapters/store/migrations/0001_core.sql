-- Masterplans, waves, atoms and their dependency edges; every table carries the plan's trace_id.

CREATE TABLE masterplans (
    id                          uuid PRIMARY KEY,
    namespace                   text        NOT NULL,
    name                        text        NOT NULL,
    trace_id                    uuid        NOT NULL,
    generation                  bigint      NOT NULL DEFAULT 0,
    model                       text        NOT NULL,
    priority                    integer     NOT NULL DEFAULT 0,
    suspended                   boolean     NOT NULL DEFAULT false,
    requirements                text        NOT NULL DEFAULT '',
    budget_limit_usd            numeric(14, 6) NOT NULL DEFAULT 200.00,
    soft_cap_percentage         numeric(6, 2)  NOT NULL DEFAULT 70.00,
    hard_cap_percentage         numeric(6, 2)  NOT NULL DEFAULT 100.00,
    current_cost_usd            numeric(14, 6) NOT NULL DEFAULT 0,
    budget_override_approved_by text,
    budget_override_approved_at timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    started_at                  timestamptz,
    completed_at                timestamptz,
    UNIQUE (namespace, name)
);

CREATE TABLE waves (
    masterplan_id uuid    NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    wave_index    integer NOT NULL CHECK (wave_index >= 0),
    trace_id      uuid    NOT NULL,
    atom_count    integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (masterplan_id, wave_index)
);

CREATE TABLE atoms (
    masterplan_id     uuid    NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    atom_id           text    NOT NULL,
    trace_id          uuid    NOT NULL,
    wave_index        integer NOT NULL,
    file              text    NOT NULL,
    language          text    NOT NULL CHECK (language IN ('python', 'typescript', 'javascript')),
    description       text    NOT NULL,
    depends_on        text[]  NOT NULL DEFAULT '{}',
    estimated_tokens  integer,
    fingerprint       text    NOT NULL,
    -- Longest chain of atoms this one starts: claimed first so the critical path never waits.
    priority          integer NOT NULL DEFAULT 1,
    state             text    NOT NULL DEFAULT 'pending'
                      CHECK (state IN ('pending', 'ready', 'running', 'succeeded', 'failed')),
    -- Dependencies not yet succeeded; the atom becomes ready when this reaches 0.
    unmet_dependencies integer NOT NULL DEFAULT 0 CHECK (unmet_dependencies >= 0),
    -- LLM generations tried (repairs included) and times claimed (a poison atom cannot crash executors forever).
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3,
    claims            integer NOT NULL DEFAULT 0,
    last_error        text,
    output            text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cost_usd          numeric(14, 6) NOT NULL DEFAULT 0,
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (masterplan_id, atom_id),
    FOREIGN KEY (masterplan_id, wave_index) REFERENCES waves (masterplan_id, wave_index) ON DELETE CASCADE
);

-- The claim query's index: only claimable rows, in claim order.
CREATE INDEX atoms_ready ON atoms (priority DESC, atom_id) WHERE state = 'ready';
CREATE INDEX atoms_running_lease ON atoms (lease_expires_at) WHERE state = 'running';

CREATE TABLE atom_dependencies (
    masterplan_id uuid NOT NULL,
    atom_id       text NOT NULL,
    depends_on    text NOT NULL,
    trace_id      uuid NOT NULL,
    PRIMARY KEY (masterplan_id, depends_on, atom_id),
    FOREIGN KEY (masterplan_id, atom_id) REFERENCES atoms (masterplan_id, atom_id) ON DELETE CASCADE,
    FOREIGN KEY (masterplan_id, depends_on) REFERENCES atoms (masterplan_id, atom_id) ON DELETE CASCADE
);

-- Every attempt of every atom: the raw material for traces, cost per atom and correlations.
CREATE TABLE atom_attempts (
    id                bigserial PRIMARY KEY,
    masterplan_id     uuid    NOT NULL,
    atom_id           text    NOT NULL,
    trace_id          uuid    NOT NULL,
    span_id           text    NOT NULL,
    attempt           integer NOT NULL,
    executor          text    NOT NULL,
    outcome           text    NOT NULL CHECK (outcome IN ('succeeded', 'invalid', 'llm_error', 'released')),
    error             text,
    prompt_tokens     integer NOT NULL DEFAULT 0,
    completion_tokens integer NOT NULL DEFAULT 0,
    cached            boolean NOT NULL DEFAULT false,
    cost_usd          numeric(14, 6) NOT NULL DEFAULT 0,
    latency_ms        integer NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (masterplan_id, atom_id) REFERENCES atoms (masterplan_id, atom_id) ON DELETE CASCADE
);
CREATE INDEX atom_attempts_by_atom ON atom_attempts (masterplan_id, atom_id, attempt);
