"""The local Ray head of ``make run`` and of the tests, owned by one ``SYNCBN_HOME``.

- ``RayHead``: ``ray start --head --block`` in its own process session, so it outlives a
  crashed service (as a real cluster would). Every port is picked free, it has its own short
  temp dir, and token auth with a token of its own: given to ``ray start`` and to every client
  as ``RAY_AUTH_TOKEN``, so nothing is read from or written to ``~/.ray``. It is a one-machine
  cluster that listens on loopback only (node address 127.0.0.1) and has no Ray Client server
  unless asked for one (``ray_client=True``).
- ``EmbeddedRay``: the head of one home. It records the head (pid, addresses, token) in
  ``$SYNCBN_HOME/ray/head.json`` (mode 0600); when the service starts again after a crash it
  re-attaches to that head if it is still alive, so there is never a second one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from service.cluster.ray_jobs import RayJobs

LOOPBACK = "127.0.0.1"
PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)
CLIENT_PORT_FLAG = "--ray-client-server-port"  # only with RayHead(ray_client=True)
# Ports Ray reads from the environment only (else fixed: 44227 and 44217, clashing between
# heads): the Prometheus endpoints of the dashboard and of the autoscaler monitor.
PORT_VARS = ("DASHBOARD_METRIC_PORT", "AUTOSCALER_METRIC_PORT")
# Loopback only. ``ray start`` replaces a node address of 127.0.0.1 with the machine's address
# (``services.resolve_ip_for_localhost``) unless Ray thinks it is on a laptop, where it keeps
# loopback and refuses to join other nodes: this variable tells it so on Linux too. Every Ray
# process then has 127.0.0.1 as its node address, and each listens on 127.0.0.1 because of
# that (gcs_server, raylet and core worker gRPC servers, dashboard agent, runtime env agent,
# metrics endpoints, Ray Client server); with the machine's address they listen on all
# interfaces instead. The Ray processes inherit it, so their ``ray.init`` keeps 127.0.0.1 too.
LOCAL_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Gloo (the Train workers' torch.distributed on CPU) listens on the address of this interface;
# by default on the one the host name resolves to, which may be the machine's address.
GLOO_INTERFACE_VAR = "GLOO_SOCKET_IFNAME"
# ``ray start`` without the Ray Client server: ``ray start --head`` starts one whenever the
# Ray Client's dependency (grpc) imports, on port 10001 if none is given, and no value of
# ``--ray-client-server-port`` turns it off; so its CLI runs with that check answering
# "missing" (the name is read first, so a Ray that renames it fails here, not silently).
RAY_START_WITHOUT_CLIENT = (
    "import sys; import ray.scripts.scripts as cli; "
    "cli.get_ray_client_dependency_error; "
    "cli.get_ray_client_dependency_error = lambda: ImportError('no Ray Client server'); "
    "sys.argv[0] = 'ray'; sys.exit(cli.main())"
)
RECORD_FILE = "head.json"
INHERITED_RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    sockets, ports = [], []
    for _ in range(n):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def new_token() -> str:
    """A fresh Ray auth token (Ray's own tokens are 32 hex digits; longer is fine)."""
    return secrets.token_hex(32)


def ray_env(token: str | None = None) -> dict[str, str]:
    """Environment for Ray processes and clients: with ``token``, token auth with that token and
    no Ray address, token or token path inherited from this process; and fast Train reports."""
    env = dict(os.environ)
    if token is not None:
        _set_token(env, token)
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")  # stop at once (no 30 s drain)
    return env


def loopback_interface() -> str | None:
    """The name of the network interface that has 127.0.0.1 ("lo", "lo0" on macOS)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(address.address == LOOPBACK for address in addresses):
            return name
    return None


def use_token(token: str) -> None:
    """Make this process a client of a local head with ``token`` (before Ray first reads
    it): a driver's ``ray.init(address="127.0.0.1:...")`` then keeps 127.0.0.1, where the
    head listens, instead of swapping in the machine's address."""
    _set_token(os.environ, token)


def _set_token(env: MutableMapping[str, str], token: str) -> None:
    """Token auth with ``token`` in ``env``, no inherited Ray address, token or path, and
    loopback addresses kept as they are (``LOCAL_ONLY_VAR``): the environment of a local
    head and of its clients."""
    for name in INHERITED_RAY_VARS:
        env.pop(name, None)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    env[LOCAL_ONLY_VAR] = "0"


def _running(pid: int, create_time: float | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, given ``create_time``, is that very process
    (not a reused pid)."""
    try:
        process = psutil.Process(pid)
        if create_time is not None and abs(process.create_time() - create_time) > 1.0:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class HeadRecord:
    """What it takes to find, use and stop a running head again."""

    pid: int
    create_time: float
    gcs_address: str
    dashboard_url: str
    token: str
    temp_dir: str

    def save(self, path: Path) -> None:
        """Write atomically, readable by the owner only (it holds the token)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(self), handle)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> HeadRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def alive(self) -> bool:
        """Whether the head's ``ray start`` process still runs."""
        return _running(self.pid, self.create_time)


def kill_session(pid: int) -> None:
    """SIGKILL every process of the session that ``pid`` leads (a head and all it started)."""
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == pid:
                process.kill()
        except (OSError, psutil.Error):
            continue


class RayHead:
    """``with RayHead(cwd, cpus) as head:`` -> ``head.dashboard_url``, ``head.gcs_address``,
    ``head.token``; ``head.env()`` is the environment its clients need."""

    def __init__(
        self,
        cwd: str | os.PathLike,
        num_cpus: int | None = None,
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 120.0,
        token: str | None = None,
        ray_client: bool = False,
    ) -> None:
        self.cwd = Path(cwd)
        self.num_cpus = num_cpus
        self.extra_args = extra_args or []
        self.startup_timeout_s = startup_timeout_s
        self.token = token or new_token()
        self.ray_client = ray_client
        self.pid: int | None = None
        flags = PORT_FLAGS + ((CLIENT_PORT_FLAG,) if ray_client else ())
        free = free_ports(len(flags) + len(PORT_VARS))
        ports = dict(zip(flags, free[: len(flags)], strict=True))
        self.ports = ports
        self.port_vars = dict(zip(PORT_VARS, free[len(flags) :], strict=True))
        self.gcs_address = f"{LOOPBACK}:{ports['--port']}"
        self.dashboard_url = f"http://{LOOPBACK}:{ports['--dashboard-port']}"
        self.client_address = f"ray://{LOOPBACK}:{ports[CLIENT_PORT_FLAG]}" if ray_client else None
        self.temp_dir: Path | None = None  # made by start()

    @classmethod
    def attach(cls, record: HeadRecord, cwd: str | os.PathLike) -> RayHead:
        """The head described by ``record`` (already running)."""
        head = cls(cwd, startup_timeout_s=60.0, token=record.token)
        head.ports, head.port_vars = {}, {}
        head.gcs_address, head.dashboard_url = record.gcs_address, record.dashboard_url
        head.pid, head.temp_dir = record.pid, Path(record.temp_dir)
        return head

    def env(self) -> dict[str, str]:
        """The environment of its clients."""
        return ray_env(self.token)

    def head_env(self) -> dict[str, str]:
        """The environment of ``ray start``, and so of every Ray process and Ray Job: a
        client's (loopback only, its token), plus the ports Ray takes from variables."""
        env = self.env()
        env.update((name, str(port)) for name, port in self.port_vars.items())
        interface = loopback_interface()
        if interface is not None:
            env[GLOO_INTERFACE_VAR] = interface
        return env

    def command(self) -> list[str]:
        if self.ray_client:
            args = [str(Path(sys.executable).parent / "ray")]
        else:
            args = [sys.executable, "-c", RAY_START_WITHOUT_CLIENT]
        args += ["start", "--head", "--block", "--include-dashboard=true"]
        args += [f"--node-ip-address={LOOPBACK}", f"--dashboard-host={LOOPBACK}"]
        args += ["--disable-usage-stats", f"--temp-dir={self.temp_dir}"]
        args += [f"{flag}={port}" for flag, port in self.ports.items()]
        if self.num_cpus is not None:
            args.append(f"--num-cpus={self.num_cpus}")
        return args + self.extra_args

    def record(self) -> HeadRecord:
        assert self.pid is not None, "the head is not running"
        return HeadRecord(
            pid=self.pid,
            create_time=psutil.Process(self.pid).create_time(),
            gcs_address=self.gcs_address,
            dashboard_url=self.dashboard_url,
            token=self.token,
            temp_dir=str(self.temp_dir),
        )

    def start(self) -> RayHead:
        self.cwd.mkdir(parents=True, exist_ok=True)
        # Its own short temp dir (AF_UNIX paths are limited to ~107 bytes): heads never share
        # /tmp/ray's session files, so stopping one cannot disturb another.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="syncbn-ray-"))
        with open(self.cwd / "ray-head.log", "ab") as log:
            process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,  # not /tmp: a /tmp/ray directory would shadow the ray package
                env=self.head_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = process.pid
        self.wait_ready()
        return self

    def alive(self) -> bool:
        return self.pid is not None and _running(self.pid)

    def wait_ready(self) -> None:
        """Block until the Jobs API answers and a node is alive (or raise).

        The answer is read with this process's Ray client, which must already use
        ``self.token`` (``use_token``) when the head has token auth.
        """
        deadline = time.monotonic() + self.startup_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.alive():
                self.stop()
                raise RuntimeError(f"ray start exited; see {self.cwd / 'ray-head.log'}")
            try:
                if RayJobs(self.dashboard_url).capacity().nodes:
                    return
            except Exception as exc:
                last = exc
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"Ray head not ready after {self.startup_timeout_s:.0f} s: {last}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the ``--block`` process (it stops every Ray process it started); SIGKILL
        its whole session if it does not end in ``timeout_s``."""
        if self.pid is not None:
            try:
                process = psutil.Process(self.pid)
                process.send_signal(signal.SIGTERM)
                process.wait(timeout_s)
            except psutil.TimeoutExpired:
                kill_session(self.pid)
            except psutil.Error:
                pass
            kill_session(self.pid)  # anything the head left behind in its session
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the head and everything it started (as a machine restart would)."""
        if self.pid is not None:
            kill_session(self.pid)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedRay:
    """``with EmbeddedRay(home / "ray", cpus) as head:`` -> a ``RayHead``, re-attached when
    the record in ``directory`` names a live head, else started (and recorded). Sets this
    process's Ray token; stopping it stops the head and removes the record."""

    def __init__(self, directory: Path, num_cpus: int | None = None) -> None:
        self.directory = Path(directory)
        self.record_path = self.directory / RECORD_FILE
        self.num_cpus = num_cpus
        self.head: RayHead | None = None
        self.attached = False

    def __enter__(self) -> RayHead:
        record = HeadRecord.load(self.record_path)
        # One token per home: Ray's client caches the first token it reads in a process.
        token = record.token if record is not None else new_token()
        use_token(token)
        if record is not None and record.alive():
            head = RayHead.attach(record, self.directory)
            try:
                head.wait_ready()
            except (RuntimeError, TimeoutError):
                head.kill()
            else:
                self.head, self.attached = head, True
                return head
        if record is not None:  # a head that is gone (or never answered): forget it
            shutil.rmtree(record.temp_dir, ignore_errors=True)
            self.record_path.unlink(missing_ok=True)
        head = RayHead(self.directory, self.num_cpus, token=token)
        head.start()
        head.record().save(self.record_path)
        self.head = head
        return head

    def __exit__(self, *exc: object) -> None:
        if self.head is not None:
            self.head.stop()
            self.record_path.unlink(missing_ok=True)
