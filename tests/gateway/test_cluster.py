"""What a gateway makes of its peers' messages, without a database."""

from __future__ import annotations

import asyncio
import json

from gateway.cluster import Cluster
from gateway.ratelimit import RateLimiter


def cluster() -> Cluster:
    return Cluster("postgresql://unused", "ns", RateLimiter(), "me", report_s=0.02)


def say(c: Cluster, sender: str, kind: str = "hello", namespace: str = "ns") -> None:
    c._received(json.dumps({"t": kind, "g": sender, "n": namespace}))


def test_peers_are_this_namespace_only_and_a_bye_is_final() -> None:
    c = cluster()
    say(c, "a")
    say(c, "b", namespace="other")
    say(c, "me")
    assert c.peers() == ["a"]
    say(c, "a", "bye")
    say(c, "a")  # sent before its bye, on another connection: arrives late
    assert c.peers() == []


async def test_a_stopping_gateway_counts_only_peers_that_still_speak() -> None:
    c = cluster()
    assert not await c.others_staying()  # alone: answered at once
    say(c, "killed")  # heard a moment ago, silent since (kill -9)
    assert not await c.others_staying()

    say(c, "alive")

    async def keeps_reporting() -> None:
        while True:
            await asyncio.sleep(0.01)
            say(c, "alive")

    reporter = asyncio.create_task(keeps_reporting())
    try:
        assert await c.others_staying()
    finally:
        reporter.cancel()
