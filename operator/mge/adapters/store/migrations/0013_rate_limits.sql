-- What the LLM provider's rate-limit headers last told each executor (remaining requests/tokens, Retry-After),
-- for /api/v2/concurrency/status.
ALTER TABLE executor_status ADD COLUMN llm_rate_limits jsonb;
