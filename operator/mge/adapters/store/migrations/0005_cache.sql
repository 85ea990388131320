-- What cache hits avoided: one row per hit, priced at the price table when it happened.
-- Hits settle $0 in the cost ledger; this table is where their tokens and avoided cost are kept.

CREATE TABLE cache_savings (
    id                bigserial PRIMARY KEY,
    masterplan_id     uuid           NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id          uuid           NOT NULL,
    atom_id           text           NOT NULL,
    cache             text           NOT NULL CHECK (cache IN ('llm', 'rag')),
    model             text           NOT NULL,
    prompt_tokens     integer        NOT NULL DEFAULT 0,
    completion_tokens integer        NOT NULL DEFAULT 0,
    saved_usd         numeric(14, 6) NOT NULL DEFAULT 0,
    created_at        timestamptz    NOT NULL DEFAULT now()
);
CREATE INDEX cache_savings_by_plan ON cache_savings (masterplan_id);
