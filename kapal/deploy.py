"""Deploys: one folder with its build streamed, and a manifest brought to what it says.

A manifest owns the webhooks and schedules of its functions: those it lists are kept
when they exist, made when they do not, and the others of those functions are removed.
The API gives webhooks and schedules no name, so each is known by what it is: a webhook
by (function, verify), a schedule by (function, cron, timezone, payload).
"""

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kapal.archive import build_archive
from kapal.client import KapalClient
from kapal.errors import KapalAPIError
from kapal.manifest import Manifest, ManifestError, ManifestFunction, canonical, handler_file
from scheduler.models import DEFAULT_HANDLERS

Event = dict[str, Any]
OnEvent = Callable[[Event], None]


@dataclass(frozen=True)
class Deployed:
    """What a deploy did: the function now, and whether it made a version / the function."""

    function: dict[str, Any]
    version_created: bool
    function_created: bool


async def stream_deploy(
    client: KapalClient,
    archive: bytes,
    spec: dict[str, Any],
    *,
    create: bool,
    skip_unchanged: bool,
    on_event: OnEvent,
) -> Deployed:
    """One POST or PUT with its progress streamed to `on_event`, up to `done`."""
    unchanged = False
    async for event in client.deploy_events(
        archive, spec, create=create, skip_unchanged=skip_unchanged
    ):
        on_event(event)
        kind = event.get("event")
        if kind == "unchanged":
            unchanged = True
        elif kind == "done":
            return Deployed(event["function"], not unchanged, create)
        elif kind == "error":
            error = event.get("error") or {}
            raise KapalAPIError(
                int(event.get("status", 500)),
                str(error.get("code", "deploy_failed")),
                f"deploy of {spec['name']} failed: {error.get('message', 'no reason given')}",
            )
    raise KapalAPIError(0, "stream_cut", f"the deploy of {spec['name']} ended without a result")


async def deploy_folder(
    client: KapalClient,
    archive: bytes,
    spec: dict[str, Any],
    *,
    on_event: OnEvent,
    skip_unchanged: bool = False,
) -> Deployed:
    """Create the function, or update it when it exists (PUT first when skipping
    unchanged code: the usual case of a re-deploy)."""
    order = (False, True) if skip_unchanged else (True, False)
    try:
        return await stream_deploy(
            client, archive, spec, create=order[0], skip_unchanged=skip_unchanged, on_event=on_event
        )
    except KapalAPIError as exc:
        if exc.status != (404 if order[0] is False else 409):
            raise
    return await stream_deploy(
        client, archive, spec, create=order[1], skip_unchanged=skip_unchanged, on_event=on_event
    )


@dataclass
class Plan:
    """What `deploy -f` will change beside the functions, found before changing anything."""

    archives: dict[str, bytes]
    webhooks_to_create: list[tuple[str, str]] = field(default_factory=list)
    webhooks_to_remove: list[dict[str, Any]] = field(default_factory=list)
    webhooks_kept: list[dict[str, Any]] = field(default_factory=list)
    schedules_to_create: list[tuple[str, Any]] = field(default_factory=list)
    schedules_to_remove: list[dict[str, Any]] = field(default_factory=list)
    schedules_kept: list[dict[str, Any]] = field(default_factory=list)


async def check(client: KapalClient, manifest: Manifest) -> dict[str, bytes]:
    """Everything that can be checked before a change: folders, handlers, secrets, code.
    Returns each function's code archive."""
    secrets = {s["name"] for s in await client.list_secrets()}
    archives: dict[str, bytes] = {}
    for fn in manifest.functions:

        def where(field: str, fn: ManifestFunction = fn) -> str:
            return manifest.where("functions", fn.name, field)

        if fn.folder is not None:
            if not fn.folder.is_dir():
                raise ManifestError(f"{where('folder')}: {fn.folder} is not a folder")
            runtime = str(fn.spec.get("runtime", "python"))
            handler = str(fn.spec.get("handler") or DEFAULT_HANDLERS.get(runtime, "handler.handle"))
            if handler_file(fn.folder, handler, runtime) is None:
                raise ManifestError(f"{where('handler')}: no file in {fn.folder} for {handler!r}")
        auth = [fn.spec["registry_auth"]] if "registry_auth" in fn.spec else []
        for field_name, names in (("secrets", fn.spec.get("secrets", [])), ("registry_auth", auth)):
            missing = [s for s in names if s not in secrets]
            if missing:
                raise ManifestError(
                    f"{where(field_name)}: no secret named {', '.join(missing)} on {client.url}"
                    " (kapal secrets set NAME)"
                )
        if fn.folder is None:  # an image function: no code
            archives[fn.name] = b""
            continue
        try:
            archives[fn.name] = await asyncio.to_thread(build_archive, fn.folder)
        except KapalAPIError as exc:
            raise ManifestError(f"{where('folder')}: {exc.message}") from exc
    return archives


async def plan(client: KapalClient, manifest: Manifest) -> Plan:
    result = Plan(await check(client, manifest))
    names = {fn.name for fn in manifest.functions}
    pair(
        [h for h in await client.webhooks() if h["function"] in names],
        [(fn.name, h.verify) for fn in manifest.functions for h in fn.webhooks],
        lambda h: (h["function"], h["verify"]),
        lambda want: want,
        result.webhooks_kept,
        result.webhooks_to_remove,
        result.webhooks_to_create,
    )
    pair(
        [s for s in await client.schedules() if s["function"] in names],
        [(fn.name, s) for fn in manifest.functions for s in fn.schedules],
        lambda s: (s["function"], s["cron"], s["timezone"], canonical(s["payload"])),
        lambda want: want[1].key(want[0]),
        result.schedules_kept,
        result.schedules_to_remove,
        result.schedules_to_create,
    )
    return result


def pair(
    existing: list[dict[str, Any]],
    wanted: list[Any],
    key_of_existing: Callable[[dict[str, Any]], Any],
    key_of_wanted: Callable[[Any], Any],
    kept: list[dict[str, Any]],
    remove: list[dict[str, Any]],
    create: list[Any],
) -> None:
    """Pair existing with wanted by key, one to one (two equal webhooks are two)."""
    still = Counter(key_of_wanted(w) for w in wanted)
    for item in existing:
        key = key_of_existing(item)
        if still[key] > 0:
            still[key] -= 1
            kept.append(item)
        else:
            remove.append(item)
    for want in wanted:
        key = key_of_wanted(want)
        if still[key] > 0:
            still[key] -= 1
            create.append(want)


@dataclass
class Applied:
    functions: list[dict[str, Any]] = field(default_factory=list)
    webhooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schedules: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"functions": self.functions, "webhooks": self.webhooks, "schedules": self.schedules}


async def apply(
    client: KapalClient,
    manifest: Manifest,
    plan: Plan,
    on_event: Callable[[ManifestFunction, Event], None],
    say: Callable[[str], None],
) -> Applied:
    """Deploy what changed, then make and remove webhooks and schedules as planned."""
    applied = Applied()
    for fn in manifest.functions:
        done = await deploy_folder(
            client,
            plan.archives[fn.name],
            fn.spec,
            skip_unchanged=True,
            on_event=functools.partial(on_event, fn),
        )
        version = done.function.get("version")
        what = (
            "created"
            if done.function_created
            else "updated"
            if done.version_created
            else "unchanged"
        )
        say(f"{fn.name}: {what}, version {version}")
        applied.functions.append(
            {
                "name": fn.name,
                "version": version,
                "function_created": done.function_created,
                "version_created": done.version_created,
            }
        )
    made_hooks = []
    for name, verify in plan.webhooks_to_create:
        hook = await client.create_webhook(name, verify)
        say(f"{name}: webhook {hook['url']} ({verify}) created, secret {hook.get('secret')}")
        made_hooks.append(hook)
    for hook in plan.webhooks_to_remove:
        await client.delete_webhook(hook["id"])
        say(f"{hook['function']}: webhook {hook['id']} ({hook['verify']}) removed")
    made_schedules = []
    for name, entry in plan.schedules_to_create:
        made = await client.create_schedule(name, entry.cron, entry.payload, entry.timezone)
        say(f"{name}: schedule {made['cron']} ({made['timezone']}) created, id {made['id']}")
        made_schedules.append(made)
    for sched in plan.schedules_to_remove:
        await client.delete_schedule(sched["id"])
        say(f"{sched['function']}: schedule {sched['cron']} removed")
    applied.webhooks = {
        "created": made_hooks,
        "removed": plan.webhooks_to_remove,
        "kept": plan.webhooks_kept,
    }
    applied.schedules = {
        "created": made_schedules,
        "removed": plan.schedules_to_remove,
        "kept": plan.schedules_kept,
    }
    return applied


async def remove(client: KapalClient, manifest: Manifest, say: Callable[[str], None]) -> list[str]:
    """Remove the manifest's functions with their webhooks and schedules; the names gone."""
    names = {fn.name for fn in manifest.functions}
    for hook in await client.webhooks():
        if hook["function"] in names:
            await client.delete_webhook(hook["id"])
            say(f"{hook['function']}: webhook {hook['id']} removed")
    for sched in await client.schedules():
        if sched["function"] in names:
            await client.delete_schedule(sched["id"])
            say(f"{sched['function']}: schedule {sched['cron']} removed")
    removed = []
    for fn in manifest.functions:
        try:
            await client.delete(fn.name)
        except KapalAPIError as exc:
            if exc.status != 404:
                raise
            say(f"{fn.name}: not deployed")
            continue
        say(f"{fn.name}: removed")
        removed.append(fn.name)
    return removed
