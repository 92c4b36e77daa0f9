"""Loaded datasets: standardized float32 inputs and int64 labels split into train and test
(``ArrayDataset``), the standardization they keep (``standardize``), and the fixed split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract.datasets import DatasetInfo, Task

CHECK_CHUNK = 1 << 20
"""Elements per chunk when arrays are checked value by value (bounds the temporaries)."""
SPLIT_SEED = 0
"""Seed of the fixed train/test splits (independent of the job seed)."""


class _Split:
    """What a split dataset says of itself (``name``, ``n_train``, ``n_test``, ``input_shape``,
    ``num_classes``, ``task``, ``class_names`` come from the class)."""

    name: str
    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    num_classes: int
    task: Task
    class_names: tuple[str, ...] | None

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo(
            self.name,
            self.n_train,
            self.input_shape,
            self.num_classes,
            self.task,
            self.class_names,
        )

    def describe(self) -> str:
        what = "pixel classes" if self.task == "segmentation" else "classes"
        return (
            f"{self.name}: {self.n_train} train / {self.n_test} test samples of shape "
            f"{self.input_shape}, {self.num_classes} {what}"
        )


@dataclass(frozen=True)
class ArrayDataset(_Split):
    """Standardized float32 inputs and int64 labels, split into train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    task: Task = "classification"
    class_names: tuple[str, ...] | None = None
    """Names of the classes (in label order), when the data has them."""
    mean: float = 0.0
    std: float = 1.0
    """The standardization applied to the raw samples: ``x = (raw - mean) / std``."""
    from_images: bool = False
    """The raw samples are decoded image files (an image-folder upload)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_test(self) -> int:
        return len(self.x_test)


@dataclass(frozen=True)
class Standardized:
    """Train and test samples scaled by the training set's overall ``mean`` and ``std``."""

    x_train: np.ndarray
    x_test: np.ndarray
    mean: float
    std: float

    @property
    def scale(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}


def standardize(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(raw - mean) / std`` as float32: what training applied to every raw sample."""
    return ((np.asarray(raw, dtype=np.float64) - mean) / std).astype(np.float32)


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> Standardized:
    """Scale by the training set's overall mean and std (one scalar each)."""
    mean = float(x_train.mean())
    std = float(x_train.std()) or 1.0
    return Standardized(
        _standardize_rows(x_train, mean, std), _standardize_rows(x_test, mean, std), mean, std
    )


def _standardize_rows(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``standardize`` a block of rows at a time: the same values, with float64 temporaries
    of one block (about ``CHECK_CHUNK`` values) instead of two of the whole array."""
    out = np.empty(raw.shape, dtype=np.float32)
    step = max(1, CHECK_CHUNK // max(1, math.prod(raw.shape[1:])))
    for start in range(0, len(raw), step):
        out[start : start + step] = standardize(raw[start : start + step], mean, std)
    return out


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, stratify: bool
) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    # Stratify when every class can be on both sides (scikit-learn refuses otherwise).
    counts = np.unique(y, return_counts=True)[1]
    n_test = math.ceil(test_fraction * len(y))
    possible = counts.min() >= 2 and len(counts) <= min(n_test, len(y) - n_test)
    strat = y if stratify and possible else None
    return tuple(
        train_test_split(x, y, test_size=test_fraction, random_state=SPLIT_SEED, stratify=strat)
    )
