"""The exception hierarchy carries the policy, not just the message.

- ``RetryableError``: transient; the caller backs off and tries again (network, 5xx, 429).
- ``OperatorError``: the process cannot fix this itself; stop this piece and tell a human
  (a layout mismatch, a full /dev/shm, missing credentials).
- ``StrategyError``: user strategy code failed; the strategy is rejected or rolled back, the
  bot keeps running.
- ``InputError``: a malformed input (frame, body, control file) was refused; it is dropped,
  counted and logged, and nothing else is lost.
"""

from __future__ import annotations


class NoblinkError(Exception):
    """Base of every error noblink raises on purpose."""


class RetryableError(NoblinkError):
    """Transient failure: back off and retry."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OperatorError(NoblinkError):
    """Needs a human: the process refuses to go on with this resource."""


class StrategyError(NoblinkError):
    """The strategy's own code failed (import, migration, evaluation)."""


class InputError(NoblinkError):
    """A malformed input was refused; drop it, count it, keep running."""


# --- state layer -------------------------------------------------------------------------

class SegmentError(OperatorError):
    """A shared-memory segment could not be created or attached."""


class SegmentMismatchError(SegmentError):
    """The segment's header does not match what this code expects."""


class SegmentExistsError(SegmentError):
    """A segment with this name already exists (another run, or a dead one)."""


class SegmentMissingError(SegmentError):
    """No segment with this name exists."""


class SnapshotEmptyError(NoblinkError):
    """The snapshot region holds no complete generation yet."""


class SnapshotCorruptError(OperatorError):
    """A snapshot exists but no buffer holds a complete generation.

    Not a SnapshotEmptyError on purpose: starting empty and committing would make the loss
    permanent, so a human has to look first.
    """
