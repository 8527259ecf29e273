"""The `kapal` command: parse the arguments, run the command, and turn every failure into
one line on stderr and a non-zero exit status."""

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kapal.client import KapalClient
from kapal.commands import COMMANDS, Command
from kapal.commands.functions import overrides
from kapal.errors import KapalError

__all__ = ["build_parser", "main", "overrides", "run"]


def version() -> str:
    try:
        return importlib.metadata.version("kapal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


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
    except SystemExit as exc:  # argparse has printed the usage error, the help or --version
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "up":
        return up()
    try:
        async with KapalClient(args.url, api_key=args.api_key) as client:
            command: Command = COMMANDS[args.command]
            return await command(client, args)
    except KapalError as exc:
        _error(str(exc))
        return 1
    except BrokenPipeError:
        # `kapal logs | head`: the reader left; nothing more to say.
        sys.stderr.close()
        return 1
    except Exception as exc:  # a bug, or an answer we did not expect: still one line
        _error(f"{type(exc).__name__}: {exc}")
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


# -- arguments ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapal", description="Deploy and call functions on Kapal.", parents=[_globals(True)]
    )
    parser.add_argument("--version", action="version", version=f"kapal {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, summary: str, group: Any = commands) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = group.add_parser(
            name, help=summary, description=summary, parents=[_globals(False)]
        )
        return made

    def group(p: argparse.ArgumentParser, dest: str) -> Any:
        return p.add_subparsers(dest=dest, required=True, metavar="ACTION")

    add("up", "start Kapal on this machine (Docker, Postgres, gateway)")

    p = add("deploy", "deploy a function folder, or every function of a kapal.yaml")
    p.add_argument(
        "folder", type=Path, nargs="?", metavar="DIR", help="folder with the function's code"
    )
    p.add_argument("-f", "--file", type=Path, metavar="KAPAL_YAML", help="deploy a manifest")
    p.add_argument("--wait", action="store_true", help="until scaling.min instances are ready")
    p.add_argument("--wait-timeout", type=float, default=120.0, metavar="S")
    p.add_argument("--name", help="function name (default: kapal.toml, else the folder name)")
    p.add_argument("--image", metavar="REF", help="deploy this image (serving HTTP), not a folder")
    p.add_argument("--port", type=int, metavar="N", help="port the image serves on (8080)")
    p.add_argument("--health-path", metavar="PATH", help="polled until the image is up (/)")
    p.add_argument(
        "--registry-auth", metavar="SECRET", help="secret with the registry's username:password"
    )
    p.add_argument("--runtime", help="language runtime: python (default) or nodejs")
    p.add_argument(
        "--handler",
        help="module.function to call (default: handler.handle; nodejs: file.export, "
        "default index.handler)",
    )
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
    p.add_argument("--async", dest="async_", action="store_true", help="queue it; print the id")
    p.add_argument("--wait", action="store_true", help="with --async: print the result when done")

    add("ls", "list functions")
    p = add("get", "show one function: version, pool, instances")
    p.add_argument("name", metavar="NAME")
    p = add("rm", "delete a function, or every function of a kapal.yaml")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("-f", "--file", type=Path, metavar="KAPAL_YAML")
    p = add("versions", "a function's versions, oldest first")
    p.add_argument("name", metavar="NAME")
    p = add("rollback", "serve an earlier version (default: the one before the current)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", type=int, metavar="N", help="this version")

    p = add("logs", "a function's log lines (prints, logging, tracebacks, platform events)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--since", metavar="WHEN", help="an age (10m, 2h, 1d) or a time (RFC 3339)")
    p.add_argument("--until", metavar="WHEN", help="lines written before this")
    p.add_argument("--request", metavar="ID", help="only this invocation's lines (request id)")
    p.add_argument("--instance", metavar="ID", help="only this instance's lines")
    p.add_argument("--limit", type=int, metavar="N", help="the newest N lines (default 1000)")

    p = add("invocations", "a function's invocation records, newest first (or one, with logs)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("id", nargs="?", metavar="ID", help="one invocation (a request id)")
    p.add_argument("--since", metavar="WHEN", help="an age (10m, 2h, 1d) or a time (RFC 3339)")
    p.add_argument("--status", metavar="S", help="500, 5xx, ok or error")
    p.add_argument("--cold", metavar="C", help="true, false, or a tier: paused, prewarm, new")
    p.add_argument("--trigger", choices=("http", "async", "webhook", "job", "schedule"))
    p.add_argument("--limit", type=int, metavar="N", help="records per page (default 100)")
    p.add_argument("--cursor", metavar="C", help="the next page, as printed after the last")

    p = add("dead", "dead letters: async invocations out of retries")
    actions = p.add_subparsers(dest="dead_command", metavar="ACTION")
    k = actions.add_parser("retry", help="run one again", parents=[_globals(False)])
    k.add_argument("id", metavar="ID")
    p.add_argument("--function", metavar="NAME", help="only this function's")
    p.add_argument("--limit", type=int, metavar="N")

    p = add("jobs", "batch jobs: one invocation per item")
    actions = group(p, "jobs_command")
    k = add("create", "a job from a JSON Lines file", actions)
    k.add_argument("function", metavar="FN")
    k.add_argument("--items", required=True, metavar="FILE.jsonl", help="one JSON item a line")
    k.add_argument("--max-concurrency", type=int, metavar="N")
    k.add_argument("--retries", type=int, metavar="N")
    k.add_argument("--wait", action="store_true", help="a progress bar until done, then counts")
    for action, summary in (
        ("get", "a job's progress"),
        ("results", "a job's results, in item order"),
        ("cancel", "cancel what has not run"),
    ):
        add(action, summary, actions).add_argument("id", metavar="ID")
    k = add("ls", "jobs, newest first", actions)
    k.add_argument("--function", metavar="NAME")
    k.add_argument("--limit", type=int, metavar="N")

    p = add("webhooks", "webhook endpoints")
    actions = group(p, "webhooks_command")
    k = add("create", "an endpoint; its secret is shown once", actions)
    k.add_argument("function", metavar="FN")
    k.add_argument("--verify", required=True, choices=("github", "stripe", "hmac-sha256", "none"))
    add("ls", "list endpoints", actions)
    for action, summary in (
        ("get", "one endpoint"),
        ("rotate", "a new secret, shown once"),
        ("rm", "delete an endpoint"),
    ):
        add(action, summary, actions).add_argument("id", metavar="ID")

    p = add("schedules", "cron schedules")
    actions = group(p, "schedules_command")
    k = add("create", "a schedule", actions)
    k.add_argument("function", metavar="FN")
    k.add_argument("--cron", required=True, metavar="EXPR", help="'*/5 * * * *', @hourly, ...")
    k.add_argument("--payload", metavar="JSON", help="body of each invocation")
    k.add_argument("--timezone", default="UTC", metavar="TZ")
    add("ls", "list schedules", actions)
    for action, summary in (("get", "one schedule"), ("rm", "delete a schedule")):
        add(action, summary, actions).add_argument("id", metavar="ID")

    p = add("keys", "manage API keys (needs an admin key)")
    actions = group(p, "keys_command")
    k = add("create", "create a key; it is printed once", actions)
    k.add_argument("name", metavar="NAME", help="what the key is for")
    k.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=("admin", "deploy", "invoke", "metrics"),
        help="what it may do (repeatable)",
    )
    k.add_argument("--rps", type=float, metavar="N", help="its own requests/s limit")
    add("ls", "list keys (never their secrets)", actions)
    add("rm", "revoke a key", actions).add_argument("id", metavar="ID")

    p = add("secrets", "manage secrets (needs an admin key)")
    actions = group(p, "secrets_command")
    add("set", "create or replace a secret; the value is read from stdin", actions).add_argument(
        "name", metavar="NAME"
    )
    add("ls", "list secret names", actions)
    add("rm", "delete a secret", actions).add_argument("name", metavar="NAME")

    p = add("top", "live table of functions: rps, p50/p99, errors, cold starts, instances")
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.add_argument("--minutes", type=int, default=15, metavar="N", help="window (1..1440)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="refresh period")
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
        "--api-key",
        default=None if top else default,
        metavar="KEY",
        help="API key (default: $KAPAL_API_KEY, else the admin key `kapal up` saved)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=False if top else default,
        help="machine-readable output: one JSON document, or NDJSON for streams",
    )
    return parser


def _pair(separator: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        key, found, value = text.partition(separator)
        if not found or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY{separator}VALUE, got {text!r}")
        return key.strip(), value.strip() if separator == ":" else value

    return parse


def _error(message: str) -> None:
    one_line = " ".join(message.split())
    print(f"error: {one_line}", file=sys.stderr, flush=True)
