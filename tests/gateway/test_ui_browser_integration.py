"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
real gateway: sign in, watch a function, its invocations and log lines, roll back, re-drive
a dead letter; at a desktop and a phone-sized viewport, with no console errors.

Screenshots of each page go to `ui-screenshots/` under pytest's base temporary folder
(`--basetemp=DIR` puts them in `DIR/ui-screenshots/`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect

from tests.support import GatewayProcess, deploy

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
# Without the networking flags Chromium keeps trying to reach Google's hosts, refused here.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# Generous: the first call of a function starts its container.
WAIT_MS = 60_000

HELLO = """
def handle(event, context):
    print("ui-marker", event.query.get("m", "-"))
    return {"hello": event.query.get("m", "world")}
"""
FAILS = """
def handle(event, context):
    raise RuntimeError("always fails")
"""


@dataclass
class Browser:
    page: Page
    viewport: str
    shots: Path
    errors: list[str] = field(default_factory=list)

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=self.shots / f"{name}-{self.viewport}.png", full_page=True)

    async def no_horizontal_scroll(self) -> None:
        width = await self.page.evaluate(
            "() => [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width[0] <= width[1], f"the page scrolls sideways at {self.viewport}: {width}"


@pytest.fixture(params=sorted(VIEWPORTS))
async def browser(
    request: pytest.FixtureRequest, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Browser]:
    assert HAVE_CHROMIUM, "Debian's chromium is needed: apt-get install chromium"
    shots = tmp_path_factory.getbasetemp() / "ui-screenshots"
    shots.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORTS[request.param],  # type: ignore[arg-type]
        )
        page = context.pages[0] if context.pages else await context.new_page()
        b = Browser(page, request.param, shots)

        def console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                b.errors.append(f"console: {msg.text} at {msg.location}")

        page.on("console", console)
        page.on("pageerror", lambda err: b.errors.append(f"page error: {err}"))
        try:
            yield b
        finally:
            await context.close()


async def sign_in(b: Browser, gw: GatewayProcess) -> None:
    await b.page.goto(f"{gw.url}/ui")
    await b.page.fill("#key", gw.admin_key or "")
    await b.page.click("#sign-in button[type=submit]")
    await expect(b.page.locator("#nav")).to_be_visible(timeout=WAIT_MS)


async def ensure(
    http: aiohttp.ClientSession, gw: GatewayProcess, name: str, code: str, **spec: Any
) -> None:
    async with http.get(f"{gw.url}/v1/functions/{name}", headers=gw.headers) as r:
        if r.status == 200:
            return
    status, body = await deploy(http, gw, {"handler.py": code}, {"name": name, **spec})
    assert status == 201, body


async def until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.2)


async def test_a_wrong_key_says_so_and_is_not_kept(
    shared_gateway: GatewayProcess, browser: Browser
) -> None:
    page = browser.page
    await page.goto(f"{shared_gateway.url}/ui")
    await page.fill("#key", "kpl_wrong_key")
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#sign-in-error")).to_contain_text("not valid", timeout=WAIT_MS)
    assert await page.evaluate("() => sessionStorage.length") == 0
    assert await page.locator("#nav").is_hidden()
    await browser.no_horizontal_scroll()
    await browser.shot("sign-in")
    # The browser itself reports the refused request; nothing else may be an error.
    assert all("status of 401" in e for e in browser.errors), browser.errors


async def test_a_function_its_invocations_and_live_log_tail(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, browser: Browser
) -> None:
    gw, page = shared_gateway, browser.page
    await ensure(http, gw, "ui-hello", HELLO, public=True)
    await sign_in(browser, gw)
    # The key is kept for the tab, never in the address.
    assert await page.evaluate("() => sessionStorage.getItem('kapal.key')") == gw.admin_key
    assert gw.admin_key not in page.url
    card = page.locator("article[data-function='ui-hello']")
    await expect(card).to_be_visible(timeout=WAIT_MS)
    await expect(card.locator("[data-chart]")).to_have_count(4)
    await expect(card.locator("[data-state]")).to_have_count(5)

    await card.locator("a").first.click()
    await expect(page.locator("#live-tail")).to_contain_text("live", timeout=WAIT_MS)
    marker = uuid.uuid4().hex[:12]
    async with http.get(f"{gw.url}/fn/ui-hello?m={marker}") as r:
        assert r.status == 200, await r.text()
        request_id = r.headers["X-Kapal-Request-Id"]
    await expect(page.locator("#tail")).to_contain_text(f"ui-marker {marker}", timeout=WAIT_MS)
    row = page.locator(f"#invocations tr[data-id='{request_id}']")
    await expect(row).to_be_visible(timeout=WAIT_MS)
    await expect(row).to_contain_text("200")
    await expect(row).to_contain_text("http")
    await row.click()
    await expect(page.locator("#invocation-logs")).to_contain_text(
        f"ui-marker {marker}", timeout=WAIT_MS
    )
    await expect(page.locator("#instances [data-state='ready']")).to_be_visible()
    await expect(page.locator("#stats [data-chart='rps']")).to_be_visible()
    await browser.no_horizontal_scroll()
    await browser.shot("function")

    await page.click("nav a[data-view='functions']")
    # The call is in its figures (a p50 only exists with calls).
    await expect(card.locator(".totals")).to_contain_text(" msp50", timeout=WAIT_MS)
    await expect(card.locator(".totals")).not_to_contain_text("0.00req/s")
    await browser.no_horizontal_scroll()
    await browser.shot("functions")
    assert browser.errors == []


async def test_roll_back_a_version(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, browser: Browser
) -> None:
    gw, page = shared_gateway, browser.page
    await ensure(http, gw, "ui-roll", HELLO)
    status, body = await deploy(
        http,
        gw,
        {"handler.py": HELLO + "\n# again\n"},
        {"name": "ui-roll"},
        name="ui-roll",
        update=True,
    )
    assert status == 200, body
    newest = body["version"]
    await sign_in(browser, gw)
    await page.goto(f"{gw.url}/ui#/functions/ui-roll")
    current = page.locator(f"#versions tr[data-version='{newest}']")
    await expect(current).to_contain_text("current", timeout=WAIT_MS)
    await page.click(f"#versions tr[data-version='{newest - 1}'] button")
    await expect(page.locator("#rollback-note")).to_contain_text(
        f"version {newest - 1} is current", timeout=WAIT_MS
    )
    await expect(page.locator(f"#versions tr[data-version='{newest - 1}']")).to_contain_text(
        "current", timeout=WAIT_MS
    )
    async with http.get(f"{gw.url}/v1/functions/ui-roll", headers=gw.headers) as r:
        assert (await r.json())["version"] == newest - 1
    await browser.no_horizontal_scroll()
    await browser.shot("rollback")
    assert browser.errors == []


async def test_redrive_a_dead_letter(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, browser: Browser
) -> None:
    gw, page = shared_gateway, browser.page
    await ensure(http, gw, "ui-fails", FAILS, **{"async": {"max_retries": 0}})
    async with http.post(f"{gw.url}/async/fn/ui-fails/x", headers=gw.headers) as r:
        assert r.status == 202, await r.text()
        id = (await r.json())["id"]

    async def invocation() -> Any:
        async with http.get(f"{gw.url}/v1/invocations/{id}", headers=gw.headers) as r:
            return await r.json()

    await until("the dead letter", lambda: _state(invocation, "dead"))
    await sign_in(browser, gw)
    await page.click("nav a[data-view='dead']")
    row = page.locator(f"#dead tr[data-invocation='{id}']")
    await expect(row).to_contain_text("500", timeout=WAIT_MS)
    await browser.no_horizontal_scroll()
    await browser.shot("dead-letters")
    await row.locator("button").click()
    await expect(page.locator("#redrive-note")).to_contain_text(f"Re-driven: {id}", timeout=WAIT_MS)

    # It runs again: a second attempt in its records (and, failing again, it is dead again).
    async def attempts() -> Any:
        url = f"{gw.url}/v1/functions/ui-fails/invocations/{id}"
        async with http.get(url, headers=gw.headers) as r:
            found = (await r.json()).get("attempts", []) if r.status == 200 else []
        return found if len(found) == 2 else None

    assert {a["status"] for a in await until("the second attempt", attempts)} == {500}
    await until("the dead letter again", lambda: _state(invocation, "dead"))
    assert browser.errors == []


async def _state(get: Any, state: str) -> Any:
    inv = await get()
    return inv if inv["status"] == state else None


async def test_jobs_webhooks_and_schedules(
    shared_gateway: GatewayProcess, http: aiohttp.ClientSession, browser: Browser
) -> None:
    gw, page = shared_gateway, browser.page
    await ensure(http, gw, "ui-hello", HELLO, public=True)
    job = {"function": "ui-hello", "items": [{"n": i} for i in range(3)]}
    async with http.post(f"{gw.url}/v1/jobs", json=job, headers=gw.headers) as r:
        assert r.status == 201, await r.text()
        job_id = (await r.json())["id"]
    hook = {"function": "ui-hello", "verify": "none"}
    async with http.post(f"{gw.url}/v1/webhooks", json=hook, headers=gw.headers) as r:
        assert r.status == 201, await r.text()
        hook_url = (await r.json())["url"]
    cron = {"function": "ui-hello", "cron": "0 3 * * *", "timezone": "Europe/Paris"}
    async with http.post(f"{gw.url}/v1/schedules", json=cron, headers=gw.headers) as r:
        assert r.status == 201, await r.text()

    await sign_in(browser, gw)
    await page.click("nav a[data-view='jobs']")
    row = page.locator(f"#jobs tr[data-job='{job_id}']")
    await expect(row).to_contain_text("3/3 (100%)", timeout=WAIT_MS)
    assert await row.locator("progress").get_attribute("value") == "3"
    await row.click()
    await expect(page.locator("#job")).to_contain_text("succeeded", timeout=WAIT_MS)
    await browser.no_horizontal_scroll()
    await browser.shot("jobs")

    await page.click("nav a[data-view='triggers']")
    await expect(page.locator("#webhooks")).to_contain_text(hook_url, timeout=WAIT_MS)
    await expect(page.locator("#schedules")).to_contain_text("0 3 * * *", timeout=WAIT_MS)
    await expect(page.locator("#schedules")).to_contain_text("Europe/Paris")
    await browser.no_horizontal_scroll()
    await browser.shot("webhooks-schedules")

    # Signing out forgets the key.
    await page.click("#sign-out")
    await expect(page.locator("#sign-in")).to_be_visible()
    assert await page.evaluate("() => sessionStorage.length") == 0
    assert browser.errors == []
