"""syncbn-service's client: the Python SDK (``from client import Client``, ``client.sdk``)
and the ``syncbn`` command line built on it (``client.cli``), over HTTP only (httpx, rich and
the pure ``contract``; it imports no server or worker code)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.sdk import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    """``Client`` is imported when first asked for: ``client.render`` (the workers use it)
    stays light."""
    if name == "Client":
        from client.sdk import Client

        return Client
    raise AttributeError(f"module 'client' has no attribute {name!r}")
