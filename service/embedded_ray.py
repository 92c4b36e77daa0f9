"""A local Ray head in its own process tree (``ray start --head --block``), for ``make run``
and the tests: it outlives a crashed service (as a real cluster would) and stops on exit.

Every port is picked free, so several heads (a test run beside ``make run``) can coexist.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service.ray_jobs import RayJobs

PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    import socket

    sockets, ports = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def ray_env() -> dict[str, str]:
    """Environment for Ray processes and clients: token auth (Ray's default for new clusters,
    but clients only send the token when ``RAY_AUTH_MODE=token``) and fast Train reports."""
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")  # stop at once (no 30 s drain)
    return env


class RayHead:
    """``with RayHead(cwd, cpus) as head:`` -> ``head.dashboard_url``, ``head.gcs_address``."""

    def __init__(
        self,
        cwd: str | os.PathLike,
        num_cpus: int | None = None,
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.cwd = Path(cwd)
        self.num_cpus = num_cpus
        self.extra_args = extra_args or []
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
        self.ports = ports
        self.gcs_address = f"127.0.0.1:{ports['--port']}"
        # Its own short temp dir (AF_UNIX paths are limited to ~107 bytes): heads never share
        # /tmp/ray's session files, so stopping one cannot disturb another.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="syncbn-ray-"))
        self.dashboard_url = f"http://127.0.0.1:{ports['--dashboard-port']}"

    def command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        args = [ray, "start", "--head", "--block", "--include-dashboard=true"]
        args += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1"]
        args += ["--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        args += [f"{flag}={port}" for flag, port in self.ports.items()]
        if self.num_cpus is not None:
            args.append(f"--num-cpus={self.num_cpus}")
        return args + self.extra_args

    def start(self) -> RayHead:
        self.cwd.mkdir(parents=True, exist_ok=True)
        log = open(self.cwd / "ray-head.log", "ab")  # noqa: SIM115 - lives as long as the head
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.cwd,  # not /tmp: a /tmp/ray directory would shadow the ray package
            env=ray_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Block until the Jobs API answers and a node is alive (or raise)."""
        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"ray start exited with {self.process.returncode}; see "
                    f"{self.cwd / 'ray-head.log'}"
                )
            try:
                if RayJobs(self.dashboard_url).capacity().nodes:
                    return
            except Exception as exc:
                last = exc
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"Ray head not ready after {self.startup_timeout_s:.0f} s: {last}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the ``--block`` process (it stops every Ray process it started)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
