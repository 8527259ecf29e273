"""A connection opened ahead to an instance about to serve is the one its first exchange
takes; one that cannot be opened leaves nothing behind."""

from __future__ import annotations

import asyncio
import socket

from gateway.upstream import Upstreams


async def test_a_preconnected_connection_is_taken_by_the_next_exchange() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    upstreams = Upstreams()
    try:
        upstreams.preconnect(address)
        await asyncio.gather(*upstreams._preconnects)
        conn = upstreams.take(address)
        assert conn is not None and not conn.closed
        assert upstreams.take(address) is None
        conn.close()
    finally:
        upstreams.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_an_instance_that_cannot_be_reached_leaves_no_connection() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    upstreams = Upstreams()
    upstreams.preconnect(address)
    await asyncio.gather(*upstreams._preconnects)
    assert upstreams.take(address) is None
    upstreams.close()
