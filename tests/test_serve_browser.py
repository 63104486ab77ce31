"""The chat page in a real browser: Debian's headless Chromium (``make chromium`` installs it; playwright drives
the system binary, it downloads no browser of its own) opens `reficr serve`'s page on the tiny run, types as the
seeker and sees the recommender's reply and the recommended titles.

The screenshot is kept in the test's tmp dir (the README's picture, of the default run, is bench/serve_page.py's).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def chromium_binary() -> str | None:
    """The real binary behind Debian's /usr/bin/chromium wrapper script, else whatever `chromium` is on PATH."""
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).exists():
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        message = "no chromium: `make chromium` (Debian: apt-get install chromium) installs it"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it (.ci/run): missing there is a failure, not a skip
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def test_a_person_chats_on_the_page_and_sees_a_reply_and_recommended_titles(browser, live_server, tiny_service, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server + "/")
    page.wait_for_function("document.getElementById('health').textContent.includes('items')", timeout=30_000)
    assert "redial" in page.inner_text("#health")

    page.check("#force")  # recommend whatever dialogue management says: the tiny model's DM output does not matter
    page.fill("#message", "Hi! I loved Superbad and The Hangover. Any other comedies?")
    page.click("#send")
    turn = page.locator("[data-testid=turn]").first
    turn.wait_for(timeout=120_000)
    titles = turn.locator("[data-testid=recommended] li").all_inner_texts()
    reply = turn.locator("[data-testid=reply]").inner_text()
    assert reply.strip()
    assert titles and set(titles) <= set(tiny_service.system.title.values())
    assert len(turn.locator("ol.candidates li").all_inner_texts()) == 10  # the default top_k
    assert page.locator(".msg.seeker").inner_text().startswith("Hi! I loved Superbad")

    # a second turn sends the whole conversation (seeker, recommender, seeker)
    page.fill("#message", "Something more recent, please.")
    page.click("#send")
    page.locator("[data-testid=turn]").nth(1).wait_for(timeout=120_000)
    assert page.locator(".msg.seeker").count() == 2 and page.locator("#error").is_hidden()
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # a request the service refuses shows its reason, and the conversation is left as it was
    page.fill("#message", "x" * 2001)
    page.click("#send")
    page.locator("#error").wait_for(state="visible", timeout=30_000)
    assert "at most 2000 characters" in page.inner_text("#error") and page.locator(".msg.seeker").count() == 2
    page.click("#reset")
    assert page.locator("[data-testid=turn]").count() == 0 and not errors, errors
    page.close()
