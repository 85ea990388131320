-- Reference material of plans with spec.context: the documents the operator read from ConfigMaps, and the
-- embedded chunks of documents and generated files (an embedding per model, computed once per plan).
CREATE TABLE context_documents (
    masterplan_id uuid NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id uuid NOT NULL,
    origin text NOT NULL,
    path text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (masterplan_id, origin)
);
CREATE TABLE context_chunks (
    masterplan_id uuid NOT NULL REFERENCES masterplans (id) ON DELETE CASCADE,
    trace_id uuid NOT NULL,
    chunk_id text NOT NULL,
    embedding_model text NOT NULL,
    embedding bytea NOT NULL,
    PRIMARY KEY (masterplan_id, embedding_model, chunk_id)
);
-- Which chunks each attempt's prompt carried (ids; origin and title are in the trace).
ALTER TABLE atom_attempts ADD COLUMN context_chunks jsonb;
-- The plan's spec.context as written (sources, topK, maxTokens, generatedFiles); NULL: no retrieval.
ALTER TABLE masterplans ADD COLUMN context jsonb;
