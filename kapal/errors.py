"""The errors the kapal package raises; every one derives from `KapalError`."""


class KapalError(Exception):
    """Root of every kapal error; `str(error)` is a message fit for the user."""


class KapalAPIError(KapalError):
    """A call to the gateway failed.

    `status` is the HTTP status, or 0 when there was no HTTP answer at all (Kapal not
    reachable, a timeout, or a local problem such as a folder too large to deploy).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"KapalAPIError({self.status!r}, {self.code!r}, {self.message!r})"


class SpecError(KapalError):
    """A function's `kapal.toml` or the options given for it are not a valid spec."""
