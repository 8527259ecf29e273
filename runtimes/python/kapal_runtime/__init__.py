"""Kapal's in-container Python runtime: an HTTP server that calls one function handler.

Handlers may import `Event` and `Context` from here for type hints and for their own tests.
"""

from kapal_runtime.event import Context, Event, InvalidJSONBody

__all__ = ["Context", "Event", "InvalidJSONBody"]
