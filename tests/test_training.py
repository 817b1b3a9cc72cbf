"""Real jobs: `accelerate launch` of the SFT trainer on the embedded tiny model, on CPU.

Each test starts a job through the service, as the page and the API do, and
checks what a user would: the end state, every rank, metrics, saved output, and
that Stop / failure / resume behave. The `home` fixture plants a user accelerate
default config asking for 3 fp16 processes: the job's own settings must win.
"""
import json
import math
import shutil
from pathlib import Path


from tlab_gradio import launcher
from tlab_gradio.service import Service

SFT = "llama_sft_multi_gpu"
TIMEOUT = 420


def sft_request(**params):
    base = {"device": "cpu", "logging_steps": 1, "per_device_train_batch_size": 4, "max_length": 128,
            "gradient_checkpointing": "off"}
    return {"plugin": SFT, "name": "test", "params": {**base, **params}}


def metrics(job):
    path = Path(job["job_dir"]) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def processes_of(job_dir: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if job_dir.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_two_process_cpu_job_completes_with_both_ranks(home, monkeypatch):
    # DDP's own settings from TLAB_DDP (bench/multi_gpu.py's search, issue 22) reach the wrapper DDP really runs
    monkeypatch.setenv("TLAB_DDP", '{"static_graph": true, "gradient_as_bucket_view": true, "bucket_cap_mb": 50}')
    svc = Service()
    job = svc.start_job(sft_request(cpu_processes=2, max_steps=4, fuse_model=True, learning_rate=0.003))
    assert job["state"] in ("QUEUED", "RUNNING")
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(job["id"], 400))
    assert done.state == "COMPLETE", log
    assert done.exit_code == 0
    assert "rank 0 of world size 2" in log and "rank 1 of world size 2" in log
    assert "--multi_gpu" in done.command and done.command[done.command.index("--num_processes") + 1] == "2"
    assert ("DDP ran with static_graph=True, gradient_as_bucket_view=True, bucket_cap_mb=50, "
            "broadcast_buffers=True") in log

    records = [r for r in metrics(svc.job(job["id"])) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 and math.isfinite(r["loss"]) for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    assert any("tokens_per_second" in r for r in records)
    info = svc.job(job["id"])
    assert info["progress"]["step"] == 4 and info["progress"]["max_steps"] == 4
    assert info["result"]["world_size"] == 2

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = Path(done.output_dir) / "tlab-sft"
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(done.spec.model.path)
    adapted = PeftModel.from_pretrained(base, str(out))
    assert any("lora_A" in name for name, _ in adapted.named_parameters())
    fused = AutoModelForCausalLM.from_pretrained(Path(done.output_dir) / "tlab-sft-fused")
    assert not any("lora" in name for name, _ in fused.named_parameters())
    assert (Path(done.job_dir) / "tensorboard").is_dir()


def test_every_logged_step_reaches_the_page_at_its_next_refresh(home):
    """A 10-step run with the default (automatic) logging interval logs every step; each refresh of the page
    (job_view from the offset the last one returned, what the job page's timer asks) returns every metrics line
    written before it, and the chart holds every step when the job is COMPLETE."""
    import time

    from tlab_gradio.ui import jobs_view

    svc = Service()
    request = sft_request(max_steps=10)
    del request["params"]["logging_steps"]  # the form's default: automatic
    job = svc.start_job(request)
    path = Path(job["job_dir"]) / "metrics.jsonl"
    offset, series, seen, state = 0, {}, [], None
    deadline = time.monotonic() + TIMEOUT
    while state not in ("COMPLETE", "FAILED", "STOPPED") and time.monotonic() < deadline:
        written = path.read_text().count("\n") if path.exists() else 0
        state = svc.job(job["id"])["state"]  # before the read: a finished job wrote every line already
        view = svc.job_view(job["id"], offset, details=False)
        offset, seen = view["metrics_offset"], seen + view["metrics"]
        series = jobs_view.add_points(series, view["metrics"])
        assert len(seen) >= written, "a logged point did not reach the page's next refresh"
        time.sleep(0.3)
    assert state == "COMPLETE", "\n".join(svc.job_log(job["id"], 60))
    assert [r["step"] for r in seen if "loss" in r] == list(range(1, 11))
    drawn = {line.name: [s for s, _ in line.points] for line in jobs_view.chart_lines(series, None)}
    assert drawn == {"loss": list(range(1, 11))}


def test_the_last_step_is_logged_whatever_the_interval(tmp_path):
    """30 steps logged every 20 end on a point at step 30; logging_steps 0 is the automatic interval (1/100 of the
    run, which the Trainer rounds up to whole steps: every step of a 10-step run)."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from tlab_gradio.trainers import callbacks, common

    callback = callbacks.MetricsCallback(tmp_path, 1)
    for step, logs in ((29, False), (30, True)):
        control = TrainerControl()
        callback.on_step_end(None, SimpleNamespace(global_step=step, max_steps=30, is_world_process_zero=False),
                             control)
        assert control.should_log is logs
    assert common.logging_steps({"logging_steps": 0}) == 0.01 and common.logging_steps({"logging_steps": 7}) == 7
    assert common.logging_steps({}) == 1  # a job stored before the parameter existed


def test_stop_ends_every_rank_within_seconds(home):
    svc = Service()
    job = svc.start_job(sft_request(cpu_processes=2, max_steps=100000, save_steps=100000))
    running = svc.jobs.wait(job["id"], TIMEOUT, until=lambda j: bool(metrics(j.as_dict())) or j.state != "RUNNING")
    assert running.state == "RUNNING", "\n".join(svc.job_log(job["id"], 100))
    assert len(processes_of(str(running.job_dir))) >= 3  # the launcher and both ranks

    stopping = svc.stop_job(job["id"])
    assert stopping["state"] == "STOPPING"  # the click is taken at once
    stopped = svc.jobs.wait(job["id"], 30)
    step = json.loads((Path(stopped.job_dir) / "progress.json").read_text())["step"]
    assert step >= 1
    assert stopped.state == "STOPPED" and stopped.reason == f"stopped by the user at step {step}"
    assert not launcher.group_alive(stopped.pid)
    assert processes_of(str(stopped.job_dir)) == []

    # What the page and the API show ends on the plain reason, not on torch's SignalException traceback
    # (the log file keeps it)
    for shown in (svc.job_view(job["id"])["log"], svc.job_log(job["id"], 100)):
        assert shown[-1] == f"[tlab] stopped by the user at step {step}", "\n".join(shown[-40:])
        assert not any("SignalException" in line or "Traceback" in line for line in shown), "\n".join(shown)
    assert svc.job_view(job["id"])["job"]["reason"] == f"stopped by the user at step {step}"
    # accelerate's thread-count warning and the libraries' deprecation notices are not in any job's log
    raw = (Path(stopped.job_dir) / "log.txt").read_text()
    assert "SignalException" in raw or "SIGTERM" in raw  # kept on disk
    assert "num_cpu_threads_per_process` was set" not in raw and "FutureWarning" not in raw
    assert "Loading weights" not in raw and "%|" not in raw  # no \r-redrawn progress bars either


def test_a_failing_trainer_is_failed_with_its_error_and_survives_a_restart(home, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"this is not a safetensors file")
    svc = Service()
    job = svc.start_job({**sft_request(max_steps=2), "model": str(broken)})  # config.json passes the checks
    failed = svc.jobs.wait(job["id"], TIMEOUT)
    assert failed.state == "FAILED" and failed.exit_code not in (0, None)
    tail = "\n".join(svc.job_log(job["id"], 60))
    assert "Error" in tail and "safetensors" in tail.lower()
    # The reason names the trainer's own error, not just an exit code or the launcher's report
    print(failed.reason)
    assert "safetensors" in failed.reason.lower() and "Error" in failed.reason
    assert failed.reason.endswith(f"[exited with code {failed.exit_code}]")
    assert "CalledProcessError" not in failed.reason and "ChildFailedError" not in failed.reason

    again = Service(home)  # a restarted core reads the same store
    same = again.job(job["id"])
    assert same["state"] == "FAILED" and same["reason"] == failed.reason
    assert again.job_log(job["id"], 60)[-1] == svc.job_log(job["id"], 60)[-1]


def test_a_stopped_job_resumes_from_its_checkpoint(home):
    svc = Service()
    job = svc.start_job(sft_request(max_steps=150, save_steps=25, save_total_limit=3))
    ckpt = Path(job["job_dir"]) / "checkpoints" / "checkpoint-25" / "trainer_state.json"
    svc.jobs.wait(job["id"], TIMEOUT, until=lambda j: ckpt.is_file() or j.state != "RUNNING")
    svc.stop_job(job["id"])
    stopped = svc.jobs.wait(job["id"], 30)
    assert stopped.state == "STOPPED", "\n".join(svc.job_log(job["id"], 80))
    before = [r for r in metrics(stopped.as_dict()) if "loss" in r]
    assert max(r["step"] for r in before) < 150

    resumed = svc.resume_job(job["id"])
    assert resumed["config"]["resume_from_checkpoint"].endswith("checkpoint-" + str(
        max(int(p.name.split("-")[1]) for p in (Path(job["job_dir"]) / "checkpoints").glob("checkpoint-*"))))
    done = svc.jobs.wait(job["id"], TIMEOUT)
    assert done.state == "COMPLETE", "\n".join(svc.job_log(job["id"], 80))
    assert done.attempts == 2
    steps = [r["step"] for r in metrics(done.as_dict()) if "loss" in r]
    second_attempt = steps[len(before):]
    resumed_from = int(Path(resumed["config"]["resume_from_checkpoint"]).name.split("-")[1])
    assert resumed_from >= 25
    assert second_attempt[0] == resumed_from + 1  # continues the count, not from step 1
    assert second_attempt == list(range(resumed_from + 1, 151))
    assert svc.job(job["id"])["result"]["global_step"] == 150
    assert "[tlab] resuming from" in "\n".join(svc.job_log(job["id"], 400))


def test_grpo_two_processes_with_rewards(home):
    svc = Service()
    job = svc.start_job({"plugin": "grpo_multi_gpu", "name": "grpo", "device": "cpu", "cpu_processes": 2,
                         "params": {"max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                                    "num_generations": 4, "max_completion_length": 24, "report_to": "none"}})
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(job["id"], 300))
    assert done.state == "COMPLETE", log
    assert "rank 0 of world size 2" in log and "rank 1 of world size 2" in log
    assert "DDP ran with static_graph=False, gradient_as_bucket_view=False, bucket_cap_mb=25" in log  # torch's
    records = [r for r in metrics(svc.job(job["id"])) if "reward" in r]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["world_size"] == 2 and math.isfinite(r["reward"])
        for name in ("correctness", "integer", "strict_format", "soft_format", "tag_count"):
            assert math.isfinite(r[f"rewards/{name}/mean"])
        assert r["completion_tokens_per_second"] > 0

    from transformers import AutoModelForCausalLM

    out = Path(done.output_dir) / "tlab-grpo"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert AutoModelForCausalLM.from_pretrained(out).config.architectures == ["LlamaForCausalLM"]


def test_the_disk_estimate_matches_what_a_full_fine_tune_writes(home):
    """Checkpoints (weights + AdamW moments) and output of a real full fine-tune, against the form's
    disk estimate; one checkpoint kept of two saved."""
    svc = Service()
    request = sft_request(max_steps=2, save_steps=1, save_total_limit=1, use_lora=False)
    disk = svc.memory_estimate(request)["disk"]
    assert disk["checkpoints"] == 1 and disk["free_gb"] > 0 and disk["warning"] is None
    job = svc.jobs.wait(svc.start_job(request)["id"], TIMEOUT)
    assert job.state == "COMPLETE", "\n".join(svc.job_log(job.id, 60))

    def size(folder):
        return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) / 2**30

    kept = sorted((job.job_dir / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in kept] == ["checkpoint-2"]
    print(size(kept[0]), disk["checkpoint_gb"], size(job.output_dir), disk["output_gb"])
    assert 0.8 <= size(kept[0]) / disk["checkpoint_gb"] <= 1.5
    assert 0.8 <= size(job.output_dir) / disk["output_gb"] <= 1.5


def test_a_job_that_goes_non_finite_stops_at_once_with_a_plain_reason(home, tiny_model_dir, tmp_path):
    """One NaN planted in a weight: the first step's gradients are NaN. The job must stop at that step, before
    the optimiser spreads it (no checkpoint, nothing left running on either rank), and say so plainly."""
    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "poisoned"
    shutil.copytree(tiny_model_dir, model)
    weights = load_file(model / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert torch.isnan(weights["model.layers.1.mlp.down_proj.weight"]).any()

    svc = Service()
    job = svc.start_job({**sft_request(cpu_processes=2, max_steps=20, save_steps=1, use_lora=False),
                         "model": str(model)})
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(job["id"], 400))
    assert done.state == "FAILED", log
    assert done.reason.startswith("grad norm became NaN at step 1; try a lower Learning Rate"), done.reason
    assert "Error" not in done.reason.split(";")[0]
    assert not list(Path(done.job_dir).glob("checkpoints/checkpoint-*")), "a step was taken after the NaN"
    assert processes_of(str(done.job_dir)) == []


def test_a_maximum_length_that_leaves_nothing_to_learn_fails_with_the_reason(home):
    """The bundled sample's prompts are longer than 48 byte tokens: TRL drops every example (no completion
    token left), and its collator then died on an empty batch with an IndexError."""
    svc = Service()
    job = svc.start_job(sft_request(max_steps=1, max_length=48))
    done = svc.jobs.wait(job["id"], TIMEOUT)
    assert done.state == "FAILED"
    assert done.reason.startswith("no example is left to train on: in all 320, the prompt alone fills Maximum "
                                  "Sequence Length (48 tokens)"), done.reason


def optimizer_groups(job) -> list[dict]:
    """The optimiser's own settings, as the last checkpoint saved them (optimizer.pt)."""
    import torch

    checkpoints = sorted(Path(job.job_dir).glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return torch.load(checkpoints[-1] / "optimizer.pt", weights_only=False)["param_groups"]


def test_max_samples_caps_the_rows_and_adam_settings_reach_the_sft_optimiser(home):
    """max_samples 8 at batch 4: one epoch is 2 steps (the sample has 320 rows); AdamW runs with the form's
    betas and epsilon (read back from the optimiser state the checkpoint saved)."""
    svc = Service()
    job = svc.start_job(sft_request(max_samples=8, max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4,
                                    gradient_accumulation_steps=1, adam_beta1=0.8, adam_beta2=0.95,
                                    adam_epsilon=1e-6))
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(job["id"], 400))
    assert done.state == "COMPLETE", log
    assert "[tlab] dataset: using 8 of 320 rows (max_samples 8)" in log
    assert svc.job(job["id"])["progress"]["max_steps"] == 2
    assert [r["step"] for r in metrics(svc.job(job["id"])) if "loss" in r] == [1, 2]
    for group in optimizer_groups(done):
        assert tuple(group["betas"]) == (0.8, 0.95) and group["eps"] == 1e-6


def test_max_samples_and_adam_settings_reach_the_grpo_trainer(home):
    """GRPO: 4 prompts x 4 completions at 4 completions a step is 4 steps; the optimiser has the form's settings."""
    svc = Service()
    job = svc.start_job({"plugin": "grpo_multi_gpu", "name": "grpo-small", "device": "cpu",
                         "params": {"max_samples": 4, "max_steps": -1, "num_train_epochs": 1,
                                    "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
                                    "num_generations": 4, "max_completion_length": 16, "save_steps": 100,
                                    "adam_beta1": 0.85, "adam_beta2": 0.98, "adam_epsilon": 1e-7}})
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(job["id"], 400))
    assert done.state == "COMPLETE", log
    assert "[tlab] dataset: using 4 of 360 rows (max_samples 4)" in log
    assert svc.job(job["id"])["progress"]["max_steps"] == 4
    for group in optimizer_groups(done):
        assert tuple(group["betas"]) == (0.85, 0.98) and group["eps"] == 1e-7
