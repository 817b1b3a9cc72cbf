"""The README's screenshots, taken from the real app in headless Chromium at 1400 x 1000: the `+ New` form as it
opens, a running SFT job (its log, progress and live loss curve), and the Computer tab. Offline, on a CPU, with the
embedded tiny model.

    python docs/screenshots.py            # writes docs/train-form.png, docs/running-job.png, docs/computer.png
"""
from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "bench"))

from app_gpu_check import start_app  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    proc, url = start_app(Path(tempfile.mkdtemp(prefix="screenshots-")))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            page.locator("#new-task").click()
            checks = page.locator("#form-checks")
            expect(checks).to_contain_text("Settings look good")
            page.locator("#task-name input, #task-name textarea").first.fill("alpaca-lora-run-1")
            steps = page.locator("#param-max_steps input").first
            steps.fill("150")
            steps.press("Tab")
            expect(checks).to_contain_text("Settings look good")
            page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
            time.sleep(1)
            page.screenshot(path=str(DOCS / "train-form.png"))

            page.locator("#start").click()
            expect(page.locator("#job-header")).to_contain_text("RUNNING")
            points = page.locator('#job-chart g.tl-series[data-series="loss"] circle.tl-point')
            expect(points.nth(14)).to_be_attached()  # a curve, not a dot
            page.locator("#job-view").scroll_into_view_if_needed()
            page.evaluate("window.scrollBy(0, -70)")
            time.sleep(1)
            page.screenshot(path=str(DOCS / "running-job.png"))

            page.get_by_role("tab", name="Computer").click()  # while the job runs: it is listed with what it holds
            expect(page.locator("body")).to_contain_text("alpaca-lora-run-1")
            time.sleep(6)  # a few more samples on the usage curves
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(DOCS / "computer.png"))
            page.get_by_role("tab", name="Train").click()
            if "RUNNING" in page.locator("#job-header").inner_text():  # a fast machine may have finished it
                page.locator("#stop-job").click()
                expect(page.locator("#job-header")).to_contain_text(re.compile("STOPPED|COMPLETE"))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    main()
