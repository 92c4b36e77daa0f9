"""Uploads: ``upload`` (a dataset), ``datasets``, ``upload-code`` (a code bundle), ``code``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from client.commands.base import (
    EXIT_OK,
    Command,
    call_and_show,
    no_arguments,
    positional,
    printed_json,
)
from client.sdk import Client


def upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path", type=Path, help="a .npz (x, y[, x_test, y_test, classes]) or a .zip image folder"
    )
    parser.add_argument("--image-size", help="image folders: resize every image, e.g. 32x32")


def upload(args: argparse.Namespace, client: Client, console: Console) -> int:
    dataset = client.upload_dataset(args.path, image_size=args.image_size)
    if not printed_json(args, dataset):
        classes = dataset.class_names or []
        console.print(
            f"dataset [bold]{dataset.id}[/bold] ({dataset.task}): {dataset.n_train} train / "
            f"{dataset.n_test} test samples, shape {dataset.input_shape}"
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
    bundle = client.upload_code(args.path)
    if not printed_json(args, bundle):
        console.print(
            f"code [bold]{bundle.id}[/bold]: modules {', '.join(bundle.modules)}; submit with "
            f"--code {bundle.id} --model <module>:<function>"
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
        call_and_show(lambda client, _: client.datasets(), show_datasets),
    ),
    "upload-code": Command(
        "upload a .zip/.tar.gz of Python files with a model builder",
        positional("path", type=Path, help="a .zip (or .tar.gz) of Python packages and modules"),
        upload_code,
    ),
    "code": Command(
        "list uploaded code bundles",
        no_arguments,
        call_and_show(lambda client, _: client.code_bundles(), show_bundles),
    ),
}
