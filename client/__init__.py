"""``syncbn``: the command-line client of the service, over HTTP only (httpx and rich; it
imports no server or worker code)."""
