"""Sweeps (issue 20 item 3): one base request, one or two parameters given several values, one job per combination
under one sweep, ranked by the held-out metric with the best marked, stopped as a whole; over the API and on the
page.

The jobs are real: `accelerate launch` of the SFT trainer on the embedded tiny model on CPU, 2 steps each with 4
rows held out (val_size), so eval_loss reaches each job's metrics.jsonl. The checks that refuse a sweep run
through Service.start_sweep as Start's do, and launch nothing.
"""
import json
import re
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import standins

from tlab_gradio import settings, sweeps
from tlab_gradio.jobs import JobManager
from tlab_gradio.request_error import RequestError
from tlab_gradio.service import JobError, Service

SFT = "llama_sft_multi_gpu"
TIMEOUT = 420
TINY = {"device": "cpu", "max_steps": 2, "max_samples": 12, "val_size": 4, "per_device_train_batch_size": 4,
        "max_length": 128, "logging_steps": 1, "gradient_checkpointing": "off", "report_to": "none"}


def base(name="tiny", **params):
    return {"plugin": SFT, "name": name, "params": {**TINY, **params}}


def refused(svc, request, axes, owner=None) -> list[str]:
    with pytest.raises(RequestError) as err:
        svc.start_sweep(request, axes, owner)
    return err.value.problems


def last_eval_loss(job_dir) -> float:
    records = [json.loads(line) for line in (Path(job_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["eval_loss"] for r in records if "eval_loss" in r][-1]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One 2x2 sweep (learning rate 1e-4, 1e-2 x LoRA r 8, 16) run to the end in a workspace of its own, read by the
    service's test and the page's: four real jobs are the slow part of this file, so they run once."""
    root = tmp_path_factory.mktemp("swept")
    with pytest.MonkeyPatch.context() as mp:  # as conftest's `home`, for the module
        for key, value in (("TLAB_HOME", root / "ws"), ("HF_HOME", root / "hf"), ("HF_HUB_OFFLINE", 1),
                           ("HF_DATASETS_OFFLINE", 1), ("TLAB_STOP_GRACE", 5)):
            mp.setenv(key, str(value))
        svc = Service(root / "ws")
        started = svc.start_sweep(base(), "learning_rate=1e-4,1e-2; lora_r=8,16")
        ended = [svc.jobs.wait(job["job_id"], TIMEOUT) for job in started["jobs"]]
        yield SimpleNamespace(home=root / "ws", svc=svc, started=started, ended=ended)
        svc.jobs.close()
        for job_dir in (root / "ws" / "jobs").glob("*"):
            for proc in standins.left_of(job_dir):
                proc.kill()


def test_a_2x2_sweep_queues_four_jobs_that_complete_ranked_by_eval_loss_with_the_best_marked(swept):
    svc, started, home = swept.svc, swept.started, swept.home
    jobs = sorted(started["jobs"], key=lambda j: j["position"])
    assert [j["name"] for j in jobs] == ["tiny lr=1e-4 r=8", "tiny lr=1e-4 r=16", "tiny lr=0.01 r=8",
                                         "tiny lr=0.01 r=16"]
    assert started["state"] in ("QUEUED", "RUNNING") and started["metric"] == "eval_loss"
    assert started["held_out"] and not started["higher_is_better"] and started["best"] is None
    assert started["axes"] == [{"parameter": "learning_rate", "values": [1e-4, 1e-2]},
                               {"parameter": "lora_r", "values": [8, 16]}]
    for job in jobs:  # each job is the base request with its combination's values, as Start would make it
        spec = svc.jobs.get(job["job_id"]).spec
        assert (spec.params["learning_rate"], spec.params["lora_r"]) == (job["values"]["learning_rate"],
                                                                          job["values"]["lora_r"])
        assert spec.params["val_size"] == 4 and spec.params["max_steps"] == 2
        assert svc.clone_request(job["job_id"])["params"]["lora_r"] == job["values"]["lora_r"]
    for done in swept.ended:
        assert done.state == "COMPLETE", "\n".join(svc.job_log(done.id, 60))

    status = svc.sweep_status(started["sweep_id"])
    assert status["state"] == "COMPLETE" and status["counts"] == {"COMPLETE": 4}
    assert "ranked by eval_loss (held-out loss, lower is better)" in status["note"]
    ranked = status["jobs"]
    assert [j["rank"] for j in ranked] == [1, 2, 3, 4]
    values = [j["metric"] for j in ranked]
    assert values == sorted(values)
    assert values == [last_eval_loss(svc.jobs.get(j["job_id"]).job_dir) for j in ranked]  # each job's last evaluation
    assert [j["best"] for j in ranked] == [True, False, False, False]
    assert status["best"] == {k: ranked[0][k] for k in ("job_id", "name", "label", "values", "metric")}

    # The page's table and chart of the sweep
    from tlab_gradio.ui import jobs_view, sweep_panel

    headers, rows = sweep_panel.table_rows(status)
    assert headers == ["Rank", "Job", "lr", "r", "State", "eval_loss", "Step"]
    assert [r[0] for r in rows] == ["★ 1 best", "2", "3", "4"] and rows[0][1].endswith(ranked[0]["name"])
    assert [f"lr={r[2]} r={r[3]}" for r in rows] == [j["label"] for j in ranked]  # values as the names show them
    series = {str(j["job_id"]): {"label": j["label"], "offset": 0,
                                 "series": jobs_view.add_points({}, svc.job_metrics(j["job_id"])[0])} for j in ranked}
    chart = sweep_panel.chart_html(status, series, "eval_loss")
    drawn = dict(re.findall(r'<g class="tl-series tl-eval" data-series="([^"]*)" data-steps="([^"]*)"', chart))
    assert set(drawn) == {"★ " + ranked[0]["label"]} | {j["label"] for j in ranked[1:]}
    assert all(steps.split(",")[-1] == "2" for steps in drawn.values())

    # History survives a restart: the same ranking from a new service on the workspace
    again = Service(home)  # (the module's service goes on: the page's test reads the same workspace)
    assert again.sweep_status(started["sweep_id"])["jobs"] == ranked
    assert [s["sweep_id"] for s in again.list_sweeps()] == [started["sweep_id"]]


def test_a_sweep_with_one_bad_combination_is_refused_whole_naming_it_and_queues_nothing(home, monkeypatch):
    svc = Service()
    problems = refused(svc, base(), "learning_rate=1e-4,5; lora_r=8,16")
    assert problems == ["the sweep was not started (2 of 4 combinations failed their check; nothing was queued)",
                        "lr=5 r=8, lr=5 r=16: `learning_rate` (Learning Rate): 5 is greater than the maximum of 1"]
    assert refused(svc, base(val_size=400), {"lora_r": [8, 16]})[1].startswith(
        "every combination: `val_size` 400 holds out 400 of the dataset's 12 rows")
    assert refused(svc, base(), "learnin_rate=1e-4,2e-4") == [
        "sweep: unknown parameter `learnin_rate` for Llama SFT Trainer -- Huggingface TRL (Multi GPU Support) "
        "(did you mean `learning_rate`?)"]
    assert refused(svc, base(), "lora_r=8") == [
        "sweep: `lora_r` has 1 value; give two or more (a single value belongs in the form)"]
    assert refused(svc, base(), "lora_r=8,8,16")[0] == "sweep: `lora_r` has 8 twice"
    assert refused(svc, base(), "a=1,2; b=1,2; c=1,2")[0].startswith("sweep: 3 parameters given (a, b, c)")
    assert refused(svc, base(), "learning_rate 1e-4")[0].startswith("sweep: 'learning_rate 1e-4' is not "
                                                                    "`parameter=value,value,…`")
    assert refused(svc, base(), "lora_r=1,2,3,4,5; seed=1,2,3,4") == [
        "sweep: 20 combinations; a sweep queues at most 16 jobs: give fewer values"]
    assert refused(svc, {**base(), "params": "max_steps=2"}, "lora_r=8,16") == [
        "`params` must be an object of parameter names and values; got str 'max_steps=2'"]
    assert refused(svc, [base()], "lora_r=8,16")[0].startswith("the request must be a JSON object")
    assert svc.jobs.list() == [] and svc.list_sweeps() == []

    # A value set outside params (cpu_processes at the top) or under Transformer Lab's name is the swept one
    plan = sweeps.combinations({**base(), "cpu_processes": 1, "params": {**TINY, "batch_size": 2}},
                               sweeps.parse_axes({"per_device_train_batch_size": [2, 4], "cpu_processes": [1, 2]}),
                               lambda a, b: {a, b} <= {"batch_size", "per_device_train_batch_size"} or a == b)
    assert [c.label for c in plan] == ["bs=2 cpu_processes=1", "bs=2 cpu_processes=2", "bs=4 cpu_processes=1",
                                       "bs=4 cpu_processes=2"]
    assert all("cpu_processes" not in c.request and "batch_size" not in c.request["params"] for c in plan)
    for combo in plan:
        spec = svc.prepare(combo.request)
        assert (spec.params["per_device_train_batch_size"], spec.launch.num_processes) == tuple(combo.values.values())

    # Without a held-out split the sweep is ranked by the final training loss, and says how to rank by held-out
    metric = sweeps.ranking_metric("sft", [{"val_size": 0, "eval_split": ""}] * 2)
    assert (metric.key, metric.held_out, metric.higher) == ("loss", False, False)
    assert "set val_size (e.g. 0.1) to rank by held-out loss" in metric.note
    assert sweeps.ranking_metric("grpo", [{"eval_split": "test"}]).key == "eval_reward"
    assert sweeps.ranking_metric("grpo", [{"eval_split": "test"}]).higher
    rows = [{"position": i, "state": s, "metric": m} for i, (s, m) in
            enumerate([("COMPLETE", 0.5), ("RUNNING", 0.1), ("COMPLETE", 0.9), ("FAILED", None), ("COMPLETE", 0.5)])]
    assert [(r["position"], r["rank"], r["best"]) for r in sweeps.rank(rows, sweeps.ranking_metric("grpo", [{}]))] \
        == [(2, 1, True), (0, 2, False), (4, 3, False), (1, None, False), (3, None, False)]

    # Hosted: the visitor's free job slots cap a sweep; another visitor's sweep is answered as if it did not exist
    monkeypatch.setenv("TLAB_HOSTED", "1")
    assert refused(svc, base(), "lora_r=8,16,32", owner="user:a") == [
        "sweep: 3 combinations, and this server lets a visitor have 2 unfinished jobs "
        "(TLAB_HOSTED_MAX_JOBS_PER_VISITOR; you have 0): give at most 2 combinations, or wait for your jobs to end"]
    mine = svc.sweeps.create("mine", SFT, "user:a", sweeps.parse_axes("lora_r=8,16"), metric)
    assert svc.sweep_status(mine, "user:a")["name"] == "mine"
    for call in (svc.sweep_status, svc.stop_sweep):
        with pytest.raises(JobError, match=f"no sweep with id {mine}"):
            call(mine, "user:b")
    assert svc.list_sweeps("user:b") == [] and len(svc.list_sweeps("user:a")) == 1


def test_a_workspace_made_before_sweeps_keeps_its_jobs_and_gains_the_tables(home):
    """The job store of an earlier version (no sweep tables): opened by this one, its jobs stay and sweeps work."""
    old = JobManager(home)
    old._db.execute("INSERT INTO jobs (name, plugin, state, config, created) VALUES ('old', ?, 'COMPLETE', '{}', 1)",
                    (SFT,))
    old.close()
    tables = {r[0] for r in sqlite3.connect(home / "jobs.sqlite").execute("SELECT name FROM sqlite_master")}
    assert "sweeps" not in tables
    svc = Service(home)
    assert svc.list_sweeps() == [] and [j.name for j in svc.jobs.list()] == ["old"]
    tables = {r[0] for r in sqlite3.connect(home / "jobs.sqlite").execute("SELECT name FROM sqlite_master")}
    assert {"sweeps", "sweep_jobs"} <= tables


def test_stop_sweep_takes_its_queued_jobs_off_the_queue_and_stops_the_running_one(home, monkeypatch, no_leftovers):
    monkeypatch.setenv("TLAB_MAX_CONCURRENT_JOBS", "1")  # one runs, the others wait QUEUED
    svc = Service()
    started = svc.start_sweep(base("stop-me", max_steps=500), {"learning_rate": [1e-4, 2e-4, 3e-4]})
    first, *rest = sorted(started["jobs"], key=lambda j: j["position"])
    assert svc.jobs.get(first["job_id"]).state == "RUNNING"
    assert [svc.jobs.get(j["job_id"]).state for j in rest] == ["QUEUED", "QUEUED"]
    out = svc.stop_sweep(started["sweep_id"])
    assert out["stopped"] == sorted(j["job_id"] for j in started["jobs"])
    for job in rest:
        ended = svc.jobs.get(job["job_id"])
        assert (ended.state, ended.reason, ended.started) == ("STOPPED", "stopped before it started", None)
    assert svc.jobs.wait(first["job_id"], 60).state == "STOPPED"
    time.sleep(1)  # the scheduler ran on the first job's end: nothing of the sweep started
    status = svc.sweep_status(started["sweep_id"])
    assert status["state"] == "STOPPED" and status["counts"] == {"STOPPED": 3} and status["best"] is None
    assert all(svc.jobs.get(j["job_id"]).started is None for j in rest)
    assert svc.stop_sweep(started["sweep_id"])["stopped"] == []  # again: nothing left to stop
    assert settings.max_concurrent_jobs() == 1


def test_a_sweep_from_the_page_its_ranked_table_and_chart_and_the_api(swept, tmp_path, chromium):
    """A person's path, on the workspace of the 2x2 sweep: the form's settings loaded from a preset, a sweep of two
    learning rates started from the Sweeps section and stopped whole with Stop sweep; the 2x2 sweep picked: its
    ranked table marks the best, its chart draws the four jobs' eval_loss curves (the best's name starred), a row
    opens that job below. Then a script on the same app: /sweep_status ranks as the page does, /start_sweep with a
    bad combination is refused naming it, a sweep started over the API is stopped with /stop_sweep, /list_sweeps."""
    playwright = pytest.importorskip("playwright.sync_api")
    from gradio_client import Client

    from conftest import ARTIFACTS
    from test_browser import opened_page
    from tlab_gradio.presets import Presets

    Presets(swept.home / "presets").save("sweep-base", base("page-sweep", max_steps=500))
    first = swept.started["sweep_id"]
    ranked = swept.svc.sweep_status(first)["jobs"]
    expect = playwright.expect
    with opened_page({"TLAB_HOME": str(swept.home)}, tmp_path, chromium) as page:
        page.get_by_role("tab", name="Train").click()
        page.locator("#preset-pick input").first.click()
        page.get_by_role("option", name="sweep-base").click()
        page.locator("#load-preset").click()
        expect(page.locator("#param-max_steps input").first).to_have_value("500")
        expect(page.locator("#form-checks")).to_contain_text("Settings look good")
        page.locator("#sweep-panel").get_by_text("Sweeps: several values").click()
        # Opened, the section shows the newest sweep (it showed an empty pick, table and chart)
        expect(page.locator("#sweep-summary")).to_contain_text(f"Sweep {first} · tiny")
        expect(page.locator("#sweep-table")).to_contain_text("★ 1 best")
        page.locator("#sweep-axes input, #sweep-axes textarea").first.fill("learning_rate=1e-4,1e-2")
        page.locator("#start-sweep").click()
        msg, summary, table = page.locator("#sweep-msg"), page.locator("#sweep-summary"), page.locator("#sweep-table")
        expect(msg).to_contain_text(f"Started sweep {first + 1}: 2 jobs (lr=1e-4, lr=0.01)")
        expect(summary).to_contain_text("ranked by eval_loss (held-out loss")
        expect(table).to_contain_text("page-sweep lr=0.01")
        page.locator("#stop-sweep").click()
        expect(msg).to_contain_text(f"Stopped sweep {first + 1}: 2 jobs stopped or taken off the queue")
        expect(summary).to_contain_text("STOPPED", timeout=60_000)
        expect(page.locator("#stop-sweep")).to_be_hidden()

        page.locator("#sweep-pick input").first.click()
        page.get_by_role("option", name=re.compile(rf"^{first} · tiny \(4 jobs, complete\)")).click()
        expect(table).to_contain_text("★ 1 best")
        expect(summary).to_contain_text(f"best: ★ {ranked[0]['label']}")
        series = page.locator("#sweep-chart g.tl-series.tl-eval")
        expect(series).to_have_count(4)
        names = [series.nth(i).get_attribute("data-series") for i in range(4)]
        assert sorted(names) == sorted(["★ " + ranked[0]["label"]] + [j["label"] for j in ranked[1:]])
        page.screenshot(path=str(ARTIFACTS / "sweep.png"), full_page=True)
        best_row = table.get_by_role("row").filter(has_text="★ 1 best")
        best_row.locator("span").filter(has_text=ranked[0]["name"]).first.click()
        expect(page.locator("#job-header")).to_contain_text(ranked[0]["name"])  # the best job opens below

        client = Client(page.url, verbose=False)
        status = client.predict(first, api_name="/sweep_status")
        assert [(j["job_id"], j["rank"], j["best"]) for j in status["jobs"]] == [
            (j["job_id"], j["rank"], j["best"]) for j in ranked]
        with pytest.raises(Exception, match=r"lr=5: `learning_rate` \(Learning Rate\): 5 is greater than"):
            client.predict(base("api"), "learning_rate=1e-4,5", api_name="/start_sweep")
        started = client.predict(base("api", max_steps=500), {"lora_r": [8, 16]}, api_name="/start_sweep")
        assert [j["name"] for j in started["jobs"]] == ["api r=8", "api r=16"]
        stopped = client.predict(started["sweep_id"], api_name="/stop_sweep")
        assert stopped["stopped"] == [j["job_id"] for j in started["jobs"]]
        assert stopped["state"] in ("STOPPING", "STOPPED")
        listed = client.predict(api_name="/list_sweeps")
        assert [(s["sweep_id"], s["jobs"]) for s in listed] == [(first + 2, 2), (first + 1, 2), (first, 4)]
        assert listed[1]["state"] == "STOPPED" and listed[2]["state"] == "COMPLETE"
