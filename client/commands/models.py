"""Trained models: ``download`` (a job's model file) and ``predict`` (with it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from client.commands.base import EXIT_OK, ID_HELP, Command, plain, printed_json
from client.render import metric_text, predictions_table, size_text
from client.sdk import Client
from contract.datasets import IMAGE_EXTENSIONS


def epoch_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epoch", type=int, help="a kept checkpoint (default: the newest)")


def download_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", help=ID_HELP["job_id"])
    parser.add_argument(
        "-o", "--output", type=Path, help="file or folder (default: ./JOB-epochN.safetensors)"
    )
    epoch_argument(parser)


def download(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Stream the job's model file to disk, checked against its ETag (the SHA-256); prints (or
    with ``--json``, gives) its entry of ``/models`` with the ``path`` it was saved to."""
    saved = client.download_model(args.job_id, args.output, epoch=args.epoch or None)
    listing = client.models(args.job_id)
    entry = next((plain(m) for m in listing.models if m.epoch == saved.epoch), {})
    out = {
        **entry,
        "epoch": saved.epoch,
        "size_bytes": saved.size_bytes,
        "sha256": saved.sha256,
        "path": str(saved.path),
    }
    if printed_json(args, out):
        return EXIT_OK
    # soft_wrap: a long path or the hash stays one line
    console.print(f"saved [bold]{escape(out['path'])}[/bold]", soft_wrap=True)
    console.print(
        f"  epoch {out['epoch']}, {size_text(out['size_bytes'])}, sha256 {out['sha256']}",
        soft_wrap=True,
    )
    if metric := metric_text(out.get("metrics")):
        console.print(f"  test {metric}")
    if out.get("bn_statistics"):
        console.print(f"  BatchNorm statistics: {out['bn_statistics']}", markup=False)
    return EXIT_OK


def read_samples(path: Path) -> Any:
    """Raw samples from a ``.npy`` array ``(N, *input_shape)`` or a ``.json`` list of samples
    (or a predict request body ``{"inputs": [...]}``)."""
    if path.suffix == ".npy":
        import numpy as np  # only here: the client needs no numpy but for a .npy file

        return np.load(path, allow_pickle=False).tolist()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return data["inputs"] if isinstance(data, dict) and "inputs" in data else data
    raise ValueError(f"{path}: expected a .npy array or a .json list of samples")


def predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id", help=ID_HELP["job_id"])
    parser.add_argument(
        "files", type=Path, nargs="+", help="one .npy or .json file, or image files (any number)"
    )
    epoch_argument(parser)


def predict(args: argparse.Namespace, client: Client, console: Console) -> int:
    """Predict a ``.npy``/``.json`` file's samples, or image files (for a model trained on an
    image folder)."""
    epoch = args.epoch or None
    if all(f.suffix.lower() in IMAGE_EXTENSIONS for f in args.files):
        out = client.predict_images(args.job_id, args.files, epoch=epoch)
    elif len(args.files) != 1:
        raise ValueError("give one .npy or .json file, or image files")
    else:
        out = client.predict(args.job_id, read_samples(args.files[0]), epoch=epoch)
    if not printed_json(args, out):
        console.print(f"job [bold]{out.job_id}[/bold], model of epoch {out.epoch}: {out.task}")
        console.print(predictions_table(plain(out)))
    return EXIT_OK


COMMANDS = {
    "download": Command(
        "download a job's trained model (.safetensors)", download_arguments, download
    ),
    "predict": Command(
        "predict raw samples (.npy or .json list) or image files with a job's model",
        predict_arguments,
        predict,
    ),
}
