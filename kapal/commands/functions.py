"""Deploy (a folder or a kapal.yaml), list, show, remove, versions and rollback."""

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from kapal import deploy as deploying
from kapal.archive import build_archive
from kapal.client import KapalClient
from kapal.errors import KapalError
from kapal.manifest import ManifestFunction, load_manifest
from kapal.output import (
    POLL_S,
    console,
    functions_table,
    note,
    print_json,
    print_ndjson,
    print_table,
    table,
)
from kapal.spec import image_spec, load_spec


async def deploy(client: KapalClient, args: argparse.Namespace) -> int:
    if args.file is not None:
        return await deploy_manifest(client, args)
    if args.image is not None:
        if args.folder is not None:
            raise KapalError("deploy takes a folder or --image, not both")
        spec, archive = image_spec(overrides(args)), b""
    elif args.folder is None:
        raise KapalError("deploy needs a folder, --image REF, or -f kapal.yaml")
    else:
        folder: Path = args.folder
        spec = load_spec(folder, overrides(args))
        archive = await asyncio.to_thread(build_archive, folder)
    started = time.monotonic()
    with BuildDisplay(spec["name"], args.json) as display:
        done = await deploying.deploy_folder(client, archive, spec, on_event=display.event)
    if args.wait:
        done_fn = await wait_ready(client, spec["name"], args.wait_timeout, args.json)
    else:
        done_fn = done.function
    if args.json:
        print_ndjson({"event": "deployed", "function": done_fn})
        return 0
    name = done_fn.get("name", spec["name"])
    print(
        f"{'deployed' if done.function_created else 'updated'} {name} version "
        f"{done_fn.get('version', '?')} (image {done_fn.get('image', '?')}) in "
        f"{time.monotonic() - started:.1f}s"
    )
    print(f"curl {client.url}/fn/{name}")
    return 0


class BuildDisplay:
    """A deploy's progress: the build's lines on stderr (with a spinner on a terminal),
    or every event as NDJSON on stdout with --json."""

    def __init__(self, name: str, as_json: bool, prefix: str = "") -> None:
        self.name = name
        self.as_json = as_json
        self.prefix = prefix
        self.err = console(stderr=True)
        self.status = None if as_json or not self.err.is_terminal else self.err.status("")

    def __enter__(self) -> "BuildDisplay":
        if self.status is not None:
            self.status.update(f"deploying {self.name}: sending the code")
            self.status.start()
        elif not self.as_json:
            note(f"deploying {self.name} ...")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def event(self, event: dict[str, Any]) -> None:
        if self.as_json:
            print_ndjson(event)
            return
        kind = event.get("event")
        if kind == "build":
            self.err.print(f"{self.prefix}{event.get('line', '')}")
            if self.status is not None:
                self.status.update(f"building {self.name}: {event.get('line', '')[:60]}")
        elif kind == "dependencies":
            self.err.print(f"{self.prefix}{event.get('line', '')}")
        elif kind == "built":
            self.err.print(f"{self.prefix}built {event.get('image')} in {event.get('seconds')}s")
        elif kind == "resolved":
            self.err.print(f"{self.prefix}image pinned as {event.get('image')}")
        elif kind == "started" and self.status is not None:
            self.status.update(f"building {self.name} version {event.get('version')}")


async def wait_ready(client: KapalClient, name: str, timeout_s: float, quiet: bool) -> Any:
    """Until the current version has `scaling.min` ready instances and no older version
    has any. Invoke-free: a call would run the handler, and a function at min 0 has no
    instance until one comes."""
    deadline = time.monotonic() + timeout_s
    while True:
        fn = await client.get(name)
        version = fn.get("version")
        want = int((fn.get("scaling") or {}).get("min", 0))
        instances = fn.get("instances") or []
        ready = [i for i in instances if i.get("version") == version and i["state"] == "ready"]
        older = [i for i in instances if i.get("version") != version]
        if len(ready) >= want and not older:
            if not quiet:
                note(f"{name} version {version}: {len(ready)} ready, no older instance left")
            return fn
        if time.monotonic() > deadline:
            raise KapalError(
                f"{name} version {version} not ready after {timeout_s:g}s: {len(ready)} of"
                f" {want} ready, {len(older)} older instance(s) left"
            )
        await asyncio.sleep(POLL_S)


async def deploy_manifest(client: KapalClient, args: argparse.Namespace) -> int:
    manifest = load_manifest(args.file)
    plan = await deploying.plan(client, manifest)
    displays: dict[str, BuildDisplay] = {}

    def on_event(fn: ManifestFunction, event: dict[str, Any]) -> None:
        if fn.name not in displays:
            displays[fn.name] = BuildDisplay(fn.name, args.json, prefix=f"{fn.name}| ")
        if args.json:
            print_ndjson({"deploying": fn.name, **event})
        else:
            displays[fn.name].event(event)

    say = (lambda _: None) if args.json else print
    applied = await deploying.apply(client, manifest, plan, on_event, say)
    if args.wait:
        for fn in manifest.functions:
            await wait_ready(client, fn.name, args.wait_timeout, args.json)
    if args.json:
        print_ndjson({"event": "applied", **applied.as_json()})
    return 0


async def rm(client: KapalClient, args: argparse.Namespace) -> int:
    if args.file is not None:
        manifest = load_manifest(args.file)
        removed = await deploying.remove(client, manifest, (lambda _: None) if args.json else print)
        if args.json:
            print_json({"removed": removed})
        return 0
    if args.name is None:
        raise KapalError("rm needs a function name, or -f kapal.yaml")
    await client.delete(args.name)
    if args.json:
        print_json({"removed": [args.name]})
    else:
        print(f"removed {args.name}")
    return 0


async def ls(client: KapalClient, args: argparse.Namespace) -> int:
    functions = await client.list()
    if args.json:
        print_json(functions)
    else:
        console().print(functions_table(functions))
    return 0


async def get(client: KapalClient, args: argparse.Namespace) -> int:
    fn = await client.get(args.name)
    if args.json:
        print_json(fn)
        return 0
    out = console()
    pool = fn.get("pool") or {}
    out.print(
        table(
            ("FIELD", "VALUE"),
            [
                ("name", fn.get("name")),
                ("version", fn.get("version")),
                ("image", fn.get("image")),
                ("public", fn.get("public")),
                ("invocations", fn.get("invocations")),
                ("updated", fn.get("updated_at")),
                ("pool", ", ".join(f"{k} {v}" for k, v in pool.items())),
            ],
        )
    )
    instances = fn.get("instances") or []
    if instances:
        out.print(
            table(
                ("INSTANCE", "VERSION", "STATE", "TIER", "IN FLIGHT"),
                [
                    (
                        i.get("id"),
                        i.get("version"),
                        i.get("state"),
                        i.get("tier"),
                        i.get("in_flight"),
                    )
                    for i in instances
                ],
            )
        )
    return 0


async def versions(client: KapalClient, args: argparse.Namespace) -> int:
    found = await client.versions(args.name)
    if args.json:
        print_json(found)
        return 0
    print_table(
        ("VERSION", "CURRENT", "IMAGE", "CODE", "CREATED"),
        [
            (
                v["version"],
                "yes" if v.get("current") else "no",
                v.get("image"),
                str(v.get("code_sha256", ""))[:12],
                v.get("created_at"),
            )
            for v in found
        ],
    )
    return 0


async def rollback(client: KapalClient, args: argparse.Namespace) -> int:
    fn = await client.rollback(args.name, args.to)
    if args.json:
        print_json(fn)
    else:
        print(f"{args.name} now serves version {fn.get('version')}")
    return 0


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields given as `kapal deploy` options (None: not given)."""
    return {
        "name": args.name,
        "runtime": args.runtime,
        "image": args.image,
        "port": args.port,
        "health_path": args.health_path,
        "registry_auth": args.registry_auth,
        "handler": args.handler,
        "env": dict(args.env or []),
        "limits": {
            "timeout_s": args.timeout,
            "memory_mb": args.memory,
            "cpus": args.cpus,
            "rps": args.rps,
        },
        "public": args.public,
        "secrets": args.secret,
        "network": {"outbound": args.outbound},
        "scaling": {
            "min": args.min,
            "max": args.max,
            "concurrency": args.concurrency,
            "idle_timeout_s": args.idle_timeout,
        },
    }
