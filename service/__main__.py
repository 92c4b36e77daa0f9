"""``python -m service``: the service on ``http://$SYNCBN_HOST:$PORT`` (uvicorn).

With ``RAY_ADDRESS`` unset it first starts an embedded local Ray head (stopped on exit, also
on Ctrl-C); with it set, it uses that cluster (the Ray dashboard/Jobs URL).
"""

from __future__ import annotations

import logging.config
import os
import signal
import sys
from contextlib import ExitStack

from service.embedded_ray import RayHead
from service.observability import log_config
from service.settings import Settings

logger = logging.getLogger("service")


def banner(settings: Settings) -> str:
    url = f"http://{settings.host}:{settings.port}"
    auth = ' -H "Authorization: Bearer $SYNCBN_API_TOKEN"' if settings.api_token else ""
    return (
        f"\nsyncbn-service on {url}  (page: {url}/  API docs: {url}/docs)\n"
        f"Ray: {settings.ray_address}   data: {settings.home.resolve()}\n\n"
        "Submit a job:\n"
        f"  curl -s -X POST {url}/v1/jobs{auth} -H 'Content-Type: application/json' \\\n"
        '       -d \'{"dataset": "digits", "workers": 2, "batch_size_per_worker": 8, '
        '"epochs": 3}\'\n'
        f"Watch it:  .venv/bin/syncbn watch <job id>      (Ctrl-C stops everything)\n"
    )


def main() -> int:
    settings = Settings()
    logging.config.dictConfig(log_config(os.environ.get("SYNCBN_LOG_LEVEL", "INFO")))
    if not settings.ray_address:
        # Read by Ray when it is first imported (below, with the app): the embedded head has
        # token auth (Ray's default), and clients only send the token in this mode.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import uvicorn

    from service.app import create_app

    with ExitStack() as stack:
        if not settings.ray_address:
            print(f"starting an embedded Ray head in {settings.home.resolve()} ...", flush=True)
            head = stack.enter_context(
                RayHead(settings.home.resolve() / "ray", settings.embedded_ray_cpus)
            )
            settings.ray_address = head.dashboard_url
            if "SYNCBN_WORKER_PYTHON" not in os.environ:
                settings.worker_python = sys.executable
        app = create_app(settings)
        print(banner(settings), flush=True)
        # uvicorn handles SIGTERM/SIGINT itself, then re-raises the signal once it has shut
        # down: turn that into SystemExit so the ExitStack still stops the embedded Ray head.
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_config=log_config(os.environ.get("SYNCBN_LOG_LEVEL", "INFO")),
            timeout_graceful_shutdown=5,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
