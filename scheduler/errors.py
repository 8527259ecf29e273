"""Errors raised by the scheduler, each with the status and code a caller sees.

Plain ints and strings: the scheduler knows nothing of HTTP servers; the gateway turns
any error into a response in one place (`gateway.errors.problem`).
"""


class SchedulerError(Exception):
    """Root of every scheduler error."""

    status = 500
    code = "internal"


class NoCapacity(SchedulerError):
    """No instance slot became free before the deadline, or the wait buffer is full."""

    status, code = 503, "unavailable"

    def __init__(
        self, message: str, retry_after_s: float = 1.0, reason: str = "no_capacity"
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        # Why, in a word (a metric label): buffer_full, wait_timeout, busy.
        self.reason = reason


class StartFailed(SchedulerError):
    """An instance could not be started (image missing, handler failed to load, ...)."""

    status, code = 502, "start_failed"


class BuildFailed(SchedulerError):
    """Building a function image failed; the message says why, for the deployer."""

    status, code = 422, "build_failed"


class RequirementsUnresolvable(BuildFailed):
    """A function's requirements.txt cannot be resolved (or is refused); names which."""

    code = "requirements_unresolvable"


class UnknownFunction(SchedulerError):
    """The scheduler has no pool for that function."""

    status, code = 404, "function_not_found"

    def __init__(self, function: str) -> None:
        super().__init__(f"function {function} not found")
        self.function = function


class BackendError(SchedulerError):
    """The container engine refused or failed an operation."""


class Rerouted(SchedulerError):
    """The version a request waited for stopped serving traffic: pick again (the
    invoker does; a caller never sees it)."""

    status, code = 503, "unavailable"

    def __init__(self, function: str) -> None:
        super().__init__(f"function {function}: the version chosen serves no more traffic")
        self.function = function


class ImageUnavailable(SchedulerError):
    """An image function's image cannot be had: not on the engine, or its pull failed."""

    status, code = 422, "image_unavailable"


class ImagePushFailed(SchedulerError):
    """A built image could not be pushed to the registry its instances pull from."""

    status, code = 503, "image_push_failed"
