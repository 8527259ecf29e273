"""Network namespaces made ahead, so that a new instance's start skips building its own.

Building a container's network (a namespace, a veth pair on the bridge, an address) is
most of the engine's start here: starting a locked-down instance on the functions network
took 270 ms (p50), starting the same one into the network namespace of a container
already running 99 ms. So the Docker backend keeps one small container running per
functions network, a holder that only holds a network namespace; a new instance joins it
(`network_mode: container:<holder>`), keeps it alone for its whole life, and the holder
goes with it. A new holder is made once no instance is starting.

The instance is limited and locked down exactly as before; the holder runs `sleep` as the
runtime's uid, read-only, with no capabilities, a few MiB and a few pids. An instance
that joined has no network of its own in the engine's view: its labels carry the holder
and the address, so another gateway (or a restarted one) finds and removes both.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from docker import APIClient

log = logging.getLogger("kapal.scheduler.netns")

# On a holder: what it is (a holder is never an instance; listings leave it out).
LABEL_ROLE = "kapal.role"
ROLE_NETNS = "netns"
# On an instance that joined a holder: the holder's id, and the instance's address.
LABEL_NETNS = "kapal.netns"
LABEL_IP = "kapal.ip"
# Enough for `sleep`; far below what a holder could use to hurt its neighbours.
HOLDER_MEMORY = 16 * 1024 * 1024
HOLDER_PIDS = 8
# Holders kept ready per functions network.
SPARES = 1
# A holder is made only this long after the last instance start: the instance just
# started is still loading its runtime, and a holder's start takes CPU from it.
SETTLE_S = 0.5


@dataclass(frozen=True, slots=True)
class Holder:
    id: str
    # Its address on the functions network: the address of the instance that joins it.
    ip: str


def is_holder(labels: dict[str, str]) -> bool:
    return labels.get(LABEL_ROLE) == ROLE_NETNS


def holder_config(image: str, labels: dict[str, str], network: str, uid: int) -> dict[str, Any]:
    """The create/host config of a holder on `network`: only a network namespace."""
    return {
        "image": image,
        "entrypoint": ["sleep"],
        "command": ["infinity"],
        "user": f"{uid}:{uid}",
        "labels": {**labels, LABEL_ROLE: ROLE_NETNS},
        "host_config": {
            "network_mode": network,
            "mem_limit": HOLDER_MEMORY,
            "memswap_limit": HOLDER_MEMORY,
            "pids_limit": HOLDER_PIDS,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "read_only": True,
            "restart_policy": {"Name": "no"},
            "log_config": {"type": "none", "config": {}},
        },
    }


def joined(config: dict[str, Any], holder: Holder) -> dict[str, Any]:
    """An instance's config (`container_config`), joining `holder`'s network namespace."""
    return {
        **config,
        "labels": {**config["labels"], LABEL_NETNS: holder.id, LABEL_IP: holder.ip},
        "host_config": {**config["host_config"], "network_mode": f"container:{holder.id}"},
    }


class Spares:
    """One backend's ready holders per functions network, refilled while no instance starts.

    `run` runs a blocking engine call on the backend's threads; `remove` removes a
    container, quietly. `take` is called on those threads, the rest on the loop.
    """

    def __init__(
        self,
        api: APIClient,
        image: str,
        labels: dict[str, str],
        uid: int,
        run: Callable[..., Awaitable[Any]],
        remove: Callable[[str], None],
    ) -> None:
        self.api = api
        self.image = image
        self.labels = labels
        self.uid = uid
        self._run = run
        self._remove = remove
        self._ready: dict[str, list[Holder]] = {}
        self._lock = threading.Lock()
        self._starting = 0
        self._idle = asyncio.Event()  # no instance starting
        self._idle.set()
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._closing = False  # holders made from now on go at once

    def ready(self, network: str) -> int:
        """Holders ready on `network`."""
        with self._lock:
            return len(self._ready.get(network, ()))

    def take(self, network: str) -> Holder | None:
        with self._lock:
            ready = self._ready.get(network)
            return ready.pop() if ready else None

    def starting(self) -> None:
        self._starting += 1
        self._idle.clear()

    def started(self) -> None:
        self._starting -= 1
        if not self._starting:
            self._idle.set()

    def refill_soon(self, network: str) -> None:
        """Keep SPARES holders ready on `network`, made while no instance starts."""
        if network in self._refills or self._closing:
            return

        async def refill() -> None:
            try:
                while self.ready(network) < SPARES:
                    # Instances first: the engine does much of a start one at a time.
                    await self._idle.wait()
                    await asyncio.sleep(SETTLE_S)
                    if self._idle.is_set():
                        await self._run(self._make, network)
            except Exception as e:
                log.warning(
                    "no spare network namespace", extra={"network": network, "error": str(e)}
                )
            finally:
                self._refills.pop(network, None)

        self._refills[network] = asyncio.create_task(refill(), name=f"netns-{network}")

    def _make(self, network: str) -> None:
        cfg = holder_config(self.image, self.labels, network, self.uid)
        cid: str = self.api.create_container(
            cfg["image"],
            entrypoint=cfg["entrypoint"],
            command=cfg["command"],
            user=cfg["user"],
            labels=cfg["labels"],
            host_config=self.api.create_host_config(**cfg["host_config"]),
        )["Id"]
        try:
            self.api.start(cid)
            info = self.api.inspect_container(cid)
            ip = info["NetworkSettings"]["Networks"][network]["IPAddress"]
        except BaseException:
            self._remove(cid)
            raise
        with self._lock:
            if not self._closing:
                self._ready.setdefault(network, []).append(Holder(cid, ip))
                return
        self._remove(cid)

    def stop(self) -> None:
        """No more holders (on the loop, or once it is closed)."""
        with self._lock:
            self._closing = True
        for task in list(self._refills.values()):
            if not task.get_loop().is_closed():
                task.cancel()

    def remove_ready(self) -> None:
        """The ready holders go (none was joined); blocking."""
        with self._lock:
            ready = [h for holders in self._ready.values() for h in holders]
            self._ready.clear()
        for holder in ready:
            self._remove(holder.id)


def unjoined(api: APIClient, labels: list[str]) -> list[str]:
    """Holders among the containers with `labels` that no instance joined; blocking."""
    found = api.containers(all=True, filters={"label": labels})
    joined = {(c.get("Labels") or {}).get(LABEL_NETNS) for c in found}
    return [c["Id"] for c in found if is_holder(c.get("Labels") or {}) and c["Id"] not in joined]
