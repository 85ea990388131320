-- What each executor believes of its LLM endpoint (its circuit breaker), for the Masterplans' LLMAvailable
-- condition and /api/v2/concurrency/status.
ALTER TABLE executor_status ADD COLUMN llm_endpoint text;
ALTER TABLE executor_status ADD COLUMN llm_circuit text NOT NULL DEFAULT 'closed';
ALTER TABLE executor_status ADD COLUMN llm_last_error text;
ALTER TABLE executor_status ADD COLUMN llm_down_since timestamptz;
