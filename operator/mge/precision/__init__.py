"""Precision score of a finished Masterplan: spec conformance, integration and validation."""
