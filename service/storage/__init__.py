"""service.storage."""
