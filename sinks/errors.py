"""Store failures as kinds: retry the batch (unavailable) or never (permanent)."""
from __future__ import annotations


class StoreFailure(Exception):
    """Base of both kinds; ``retriable`` tells a caller whether to keep the batch and retry."""

    retriable = False

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailable(StoreFailure):
    """Retriable: connection refused, server down, timeouts, too many parts, directory busy."""

    retriable = True


class StoreError(StoreFailure):
    """Permanent: bad SQL, unknown table, type mismatch; retrying cannot help."""

    retriable = False


class StoreDiskFull(StoreUnavailable):
    """Retriable, and loud: the store's disk is full (ClickHouse NOT_ENOUGH_SPACE, ENOSPC). No row
    is refused for it: everything waits (Kafka keeps it, or the batcher holds it) until space
    returns, and the caller raises an alarm once per episode."""
