"""Kapal's CLI and Python client: talk to a Kapal gateway over HTTP."""

from kapal.client import InvokeResult, KapalClient
from kapal.errors import KapalAPIError, KapalError, SpecError

__all__ = ["InvokeResult", "KapalAPIError", "KapalClient", "KapalError", "SpecError"]
