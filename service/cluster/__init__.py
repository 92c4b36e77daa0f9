"""service.cluster."""
