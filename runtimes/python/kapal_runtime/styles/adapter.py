"""What every foreign handler style is to the server: one `run` per invocation, and the
start-up and shutdown some of them need (ASGI's lifespan)."""

import contextvars
import inspect
from collections.abc import Coroutine
from typing import Any, ClassVar

from kapal_runtime.event import Context
from kapal_runtime.handler import Reply
from kapal_runtime.styles.request import HttpRequest
from kapal_runtime.threads import HandlerThreads


class StyleHandler:
    """A handler written for another platform, run unchanged."""

    style: ClassVar[str]

    def __init__(self, spec: str, target: Any, function: str, version: int) -> None:
        # "module.attr" as the spec names it.
        self.spec = spec
        # The user's object: a function, or a WSGI/ASGI application.
        self.target = target
        self.function = function
        self.version = version
        self.is_async = False

    @property
    def late(self) -> int:
        """Work still running after its invocation was answered (ASGI background tasks)."""
        return 0

    async def run(self, request: HttpRequest, context: Context, threads: HandlerThreads) -> Reply:
        raise NotImplementedError

    async def startup(self) -> None:
        """Before the first invocation; raising fails the load."""

    async def shutdown(self) -> None:
        """After the SIGTERM drain."""


class CallStyle(StyleHandler):
    """A function called with a mapping built from the request (Lambda, OpenWhisk); sync
    ones on the handler threads, so a blocking one stalls nothing, async ones on the loop."""

    def __init__(self, spec: str, target: Any, function: str, version: int) -> None:
        super().__init__(spec, target, function, version)
        self.is_async = inspect.iscoroutinefunction(target)

    def arguments(self, request: HttpRequest, context: Context) -> tuple[Any, ...]:
        """What the user's function is called with."""
        raise NotImplementedError

    def reply(self, result: object) -> Reply:
        """The function's return value as a response."""
        raise NotImplementedError

    async def run(self, request: HttpRequest, context: Context, threads: HandlerThreads) -> Reply:
        if self.is_async:
            return self.reply(await self.target(*self.arguments(request, context)))
        # In a copy of this context: what the handler writes carries this invocation's tag.
        run_in_context = contextvars.copy_context().run
        outcome = await threads.run(run_in_context, self._call, request, context)
        if inspect.iscoroutine(outcome):
            # A sync wrapper around an async function: its coroutine runs here, on the loop.
            return self.reply(await outcome)
        reply: Reply = outcome
        return reply

    def _call(self, request: HttpRequest, context: Context) -> Reply | Coroutine[Any, Any, Any]:
        # Building the event and serialising the answer here keeps both off the event loop.
        result = self.target(*self.arguments(request, context))
        if inspect.iscoroutine(result):
            return result
        return self.reply(result)
