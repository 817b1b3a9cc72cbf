"""The hosted page in headless Chromium: a visitor trains a job and downloads its output, though launch no
longer passes allowed_paths (the handler's returned files go through gradio's cache); another browser session
does not see the job. The workspace lies outside the app's and the temp folder, where gradio takes no file."""
import re
import shutil
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from test_browser import opened_page, playwright


@pytest.fixture
def far_home(home):
    path = Path.home() / ".cache" / f"tlab-hosted-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_owner_downloads_a_finished_jobs_files_and_no_one_else_sees_the_job(far_home, tmp_path, chromium):
    expect = playwright.expect
    with opened_page({"TLAB_HOSTED": "1", "TLAB_HOME": str(far_home)}, tmp_path, chromium) as page:
        page.get_by_role("tab", name="Train").click()
        page.locator("#new-task").click()
        page.locator("#task-name textarea, #task-name input").first.fill("hosted-run")
        steps = page.locator("#param-max_steps input").first
        steps.fill("2")
        steps.press("Tab")
        expect(page.locator("#form-checks")).to_contain_text("Settings look good")
        page.locator("#start").click()
        expect(page.locator("#start-msg")).to_contain_text(re.compile(r"Started job \d+"))
        expect(page.locator("#job-header")).to_contain_text("COMPLETE", timeout=300_000)
        files = page.locator("#job-files")
        expect(files).to_contain_text("adapter_model")
        link = files.locator("a[href*='adapter_model']").first
        href = link.get_attribute("href")
        assert str(far_home) not in href  # served from gradio's cache, not by its workspace path
        with urllib.request.urlopen(urllib.parse.urljoin(page.url, href), timeout=30) as r:
            assert r.status == 200 and len(r.read()) > 0
        expect(page.locator("#jobs-table")).to_contain_text("hosted-run")

        other = page.context.browser.new_context().new_page()  # another visitor: a new session
        other.goto(page.url)
        other.get_by_role("tab", name="Train").click()
        other.wait_for_timeout(4000)  # a few ticks of the jobs list
        expect(other.locator("#jobs-table")).not_to_contain_text("hosted-run")
