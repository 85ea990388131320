"""The worker: claims ready atoms, generates their code through the LLM, validates, records cost and results."""
