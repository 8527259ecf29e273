"""Signature checks of webhook deliveries, and their delivery ids."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from gateway.errors import Unauthorized
from gateway.webhooks.verify import Verify, delivery_id, verify

SECRET = "s3cret-value"
BODY = b'{"id": "evt_123", "type": "charge.succeeded"}'
NOW = 1_700_000_000.0


def sig(payload: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def test_github_signature() -> None:
    verify(Verify.GITHUB, SECRET, {"X-Hub-Signature-256": "sha256=" + sig(BODY)}, BODY, NOW)
    for headers in (
        {},
        {"X-Hub-Signature-256": "sha256=" + sig(BODY, "other-secret")},
        {"X-Hub-Signature-256": "sha1=" + sig(BODY)},
        {"X-Hub-Signature-256": "sha256=" + sig(BODY + b" ")},
    ):
        with pytest.raises(Unauthorized):
            verify(Verify.GITHUB, SECRET, headers, BODY, NOW)


def test_generic_hmac_signature() -> None:
    verify(Verify.HMAC_SHA256, SECRET, {"X-Signature-256": "sha256=" + sig(BODY)}, BODY, NOW)
    with pytest.raises(Unauthorized, match="X-Signature-256"):
        verify(
            Verify.HMAC_SHA256, SECRET, {"X-Hub-Signature-256": "sha256=" + sig(BODY)}, BODY, NOW
        )


def stripe_header(t: int, body: bytes = BODY, secret: str = SECRET) -> str:
    return f"t={t},v1={sig(str(t).encode() + b'.' + body, secret)},v0=ignored"


def test_stripe_signature_and_timestamp_tolerance() -> None:
    verify(Verify.STRIPE, SECRET, {"Stripe-Signature": stripe_header(int(NOW))}, BODY, NOW)
    verify(Verify.STRIPE, SECRET, {"Stripe-Signature": stripe_header(int(NOW) - 299)}, BODY, NOW)
    with pytest.raises(Unauthorized, match="tolerance"):
        verify(
            Verify.STRIPE, SECRET, {"Stripe-Signature": stripe_header(int(NOW) - 301)}, BODY, NOW
        )
    with pytest.raises(Unauthorized, match="match"):
        header = stripe_header(int(NOW), secret="wrong-secret")
        verify(Verify.STRIPE, SECRET, {"Stripe-Signature": header}, BODY, NOW)
    with pytest.raises(Unauthorized):
        verify(Verify.STRIPE, SECRET, {"Stripe-Signature": "v1=abc"}, BODY, NOW)
    # One of several v1 signatures matching (a secret being rolled) is enough.
    good = stripe_header(int(NOW)).split(",")[1]
    two = f"t={int(NOW)},v1={'0' * 64},{good}"
    verify(Verify.STRIPE, SECRET, {"Stripe-Signature": two}, BODY, NOW)


def test_none_accepts_anything() -> None:
    verify(Verify.NONE, "", {}, BODY, NOW)


def test_delivery_ids() -> None:
    assert delivery_id(Verify.GITHUB, {"X-GitHub-Delivery": "d-1"}, BODY) == "d-1"
    assert delivery_id(Verify.STRIPE, {}, BODY) == "evt_123"
    assert delivery_id(Verify.STRIPE, {}, json.dumps([1]).encode()) is None
    assert delivery_id(Verify.HMAC_SHA256, {"Idempotency-Key": "k"}, BODY) == "k"
    assert delivery_id(Verify.NONE, {}, BODY) is None
