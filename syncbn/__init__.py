"""syncbn: batch norm synchronized across torch.distributed ranks.

Every rank normalizes with the statistics of the global batch, at the cost of one
all_reduce of O(channels) values in the forward pass and one in the backward pass.
"""

from syncbn import functional
from syncbn.batchnorm import SyncBatchNorm, SyncBatchNormAct, share_batchnorm_state
from syncbn.convert import UnsupportedBatchNormError, convert_sync_batchnorm, revert_sync_batchnorm
from syncbn.converters import register_converter, registered_converter, unregister_converter
from syncbn.groups import new_sync_groups
from syncbn.precise import precise_bn
from syncbn.stats import LayerStats, StatsRecorder, record_stats

__all__ = [
    "LayerStats",
    "StatsRecorder",
    "SyncBatchNorm",
    "SyncBatchNormAct",
    "UnsupportedBatchNormError",
    "convert_sync_batchnorm",
    "functional",
    "new_sync_groups",
    "precise_bn",
    "record_stats",
    "register_converter",
    "registered_converter",
    "revert_sync_batchnorm",
    "share_batchnorm_state",
    "unregister_converter",
]
__version__ = "0.1.0"
