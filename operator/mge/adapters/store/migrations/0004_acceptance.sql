-- Acceptance tests generated from a Masterplan's requirements, their results per wave, the Gate S verdict with
-- the precision score, and the claims that keep executors from generating or running the same tests twice.

-- One row per requirement: the stored test, or status 'not_generated' with the reason (never silently dropped).
CREATE TABLE acceptance_tests (
    masterplan_id        uuid    NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    requirement_id       text    NOT NULL,
    trace_id             uuid    NOT NULL,
    requirement_priority text    NOT NULL CHECK (requirement_priority IN ('MUST', 'SHOULD')),
    requirement_text     text    NOT NULL,
    requirement_line     integer NOT NULL DEFAULT 0,
    status               text    NOT NULL CHECK (status IN ('generated', 'not_generated')),
    -- Wave after which every project file the test imports exists; NULL when no test was generated.
    wave                 integer CHECK (wave >= 0),
    language             text    CHECK (language IN ('python', 'typescript', 'javascript')),
    path                 text,
    code                 text,
    reason               text,
    attempts             integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (masterplan_id, requirement_id),
    CHECK (status = 'not_generated' OR (wave IS NOT NULL AND language IS NOT NULL AND path IS NOT NULL
                                        AND code IS NOT NULL)),
    CHECK (status = 'generated' OR reason IS NOT NULL)
);
CREATE INDEX acceptance_tests_by_wave ON acceptance_tests (masterplan_id, wave);

-- Every run of every test is kept (history); the latest row per requirement is its outcome.
CREATE TABLE acceptance_test_results (
    id             bigserial PRIMARY KEY,
    masterplan_id  uuid    NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    requirement_id text    NOT NULL,
    trace_id       uuid    NOT NULL,
    wave           integer NOT NULL CHECK (wave >= 0),
    status         text    NOT NULL CHECK (status IN ('passed', 'failed', 'error', 'timeout')),
    duration_s     double precision NOT NULL DEFAULT 0 CHECK (duration_s >= 0),
    output         text    NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX acceptance_test_results_latest ON acceptance_test_results (masterplan_id, requirement_id, id DESC);

-- Gate S and the precision score of the plan's latest evaluation.
CREATE TABLE acceptance_verdicts (
    masterplan_id           uuid PRIMARY KEY REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id                uuid    NOT NULL,
    passed                  boolean NOT NULL,
    must_pass_rate          double precision,
    should_pass_rate        double precision,
    failed_must             text[]  NOT NULL DEFAULT '{}',
    failed_should           text[]  NOT NULL DEFAULT '{}',
    should_failures_allowed integer NOT NULL DEFAULT 0,
    message                 text    NOT NULL,
    score                   double precision NOT NULL,
    spec                    double precision NOT NULL,
    integration             double precision NOT NULL,
    validation              double precision NOT NULL,
    -- [{"name": ..., "passed": ..., "detail": ...}]: what the integration component was made of.
    integration_checks      jsonb   NOT NULL DEFAULT '[]',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

-- Test generation of a plan: requested -> running (leased by one executor) -> done.
CREATE TABLE acceptance_generation_claims (
    masterplan_id    uuid PRIMARY KEY REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id         uuid    NOT NULL,
    state            text    NOT NULL DEFAULT 'requested' CHECK (state IN ('requested', 'running', 'done')),
    requests         integer NOT NULL DEFAULT 1,
    lease_owner      text,
    lease_expires_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Test runs of a wave: requested -> running (leased) -> done; a new request keeps the old results as history.
CREATE TABLE acceptance_wave_runs (
    masterplan_id    uuid    NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    wave             integer NOT NULL CHECK (wave >= 0),
    trace_id         uuid    NOT NULL,
    state            text    NOT NULL DEFAULT 'requested' CHECK (state IN ('requested', 'running', 'done')),
    requests         integer NOT NULL DEFAULT 1,
    lease_owner      text,
    lease_expires_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (masterplan_id, wave)
);
