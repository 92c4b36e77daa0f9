"""service.studies.arms."""
