"""A job's states and the moves between them (the state machine, as data).

``queued -> pending -> running -> succeeded | failed | cancelled``; a job the Ray cluster lost
(a restarted head) goes back to ``pending`` when it is resubmitted.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Over: nothing will change it again."""
        return self in FINAL_STATES

    @property
    def on_ray(self) -> bool:
        """Submitted to Ray and not known to be over (pending or running)."""
        return self in ACTIVE_STATES

    def can_move_to(self, state: JobState) -> bool:
        return state in MOVES.get(self, frozenset())


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.PENDING, JobState.RUNNING})
MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.PENDING, JobState.FAILED, JobState.CANCELLED}),
    JobState.PENDING: frozenset({JobState.PENDING, JobState.RUNNING}) | FINAL_STATES,
    JobState.RUNNING: frozenset({JobState.PENDING}) | FINAL_STATES,
}
