"""The status page in a real headless browser (Debian's chromium, driven by Playwright): it sees
a link appear, its counters change, and the link disappear when its client goes.

Without chromium (or Playwright) the test is skipped, except on CI (``CI=true``), where it
fails: ``.ci/run`` installs chromium. Playwright's own browsers are never downloaded.
Set ``BUSPROXY_STATUS_SCREENSHOT=docs/img/status-page.png`` to refresh the docs' screenshot.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI

from fastapi_busproxy import (
    BearerTokenAuth,
    WebSocketProxyServer,
    include_bus_proxy,
    runner_of,
)
from fastapi_busproxy.status import include_status_page
from fastapi_busproxy.testing import RemotePeer, running_app
from tests.test_observability import Answer, Assistant, Question

pytestmark = [pytest.mark.anyio, pytest.mark.browser, pytest.mark.uvicorn]

TOKEN = "status-token"
WAIT_MS = 10_000


def chromium() -> str:
    """Debian's chromium; skips the test when it (or Playwright) is missing, or fails it when
    ``CI=true``."""
    path = shutil.which("chromium")
    missing = None
    if path is None:
        missing = "chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed (pip install -e '.[dev]')"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} [CI=true: the browser test is required]", pytrace=False)
        pytest.skip(missing)
    assert path is not None
    return path


def make_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runner_of(app).add_workers(Assistant("assistant"))
        yield

    app = FastAPI(lifespan=lifespan)
    include_bus_proxy(
        app,
        "/ws/{caller}",
        "assistant",
        remote_worker_name=lambda session: session.path_params["caller"],
    )
    auth = [Depends(BearerTokenAuth(tokens={TOKEN: "operator"}))]
    include_status_page(app, "/busproxy/status", dependencies=auth, interval=0.05)
    return app


def peer(url: str, name: str) -> RemotePeer:
    return RemotePeer(f"{url}/ws/{name}", name, remote_worker_name="assistant")


async def test_the_page_shows_links_come_count_and_go() -> None:
    executable = chromium()
    from playwright.async_api import async_playwright, expect

    app = make_app()
    async with running_app(app) as url, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox"]
        )
        try:
            context = await browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {TOKEN}"},
                viewport={"width": 1400, "height": 760},
            )
            page = await context.new_page()
            response = await page.goto(url.replace("ws://", "http://") + "/busproxy/status")
            assert response is not None
            assert response.status == 200
            await expect(page.locator("#feed")).to_have_text("live", timeout=WAIT_MS)
            await expect(page.locator("#links tbody tr")).to_have_count(0)

            def row(name: str) -> Any:
                return page.locator(f'#links tr[data-link="gateway:{name}"]')

            async with peer(url, "alice") as alice:
                await expect(row("alice")).to_have_count(1, timeout=WAIT_MS)
                await expect(row("alice").locator('[data-field="state"]')).to_have_text(
                    "connected", timeout=WAIT_MS
                )
                # After a round trip, the server has counted all alice sent so far: the page
                # shows that count, then three more.
                await alice.job(payload={"n": 1})
                link = runner_of(app).get_worker("gateway:alice")
                assert isinstance(link, WebSocketProxyServer)
                counted = link.stats.messages_in
                messages_in = row("alice").locator('[data-field="messages_in"]')
                await expect(messages_in).to_have_text(str(counted), timeout=WAIT_MS)
                async with peer(url, "bob") as bob:
                    await expect(row("bob")).to_have_count(1, timeout=WAIT_MS)
                    for number in range(3):
                        await alice.send(
                            Question(source="alice", target="assistant", text=f"q{number}")
                        )
                    for _ in range(3):
                        await alice.expect(Answer)
                    await expect(messages_in).to_have_text(str(counted + 3), timeout=WAIT_MS)
                    await bob.job(payload={"n": 2})
                    await expect(page.locator('#workers tr[data-worker="bob"]')).to_have_count(1)
                    screenshot = os.environ.get("BUSPROXY_STATUS_SCREENSHOT")
                    if screenshot:
                        Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                        await page.screenshot(path=screenshot, full_page=True)
                # bob's client went: its link leaves the page, alice's stays.
                await expect(row("bob")).to_have_count(0, timeout=WAIT_MS)
                await expect(row("alice")).to_have_count(1)
            await expect(page.locator("#links tbody tr")).to_have_count(0, timeout=WAIT_MS)
            await expect(page.locator("#no-links")).to_be_visible()
            # The route's totals keep what the two links counted.
            await expect(
                page.locator('#routes tr[data-route="gateway"] [data-field="links_total"]')
            ).to_have_text("2")
        finally:
            await browser.close()

