"""Issue 18, items 8 and 10: what the page says must be true. Resume is offered only where a checkpoint exists
(the service says so), a stopped job's row shows the step it reached, a plugin with its own environment says what
it needs, no help text cites a bench file, and the Computer tab's load curves come from samples the service takes
(and list the devices each running job holds). Jobs here are stand-ins (tests/standins.py) run by the real
scheduler."""
import json
import time

import pytest

import standins
from tlab_gradio import jobs as jobs_mod
from tlab_gradio import monitor
from tlab_gradio.jobfiles import PROGRESS
from tlab_gradio.service import Service


pytestmark = pytest.mark.usefixtures("no_leftovers")  # conftest: kills what a test left running


@pytest.fixture
def svc(home, monkeypatch):
    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", standins.launch_files)
    return Service(home)


def stopped_at_step_2(svc: Service):
    """A job stopped by the user after its second step (of 100), with no checkpoint saved."""
    job = svc.jobs.create(standins.spec("stopped", "progress", steps=2, every=0.2, hang=True))
    svc.jobs.wait(job.id, 30, until=lambda j: (json.loads((j.job_dir / PROGRESS).read_text()) if
                                               (j.job_dir / PROGRESS).is_file() else {}).get("step") == 2)
    svc.stop_job(job.id)
    done = svc.jobs.wait(job.id, 30)
    assert done.state == "STOPPED"
    return done


def test_resume_is_offered_only_when_a_checkpoint_exists(svc):
    job = stopped_at_step_2(svc)
    assert svc.job_status(job.id)["resumable"] is False
    assert svc.job_details(job.id)["resumable"] is False
    with pytest.raises(ValueError, match="saved no checkpoint"):  # what Resume would have met
        svc.resume_job(job.id)
    half = job.job_dir / "checkpoints" / "checkpoint-1"
    half.mkdir(parents=True)  # a checkpoint still being written (no trainer_state.json) does not count
    assert svc.job_status(job.id)["resumable"] is False
    (half / "trainer_state.json").write_text("{}")
    assert svc.job_status(job.id)["resumable"] is True
    assert svc.job_details(job.id)["resumable"] is True


def test_a_stopped_jobs_row_shows_the_step_it_reached(svc):
    from tlab_gradio.ui import jobs_view

    job = stopped_at_step_2(svc)
    row = svc.job_row(job.id)
    assert (row["step"], row["total_steps"]) == (2, 100)
    [cells] = jobs_view.job_rows(svc)
    assert cells[jobs_view.LIST_HEADERS.index("Progress")] == "step 2/100"


def test_a_plugin_with_its_own_environment_says_what_it_needs():
    from tlab_gradio.ui import plugins_tab

    plugins = {p["id"]: p for p in Service().plugin_list()}
    unsloth = plugins["unsloth_grpo"]
    assert unsloth["environment"] == "unsloth"
    assert any(line.startswith("unsloth==") for line in unsloth["needs"])
    text = plugins_tab.summary(unsloth)
    assert "nothing beyond" not in text
    assert "a Python environment of its own, <code>unsloth</code>" in text
    assert "<code>unsloth==" in text and "requirements-unsloth.txt" in text
    assert "missing package unsloth" in text  # its status, beside what it needs
    assert plugins_tab.short_reasons(unsloth).startswith("missing package unsloth")
    sft = plugins["llama_sft_multi_gpu"]
    assert "in the app's environment" in plugins_tab.summary(sft) and "<code>trl" in plugins_tab.summary(sft)


def test_no_help_text_cites_a_bench_file():
    for p in Service().plugin_list():
        for name, spec in p.get("parameters", {}).items():
            assert "bench/" not in spec.get("help", ""), (p["id"], name)
        assert "bench/" not in p.get("description", ""), p["id"]


def test_machine_usage_samples_the_machine_and_lists_each_running_jobs_devices(svc):
    from tlab_gradio.ui import computer_tab

    svc.monitor = monitor.Monitor(interval=0.3, window=1.2)
    first = svc.machine_usage()
    assert len(first["samples"]) >= 1 and first["jobs"] == []
    job = svc.jobs.create(standins.spec("busy", "sleep"))
    svc.jobs.wait(job.id, 30, until=lambda j: j.state == "RUNNING")
    time.sleep(2.0)
    usage = svc.machine_usage()
    samples = usage["samples"]
    assert 2 <= len(samples) <= 5  # the ring buffer keeps the window only (1.2 s / 0.3 s, and the newest)
    assert all(0 <= s["cpu_pct"] <= 100 and 0 < s["memory_used_gib"] < s["memory_total_gib"] for s in samples)
    assert [s["time"] for s in samples] == sorted(s["time"] for s in samples)
    assert usage["jobs"] == [{"id": job.id, "name": "busy", "state": "RUNNING", "device": "cpu", "gpus": [],
                              "processes": 1, "started": svc.job_row(job.id)["started"]}]

    page = computer_tab.usage_html(usage)
    for kind in ("cpu", "memory"):
        curve = page.split(f"tl-usage-{kind}", 1)[1].split("</svg>", 1)[0]
        steps = curve.split('data-steps="', 1)[1].split('"', 1)[0].split(",")
        assert len(steps) == len(samples) >= 2
    assert "tl-usage-gpu" not in page  # no GPU here, no GPU curves
    assert f'<tr data-job="{job.id}">' in page and "CPU · 1 process<" in page
    svc.stop_job(job.id)


def test_the_computer_tab_draws_each_gpu_and_the_gpus_a_job_holds():
    from tlab_gradio.ui import computer_tab

    now = 1_000_000.0
    gpu = [{"index": i, "utilization_pct": 40 + i, "memory_used_gib": 10.0 + i, "memory_total_gib": 80.0}
           for i in range(2)]
    usage = {"interval_s": 2, "window_s": 300,
             "samples": [{"time": now - 4 + 2 * k, "cpu_pct": 50.0, "memory_used_gib": 3.0, "memory_total_gib": 16.0,
                          "gpus": gpu} for k in range(3)],
             "jobs": [{"id": 7, "name": "big", "state": "RUNNING", "device": "cuda", "gpus": ["0", "1"],
                       "processes": 2, "started": now - 90}]}
    page = computer_tab.usage_html(usage, now)
    assert "tl-usage-gpu-util" in page and "tl-usage-gpu-memory" in page
    assert 'data-series="GPU 0 %"' in page and 'data-series="GPU 1 GiB"' in page
    assert "GPUs 0, 1" in page and "1m 30s" in page
    assert computer_tab.gpu_html([]).count("GPU Specs") == 0  # no "GPU Specs (0)" on a machine without one
