"""A least-recently-used cache bounded in bytes (the model files' recipes, digests and loaded
models: what a job wrote must not grow the service's memory without bound)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class LRU:
    """The least recently used values, whose weights (bytes) add up to at most ``max_bytes``
    in at most ``max_entries`` entries; a value heavier than ``max_bytes`` is not kept.
    Thread safe (sync routes run in a thread pool)."""

    def __init__(self, max_bytes: int, max_entries: int | None = None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.total = 0
        """The weights of the values kept, together."""

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, weight: int) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.total -= old[1]
            if weight > self.max_bytes:
                return
            self._entries[key] = (value, weight)
            self.total += weight
            while self.total > self.max_bytes or (
                self.max_entries is not None and len(self._entries) > self.max_entries
            ):
                _, (_, dropped) = self._entries.popitem(last=False)
                self.total -= dropped

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.total = 0
