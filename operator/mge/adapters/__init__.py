"""Adapters: the only modules that talk to Kubernetes, Postgres, Redis, Prometheus, tokenizers and the LLM."""
