"""The README's commands work as written, on ``make run``'s defaults.

``make run`` is started as a new user starts it (an empty ``HOME``, no ``RAY_*`` or
``SYNCBN_*`` variables but its own ``SYNCBN_HOME`` and a free ``PORT``, so its embedded Ray
head offers its default CPUs). Then every ``syncbn`` and ``curl`` line of the quick start runs
as written, and the headline study lines without ``--watch`` (each queues its study, which is
then cancelled: running them takes half an hour). The only edits are where this test's service
lives: ``.syncbn/`` is its ``SYNCBN_HOME`` and port 8000 its ``PORT``. Ctrl-C (SIGINT to the
process group, as a terminal sends it) stops the service and its Ray head.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from service.cluster.embedded_ray import free_ports

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
pytestmark = pytest.mark.timeout(600)


def _bash_blocks(text: str) -> list[str]:
    """Each ```bash block's commands, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def quick_start_commands() -> list[str]:
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [c for c in _bash_blocks(section) if c.startswith((".venv/bin/syncbn ", "curl "))]


def study_commands() -> list[str]:
    section = README.read_text().split("## Which normalization", 1)[1].split("\n## ", 1)[0]
    studies = [c for c in _bash_blocks(section) if re.match(r"(\.venv/bin/)?syncbn study ", c)]
    return [c.replace(" --watch", "") for c in studies]


def test_the_readme_has_the_commands_this_test_runs() -> None:
    quick = quick_start_commands()
    assert any("syncbn submit" in c for c in quick) and any(c.startswith("curl") for c in quick)
    assert len(study_commands()) >= 2


def test_the_readme_commands_work_on_make_runs_defaults(tmp_path: Path) -> None:
    home, user_home = tmp_path / "syncbn-home", tmp_path / "user-home"
    user_home.mkdir()
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SYNCBN_"))}
    env.update(HOME=str(user_home), SYNCBN_HOME=str(home), PORT=str(port))
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _wait_up(make, f"http://127.0.0.1:{port}", log)
        user_env = {**env, "PATH": f"{ROOT / '.venv' / 'bin'}:{env['PATH']}"}

        def run(command: str) -> str:
            here = command.replace(".syncbn/", f"{home}/").replace(
                "127.0.0.1:8000", f"127.0.0.1:{port}"
            )
            here = re.sub(r"^syncbn ", ".venv/bin/syncbn ", here)
            user_env["SYNCBN_URL"] = f"http://127.0.0.1:{port}"
            done = subprocess.run(
                ["bash", "-c", here], cwd=ROOT, env=user_env, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
            return done.stdout + done.stderr

        for command in quick_start_commands():
            said = run(command)
            if "submit" in command and "--watch" in command:
                assert "succeeded" in said, said
        for command in study_commands():
            said = run(command)
            study = re.search(r"study (s-[0-9a-f]+)", said)
            assert study and "queued" in said, said
            run(f".venv/bin/syncbn study-cancel {study.group(1)}")
    finally:
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            make.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            raise
    assert "Ctrl-C stops everything" in log.read_text()


def _wait_up(make: subprocess.Popen, url: str, log: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if make.poll() is not None:
            raise RuntimeError(f"make run exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"make run not up after {timeout_s} s:\n{log.read_text()[-3000:]}")
