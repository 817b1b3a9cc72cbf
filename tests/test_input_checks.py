"""Attacks on the request's values (issue 17, finding 9): each was accepted, crashed with an unclear message, or
hit the wrong job before every number was finite and bounded, every field's type checked before use, names
matched in whole, and job ids whole numbers. Each refusal names the field and the way out."""
import math
import sys
import time

import pytest

from tlab_gradio import service as service_mod
from tlab_gradio.service import RequestError, Service

SFT = "llama_sft_multi_gpu"
GRPO = "grpo_multi_gpu"


def refusal(request) -> str:
    with pytest.raises(RequestError) as info:
        Service().prepare(request)
    return "\n".join(info.value.problems)


@pytest.mark.parametrize("name, value", [
    ("learning_rate", math.nan), ("max_grad_norm", math.nan), ("lora_dropout", math.nan),
    ("warmup_steps", math.inf), ("weight_decay", math.nan),
    ("seed", 10**30), ("max_steps", 10**20), ("save_steps", 2**63),  # no maximum declared: the app's bound
])
def test_every_number_is_finite_and_bounded(home, name, value):
    got = refusal({"plugin": SFT, "device": "cpu", "params": {name: value}})
    assert f"`{name}`" in got, got
    assert "finite" in got or "maximum" in got or "minimum" in got, got


@pytest.mark.parametrize("field, value", [
    ("completion_template", {}), ("completion_template", {"text": "{{output}}"}),  # silently ignored
    ("template", 5), ("model", 5),  # 'int' object has no attribute 'strip'
    ("name", 5), ("name", ["a"]), ("plugin", 5), ("plugin", None),
    ("dataset", 5.5),
])
def test_every_request_field_has_its_type_checked(home, field, value):
    request = {"plugin": SFT, "device": "cpu", field: value}
    got = refusal(request)
    assert f"`{field}`" in got, got
    assert "unknown plugin" not in got and "attribute" not in got, got


@pytest.mark.parametrize("key, value", [("name", ["a"]), ("name", 7), ("subset", 5)])
def test_a_dataset_spec_has_its_types_checked(home, key, value):
    dataset = {"source": "hub", "name": "org/data", key: value}
    got = refusal({"plugin": SFT, "device": "cpu", "dataset": dataset})
    assert f"`dataset.{key}`" in got, got


@pytest.mark.parametrize("field, value", [
    ("dataset", "a" * 5000), ("dataset", {"source": "file", "name": "a" * 300}), ("model", "a" * 5000),
    ("model", "/tmp/" + "a" * 300),
])
def test_a_path_too_long_names_the_field(home, field, value):
    got = refusal({"plugin": SFT, "device": "cpu", field: value})  # was OSError [Errno 36]
    assert f"`{field}" in got and "Errno" not in got, got


@pytest.mark.parametrize("plugin, name", [(SFT, "adaptor_name"), (GRPO, "output_name")])
def test_a_name_pattern_matches_the_whole_value(home, plugin, name):
    for value in ("x\n", "x\n\n", "ok\nmore"):
        got = refusal({"plugin": plugin, "device": "cpu", "params": {name: value}})
        assert f"`{name}`" in got, (value, got)


@pytest.mark.parametrize("field, value", [
    ("name", "run\x00one"), ("name", "report\u202egpj.exe"), ("name", "line\nbreak"), ("name", "a\u2066b"),
    ("model", "org/mo\x00del"), ("dataset", {"source": "hub", "name": "org/da\u202eta"}),
])
def test_names_refuse_nul_and_direction_overrides(home, field, value):
    got = refusal({"plugin": SFT, "device": "cpu", field: value})
    assert f"`{field}" in got and ("control" in got or "direction" in got), got


def test_an_empty_gpu_id_list_is_refused_not_taken_as_every_gpu(home, monkeypatch):
    from tlab_gradio import gpus

    fake = [gpus.GPU(i, str(i), "H100", 80000, 0, 0, 30, (9, 0)) for i in range(2)]
    monkeypatch.setattr(service_mod.gpus, "list_gpus", lambda refresh=False: fake)
    for value in ("", "  "):
        got = refusal({"plugin": SFT, "device": "cuda", "gpu_ids": value})
        assert "gpu_ids" in got and "auto" in got, got


@pytest.fixture
def finished_job(home, monkeypatch):
    """Job 1, COMPLETE: a stand-in process instead of training."""
    from tlab_gradio import jobs as jobs_mod

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files",
                        lambda job_dir, *a, **k: [sys.executable, "-c", "pass", str(job_dir)])
    svc = Service()
    job = svc.start_job({"plugin": SFT, "device": "cpu"})
    deadline = time.monotonic() + 60
    while svc.job_row(job["id"])["state"] not in ("COMPLETE", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return svc, job["id"]


BAD_IDS = [1.5, True, "1.5", math.nan, math.inf, 2**70, 0, -1, "one", None]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_a_job_id_must_be_a_whole_number(finished_job, bad):
    svc, job_id = finished_job
    assert job_id == 1
    for method in (svc.delete_job, svc.stop_job, svc.resume_job, svc.job_status, svc.job_log, svc.job_view,
                   svc.clone_request, svc.job_row, svc.job_metrics, svc.job):
        with pytest.raises(RequestError, match="job_id") as info:
            method(bad)  # delete_job(1.5) deleted job 1
        assert "whole number" in str(info.value), str(info.value)
    assert svc.job_row(1)["state"] == "COMPLETE"  # still there
    assert svc.job_row(1.0)["id"] == svc.job_row("1")["id"] == 1  # what a number box or a text field sends


def api_functions(svc):
    import gradio as gr

    from tlab_gradio.ui import api

    with gr.Blocks() as demo:
        api.register(svc)
    return {f.api_name: f.fn for f in demo.fns.values()}


def test_the_api_refuses_what_is_not_a_request_object(home):
    import gradio as gr

    start_job = api_functions(Service())["start_job"]
    for bad in ("llama_sft_multi_gpu", ["x"], 5):
        with pytest.raises(gr.Error) as info:
            start_job(bad, visit=None)  # was "unknown plugin ''"
        assert "JSON object" in str(info.value) and "unknown plugin" not in str(info.value)


def test_the_api_takes_whole_job_ids_and_line_counts_only(finished_job):
    import gradio as gr

    svc, job_id = finished_job
    fns = api_functions(svc)
    for bad in (1.5, "1.5", True, math.nan):
        for name in ("job_status", "stop_job", "resume_job", "delete_job", "job_log"):
            with pytest.raises(gr.Error, match="whole number"):
                fns[name](bad, visit=None)  # job 1 was found, and deleted, for 1.5
    for lines in (math.inf, math.nan, 1.5, "many"):
        with pytest.raises(gr.Error, match="lines"):
            fns["job_log"](1, lines)  # OverflowError escaped for inf
    assert svc.job_row(1)["state"] == "COMPLETE"
    assert isinstance(fns["job_log"](1, 5), str)


def test_the_other_endpoints_check_their_arguments_types(home):
    import gradio as gr

    fns = api_functions(Service())
    for name, args, field in [("upload_reward_file", ("a.py", 5), "source"),  # 'int' has no attribute 'encode'
                              ("upload_reward_file", ("a.py", None), "source"),
                              ("install_plugin", (5,), "plugin"), ("install_plugin", (None,), "plugin"),
                              ("install_plugin", (["x"],), "plugin")]:  # TypeErrors escaped as tracebacks
        with pytest.raises(gr.Error) as info:
            fns[name](*args)
        assert f"`{field}`" in str(info.value), (name, args, str(info.value))


@pytest.mark.parametrize("method, args, field", [
    ("save_preset", (5, {"plugin": SFT}), "preset name"), ("load_preset", (["a"],), "preset name"),
    ("delete_preset", ({"a": 1},), "preset name"),  # 'int' object has no attribute 'strip'
    ("preview_data", ("sft_instructions", None, None, 10**9), "`rows`"),  # every row rendered
    ("preview_data", ("sft_instructions", None, None, 2.5), "`rows`"),
])
def test_the_pages_service_calls_check_their_arguments(home, method, args, field):
    with pytest.raises(RequestError) as info:
        getattr(Service(), method)(*args)
    assert field in str(info.value) and "must be" in str(info.value), str(info.value)
