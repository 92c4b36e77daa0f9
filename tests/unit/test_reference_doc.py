"""``docs/reference.md`` is what the code says: its generated tables (REST routes, JobSpec,
settings, CLI, storage layout) equal a fresh rendering, and every CLI flag's help says more
than the flag's name."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def reference_module():
    spec = importlib.util.spec_from_file_location(
        "docs_reference", ROOT / "scripts" / "reference_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_page_is_not_stale():
    reference = reference_module()
    page = reference.PAGE.read_text()
    assert reference.render(page) == page, (
        "docs/reference.md is stale: run .venv/bin/python scripts/reference_doc.py"
    )


def test_every_cli_argument_says_what_it_means():
    from client.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    vague = []
    for name, sub in [("syncbn", parser), *commands.choices.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = (action.help or "").split(" (default")[0].strip()
            if len(text) < 8 or text.replace(" ", "_").lower() == action.dest:
                vague.append(f"{name} {action.option_strings or action.dest}: {action.help!r}")
    assert not vague, "\n".join(vague)
