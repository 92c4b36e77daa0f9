"""Trained models: ``download`` (a job's model file) and ``predict`` (with it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape

from client.commands.base import EXIT_OK, ID_HELP, Command, printed_json
from client.http import Client, output_path
from client.render import metric_text, predictions_table, size_text
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

    def where(headers: httpx.Headers) -> Path:
        fallback = f"{args.job_id}-epoch{int(headers['x-syncbn-epoch'])}.safetensors"
        return output_path(args.output, headers.get("content-disposition"), fallback)

    params = {"epoch": args.epoch} if args.epoch else {}
    saved = client.download(f"/v1/jobs/{args.job_id}/model", where, params=params)
    epoch = int(saved.headers["x-syncbn-epoch"])
    listing = client.request("GET", f"/v1/jobs/{args.job_id}/models")
    entry = next((m for m in listing["models"] if m["epoch"] == epoch), {})
    out = {
        **entry,
        "epoch": epoch,
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
    """``POST /predict`` with a ``.npy``/``.json`` file's samples, or ``/predict/images`` with
    image files (for a model trained on an image folder)."""
    epoch = {"epoch": args.epoch} if args.epoch else {}
    path = f"/v1/jobs/{args.job_id}/predict"
    if all(f.suffix.lower() in IMAGE_EXTENSIONS for f in args.files):
        files = [("files", (f.name, f.read_bytes())) for f in args.files]
        out = client.request("POST", f"{path}/images", files=files, data=epoch, timeout=300)
    elif len(args.files) != 1:
        raise ValueError("give one .npy or .json file, or image files")
    else:
        body = {"inputs": read_samples(args.files[0]), **epoch}
        out = client.request("POST", path, json=body, timeout=300)
    if not printed_json(args, out):
        console.print(
            f"job [bold]{out['job_id']}[/bold], model of epoch {out['epoch']}: {out['task']}"
        )
        console.print(predictions_table(out))
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
