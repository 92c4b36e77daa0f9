"""``submit`` and ``study`` flags derived from ``JobSpec``, and the spec they give."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from contract.spec import JobSpec

FLAG_NAMES = {"batch_size_per_worker": "--batch-size"}
"""Shorter flags for a few JobSpec fields (every other field ``f`` is ``--f`` with dashes)."""


def spec_flags(leave_out: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``argparse`` arguments for every ``JobSpec`` field (but ``leave_out``), derived from the
    model: a field added to ``JobSpec`` is a ``submit`` and ``study`` flag without editing
    the client."""
    flags: dict[str, dict[str, Any]] = {}
    for name, field in JobSpec.model_fields.items():
        if name in leave_out:
            continue
        kinds = [a for a in get_args(field.annotation) if a is not type(None)]
        annotation = kinds[0] if get_origin(field.annotation) in (Union, UnionType) else None
        annotation = annotation or field.annotation
        options: dict[str, Any] = {"dest": name, "default": None}
        if annotation is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif get_origin(annotation) is Literal:
            options["choices"] = list(get_args(annotation))
        else:
            options["type"] = annotation
        default = "" if field.is_required() else f" (default: {field.default})"
        options["help"] = f"{field.description or name}{default}".replace("%", "%%")
        flags[FLAG_NAMES.get(name, "--" + name.replace("_", "-"))] = options
    return flags


def add_spec_arguments(
    parser: argparse.ArgumentParser, file_help: str, leave_out: tuple[str, ...] = ()
) -> None:
    """``--file`` (a JobSpec JSON file) and a flag for every ``JobSpec`` field."""
    parser.add_argument("--file", help=file_help)
    for flag, options in spec_flags(leave_out).items():
        parser.add_argument(flag, **options)


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--file``'s JobSpec with the flags given on top."""
    spec: dict[str, Any] = json.loads(Path(args.file).read_text()) if args.file else {}
    for field in JobSpec.model_fields:
        value = getattr(args, field, None)
        if value is not None:
            spec[field] = value
    return spec
