"""REST API (FastAPI): the /api/v2 endpoints, health and metrics."""
