"""The README's picture of the chat page: `reficr serve` on the trained run, two seeker turns typed in headless
Chromium (playwright, Debian's binary), the page's screenshot written to ``--out`` (not a benchmark: it measures
nothing; it lives here beside the other scripts that document a run).

    python bench/serve_page.py --out bench/serve_page.png       # after `make run`; `make chromium` for the browser
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
TURNS = ("Hi! I loved Superbad and The Hangover. Any other comedies?", "Something more recent, please.")


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url}: no answer in {seconds:.0f} s; expected `reficr serve` to be up")
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench/serve_page.png"))
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-m", "pipeline.service.cli", "serve", "--port", str(args.port)], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{args.port}"
        wait_for(url + "/healthz", 300)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('health').textContent.includes('items')", timeout=60_000)
            for i, text in enumerate(TURNS):
                if i:  # the second turn recommends whatever dialogue management says
                    page.check("#force")
                page.fill("#message", text)
                page.click("#send")
                page.locator("[data-testid=turn]").nth(i).wait_for(timeout=300_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait()
    print(f"screenshot -> {args.out}")


if __name__ == "__main__":
    main()
