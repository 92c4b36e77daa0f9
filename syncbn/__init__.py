"""syncbn: batch norm synchronized across torch.distributed ranks.

Every rank normalizes with the statistics of the global batch (or of its group of ranks:
``new_sync_groups``), at the cost of one all_reduce of O(channels) values in the forward pass
and one in the backward pass. ``convert_group_norm`` is the batch-independent alternative
with no communication at all.
"""

from syncbn import functional
from syncbn.batchnorm import SyncBatchNorm, SyncBatchNormAct, share_batchnorm_state
from syncbn.convert import UnsupportedBatchNormError, convert_sync_batchnorm, revert_sync_batchnorm
from syncbn.converters import register_converter, registered_converter, unregister_converter
from syncbn.groupnorm import convert_group_norm, group_count
from syncbn.groups import new_sync_groups
from syncbn.precise import precise_bn
from syncbn.stats import LayerStats, StatsRecorder, record_stats

__all__ = [
    "LayerStats",
    "StatsRecorder",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "UnsupportedBatchNormError",
    "convert_group_norm",
    "convert_sync_batchnorm",
    "functional",
    "group_count",
    "new_sync_groups",
    "precise_bn",
    "record_stats",
    "register_converter",
    "registered_converter",
    "revert_sync_batchnorm",
    "share_batchnorm_state",
    "unregister_converter",
]


def _version() -> str:
    """The installed package's version (``pyproject.toml``), one place for it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syncbn-service")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()
