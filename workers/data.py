"""Datasets and per-worker sharding.

- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes) with a fixed
  seeded, stratified train/test split.
- ``synthetic``: seeded Gaussian classes in 16 features; fast and learnable, for tests.
- ``shapes``: seeded synthetic segmentation (``make_shapes``): 600 train / 150 test 24x24 RGB
  images of circles, squares and triangles on noisy, textured backgrounds, with a contrast
  that changes from image to image, and their per-pixel masks (0 background, 1 circle,
  2 square, 3 triangle).
- uploaded ``.npz`` files (``x``, ``y``, optional ``x_test``/``y_test``, ``classes`` and
  ``images``, True when ``x`` holds decoded image files, as image-folder uploads do),
  validated by ``inspect_npz`` when uploaded (headers first: nothing is allocated before the
  sizes they declare are checked, then the values in chunks, without the float copies) and
  by ``load_npz`` (the same checks, then split and standardized) in the workers; every
  problem is a ``DatasetError`` naming the array (and, for a limit, the service setting).
  The task is inferred from ``y``'s shape: ``(N,)`` one label per sample
  (classification), ``(N, H, W)`` integer masks matching the images' spatial size
  (segmentation; ``IGNORE_LABEL`` = 255 marks pixels that count nowhere).

Sharding follows ``torch.utils.data.DistributedSampler`` (shuffle with seed + epoch, pad by
wrapping so every rank gets the same number of samples and therefore of steps); evaluation
splits the test set so that every sample is seen exactly once over all ranks.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from contract.spec import BUILTIN_DATASETS, DATASET_ID_RE
from workers.archives import ArchiveTooLarge, open_zip

MAX_DATASET_BYTES = int(os.environ.get("SYNCBN_MAX_DATASET_BYTES", 256 << 20))
"""Largest accepted .npz, both on disk and uncompressed (the service passes its upload limit
to its jobs in this variable)."""
MAX_DATASET_MEMORY = int(os.environ.get("SYNCBN_MAX_DATASET_MEMORY", 512 << 20))
"""Most bytes one copy of a dataset takes in training (``dataset_memory``); the service passes
its own limit (``max_dataset_memory``) to its jobs in this variable."""
MAX_CLASSES = 1000
SPLIT_SEED = 0
"""Seed of the fixed train/test splits (independent of the job seed)."""
SHAPES_CLASSES = ("background", "circle", "square", "triangle")
REQUIRED_KEYS = ("x", "y")
OPTIONAL_KEYS = ("x_test", "y_test", "classes", "images")
IGNORE_LABEL = 255
"""Segmentation masks: pixels with this label count neither in the loss nor in the metrics."""
Task = Literal["classification", "segmentation"]


class DatasetError(ValueError):
    """A dataset that cannot be used, with a message saying why.

    ``field`` names the JobSpec field the problem is about (``dataset`` unless the data is
    fine but the job's ``model`` or ``batch_size_per_worker`` cannot use it). ``setting``, on
    errors about a configurable limit, names the service ``Settings`` field that sets it
    (``max_upload_bytes``, ``max_upload_images``, ``max_image_pixels``,
    ``max_decoded_pixels``: environment variable ``SYNCBN_<SETTING>``); None otherwise.
    """

    def __init__(self, message: str, field: str = "dataset", setting: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.setting = setting


@dataclass(frozen=True)
class DatasetInfo:
    """What a job needs to know of a dataset without loading it."""

    name: str
    n_train: int
    input_shape: tuple[int, ...]
    num_classes: int
    task: Task = "classification"
    class_names: tuple[str, ...] | None = None

    def describe(self) -> str:
        what = "pixel classes" if self.task == "segmentation" else "classes"
        return (
            f"{self.name}: {self.n_train} train samples of shape {self.input_shape}, "
            f"{self.num_classes} {what}"
        )


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


def datasets_dir(override: str | os.PathLike | None = None) -> Path:
    """Where uploaded datasets live: ``override``, else ``$SYNCBN_HOME/datasets``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get("SYNCBN_HOME", ".syncbn")) / "datasets"


def dataset_path(dataset_id: str, directory: str | os.PathLike | None = None) -> Path:
    """The .npz file of an uploaded dataset id."""
    if not DATASET_ID_RE.match(dataset_id):
        raise DatasetError(f"invalid dataset id {dataset_id!r}")
    return datasets_dir(directory) / f"{dataset_id}.npz"


@functools.cache
def builtin_info(name: str) -> DatasetInfo:
    """``DatasetInfo`` of a built-in dataset (built once per process)."""
    if name not in BUILTIN_DATASETS:
        raise DatasetError(f"{name!r} is not a built-in dataset")
    return load_dataset(name).info


def load_dataset(name: str, directory: str | os.PathLike | None = None) -> ArrayDataset:
    """A built-in dataset by name, or an uploaded one by id (validated)."""
    if name == "digits":
        return load_digits()
    if name == "synthetic":
        return make_synthetic()
    if name == "shapes":
        return make_shapes()
    if name in BUILTIN_DATASETS:  # pragma: no cover - a new builtin without a loader
        raise DatasetError(f"no loader for built-in dataset {name!r}")
    path = dataset_path(name, directory)
    if not path.exists():
        raise DatasetError(f"dataset {name!r} not found (no file {path})")
    return load_npz(path, name=name)


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


def load_digits() -> ArrayDataset:
    """The 1797 8x8 digits as (N, 8, 8) images; 25 % stratified test split (fixed seed)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = bunch.images.astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = _split(x, y, 0.25, stratify=True)
    scaled = _standardize(x_train, x_test)
    return ArrayDataset(
        "digits", scaled.x_train, y_train, scaled.x_test, y_test, 10, **scaled.scale
    )


def make_synthetic(
    n_train: int = 1024, n_test: int = 256, features: int = 16, classes: int = 4
) -> ArrayDataset:
    """Seeded Gaussian classes: learnable to ~90 % by a small MLP within a few epochs."""
    rng = np.random.default_rng(SPLIT_SEED)
    centers = rng.normal(0.0, 1.0, size=(classes, features))
    scale = rng.uniform(0.5, 4.0, size=features)  # uneven feature scales: BN has work to do
    offset = rng.normal(0.0, 3.0, size=features)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, size=n)
        x = (centers[y] + rng.normal(0.0, 1.0, size=(n, features))) * scale + offset
        return x.astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    scaled = _standardize(x_train, x_test)
    return ArrayDataset(
        "synthetic", scaled.x_train, y_train, scaled.x_test, y_test, classes, **scaled.scale
    )


def _upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of the last two axes of ``coarse`` to ``size`` x ``size``."""
    k = coarse.shape[-1]
    grid = np.linspace(0.0, k - 1.0, size)
    weights = np.maximum(0.0, 1.0 - np.abs(grid[:, None] - np.arange(k)[None, :]))
    return np.einsum("ik,...kl,jl->...ij", weights, coarse, weights)


def _draw_shape(
    rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray, size: int
) -> np.ndarray:
    """The pixels inside one randomly placed and sized circle, square or triangle."""
    r = rng.uniform(0.2, 0.38) * size
    cy, cx = rng.uniform(0.6 * r, size - 0.6 * r, size=2)
    dy, dx = yy - cy, xx - cx
    if cls == 1:  # circle of radius r
        return dx**2 + dy**2 <= r**2
    if cls == 2:  # upright square of side 1.6 r
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
    # equilateral triangle pointing right, circumradius 1.35 r: inside all three edges
    normals = np.pi / 3 + 2 * np.pi / 3 * np.arange(3)
    reach = dx[None] * np.cos(normals)[:, None, None] + dy[None] * np.sin(normals)[:, None, None]
    return reach.max(0) <= 0.675 * r


def make_shapes(
    n_train: int = 600, n_test: int = 150, size: int = 24, seed: int = SPLIT_SEED
) -> ArrayDataset:
    """Seeded synthetic segmentation: RGB ``size`` x ``size`` images with 1 or 2 shapes each
    (circle, square or triangle; radius 20-38 % of the side, random position and colour; the
    second may cover the first) and their masks (labels ``SHAPES_CLASSES``; nothing ignored).

    Backgrounds are low-frequency colour texture plus pixel noise; shapes are flat, brighter
    than the background by a random amount, and slightly tinted, so colour says nothing of
    the class: only the outline does. Every image has its own contrast (a log-normal gain),
    and the shapes cover from a tenth to over half of it (30 % in the median), so the
    statistics of a batch of 2 images are far from those of the data set: the setting where
    per-worker BatchNorm with tiny batches suffers.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.empty((n, 3, size, size), dtype=np.float32)
        y = np.zeros((n, size, size), dtype=np.int64)
        for i in range(n):
            image = 0.4 * _upsample(rng.normal(size=(3, 4, 4)), size)
            for _ in range(rng.integers(1, 3)):
                cls = int(rng.integers(1, 4))
                inside = _draw_shape(rng, cls, yy, xx, size)
                colour = rng.uniform(1.0, 2.0) + rng.normal(0.0, 0.3, size=3)
                image[:, inside] = colour[:, None]
                y[i][inside] = cls
            gain = np.exp(rng.normal(0.0, 0.5))
            x[i] = gain * image + rng.normal(0.0, 0.3, size=image.shape)
        return x, y

    x_train, y_train = draw(n_train)
    x_test, y_test = draw(n_test)
    scaled = _standardize(x_train, x_test)
    return ArrayDataset(
        "shapes",
        scaled.x_train,
        y_train,
        scaled.x_test,
        y_test,
        len(SHAPES_CLASSES),
        task="segmentation",
        class_names=SHAPES_CLASSES,
        **scaled.scale,
    )


# -- uploaded .npz files ------------------------------------------------------------------------
# ``inspect_npz`` validates without standardizing, splitting or converting: it reads every
# member's .npy header first (nothing is allocated from a header until it agrees with the
# member's size and the memory budget), then the arrays as stored, and checks them in chunks.
# ``load_npz`` runs the same checks (``_read_npz``), then splits and standardizes for training.

NPZ_MAX_MEMBERS = 16
"""Entries an .npz may list (its six arrays at most, with room for strays that are then
reported by name); checked from the zip's end record before the directory is parsed."""
TEST_FRACTION = 0.2
"""Share of the samples an upload without ``x_test`` gives to the test split (rounded up)."""
CHECK_CHUNK = 1 << 20
"""Elements per chunk when arrays are checked value by value (bounds the temporaries)."""
FLOAT_INPUT_BYTES = 4
"""Bytes per element of x (and x_test) once training has made them float32."""
LABEL_BYTES = 8
"""Bytes per element of y (and y_test) once training has made them int64."""


@dataclass(frozen=True)
class NpzInfo(_Split):
    """What an uploaded ``.npz`` holds, as ``load_npz`` would load it (checked, not loaded)."""

    name: str
    n_train: int
    n_test: int
    """Given by ``x_test``, or the test part of the 80/20 split: ``ceil(0.2 * len(x))``."""
    input_shape: tuple[int, ...]
    num_classes: int
    task: Task = "classification"
    class_names: tuple[str, ...] | None = None
    from_images: bool = False


def dataset_memory(stored: int, x_elements: int, y_elements: int) -> int:
    """Bytes a dataset needs in memory: its arrays as stored, plus the float32 inputs (x and
    x_test: ``x_elements``) and int64 labels (y and y_test: ``y_elements``) that ``load_npz``
    makes of them for training. What ``max_dataset_memory`` is checked against, for ``.npz``
    uploads and for decoded image folders alike."""
    return stored + FLOAT_INPUT_BYTES * x_elements + LABEL_BYTES * y_elements


@dataclass(frozen=True)
class _Member:
    """One ``.npy`` member of an ``.npz``, from its header."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def inspect_npz(
    path: str | os.PathLike,
    limit: int | None = None,
    name: str | None = None,
    memory_limit: int | None = None,
) -> NpzInfo:
    """Validate an uploaded ``.npz`` exactly as ``load_npz`` does (same checks, same
    messages) without standardizing, splitting or converting it; ``DatasetError`` if unusable.

    Before anything is allocated: the zip lists at most ``NPZ_MAX_MEMBERS`` entries, every
    array's ``.npy`` header agrees with its member's size (a lying header is refused, never
    allocated) and declares no object, structured or raw-bytes dtype; the file and its
    unpacked arrays are at most ``limit`` bytes (default ``MAX_DATASET_BYTES``;
    ``setting="max_upload_bytes"``), and ``dataset_memory`` (the arrays as stored, plus the
    float32 / int64 copies training makes) at most ``memory_limit`` (default
    ``MAX_DATASET_MEMORY``; ``setting="max_dataset_memory"``). Peak memory is then about the
    arrays' stored size: values are checked in chunks.
    """
    return _read_npz(path, limit, name, memory_limit)[0]


def load_npz(
    path: str | os.PathLike, name: str | None = None, limit: int | None = None
) -> ArrayDataset:
    """Load and validate a user dataset; raise ``DatasetError`` with the reason if unusable.

    The checks are ``inspect_npz``'s; then an upload without ``x_test`` is split 80/20
    (stratified when every class can be on both sides) and inputs are standardized.
    """
    info, arrays = _read_npz(path, limit, name, None)
    x, y = arrays.pop("x"), arrays.pop("y")
    if "x_test" in arrays:
        x_train, y_train, x_test, y_test = x, y, arrays.pop("x_test"), arrays.pop("y_test")
    else:
        # Masks cannot be stratified: a plain seeded split.
        stratify = info.task == "classification"
        x_train, x_test, y_train, y_test = _split(
            x, y.astype(np.int64), TEST_FRACTION, stratify=stratify
        )
    del x, y, arrays  # the split made copies: let the stored arrays go
    scaled = _standardize(x_train, x_test)
    return ArrayDataset(
        info.name,
        scaled.x_train,
        y_train.astype(np.int64),
        scaled.x_test,
        y_test.astype(np.int64),
        info.num_classes,
        task=info.task,
        class_names=info.class_names,
        from_images=info.from_images,
        **scaled.scale,
    )


def _read_npz(
    path: str | os.PathLike, limit: int | None, name: str | None, memory_limit: int | None
) -> tuple[NpzInfo, dict[str, np.ndarray]]:
    """The checked arrays of an ``.npz`` (as stored) and what they hold (see ``inspect_npz``)."""
    path = Path(path)
    limit = MAX_DATASET_BYTES if limit is None else limit
    memory_limit = MAX_DATASET_MEMORY if memory_limit is None else memory_limit
    size = path.stat().st_size
    if size > limit:
        raise DatasetError(
            f"{path.name}: file is {size} bytes, more than the limit of {limit}",
            setting="max_upload_bytes",
        )
    try:
        archive = open_zip(path, NPZ_MAX_MEMBERS)
    except ArchiveTooLarge as exc:
        raise DatasetError(
            f"{path.name}: not an .npz archive ({exc}: an .npz holds at most "
            f"{len(REQUIRED_KEYS) + len(OPTIONAL_KEYS)} arrays)"
        ) from exc
    except Exception as exc:  # BadZipFile, or whatever a malformed end record raises
        raise DatasetError(f"{path.name}: not an .npz archive ({exc})") from exc
    with archive:
        entries = archive.infolist()
        unpacked = sum(info.file_size for info in entries)
        if unpacked > limit:
            raise DatasetError(
                f"{path.name}: arrays take {unpacked} bytes uncompressed, "
                f"more than the limit of {limit}",
                setting="max_upload_bytes",
            )
        # np.load's names: "x.npy" is x; a later duplicate wins, as with ZipFile.getinfo.
        infos = {
            (i.filename[:-4] if i.filename.endswith(".npy") else i.filename): i for i in entries
        }
        _check_keys(path, set(infos))
        members = {key: _read_header(path, archive, key, infos[key]) for key in sorted(infos)}
        _check_memory(path, members, memory_limit)
        arrays = {key: _read_array(path, archive, member) for key, member in members.items()}
    return _validate(arrays, name or path.stem), arrays


def _check_keys(path: Path, keys: set[str]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    if missing:
        raise DatasetError(
            f"{path.name}: missing array(s) {', '.join(missing)}; expected x and y "
            f"(and optionally x_test and y_test), found {sorted(keys) or 'none'}"
        )
    unknown = sorted(keys - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise DatasetError(
            f"{path.name}: unexpected array(s) {', '.join(unknown)}; "
            "allowed: x, y, x_test, y_test, classes, images"
        )
    if ("x_test" in keys) != ("y_test" in keys):
        raise DatasetError(f"{path.name}: x_test and y_test must be given together")


def _read_header(path: Path, archive: zipfile.ZipFile, key: str, info: zipfile.ZipInfo) -> _Member:
    """Shape and dtype from the member's ``.npy`` header, checked against its size."""
    from numpy.lib import format as npy

    try:
        with archive.open(info) as handle:
            version = npy.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(handle)
            else:  # 3.0 is only written for structured dtypes, refused anyway
                raise ValueError(f".npy format version {version[0]}.{version[1]} not supported")
            data_bytes = info.file_size - handle.tell()
    except Exception as exc:  # not .npy, a bad header, a corrupt or encrypted member
        raise DatasetError(f"{path.name}: cannot read arrays ({key}: {exc})") from exc
    if dtype.hasobject or dtype.kind == "V":
        raise DatasetError(
            f"{key}: dtype {dtype} cannot be used (object, structured and raw-bytes arrays "
            "are not accepted)"
        )
    member = _Member(key, info, tuple(shape), dtype)
    if any(d < 0 for d in member.shape) or member.nbytes != data_bytes:
        raise DatasetError(
            f"{key}: its .npy header declares shape {member.shape} of {dtype} "
            f"({member.nbytes} bytes) but the member holds {data_bytes} bytes of data "
            "(a corrupt or altered file)"
        )
    return member


def _check_memory(path: Path, members: dict[str, _Member], limit: int) -> None:
    stored = sum(m.nbytes for m in members.values())
    x_elements = sum(members[k].size for k in ("x", "x_test") if k in members)
    y_elements = sum(members[k].size for k in ("y", "y_test") if k in members)
    need = dataset_memory(stored, x_elements, y_elements)
    if need > limit:
        raise DatasetError(
            f"{path.name}: the arrays need {need} bytes in memory ({stored} as stored, plus "
            f"{FLOAT_INPUT_BYTES} bytes per value of x and x_test and {LABEL_BYTES} per label "
            f"of y and y_test for the float32 and int64 copies training makes), more than the "
            f"limit of {limit}",
            setting="max_dataset_memory",
        )


def _read_array(path: Path, archive: zipfile.ZipFile, member: _Member) -> np.ndarray:
    """The member's array: exactly the size its (checked) header declares."""
    from numpy.lib import format as npy

    try:
        with archive.open(member.info) as handle:
            return npy.read_array(handle, allow_pickle=False)
    except Exception as exc:  # truncated or corrupt data, bad CRC
        raise DatasetError(f"{path.name}: cannot read arrays ({member.key}: {exc})") from exc


def _validate(arrays: dict[str, np.ndarray], name: str) -> NpzInfo:
    """Every check of an upload's values, in ``load_npz``'s order; what it holds."""
    x, y = arrays["x"], arrays["y"]
    _check_x("x", x)
    _check_y("y", y, x, "x")
    task = _task_of(y)
    if len(x) < 2:
        raise DatasetError("x: need at least 2 samples")
    if "x_test" in arrays:
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        _check_x("x_test", x_test)
        if x_test.shape[1:] != x.shape[1:]:
            raise DatasetError(
                f"x_test: sample shape {x_test.shape[1:]} differs from x's {x.shape[1:]}"
            )
        if _task_of(y_test) != task:
            expected = "(N, H, W) masks" if task == "segmentation" else "one label per sample"
            raise DatasetError(f"y_test: shape {y_test.shape} does not match y's {expected}")
        _check_y("y_test", y_test, x_test, "x_test")
        n_train, n_test = len(x), len(x_test)
        high = max(_max_label(y), _max_label(y_test))
    else:
        # What _split gives (train_test_split rounds the test part up); the labels of both
        # parts are those of y.
        n_test = math.ceil(TEST_FRACTION * len(x))
        n_train = len(x) - n_test
        high = _max_label(y)
    num_classes = high + 1
    if num_classes < 2:
        what = "all labels are 0" if num_classes == 1 else f"every pixel is {IGNORE_LABEL}"
        raise DatasetError(f"y: need at least 2 classes ({what})")
    class_names = _class_names(arrays.get("classes"), num_classes)
    from_images = _flag("images", arrays.get("images"))
    if class_names is not None:
        num_classes = len(class_names)
    return NpzInfo(
        name,
        n_train,
        n_test,
        tuple(x.shape[1:]),
        num_classes,
        task=task,
        class_names=class_names,
        from_images=from_images,
    )


def _chunks(a: np.ndarray) -> Iterator[np.ndarray]:
    """``a``'s values, ``CHECK_CHUNK`` at a time (views of the contiguous arrays np.load makes)."""
    flat = a.ravel(order="K")
    for start in range(0, flat.size, CHECK_CHUNK):
        yield flat[start : start + CHECK_CHUNK]


def _check_x(key: str, x: np.ndarray) -> None:
    if x.dtype.kind not in "fiu":
        raise DatasetError(f"{key}: dtype {x.dtype} is not a real number type")
    if not 2 <= x.ndim <= 4:
        raise DatasetError(
            f"{key}: shape {x.shape} must be (N, F), (N, L), (N, C, L), (N, H, W) or (N, C, H, W)"
        )
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DatasetError(f"{key}: shape {x.shape} has an empty dimension")
    if x.dtype.kind == "f":
        bad = sum(c.size - int(np.count_nonzero(np.isfinite(c))) for c in _chunks(x))
        if bad:
            raise DatasetError(f"{key}: contains {bad} NaN or infinite values")


def _task_of(y: np.ndarray) -> Task:
    """Masks ``(N, H, W)`` mean segmentation; anything else is checked as class labels."""
    return "segmentation" if y.ndim == 3 else "classification"


def _check_y(key: str, y: np.ndarray, x: np.ndarray, x_key: str) -> None:
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{key}: labels must be integers, got dtype {y.dtype}")
    if _task_of(y) == "segmentation":
        _check_masks(key, y, x, x_key)
        return
    if y.ndim != 1:
        raise DatasetError(
            f"{key}: labels must be 1-D (one per sample) or (N, H, W) masks, got shape {y.shape}"
        )
    n = len(x)
    if len(y) != n:
        raise DatasetError(f"{key}: {len(y)} labels for {n} samples in {x_key} (lengths differ)")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= MAX_CLASSES:
        raise DatasetError(
            f"{key}: labels must be in [0, {MAX_CLASSES - 1}], found values in [{low}, {high}]"
        )


SEGMENTATION_MAX_CLASSES = min(MAX_CLASSES, IGNORE_LABEL)
"""Mask labels are 0 .. 254 (255 is ``IGNORE_LABEL``, never a class)."""


def _check_masks(key: str, y: np.ndarray, x: np.ndarray, x_key: str) -> None:
    """``y``: one (H, W) mask per image of ``x``, labels in [0, 254] or 255 (ignore)."""
    if x.ndim not in (3, 4):
        raise DatasetError(
            f"{key}: masks of shape (N, H, W) need images {x_key} of shape (N, H, W) or "
            f"(N, C, H, W), but {x_key} has shape {x.shape}"
        )
    if len(y) != len(x):
        raise DatasetError(f"{key}: {len(y)} masks for {len(x)} images in {x_key} (lengths differ)")
    if y.shape[1:] != x.shape[-2:]:
        raise DatasetError(
            f"{key}: mask size {tuple(y.shape[1:])} differs from the image size "
            f"{tuple(x.shape[-2:])} of {x_key} (masks must be (N, H, W) like the images)"
        )
    count, smallest = 0, set()
    for c in _chunks(y):
        bad = (c < 0) | ((c >= SEGMENTATION_MAX_CLASSES) & (c != IGNORE_LABEL))
        n = int(np.count_nonzero(bad))
        if n:
            count += n
            smallest.update(np.unique(c[bad])[:5].tolist())  # the 5 smallest are among these
    if count:
        examples = sorted(smallest)[:5]
        raise DatasetError(
            f"{key}: mask labels must be in [0, {SEGMENTATION_MAX_CLASSES - 1}] or "
            f"{IGNORE_LABEL} (ignore); {count} pixels have other values, e.g. {examples}"
        )


def _max_label(y: np.ndarray) -> int:
    """The largest class label (ignored mask pixels excluded; -1 if there is none)."""
    if _task_of(y) != "segmentation":
        return int(y.max()) if y.size else -1
    high = -1
    for c in _chunks(y):
        kept = c[c != IGNORE_LABEL]
        if kept.size:
            high = max(high, int(kept.max()))
    return high


def _flag(key: str, value: np.ndarray | None) -> bool:
    """An optional 0-d boolean array (False when absent)."""
    if value is None:
        return False
    if value.dtype != np.bool_ or value.ndim != 0:
        raise DatasetError(f"{key}: must be a single boolean, got {value.dtype} {value.shape}")
    return bool(value)


def _class_names(names: np.ndarray | None, num_classes: int) -> tuple[str, ...] | None:
    """The optional ``classes`` array: one name per label, at least as many as the labels."""
    if names is None:
        return None
    if names.dtype.kind != "U" or names.ndim != 1:
        raise DatasetError(
            f"classes: must be a 1-D array of strings, got {names.dtype} {names.shape}"
        )
    if len(names) < num_classes:
        raise DatasetError(f"classes: {len(names)} names for labels up to {num_classes - 1}")
    if len(set(names.tolist())) != len(names):
        raise DatasetError("classes: names must be unique")
    return tuple(str(n) for n in names)


def shard_indices(
    n: int, rank: int, world: int, epoch: int, seed: int, shuffle: bool = True
) -> np.ndarray:
    """This rank's training indices for ``epoch``, exactly as ``DistributedSampler`` picks them.

    Shuffled with ``seed + epoch`` (torch.randperm), padded by wrapping around to a multiple
    of ``world``, then every ``world``-th index from ``rank``: all ranks get
    ``ceil(n / world)`` samples.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world of size {world}")
    if shuffle:
        import torch

        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    total = math.ceil(n / world) * world
    if total > n:
        reps = math.ceil((total - n) / n)
        order = np.concatenate([order, np.tile(order, reps)[: total - n]])
    return order[rank:total:world]


def eval_indices(n: int, rank: int, world: int) -> np.ndarray:
    """This rank's part of the test set: every sample on exactly one rank, no padding."""
    return np.arange(rank, n, world)


def batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches; a lone trailing sample joins the previous batch.

    Every rank has the same number of indices (``shard_indices``), hence the same batches
    and step count, which DDP and syncbn need. A one-sample batch would make a per-worker
    BatchNorm1d fail in training mode, so it is merged instead of dropped.
    """
    out = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if len(out) > 1 and len(out[-1]) == 1 and batch_size > 1:
        lone = out.pop()
        out[-1] = np.concatenate([out[-1], lone])
    return out


def steps_per_epoch(n: int, world: int, batch_size: int) -> int:
    """Optimizer steps per epoch on every rank (see ``shard_indices`` and ``batches``)."""
    return len(batches(np.arange(math.ceil(n / world)), batch_size))
