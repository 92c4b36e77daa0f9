"""``python -m service``: the service on ``http://$SYNCBN_HOST:$PORT`` (uvicorn).

With ``RAY_ADDRESS`` unset it uses the embedded local Ray head of ``$SYNCBN_HOME``: the one an
earlier run left running (after a crash), else a new one with a token of its own; it is
stopped on exit, also on Ctrl-C. With ``RAY_ADDRESS`` set it uses that cluster (the Ray
dashboard/Jobs URL) with the user's own Ray token settings.
"""

from __future__ import annotations

import logging.config
import os
import signal
import sys
from contextlib import ExitStack

from service.embedded_ray import EmbeddedRay
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
    with ExitStack() as stack:
        if not settings.ray_address:
            print(f"embedded Ray head of {settings.home.resolve()} ...", flush=True)
            embedded = EmbeddedRay(settings.home.resolve() / "ray", settings.embedded_ray_cpus)
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
