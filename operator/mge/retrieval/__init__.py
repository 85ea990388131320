"""Retrieval of reference material for atoms: chunking, an exact vector index and context selection."""
