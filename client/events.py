"""A job's Server-Sent Events (``GET /v1/jobs/{id}/events``) as typed events: a ``report``
is a ``contract.protocol.ReportEvent``, an ``exception`` an ``ExceptionEvent``, a ``state``
change a ``StateEvent`` and the stream's last event an ``EndEvent``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from contract.protocol import ExceptionEvent, ReportEvent


@dataclass(frozen=True)
class StateEvent:
    """The job moved to ``state`` (``reason``: why), at ``at`` (ISO 8601)."""

    state: str
    reason: str | None = None
    at: str | None = None


@dataclass(frozen=True)
class EndEvent:
    """The job is over, in ``state``: the stream ends."""

    state: str


@dataclass(frozen=True)
class OtherEvent:
    """An event this client does not know (a newer service's), as it came."""

    kind: str
    data: Any


JobEvent = ReportEvent | ExceptionEvent | StateEvent | EndEvent | OtherEvent


@dataclass(frozen=True)
class Message:
    """One Server-Sent Event as sent: its ``id`` (None for ``end``), ``event`` and JSON data."""

    id: int | None
    kind: str
    data: Any


def messages(lines: Iterable[str]) -> Iterator[Message]:
    """The events of a ``text/event-stream`` (comments, such as pings, skipped)."""
    kind, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield Message(event_id, kind, json.loads("\n".join(data)))
            kind, data, event_id = "message", [], None
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line.startswith("id:") and line[3:].strip().isdigit():
            event_id = int(line[3:].strip())


def typed(message: Message) -> JobEvent:
    """The typed event of ``message``; one that does not fit its type is an ``OtherEvent``."""
    data = message.data if isinstance(message.data, dict) else {}
    try:
        if message.kind == "report":
            return ReportEvent.model_validate(data)
        if message.kind == "exception":
            return ExceptionEvent.model_validate(data)
        if message.kind == "state":
            return StateEvent(str(data["state"]), data.get("reason"), data.get("at"))
        if message.kind == "end":
            return EndEvent(str(data["state"]))
    except (KeyError, ValueError):
        pass
    return OtherEvent(message.kind, message.data)
