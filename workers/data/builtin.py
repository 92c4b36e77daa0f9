"""The built-in datasets, made in the process that needs them (never downloaded):

- ``digits``: scikit-learn's 8x8 handwritten digits (1797 images, 10 classes) with a fixed
  seeded, stratified train/test split.
- ``synthetic``: seeded Gaussian classes in 16 features; fast and learnable, for tests.
- ``shapes``: seeded synthetic segmentation (``make_shapes``): 600 train / 150 test 24x24 RGB
  images of circles, squares and triangles on noisy, textured backgrounds, with a contrast
  that changes from image to image, and their per-pixel masks (0 background, 1 circle,
  2 square, 3 triangle).

``load_dataset`` gives a built-in one by name or an uploaded one by id."""

from __future__ import annotations

import os

import numpy as np

from contract.datasets import SHAPES_CLASSES, DatasetError
from contract.spec import BUILTIN_DATASETS
from workers.data.arrays import SPLIT_SEED, ArrayDataset, _split, _standardize
from workers.data.npz import dataset_path, load_npz


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
