"""service.files."""
