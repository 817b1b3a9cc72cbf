"""How long the page takes to answer a person, in a real Chromium on the real app (issue 18 item 7): opening
`+ New`, switching the plugin (SFT -> GRPO -> SFT), cloning a finished job into the form, and the live check
after a field changes. Each is timed from the click or key to the moment the page shows the result, several
rounds, median and range. Speed claims live here, not in timed tests.

    python bench/page_latency.py --rounds 5 --out bench/results/page-latency-DATE-cpu2.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_gpu_check import start_app  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
SFT, GRPO = "Llama SFT Trainer -- Huggingface TRL (Multi GPU Support)", "GRPO Trainer (Multi GPU)"


def finished_job(url: str) -> str:
    """A one-step SFT job on the embedded model, run to COMPLETE through the API; its name."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    job = client.predict({"plugin": "llama_sft_multi_gpu", "name": "latency-source",
                          "params": {"device": "cpu", "max_steps": 1}}, api_name="/start_job")
    deadline = time.monotonic() + 600
    while client.predict(job["job_id"], api_name="/job_status")["state"] not in ("COMPLETE", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            raise RuntimeError("the source job did not finish in 600 s")
        time.sleep(1)
    return "latency-source"


def timed(action, done) -> float:
    start = time.perf_counter()
    action()
    done()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    home = Path(tempfile.mkdtemp(prefix="page-latency-"))
    proc, url = start_app(home)
    times: dict[str, list[float]] = {"open_new_form": [], "switch_to_grpo": [], "switch_to_sft": [], "clone": [],
                                     "check_after_a_change": []}
    try:
        name = finished_job(url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            expect.set_options(timeout=120_000)
            page.goto(url)
            page.get_by_role("tab", name="Train").click()
            checks = page.locator("#form-checks")
            for _ in range(args.rounds):
                times["open_new_form"].append(timed(
                    lambda: page.locator("#new-task").click(),
                    lambda: (expect(page.locator("#param-lora_r")).to_be_visible(),
                             expect(checks).to_contain_text("Settings look good"))))

                def pick(option):
                    page.locator("#plugin input").first.click()
                    page.get_by_role("option", name=option).click()
                times["switch_to_grpo"].append(timed(
                    lambda: pick(GRPO), lambda: (expect(page.locator("#param-num_generations")).to_be_visible(),
                                                 expect(checks).to_contain_text("Settings look good"))))
                times["switch_to_sft"].append(timed(
                    lambda: pick(SFT), lambda: (expect(page.locator("#param-lora_r")).to_be_visible(),
                                                expect(checks).to_contain_text("Settings look good"))))
                steps = page.locator("#param-max_steps input").first
                for value in ("-5", "3"):  # wrong, then right: the verdict must change each time
                    def change(v=value):
                        steps.fill(v)
                        steps.press("Tab")
                    want = "less than the minimum" if value == "-5" else "Settings look good"
                    times["check_after_a_change"].append(timed(change, lambda w=want: expect(checks).to_contain_text(w)))
                page.locator("#jobs-table span").filter(has_text=name).first.click()
                expect(page.locator("#job-header")).to_contain_text("COMPLETE")
                times["clone"].append(timed(
                    lambda: page.locator("#clone-job").click(),
                    lambda: (expect(page.locator("#task-form")).to_be_visible(),
                             expect(page.locator("#task-name textarea, #task-name input").first).to_have_value(
                                 f"{name} (copy)"),
                             expect(page.locator("#task-form")).to_be_in_viewport(),
                             expect(checks).to_contain_text("Settings look good"))))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(20)
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": len(os.sched_getaffinity(0)), "rounds": args.rounds,
              "load_average_after": os.getloadavg(),
              "seconds": {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "all": v}
                          for k, v in times.items() if v}}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: round(v["median"], 2) for k, v in report["seconds"].items()}))


if __name__ == "__main__":
    main()
