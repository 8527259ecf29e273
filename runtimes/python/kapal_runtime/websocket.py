"""Websocket connections offered to the function: `async def websocket(ws, context)`.

A function accepts websockets by defining `websocket` next to its handler, in the same
module. A `GET` with `Upgrade: websocket` calls it with a `WebSocket` (the request as
`ws.event`, body empty) and the usual `Context`; the connection is upgraded only when it
calls `await ws.accept()`. Returning (or `close()`) before that refuses it with 403.

`WebSocket` is the one piece of plumbing between aiohttp and the function: other handler
styles (an ASGI app's websocket scope) map their messages onto the same few methods.
"""

import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from kapal_runtime.event import Context, Event
from kapal_runtime.handler import parse_spec

# The name of the function's websocket handler, in its handler's module.
HANDLER_NAME = "websocket"

WebSocketHandler = Callable[["WebSocket", Context], Awaitable[Any]]

_CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)


def is_websocket(request: web.Request) -> bool:
    headers = request.headers  # a membership test first: the common answer, at half the cost
    return "Upgrade" in headers and headers["Upgrade"].lower() == "websocket"


def find_handler(spec: str) -> WebSocketHandler | None:
    """`websocket` of the (already imported) handler's module, if it defines one.

    Raises TypeError when it is not an `async def` taking (ws, context).
    """
    module = sys.modules[parse_spec(spec)[0]]
    fn = getattr(module, HANDLER_NAME, None)
    if fn is None:
        return None
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{module.__name__}.{HANDLER_NAME} must be `async def websocket(ws, context)`"
        )
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise TypeError(f"{module.__name__}.{HANDLER_NAME} must accept (ws, context)") from None
    handler: WebSocketHandler = fn
    return handler


class WebSocket:
    """One websocket connection: accept it, then receive and send messages until closed."""

    def __init__(self, request: web.Request, event: Event, max_message_bytes: int) -> None:
        # The upgrade request: method, path, query and headers (its body is empty).
        self.event = event
        # The close code once the connection is closed (by either side).
        self.close_code: int | None = None
        # Set once accepted: the response that upgraded the connection.
        self.response: web.WebSocketResponse | None = None
        self.refused = False
        self._request = request
        self._max_message_bytes = max_message_bytes

    @property
    def subprotocols(self) -> list[str]:
        """What the client offered in `Sec-WebSocket-Protocol`, in its order."""
        offered = self.event.headers.get("Sec-WebSocket-Protocol", "")
        return [p.strip() for p in offered.split(",") if p.strip()]

    async def accept(
        self, subprotocol: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Upgrade the connection (101), choosing `subprotocol` among those offered."""
        if self.response is not None or self.refused:
            raise RuntimeError("this websocket was already accepted or refused")
        ws = web.WebSocketResponse(
            protocols=(subprotocol,) if subprotocol else (),
            max_msg_size=self._max_message_bytes,
        )
        if headers:
            ws.headers.update(headers)
        await ws.prepare(self._request)
        self.response = ws

    def _open(self) -> web.WebSocketResponse:
        if self.response is None:
            raise RuntimeError("accept the websocket first: await ws.accept()")
        return self.response

    async def receive(self) -> str | bytes | None:
        """The next message (str for text, bytes for binary), or None once closed."""
        ws = self._open()
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                data: str | bytes = msg.data
                return data
            if msg.type in _CLOSED:
                self.close_code = ws.close_code
                return None
            # PING and PONG are answered by aiohttp itself.

    async def send(self, data: str | bytes) -> None:
        """One message: text for str, binary for bytes."""
        ws = self._open()
        if isinstance(data, str):
            await ws.send_str(data)
        else:
            await ws.send_bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection; before `accept`, refuse it (403)."""
        if self.response is None:
            self.refused = True
            return
        if not self.response.closed:
            await self.response.close(code=code, message=reason.encode()[:123])
        self.close_code = self.response.close_code

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[str | bytes]:
        while (message := await self.receive()) is not None:
            yield message
