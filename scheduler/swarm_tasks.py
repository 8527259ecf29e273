"""Following a swarm's tasks from outside: their changes by polling, their logs by stream.

Swarm reports no per-task events (only service and node ones), so a watcher polls the
tasks every `poll_s` on a thread of its own and is woken early by the manager's service
and node events; what changed between two looks is `swarm_spec.task_changes`. Task logs
come from the manager's `/tasks/ID/logs`, which docker-py does not wrap.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import docker.errors
import requests
from docker import APIClient

from scheduler.swarm_spec import task_changes

log = logging.getLogger("kapal.scheduler.swarm")

# (IDs of the tasks that run with an address, IDs of every task listed) at one look.
Look = Callable[[], tuple[set[str], set[str]]]


def watch_tasks(
    api: APIClient, look: Look, on_event: Callable[[str, str], None], interval: Callable[[], float]
) -> Callable[[], None]:
    """Call `on_event(task_id, action)` on the running loop for each change `look` shows
    ("start" for every running task at the first look too), looking every `interval()`
    seconds and at each service or node event; returns a stop function."""
    loop = asyncio.get_running_loop()
    stopped = threading.Event()
    wake = threading.Event()
    stream = api.events(decode=True, filters={"type": ["service", "node"]})

    def poll() -> None:
        running: set[str] = set()
        seen: set[str] = set()
        failing = False
        while not stopped.is_set():
            try:
                now_running, now_seen = look()
            except (docker.errors.DockerException, requests.RequestException) as e:
                if not failing:  # once per outage, not every poll
                    log.warning("swarm tasks not listed", extra={"error": str(e)})
                failing = True
            else:
                failing = False
                for task_id, action in task_changes(running, seen, now_running, now_seen):
                    loop.call_soon_threadsafe(on_event, task_id, action)
                running, seen = now_running, now_seen
            wake.wait(interval())
            wake.clear()

    def listen() -> None:
        try:
            for _ in stream:
                wake.set()
        except Exception as e:  # the stream closes when we stop, or the engine goes
            log.debug("swarm event stream ended", extra={"error": str(e)})

    def stop() -> None:
        stopped.set()
        wake.set()
        stream.close()

    threading.Thread(target=poll, name="kapal-swarm-tasks", daemon=True).start()
    threading.Thread(target=listen, name="kapal-swarm-events", daemon=True).start()
    return stop


class TaskLogs:
    """A followed task log: an iterator of entries (one frame each), with `close()`."""

    def __init__(self, response: requests.Response) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        raw = self._response.raw
        while True:
            # The engine multiplexes stdout and stderr: an 8-byte header, then the frame.
            header = raw.read(8)
            if len(header) < 8:
                return
            _, size = struct.unpack(">BxxxL", header)
            frame = raw.read(size)
            if not frame:
                return
            yield frame

    def close(self) -> None:
        self._response.close()


def follow_task_logs(api: APIClient, task_id: str, stream: str, since_s: float) -> TaskLogs:
    """One stream (stdout or stderr) of a task's log from `since_s` on, followed and
    timestamped."""
    params: dict[str, Any] = {
        "follow": 1,
        "timestamps": 1,
        "stdout": int(stream == "stdout"),
        "stderr": int(stream == "stderr"),
    }
    if since_s > 0:
        params["since"] = f"{since_s:.9f}"
    url = f"{api.base_url}/v{api.api_version}/tasks/{task_id}/logs"
    # No timeout: a follow lasts as long as the task.
    response = api.get(url, params=params, stream=True, timeout=None)
    try:
        response.raise_for_status()
    except requests.HTTPError as e:
        response.close()
        docker.errors.create_api_error_from_http_exception(e)
    return TaskLogs(response)
