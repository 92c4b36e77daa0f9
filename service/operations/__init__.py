"""What an operator runs beside the service to keep it going for months
(``docs/operations.md``).

- ``backup``: ``python -m service backup FILE`` (a consistent snapshot while the service and
  its jobs run: the SQLite database and the files the database refers to, with a manifest of
  checksums) and ``python -m service restore FILE`` (into an empty home, every checksum
  verified before anything is moved into place).
- ``disk``: the disk of ``$SYNCBN_HOME`` against ``SYNCBN_DISK_BUDGET_BYTES`` (the 507 of a
  full disk, the warning at 90 %, ``/readyz``, ``/metrics``, ``GET /v1/admin/usage``).
"""
