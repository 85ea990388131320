-- A Masterplan with its own LLM endpoint (spec.llm) runs on that endpoint's executor pool; NULL: the
-- operator's default endpoint. llm_config keeps where the key is (namespace, Secret, key), never the key.
ALTER TABLE masterplans ADD COLUMN llm_pool text;
ALTER TABLE masterplans ADD COLUMN llm_config jsonb;
CREATE INDEX masterplans_llm_pool ON masterplans (llm_pool) WHERE llm_pool IS NOT NULL AND retired_at IS NULL;
-- The pool each executor serves (NULL: the default), so scaling reads each pool's load on its own.
ALTER TABLE executor_status ADD COLUMN llm_pool text;
