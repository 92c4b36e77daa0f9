"""Regenerate the generated parts of ``docs/reference.md`` from the code.

    .venv/bin/python scripts/reference_doc.py   # rewrite docs/reference.md in place

Each generated part sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``
and comes from the code itself: the REST routes from the service's OpenAPI document, the
JobSpec fields from ``JobSpec.model_fields``, the settings from ``Settings.model_fields``, the
CLI from its argparse parser, the storage layout from ``contract.layout``. The rest of the
page is written by hand. ``tests/unit/test_reference_doc.py`` fails when the file is stale.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference.md"


def _cell(text: Any) -> str:
    """Markdown table cell text: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rest() -> str:
    """Every route: method, path, operation id and what it does (its docstring's first line)."""
    from service.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), api_token="x" * 32, ray_address="http://ray:8265")
        doc = create_app(settings).openapi()  # (no request is made: Ray is never reached)
    rows = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            what = (op.get("description") or op.get("summary") or "").split("\n\n")[0]
            rows.append((f"`{method.upper()}`", f"`{path}`", f"`{op['operationId']}`", what))
    return _table(("method", "path", "operation id", "what it does"), rows)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return ", ".join(f'"{a}"' for a in get_args(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args:
        return f"{_type_name(args[0])} or null"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: Any) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥",
               "max_length": "length ≤"}  # fmt: skip
    found = []
    for item in field.metadata:
        for name, symbol in symbols.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(found)


def jobspec() -> str:
    """Every JobSpec field: type, default, bounds and meaning."""
    from contract.spec import JobSpec

    rows = []
    for name, field in JobSpec.model_fields.items():
        default = "required" if field.is_required() else f"`{json.dumps(field.default)}`"
        rows.append(
            (f"`{name}`", _type_name(field.annotation), default, _bounds(field), field.description)
        )
    return _table(("field", "type", "default", "bounds", "meaning"), rows)


def settings() -> str:
    """Every setting: its environment variable(s), default and meaning."""
    from pydantic import AliasChoices

    from service.settings import Settings

    rows = []
    for name, field in Settings.model_fields.items():
        names = [Settings.env_name(name)]
        if isinstance(field.validation_alias, AliasChoices):
            names = [str(c) for c in field.validation_alias.choices]
        default = field.default if field.default_factory is None else field.default_factory()
        shown = "unset" if default is None or default == [] else f"`{default}`"
        rows.append((" or ".join(f"`{n}`" for n in names), shown, field.description))
    return _table(("variable", "default", "meaning"), rows)


def _arguments(parser: argparse.ArgumentParser, skip: set[str]) -> list[tuple[str, str]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest in skip:
            continue
        flag = ", ".join(action.option_strings) or action.dest.upper()
        if action.choices and not action.option_strings:
            flag = "|".join(map(str, action.choices))
        out.append((flag, (action.help or "").replace("%%", "%")))
    return out


def cli() -> str:
    """Every command with its arguments (the JobSpec flags once, for submit and study)."""
    from client.cli import build_parser
    from client.spec_args import spec_flags

    parser = build_parser()
    spec = {options["dest"] for options in spec_flags().values()} | {"file", "json"}
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    parts = ["Global options (before the command):", ""]
    parts.append(_table(("option", "meaning"), _arguments(parser, {"command"})))
    parts += ["", "Commands:", ""]
    rows = []
    for name, sub in commands.choices.items():
        arguments = "; ".join(f"`{flag}`: {text}" for flag, text in _arguments(sub, spec))
        if name in ("submit", "study"):
            arguments = "`--file FILE` (a JobSpec JSON file) and a flag per JobSpec field; " + (
                arguments
            )
        rows.append((f"`syncbn {name}`", helps.get(name, ""), arguments))
    parts.append(_table(("command", "what it does", "arguments"), rows))
    parts += ["", "JobSpec flags of `submit` and `study` (a study sets `norm` and `seed`):", ""]
    flags = [(f"`{flag}`", o["help"].replace("%%", "%")) for flag, o in spec_flags().items()]
    parts.append(_table(("flag", "meaning"), flags))
    parts += ["", f"Exit status: {parser.epilog.removeprefix('exit status: ')}."]
    return "\n".join(parts)


def layout() -> str:
    """``$SYNCBN_HOME``'s files, as ``contract.layout`` documents them."""
    import contract.layout

    doc = contract.layout.__doc__ or ""
    block = doc[doc.index("    $SYNCBN_HOME/") :].rstrip()
    return "```\n" + "\n".join(line.removeprefix("    ") for line in block.splitlines()) + "\n```"


PARTS: dict[str, Callable[[], str]] = {
    "rest": rest,
    "jobspec": jobspec,
    "settings": settings,
    "cli": cli,
    "layout": layout,
}


def render(text: str) -> str:
    """``text`` with every generated part regenerated."""
    for name, make in PARTS.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)", flags=re.DOTALL
        )
        if not pattern.search(text):
            raise ValueError(f"{PAGE}: no generated part {name!r}")
        body = make()
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    PAGE.write_text(render(PAGE.read_text()))
    print(f"wrote {PAGE}")
