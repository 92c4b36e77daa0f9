"""A team shares the service: users and their tokens (``users``), who is asking (``caller``),
what each role may do to whose objects (``access``), quotas and the audit log."""
