"""Segmentation: the ``shapes`` data, mask datasets, the U-Net, the confusion-matrix metrics and
the evaluation on one rank, in this process in a few seconds. A real Ray Train job on
``shapes`` is in ``tests/e2e/test_segmentation_e2e.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contract.datasets import IGNORE_LABEL, SHAPES_CLASSES, DatasetError, builtin_info
from contract.model_choice import check_data, infer_kind
from contract.spec import JobSpec
from workers.data.arrays import ArrayDataset
from workers.data.builtin import load_dataset, make_shapes
from workers.data.npz import load_npz
from workers.nets import UNet, build_model

# ---------------------------------------------------------------- data


@pytest.mark.timeout(60)
def test_shapes_is_deterministic_with_four_classes():
    a, b = make_shapes(), load_dataset("shapes")
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.x_train.shape == (600, 3, 24, 24) and a.x_train.dtype == np.float32
    assert a.y_train.shape == (600, 24, 24) and a.y_train.dtype == np.int64
    assert a.x_test.shape == (150, 3, 24, 24) and a.y_test.shape == (150, 24, 24)
    assert a.task == "segmentation" and a.num_classes == 4 and a.class_names == SHAPES_CLASSES
    for y in (a.y_train, a.y_test):
        counts = np.bincount(y.ravel(), minlength=4)
        assert len(counts) == 4 and (counts > 0).all()
        assert 0.5 < counts[0] / y.size < 0.9  # mostly background, every shape well present
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3
    info = builtin_info("shapes")
    assert (info.task, info.input_shape, info.num_classes, info.n_train) == (
        "segmentation",
        (3, 24, 24),
        4,
        600,
    )
    assert "pixel classes" in info.describe()


def _save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _masks(rng: np.random.Generator, n: int, h: int = 8, w: int = 8) -> np.ndarray:
    y = rng.integers(0, 3, size=(n, h, w)).astype(np.uint8)
    y[:, 0, 0] = IGNORE_LABEL
    return y


def test_npz_masks_make_a_segmentation_dataset(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 8, 8)), _masks(rng, 20)
    data = load_npz(_save(tmp_path / "seg.npz", x=x, y=y))
    assert data.task == "segmentation" and data.num_classes == 3
    assert data.input_shape == (8, 8)
    assert (len(data.x_train), len(data.x_test)) == (16, 4)  # plain seeded 80/20 split
    assert data.y_train.shape == (16, 8, 8) and data.y_train.dtype == np.int64
    assert (data.y_test[:, 0, 0] == IGNORE_LABEL).all()  # the ignore label is kept
    assert data.info.task == "segmentation"

    x4, y4 = rng.normal(size=(6, 2, 5, 7)), _masks(rng, 6, 5, 7)
    full = load_npz(
        _save(
            tmp_path / "seg4.npz",
            x=x4,
            y=y4,
            x_test=x4[:2],
            y_test=y4[:2],
            classes=np.array(["sky", "road", "car", "person"]),
        )
    )
    assert full.input_shape == (2, 5, 7) and len(full.x_test) == 2
    assert full.num_classes == 4 and full.class_names == ("sky", "road", "car", "person")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros((4, 7, 8), int)}, "y: mask size (7, 8)"),
        ({"x": np.zeros((4, 3, 8, 8)), "y": np.zeros((4, 8, 9), int)}, "y: mask size (8, 9)"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros((3, 8, 8), int)}, "y: 3 masks for 4 images"),
        ({"x": np.zeros((4, 64)), "y": np.zeros((4, 8, 8), int)}, "need images x"),
        ({"x": np.zeros((4, 8, 8)), "y": np.full((4, 8, 8), 300)}, "y: mask labels must be in"),
        ({"x": np.zeros((4, 8, 8)), "y": np.full((4, 8, 8), -1)}, "y: mask labels must be in"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros((4, 8, 8))}, "y: labels must be integers"),
        ({"x": np.zeros((4, 8, 8)), "y": np.full((4, 8, 8), 255)}, "at least 2 classes"),
        ({"x": np.zeros((4, 8, 8)), "y": np.zeros((4, 8, 8, 1), int)}, "y: labels must be 1-D"),
        (
            {
                "x": np.zeros((4, 8, 8)),
                "y": np.arange(256).reshape(4, 8, 8) % 3,
                "x_test": np.zeros((2, 8, 8)),
                "y_test": np.zeros(2, int),
            },
            "y_test: shape (2,) does not match",
        ),
        (
            {
                "x": np.zeros((4, 8, 8)),
                "y": np.arange(256).reshape(4, 8, 8) % 3,
                "x_test": np.zeros((2, 8, 8)),
                "y_test": np.full((2, 8, 8), 254.0),
            },
            "y_test: labels must be integers",
        ),
    ],
)
def test_malformed_masks_are_clear_errors(tmp_path, arrays, message):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_npz(path)


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("shape", [(3, 24, 24), (1, 23, 17), (5, 5), (3, 7, 9), (2, 1, 3)])
def test_unet_keeps_the_spatial_size(shape):
    torch.manual_seed(0)
    model = build_model("unet", shape, 4)
    assert isinstance(model, UNet)
    assert model(torch.randn(2, *shape)).shape == (2, 4, *shape[-2:])
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 6


def test_auto_picks_unet_for_masks_only():
    assert infer_kind((3, 24, 24), "segmentation") == "unet"
    assert infer_kind((8, 8), "segmentation") == "unet"
    assert infer_kind((3, 24, 24)) == "resnet"  # classification as before
    assert isinstance(build_model("auto", (3, 24, 24), 4, "segmentation"), UNet)
    assert not isinstance(build_model("auto", (3, 24, 24), 4), UNet)


def test_check_data_matches_model_and_task():
    shapes, digits = builtin_info("shapes"), builtin_info("digits")
    check_data(JobSpec(dataset="shapes"), shapes)  # auto -> unet
    check_data(JobSpec(dataset="shapes", model="unet", batch_size_per_worker=1), shapes)
    for model in ("resnet", "mlp", "cnn1d"):
        with pytest.raises(DatasetError, match="per-pixel masks") as info:
            check_data(JobSpec(dataset="shapes", model=model), shapes)
        assert info.value.field == "model" and 'model="unet"' in str(info.value)
    with pytest.raises(DatasetError, match="one label per sample") as info:
        check_data(JobSpec(dataset="digits", model="unet"), digits)
    assert info.value.field == "model"
    # A code bundle's builder is not the built-in models' business.
    user = JobSpec(dataset="shapes", code="code-0123456789ab", model="mynet:build_model")
    check_data(user, shapes)


# ---------------------------------------------------------------- metrics


def test_confusion_matrix_metrics_by_hand():
    from workers.metrics import confusion_matrix, confusion_metrics

    target = torch.tensor([[[0, 0, 1], [1, 2, IGNORE_LABEL]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    cm = confusion_matrix(pred, target, 4)
    expected = [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert cm.dtype == torch.int64 and cm.tolist() == expected
    accuracy, miou = confusion_metrics(cm)
    # IoU: class 0 1/3, class 1 2/3, class 2 0/1; class 3 occurs nowhere and is left out.
    assert accuracy == pytest.approx(3 / 5)
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert confusion_metrics(torch.eye(3, dtype=torch.int64) * 5) == (1.0, 1.0)
    assert confusion_metrics(torch.zeros(3, 3, dtype=torch.int64)) == (0.0, None)


def test_segmentation_loss_skips_ignored_pixels_and_window_counts_pixels():
    from workers.metrics import Window, loss_and_hits

    out = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    y[0] = IGNORE_LABEL
    loss, correct, counted = loss_and_hits(out, y, segmentation=True)
    reference = torch.nn.functional.cross_entropy(out[1:], y[1:])
    assert counted == 16 and loss.item() == pytest.approx(reference.item(), rel=1e-6)
    assert correct == int((out[1].argmax(0) == y[1]).sum())
    nothing, _, none = loss_and_hits(out, torch.full_like(y, IGNORE_LABEL), segmentation=True)
    nothing.backward()
    assert none == 0 and nothing.item() == 0.0 and torch.isfinite(out.grad).all()

    window = Window()
    window.add(2, 1.0, correct=30, counted=40, step_time=0.1)
    window.add(2, 0.5, correct=10, counted=10, step_time=0.1)
    stats = window.stats(0.0)
    assert window.samples == 4  # images, for throughput
    assert stats["loss"] == pytest.approx(0.9) and stats["train_accuracy"] == pytest.approx(0.8)


def _numpy_reference(model, data: ArrayDataset) -> dict[str, float]:
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x_test)).double().numpy()
    y = data.y_test
    valid = y != IGNORE_LABEL
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    picked = np.take_along_axis(log_p, np.where(valid, y, 0)[:, None], 1)[:, 0]
    pred = logits.argmax(1)
    k = data.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y[valid], pred[valid]), 1)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    return {
        "test_accuracy": tp.sum() / cm.sum(),
        "test_loss": -picked[valid].mean(),
        "test_miou": (tp[union > 0] / union[union > 0]).mean(),
    }


def test_evaluate_on_one_rank_matches_numpy(monkeypatch):
    import workers.metrics
    from workers.metrics import evaluate

    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, size=(11, 9, 7))
    y[rng.random(y.shape) < 0.1] = IGNORE_LABEL
    x = rng.normal(size=(11, 2, 9, 7)).astype(np.float32)
    data = ArrayDataset("t", x, y, x, y, 5, task="segmentation")  # class 4 never occurs
    torch.manual_seed(0)
    model = build_model("unet", data.input_shape, data.num_classes)
    model(torch.from_numpy(x))  # one training-mode pass: running statistics that differ
    model.eval()
    expected = _numpy_reference(model, data)
    whole = evaluate(model, data, 0, 1, torch.device("cpu"))
    # In batches of 2 images (the pixel budget): the same numbers.
    monkeypatch.setattr(workers.metrics, "EVAL_PIXELS", 2 * 9 * 7)
    batched = evaluate(model, data, 0, 1, torch.device("cpu"))
    assert model.training  # evaluate puts the model back in training mode
    for result in (whole, batched):
        assert result["test_samples"] == 11
        assert result["test_accuracy"] == pytest.approx(expected["test_accuracy"], rel=1e-12)
        assert result["test_miou"] == pytest.approx(expected["test_miou"], rel=1e-12)
        assert result["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)

    digits = load_dataset("digits")
    plain = evaluate(build_model("resnet", (8, 8), 10), digits, 0, 1, torch.device("cpu"))
    assert "test_miou" not in plain and plain["test_samples"] == len(digits.x_test)
