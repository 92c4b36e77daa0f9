"""Uploads: ``upload`` (a dataset), ``datasets``, ``upload-code`` (a code bundle), ``code``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from client.commands.base import (
    EXIT_OK,
    Command,
    no_arguments,
    positional,
    printed_json,
    request_and_show,
)
from client.http import Client


def post_file(client: Client, url: str, path: Path, form: dict[str, str]) -> Any:
    """``POST url`` with the file ``path`` (and the ``form`` fields)."""
    with path.open("rb") as handle:
        files = {"file": (path.name, handle, "application/octet-stream")}
        return client.request("POST", url, files=files, data=form, timeout=300)


def upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, help="a .npz (x, y[, x_test, y_test, classes]) or a .zip image folder"
    )
    parser.add_argument("--image-size", help="image folders: resize every image, e.g. 32x32")


def upload(args: argparse.Namespace, client: Client, console: Console) -> int:
    form = {"image_size": args.image_size} if args.image_size else {}
    out = post_file(client, "/v1/datasets", args.path, form)
    if not printed_json(args, out):
        classes = out.get("class_names") or []
        console.print(
            f"dataset [bold]{out['id']}[/bold] ({out.get('task', 'classification')}): "
            f"{out['n_train']} train / {out['n_test']} test samples, shape {out['input_shape']}"
            + (f", classes {', '.join(classes)}" if classes else "")
        )
    return EXIT_OK


def show_datasets(console: Console, out: dict[str, Any]) -> None:
    for dataset in out["datasets"]:
        console.print(
            f"{dataset['id']}  {dataset['name']}  {dataset['n_train']} train  "
            f"shape {dataset['input_shape']}",
            markup=False,
        )


def upload_code(args: argparse.Namespace, client: Client, console: Console) -> int:
    out = post_file(client, "/v1/code", args.path, {})
    if not printed_json(args, out):
        console.print(
            f"code [bold]{out['id']}[/bold]: modules {', '.join(out['modules'])}; submit with "
            f"--code {out['id']} --model <module>:<function>"
        )
    return EXIT_OK


def show_bundles(console: Console, out: dict[str, Any]) -> None:
    for bundle in out["bundles"]:
        line = f"{bundle['id']}  {bundle['name']}  modules {', '.join(bundle['modules'])}"
        console.print(line, markup=False)


COMMANDS = {
    "upload": Command(
        "upload a dataset: .npz (x, y[, x_test, y_test]) or an image-folder .zip",
        upload_arguments,
        upload,
    ),
    "datasets": Command(
        "list uploaded datasets",
        no_arguments,
        request_and_show("GET", "/v1/datasets", show_datasets),
    ),
    "upload-code": Command(
        "upload a .zip/.tar.gz of Python files with a model builder",
        positional("path", type=Path, help="a .zip (or .tar.gz) of Python packages and modules"),
        upload_code,
    ),
    "code": Command(
        "list uploaded code bundles",
        no_arguments,
        request_and_show("GET", "/v1/code", show_bundles),
    ),
}
