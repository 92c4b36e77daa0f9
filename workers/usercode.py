"""A user's model builder from a code bundle: imported in the job's processes, never the service.

Ray puts the bundle's folder on ``sys.path`` (``runtime_env["working_dir"]``), so the builder
``"<module>:<function>"`` imports like any module. ``check_user_model`` builds the model once
in the driver and runs one training step's forward on two samples before any worker starts:
an import error, a builder that raises or returns no ``torch.nn.Module``, a BatchNorm
subclass syncbn cannot convert, or an output that does not fit the labels fails the job at
once, with the tail of the user's traceback (Ray Train would otherwise retry it
``max_failures`` times).
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

TRACEBACK_LINES = 25


class UserCodeError(ValueError):
    """The user's code failed; the message ends with the tail of its traceback."""


def _tail(exc: BaseException) -> str:
    lines = "".join(traceback.format_exception(exc)).rstrip().splitlines()
    return "\n".join(lines[-TRACEBACK_LINES:])


def _fail(entry: str, what: str, exc: BaseException | None = None) -> UserCodeError:
    message = f"your code ({entry}): {what}"
    if exc is not None:
        message += f"\n{_tail(exc)}"
    return UserCodeError(message)


def load_builder(entry: str) -> Callable[..., Any]:
    """The function ``entry`` (``"<module>:<function>"``) names, imported."""
    module_name, _, function = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _fail(entry, f"importing {module_name!r} failed", exc) from exc
    builder = getattr(module, function, None)
    if not callable(builder):
        raise _fail(entry, f"module {module_name!r} has no function {function!r}")
    return builder


def build_user_model(entry: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """``build_model(input_shape, num_classes)`` from the bundle, checked to be a Module."""
    builder = load_builder(entry)
    try:
        model = builder(tuple(input_shape), int(num_classes))
    except Exception as exc:
        raise _fail(entry, "the builder raised an exception", exc) from exc
    if not isinstance(model, nn.Module):
        raise _fail(entry, f"the builder returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def expected_output(task: str, batch: int, num_classes: int, spatial: tuple[int, ...]) -> tuple:
    """The output shape a batch needs: logits per sample, or per pixel for segmentation."""
    return (batch, num_classes, *spatial) if task == "segmentation" else (batch, num_classes)


def check_user_model(
    entry: str,
    norm_fn: Callable[[nn.Module], nn.Module],
    x: np.ndarray,
    task: str,
    num_classes: int,
    label_shape: tuple[int, ...],
) -> None:
    """Build the model, apply ``norm_fn`` (the job's BN conversion) and run a training-mode
    forward on the samples ``x``; raise ``UserCodeError`` unless the output fits the labels
    (``label_shape``: one label's shape, ``()`` or ``(H, W)``)."""
    model = build_user_model(entry, tuple(x.shape[1:]), num_classes)
    try:
        model = norm_fn(model)
    except (TypeError, ValueError) as exc:
        raise _fail(entry, f"cannot convert its BatchNorm layers: {exc}") from None
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    try:
        with torch.no_grad():
            out = model.train()(inputs)
    except Exception as exc:
        raise _fail(
            entry, f"forward on a batch of shape {tuple(inputs.shape)} failed", exc
        ) from exc
    want = expected_output(task, len(x), num_classes, label_shape)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _fail(
            entry,
            f"the model's output {got} does not fit the labels: {task} with {num_classes} "
            f"classes needs {want} for a batch of {len(x)}",
        )
