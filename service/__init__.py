"""The FastAPI service (issue 4)."""
