"""What each `kapal` command does, one module per part of the API; `kapal.cli` parses the
arguments and picks one from COMMANDS."""

import argparse
from collections.abc import Awaitable, Callable

from kapal.client import KapalClient
from kapal.commands import access, functions, invocations, jobs, top, triggers

Command = Callable[[KapalClient, argparse.Namespace], Awaitable[int]]

COMMANDS: dict[str, Command] = {
    "deploy": functions.deploy,
    "ls": functions.ls,
    "get": functions.get,
    "rm": functions.rm,
    "versions": functions.versions,
    "rollback": functions.rollback,
    "traffic": functions.traffic,
    "invoke": invocations.invoke,
    "logs": invocations.logs,
    "invocations": invocations.invocations,
    "dead": invocations.dead,
    "jobs": jobs.jobs,
    "webhooks": triggers.webhooks,
    "schedules": triggers.schedules,
    "keys": access.keys,
    "secrets": access.secrets,
    "top": top.top,
}
