"""The one error root of the infra package."""


class InfraError(Exception):
    """The machine cannot be made ready; the message says what to do."""
