"""The datasets a job trains on, and which samples each rank gets.

- ``builtin``: ``digits``, ``synthetic`` and ``shapes``, made in process; ``load_dataset``
  (a built-in by name, an upload by id);
- ``npz``: uploaded ``.npz`` files, checked from their headers (``inspect_npz``) and loaded
  (``load_npz``);
- ``imagefolder``: image-folder ``.zip`` uploads decoded to arrays (and image files for
  predict);
- ``archives``: untrusted zips opened with their directory bounded;
- ``arrays``: ``ArrayDataset`` (standardized inputs, labels, the fixed split);
- ``shard``: each rank's training and evaluation indices.

What the service needs without loading anything (``DatasetInfo``, ``DatasetError``, the
built-ins' shapes, the step count) is in ``contract.datasets``.
"""
