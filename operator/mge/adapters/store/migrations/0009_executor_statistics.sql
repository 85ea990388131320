-- Each executor's own LLM p95, store (claim) p95 and LLM request/error counts over its last 5 minutes:
-- the scaler's latency and error signals when no Prometheus is configured.
ALTER TABLE executor_status
    ADD COLUMN llm_p95_s    double precision,
    ADD COLUMN db_p95_s     double precision,
    ADD COLUMN llm_requests integer NOT NULL DEFAULT 0,
    ADD COLUMN llm_errors   integer NOT NULL DEFAULT 0;
