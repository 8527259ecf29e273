"""Errors raised by the scheduler; the gateway maps each to an HTTP status."""


class SchedulerError(Exception):
    """Root of every scheduler error."""


class NoCapacity(SchedulerError):
    """No instance slot became free before the deadline, or the wait buffer is full."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StartFailed(SchedulerError):
    """An instance could not be started (image missing, handler failed to load, ...)."""


class BuildFailed(SchedulerError):
    """Building a function image failed; the message says why, for the deployer."""


class UnknownFunction(SchedulerError):
    """The scheduler has no pool for that function."""


class BackendError(SchedulerError):
    """The container engine refused or failed an operation."""
