"""Uploaded ``.npz`` datasets: validated from their ``.npy`` headers first (``inspect_npz``:
nothing is allocated before the sizes they declare are checked, then the values in chunks,
without the float copies) and loaded for training (``load_npz``: the same checks, then split
and standardized); every problem is a ``DatasetError`` naming the array (and, for a limit,
the service setting)."""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.datasets import (
    IGNORE_LABEL,
    MAX_CLASSES,
    SEGMENTATION_MAX_CLASSES,
    DatasetError,
    Task,
)
from contract.layout import Layout
from contract.spec import DATASET_ID_RE
from workers.data.archives import ArchiveTooLarge, open_zip
from workers.data.arrays import CHECK_CHUNK, ArrayDataset, _Split, _split, _standardize

MAX_DATASET_BYTES = int(os.environ.get("SYNCBN_MAX_DATASET_BYTES", 256 << 20))
"""Largest accepted .npz, both on disk and uncompressed (the service passes its upload limit
to its jobs in this variable)."""


MAX_DATASET_MEMORY = int(os.environ.get("SYNCBN_MAX_DATASET_MEMORY", 512 << 20))
"""Most bytes one copy of a dataset takes in training (``dataset_memory``); the service passes
its own limit (``max_dataset_memory``) to its jobs in this variable."""


REQUIRED_KEYS = ("x", "y")


OPTIONAL_KEYS = ("x_test", "y_test", "classes", "images")


NPZ_MAX_MEMBERS = 16
"""Entries an .npz may list (its six arrays at most, with room for strays that are then
reported by name); checked from the zip's end record before the directory is parsed."""


TEST_FRACTION = 0.2
"""Share of the samples an upload without ``x_test`` gives to the test split (rounded up)."""


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


def datasets_dir(override: str | os.PathLike | None = None) -> Path:
    """Where uploaded datasets live: ``override``, else ``$SYNCBN_HOME/datasets``."""
    return Path(override) if override is not None else Layout.of().datasets


def dataset_path(dataset_id: str, directory: str | os.PathLike | None = None) -> Path:
    """The .npz file of an uploaded dataset id."""
    if not DATASET_ID_RE.match(dataset_id):
        raise DatasetError(f"invalid dataset id {dataset_id!r}")
    return datasets_dir(directory) / f"{dataset_id}.npz"
