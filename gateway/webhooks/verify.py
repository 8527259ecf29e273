"""Signature checks of webhook deliveries (constant-time) and their delivery ids. Pure."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from enum import StrEnum

from gateway.errors import Unauthorized

# Stripe's default: a signature older (or newer) than this is a replay.
STRIPE_TOLERANCE_S = 300


class Verify(StrEnum):
    GITHUB = "github"
    STRIPE = "stripe"
    HMAC_SHA256 = "hmac-sha256"
    NONE = "none"


def _hex_hmac(secret: str, payload: bytes) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def _check_prefixed(header: str | None, name: str, secret: str, body: bytes) -> None:
    if not header:
        raise Unauthorized(f"missing {name} header")
    scheme, _, given = header.partition("=")
    if scheme != "sha256" or not given:
        raise Unauthorized(f"{name} must look like sha256=<hex>")
    if not hmac.compare_digest(given.strip().lower(), _hex_hmac(secret, body)):
        raise Unauthorized(f"{name} does not match the body")


def _check_stripe(header: str | None, secret: str, body: bytes, now: float) -> None:
    if not header:
        raise Unauthorized("missing Stripe-Signature header")
    timestamp: str | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not timestamp.isdigit() or not signatures:
        raise Unauthorized("Stripe-Signature must hold t=<timestamp> and v1=<signature>")
    if abs(now - int(timestamp)) > STRIPE_TOLERANCE_S:
        raise Unauthorized("Stripe-Signature timestamp is outside the tolerance")
    expected = _hex_hmac(secret, timestamp.encode() + b"." + body)
    # Check every candidate so timing does not tell which one matched.
    matched = False
    for sig in signatures:
        matched |= hmac.compare_digest(sig, expected)
    if not matched:
        raise Unauthorized("Stripe-Signature does not match the body")


def verify(kind: Verify, secret: str, headers: Mapping[str, str], body: bytes, now: float) -> None:
    """Raise Unauthorized unless the delivery is signed with `secret` as `kind` says."""
    if kind is Verify.GITHUB:
        _check_prefixed(headers.get("X-Hub-Signature-256"), "X-Hub-Signature-256", secret, body)
    elif kind is Verify.STRIPE:
        _check_stripe(headers.get("Stripe-Signature"), secret, body, now)
    elif kind is Verify.HMAC_SHA256:
        _check_prefixed(headers.get("X-Signature-256"), "X-Signature-256", secret, body)


def delivery_id(kind: Verify, headers: Mapping[str, str], body: bytes) -> str | None:
    """What identifies a delivery across the sender's retries, if anything does."""
    if kind is Verify.GITHUB and headers.get("X-GitHub-Delivery"):
        return headers["X-GitHub-Delivery"]
    if kind is Verify.STRIPE:
        try:
            event = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            event = None
        if isinstance(event, dict) and isinstance(event.get("id"), str) and event["id"]:
            return str(event["id"])
    return headers.get("Idempotency-Key") or None
