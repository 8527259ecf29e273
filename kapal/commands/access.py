"""API keys and secrets."""

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from kapal.client import KapalClient
from kapal.output import (
    format_age,
    note,
    print_json,
    print_table,
)


async def keys(client: KapalClient, args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        created = await client.create_key(args.name, args.scope, args.rps)
        if args.json:
            print_json(created)
            return 0
        print(created["key"])
        note(
            f"created API key {created['id']} ({', '.join(created['scopes'])});"
            " it is shown this once: store it now"
        )
    elif args.keys_command == "ls":
        listed = await client.list_keys()
        if args.json:
            print_json(listed)
        else:
            print_table(
                ("ID", "NAME", "SCOPES", "RPS", "CREATED"),
                [
                    (
                        k.get("id"),
                        k.get("name", ""),
                        ",".join(k.get("scopes") or []),
                        None if k.get("rps") is None else f"{k['rps']:g}",
                        format_age(k.get("created_at"), datetime.now(UTC)),
                    )
                    for k in listed
                ],
            )
    else:
        await client.revoke_key(args.id)
        if args.json:
            print_json({"revoked": args.id})
        else:
            print(f"revoked {args.id}")
    return 0


async def secrets(client: KapalClient, args: argparse.Namespace) -> int:
    if args.secrets_command == "set":
        # From stdin, so the value stays out of shell history and `ps`.
        value = sys.stdin.read()
        await client.put_secret(args.name, value.removesuffix("\n"))
        done: dict[str, Any] = {"set": args.name}
    elif args.secrets_command == "ls":
        listed = await client.list_secrets()
        if args.json:
            print_json(listed)
        else:
            print_table(("NAME",), [(s["name"],) for s in listed])
        return 0
    else:
        await client.delete_secret(args.name)
        done = {"removed": args.name}
    if args.json:
        print_json(done)
    else:
        print(" ".join(f"{k} {v}" for k, v in done.items()))
    return 0
