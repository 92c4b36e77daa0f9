"""``python -m service``: the service on ``http://$SYNCBN_HOST:$PORT`` (uvicorn).

With ``RAY_ADDRESS`` unset it uses the embedded local Ray head of ``$SYNCBN_HOME``: the one an
earlier run left running (after a crash), else a new one with a token of its own; it is
stopped on exit, also on Ctrl-C. With ``RAY_ADDRESS`` set it uses that cluster (the Ray
dashboard/Jobs URL) with the user's own Ray token settings.

Before anything starts, an exposed listener without a real API token is refused (exit 2,
``service.api.credentials.check_exposure``), and so is a database whose schema a newer release
upgraded (exit 2, ``service.storage.db.SchemaTooNew``, naming both revisions); without
``SYNCBN_API_TOKEN`` the token is read from or made into ``$SYNCBN_HOME/api-token`` and a login
link is printed.

``python -m service backup FILE`` and ``python -m service restore FILE`` back up and restore the
home and its database instead (``service.operations.backup``, ``docs/operations.md``).
"""

from __future__ import annotations

import logging.config
import os
import resource
import signal
import sys
from contextlib import ExitStack

from service.api.credentials import UnsafeStart, check_exposure, ensure_api_token, login_url
from service.api.observability import log_config
from service.cluster.embedded_ray import EmbeddedRay
from service.settings import Settings
from service.storage.db import SchemaTooNew, check_schema

logger = logging.getLogger("service")


def banner(settings: Settings, token: str, generated: bool) -> str:
    """What ``make run`` prints: where it runs and how to log in. The login link (the token in
    its fragment) only for a generated token: an operator's token is never printed (logs are
    collected), the page asks for it instead."""
    url = f"http://{settings.host}:{settings.port}"
    login = (
        f"Open the dashboard (the link logs you in with the token in {settings.api_token_file}):\n"
        f"  {login_url(settings, token)}\n"
        if generated
        else f"Open {url}/ and give it the API token (SYNCBN_API_TOKEN).\n"
    )
    return (
        f"\nsyncbn-service on {url}  (API docs: {url}/docs)\n"
        f"Ray: {settings.ray_address}   data: {settings.home.resolve()}\n\n{login}\n"
        "Submit a job (the CLI on this machine finds the URL and the token itself):\n"
        "  .venv/bin/syncbn submit --dataset digits --workers 2 --batch-size 8 --epochs 3 --watch\n"
        "(Ctrl-C stops everything)\n"
    )


def raise_fd_limit(wanted: int = 65536) -> None:
    """Raise this process's soft open-files limit toward its hard one: every open event
    stream holds a socket, and a soft limit of 1024 (a common default) is below the default
    stream caps."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def record_url(settings: Settings) -> None:
    """Write where this service listens to ``$SYNCBN_HOME/service-url``: the CLI on this machine
    uses it when neither ``--url`` nor ``$SYNCBN_URL`` says otherwise (``PORT=8123 make run``)."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    path = settings.layout.service_url
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"http://{host}:{settings.port}\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # backup, restore (or --help): the operator's commands
        from service.operations.backup import main as operations

        return operations(argv)
    raise_fd_limit()
    settings = Settings()
    logging.config.dictConfig(log_config(settings.log_level, settings.log_format))
    try:
        check_exposure(settings)
        check_schema(settings.db_url)
    except (UnsafeStart, SchemaTooNew) as exc:
        print(f"syncbn-service: {exc}", file=sys.stderr, flush=True)
        return 2
    generated = not settings.api_token
    token = ensure_api_token(settings)
    with ExitStack() as stack:
        if not settings.ray_address:
            print(f"embedded Ray head of {settings.home.resolve()} ...", flush=True)
            embedded = EmbeddedRay(settings.layout.ray, settings.embedded_cpus)
            head = stack.enter_context(embedded)
            how = "re-attached to the running" if embedded.attached else "started a new"
            print(f"{how} Ray head (pid {head.pid}) at {head.dashboard_url}", flush=True)
            settings.ray_address = head.dashboard_url
            if "SYNCBN_WORKER_PYTHON" not in os.environ:
                settings.worker_python = sys.executable
        # Imported only now: Ray reads its auth mode and token when first imported.
        import uvicorn

        from service.app import create_app

        app = create_app(settings)
        record_url(settings)
        print(banner(settings, token, generated), flush=True)
        # uvicorn handles SIGTERM/SIGINT itself, then re-raises the signal once it has shut
        # down: turn that into SystemExit so the ExitStack still stops the embedded Ray head.
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=log_config(settings.log_level, settings.log_format),
            timeout_graceful_shutdown=5,
            timeout_keep_alive=5,  # an idle connection holds a socket 5 s at most
            h11_max_incomplete_event_size=16 << 10,  # request line and headers, under h11
            # The client's address is the connection's peer, never X-Forwarded-For: uvicorn
            # would believe that header from loopback, and the trusted-proxy sign-in and the
            # audit log's addresses would then be what any local process says they are.
            proxy_headers=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
