"""Pydantic models: the single source of truth for CRDs, API types and validation messages."""
