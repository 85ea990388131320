"""Acceptance tests derived from a Masterplan's requirements: parsing, test templates and Gate S."""
