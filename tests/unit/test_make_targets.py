"""The Makefile's clean targets: ``make clean`` removes build outputs only and never
``$SYNCBN_HOME``; ``make clean-data`` names the folder, says what is in it, asks unless
``FORCE=1``, and refuses folders that are not a data folder (``/``, the repository, ``~``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = ROOT / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def make(*args: str, cwd: Path = ROOT, stdin: str = "", **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCBN_", "DATABASE_"))}
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, env={**environ, **env}, input=stdin,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def a_home(tmp_path: Path) -> Path:
    home = tmp_path / "syncbn-home"
    (home / "runs" / "j-1").mkdir(parents=True)
    (home / "syncbn.db").write_bytes(b"SQLite format 3\0")
    (home / "api-token").write_text("t0ken\n")
    return home


def test_make_clean_never_names_the_home(tmp_path: Path) -> None:
    home = a_home(tmp_path)
    for env in ({}, {"SYNCBN_HOME": str(home)}):
        plan = make("-n", "clean", **env)
        assert plan.returncode == 0, plan.stderr
        assert "rm -rf" in plan.stdout
        assert str(home) not in plan.stdout and ".syncbn" not in plan.stdout, plan.stdout


def test_make_clean_removes_build_outputs_and_keeps_the_home(tmp_path: Path) -> None:
    """``make clean`` run for real, on a copy of the Makefile in a tree of build outputs."""
    tree = tmp_path / "repo"
    (tree / "service" / "__pycache__").mkdir(parents=True)
    for built in (".venv/bin", ".pytest_cache", ".ruff_cache", "build", "x.egg-info"):
        (tree / built).mkdir(parents=True)
    shutil.copy(MAKEFILE, tree / "Makefile")
    inside, outside = tree / ".syncbn", a_home(tmp_path)
    (inside / "runs").mkdir(parents=True)
    for home in (inside, outside):
        (tree / ".venv").mkdir(exist_ok=True)
        done = make("clean", cwd=tree, **({} if home == inside else {"SYNCBN_HOME": str(home)}))
        assert done.returncode == 0, done.stderr
        assert not (tree / ".venv").exists() and not (tree / "service" / "__pycache__").exists()
        assert (home / "runs").is_dir(), f"make clean removed {home}"
        assert "make clean-data deletes it" in done.stdout
    assert (outside / "syncbn.db").exists() and (outside / "api-token").exists()
    assert (tree / "service").is_dir()


def test_make_clean_data_asks_and_keeps_on_no(tmp_path: Path) -> None:
    home = a_home(tmp_path)
    for answer in ("n\n", "", "yes please\n"):
        done = make("clean-data", f"SYNCBN_HOME={home}", stdin=answer)
        assert done.returncode != 0, "declining is an error for a script that goes on"
        said = done.stdout + done.stderr
        assert str(home.resolve()) in said  # it names the folder
        for what in ("database", "dataset", "model", "API token", "[y/N]", "kept"):
            assert what in said, f"{what!r} not in {said}"
        assert (home / "syncbn.db").exists() and (home / "api-token").exists()


def test_make_clean_data_deletes_on_yes_or_force(tmp_path: Path) -> None:
    home = a_home(tmp_path)
    done = make("clean-data", f"SYNCBN_HOME={home}", stdin="y\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not home.exists() and f"deleted {home.resolve()}" in done.stdout

    home = a_home(tmp_path)
    done = make("clean-data", f"SYNCBN_HOME={home}", "FORCE=1", stdin="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not home.exists() and "[y/N]" not in done.stdout

    again = make("clean-data", f"SYNCBN_HOME={home}", "FORCE=1")
    assert again.returncode == 0 and "does not exist" in again.stdout


def test_make_clean_data_refuses_what_is_not_a_data_folder(tmp_path: Path) -> None:
    """On a copy of the Makefile in a scratch tree, so a broken guard deletes only that."""
    tree = tmp_path / "repo"
    (tree / "service").mkdir(parents=True)
    shutil.copy(MAKEFILE, tree / "Makefile")
    for home in (".", "./", str(tree), ""):
        done = make("clean-data", f"SYNCBN_HOME={home}", "FORCE=1", cwd=tree)
        assert done.returncode != 0, f"clean-data accepted SYNCBN_HOME={home!r}"
        assert (tree / "Makefile").exists() and (tree / "service").is_dir()
