"""The REST API's routers: jobs, datasets, health/metrics, and the internal ingest endpoint."""
