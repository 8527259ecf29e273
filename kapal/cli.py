"""The `kapal` command: deploy, invoke and manage functions on a Kapal gateway."""

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from kapal.client import KapalClient
from kapal.errors import KapalError
from kapal.output import format_invoke_head, format_keys, format_table, invoke_error
from kapal.spec import load_spec

Command = Callable[[KapalClient, argparse.Namespace], Awaitable[int]]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        return asyncio.run(run(argv))
    except KeyboardInterrupt:
        return 130


async def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command: 0 done, 1 failed, 2 bad usage."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage error or the help
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "up":
        return up()
    try:
        async with KapalClient(args.url) as client:
            command: Command = COMMANDS[args.command]
            return await command(client, args)
    except KapalError as exc:
        _error(str(exc))
        return 1


def up() -> int:
    """Hand the process over to `python -m infra up`, which readies Docker and the gateway."""
    if importlib.util.find_spec("infra") is None:
        _error("the infra package is not installed; run `pip install -e .` in the Kapal repo")
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "infra", "up"])
    return 0  # only reached when execv is replaced (tests)


async def deploy(client: KapalClient, args: argparse.Namespace) -> int:
    folder: Path = args.folder
    spec = load_spec(folder, _overrides(args))
    if not args.json:
        _note(f"deploying {spec['name']} from {folder} ...")
    started = time.monotonic()
    function, created = await client.deploy_or_update(folder, spec)
    elapsed = time.monotonic() - started
    if args.json:
        _print_json(function)
        return 0
    name = function.get("name", spec["name"])
    print(
        f"{'deployed' if created else 'updated'} {name} version {function.get('version', '?')} "
        f"(image {function.get('image', '?')}) in {elapsed:.1f}s"
    )
    print(f"curl {client.url}/fn/{name}")
    return 0


async def invoke(client: KapalClient, args: argparse.Namespace) -> int:
    data = _read_data(args.data)
    headers: list[tuple[str, str]] = args.header or []
    if data is not None and not any(k.lower() == "content-type" for k, _ in headers):
        headers = [*headers, ("Content-Type", _guess_content_type(data))]
    result = await client.invoke(
        args.name,
        args.path,
        method=args.method,
        data=data,
        headers=headers,
        query=args.query or [],
    )
    if args.include:
        sys.stderr.write(format_invoke_head(result))
        sys.stderr.flush()
    sys.stdout.flush()
    sys.stdout.buffer.write(result.body)
    sys.stdout.buffer.flush()
    if not result.ok:
        _error(invoke_error(args.name, result))
        return 1
    return 0


async def ls(client: KapalClient, args: argparse.Namespace) -> int:
    functions = await client.list()
    if args.json:
        _print_json(functions)
    else:
        print(format_table(functions), end="")
    return 0


async def get(client: KapalClient, args: argparse.Namespace) -> int:
    _print_json(await client.get(args.name))
    return 0


async def rm(client: KapalClient, args: argparse.Namespace) -> int:
    await client.delete(args.name)
    print(f"removed {args.name}")
    return 0


async def keys(client: KapalClient, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        created = await client.create_key(args.name, args.scope, args.rps)
        if args.json:
            _print_json(created)
            return 0
        print(created["key"])
        _note(
            f"created API key {created['id']} ({', '.join(created['scopes'])});"
            " it is shown this once: store it now"
        )
    elif args.keys_command == "ls":
        listed = await client.list_keys()
        if args.json:
            _print_json(listed)
        else:
            print(format_keys(listed), end="")
    else:
        await client.revoke_key(args.id)
        print(f"revoked {args.id}")
    return 0


async def secrets(client: KapalClient, args: argparse.Namespace) -> int:
    if args.secrets_command == "set":
        # From stdin, so the value stays out of shell history and `ps`.
        value = sys.stdin.read()
        await client.put_secret(args.name, value.removesuffix("\n"))
        print(f"set {args.name}")
    elif args.secrets_command == "ls":
        listed = await client.list_secrets()
        if args.json:
            _print_json(listed)
        else:
            print("".join(f"{s['name']}\n" for s in listed), end="")
    else:
        await client.delete_secret(args.name)
        print(f"removed {args.name}")
    return 0


COMMANDS: dict[str, Command] = {
    "deploy": deploy,
    "invoke": invoke,
    "ls": ls,
    "get": get,
    "rm": rm,
    "keys": keys,
    "secrets": secrets,
}


# -- arguments ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapal", description="Deploy and call functions on Kapal.", parents=[_globals(True)]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=summary, parents=[_globals(False)]
        )

    add("up", "start Kapal on this machine (Docker, Postgres, gateway)")

    p = add("deploy", "deploy a function folder (creates it, or adds a version)")
    p.add_argument("folder", type=Path, metavar="DIR", help="folder with the function's code")
    p.add_argument("--name", help="function name (default: kapal.toml, else the folder name)")
    p.add_argument("--runtime", help="language runtime (default: python)")
    p.add_argument("--handler", help="module.function to call (default: handler.handle)")
    p.add_argument("--env", action="append", type=_pair("="), metavar="KEY=VALUE")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds per invocation")
    p.add_argument("--memory", type=int, metavar="MB", help="memory per instance")
    p.add_argument("--cpus", type=float, metavar="C", help="CPUs per instance")
    p.add_argument("--min", type=int, metavar="N", help="instances kept warm")
    p.add_argument("--max", type=int, metavar="N", help="most instances")
    p.add_argument("--concurrency", type=int, metavar="N", help="requests per instance")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="idle seconds before stop")
    p.add_argument(
        "--public",
        action="store_true",
        default=None,
        help="anyone may invoke it (default: an API key with the invoke scope is needed)",
    )
    p.add_argument("--rps", type=float, metavar="N", help="invocations a second, at most")
    p.add_argument(
        "--secret", action="append", metavar="NAME", help="mount a secret at /run/secrets/NAME"
    )
    p.add_argument(
        "--no-outbound",
        dest="outbound",
        action="store_false",
        default=None,
        help="no internet access from the function",
    )

    p = add("invoke", "call a function; its response body goes to stdout")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-d", "--data", help="request body: text, @file, or @- for stdin")
    p.add_argument("-X", "--method", help="HTTP method (default: POST with -d, else GET)")
    p.add_argument("-p", "--path", default="", help="path after /fn/NAME/")
    p.add_argument("-H", "--header", action="append", type=_pair(":"), metavar="'K: V'")
    p.add_argument("-q", "--query", action="append", type=_pair("="), metavar="K=V")
    p.add_argument("-i", "--include", action="store_true", help="status and headers to stderr")

    add("ls", "list functions")
    p = add("get", "show one function as JSON")
    p.add_argument("name", metavar="NAME")
    p = add("rm", "delete a function")
    p.add_argument("name", metavar="NAME")

    p = add("keys", "manage API keys (needs an admin key)")
    keys_commands = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys_commands.add_parser(
        "create", help="create a key; it is printed once", parents=[_globals(False)]
    )
    k.add_argument("name", metavar="NAME", help="what the key is for")
    k.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=("admin", "deploy", "invoke", "metrics"),
        help="what it may do (repeatable)",
    )
    k.add_argument("--rps", type=float, metavar="N", help="its own requests/s limit")
    keys_commands.add_parser(
        "ls", help="list keys (never their secrets)", parents=[_globals(False)]
    )
    k = keys_commands.add_parser("rm", help="revoke a key", parents=[_globals(False)])
    k.add_argument("id", metavar="ID")

    p = add("secrets", "manage secrets (needs an admin key)")
    secret_commands = p.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    k = secret_commands.add_parser(
        "set",
        help="create or replace a secret; the value is read from stdin",
        parents=[_globals(False)],
    )
    k.add_argument("name", metavar="NAME")
    secret_commands.add_parser("ls", help="list secret names", parents=[_globals(False)])
    k = secret_commands.add_parser("rm", help="delete a secret", parents=[_globals(False)])
    k.add_argument("name", metavar="NAME")
    return parser


def _globals(top: bool) -> argparse.ArgumentParser:
    # Accepted before and after the command; a subcommand's copy must not reset the
    # value given before it, hence SUPPRESS there.
    default: Any = argparse.SUPPRESS
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--url",
        default=None if top else default,
        help="gateway URL (default: $KAPAL_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else default,
        help="machine-readable output (ls, deploy, keys)",
    )
    return parser


def _pair(separator: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        key, found, value = text.partition(separator)
        if not found or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY{separator}VALUE, got {text!r}")
        return key.strip(), value.strip() if separator == ":" else value

    return parse


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": args.name,
        "runtime": args.runtime,
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


def _read_data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise KapalError(f"cannot read {data[1:]}: {exc.strerror or exc}") from exc
    return data.encode()


def _guess_content_type(data: bytes) -> str:
    # `-d '{"a": 1}'` should reach a handler as JSON without a -H.
    if data.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(data)
            return "application/json"
        except ValueError:
            pass
    return "application/octet-stream"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
