"""Running the gateway: `python -m gateway` (reads KAPAL_* settings)."""

from __future__ import annotations

import asyncio
import sys

import uvloop
from pydantic import ValidationError

from gateway import logs
from gateway.app import create_app
from gateway.server import serve
from gateway.settings import Settings
from gateway.vault import SecretKeyError, load_key


def load_settings() -> Settings:
    try:
        return Settings()  # type: ignore[call-arg]
    except ValidationError as e:
        for err in e.errors():
            key = "KAPAL_" + "_".join(str(p) for p in err["loc"]).upper()
            print(f"kapal: bad setting {key}: {err['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


def check_secret_key(settings: Settings) -> None:
    """Fail at once, naming the setting, when the secrets key is unusable."""
    raw = settings.secret_key.get_secret_value() if settings.secret_key else None
    try:
        load_key(raw, settings.key_file())
    except (SecretKeyError, OSError) as e:
        print(f"kapal: bad secrets key: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run() -> None:
    settings = load_settings()
    check_secret_key(settings)
    logs.setup(settings.log_level)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(settings)
    asyncio.run(serve(app, settings.host, settings.port, settings.stop_grace_s))
