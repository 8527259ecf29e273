"""Webhook endpoints and cron schedules."""

import argparse
import json

from kapal.client import KapalClient
from kapal.errors import KapalError
from kapal.output import (
    note,
    print_json,
    print_table,
)


def _removed(args: argparse.Namespace) -> int:
    if args.json:
        print_json({"removed": args.id})
    else:
        print(f"removed {args.id}")
    return 0


async def webhooks(client: KapalClient, args: argparse.Namespace) -> int:
    sub = args.webhooks_command
    if sub == "rm":
        await client.delete_webhook(args.id)
        return _removed(args)
    if sub == "ls":
        found = await client.webhooks()
        if args.json:
            print_json(found)
        else:
            print_table(
                ("ID", "FUNCTION", "VERIFY", "URL", "CREATED"),
                [(h["id"], h["function"], h["verify"], h["url"], h["created_at"]) for h in found],
            )
        return 0
    if sub == "create":
        hook = await client.create_webhook(args.function, args.verify)
    elif sub == "rotate":
        hook = await client.rotate_webhook(args.id)
    else:
        hook = await client.webhook(args.id)
    if args.json:
        print_json(hook)
    else:
        print_table(("FIELD", "VALUE"), [(k, v) for k, v in hook.items()])
        if hook.get("secret"):
            note("the secret is shown this once: store it now")
    return 0


async def schedules(client: KapalClient, args: argparse.Namespace) -> int:
    sub = args.schedules_command
    if sub == "rm":
        await client.delete_schedule(args.id)
        return _removed(args)
    if sub == "ls":
        found = await client.schedules()
        if args.json:
            print_json(found)
        else:
            print_table(
                ("ID", "FUNCTION", "CRON", "TIMEZONE", "NEXT", "LAST"),
                [
                    (s["id"], s["function"], s["cron"], s["timezone"], s["next_run"], s["last_run"])
                    for s in found
                ],
            )
        return 0
    if sub == "create":
        try:
            payload = None if args.payload is None else json.loads(args.payload)
        except ValueError as exc:
            raise KapalError(f"--payload is not JSON: {exc}") from exc
        made = await client.create_schedule(args.function, args.cron, payload, args.timezone)
    else:
        made = await client.schedule(args.id)
    if args.json:
        print_json(made)
    else:
        print_table(
            ("FIELD", "VALUE"),
            [(k, json.dumps(v) if k == "payload" else v) for k, v in made.items()],
        )
    return 0
