"""workers: Ray Train jobs that train with syncbn.

One ``JobSpec`` (``contract.spec``) describes a job; ``workers.driver.run_job`` runs it as a
Ray Train V2 ``TorchTrainer`` whose per-worker loop (``workers.loop``) trains a model chosen
by input shape (``workers.nets``) on a sharded dataset (``workers.data``), checkpoints every
epoch and reports per-worker statistics gathered by ``workers.reporting``. ``python -m workers
run SPEC.json`` is the command-line entry point.

Only the light modules are imported here; ray and torch load on first use of the driver.
"""

from contract.spec import JobSpec

__all__ = ["JobSpec"]
