"""A held-out split (issue 19 item 3) and the options refused before launch because they would fail after it
(item 4).

The checks run through Service.prepare, as Start and the API do; the real jobs are `accelerate launch` of the
trainers on the embedded tiny model, on CPU, with datasets the tests write: one with only a `test` split, which
trains, holding out rows of it (val_size), and whose eval loss reaches metrics.jsonl and the job's chart; and a
GRPO job evaluated on the dataset's own `test` split, whose held-out reward is charted beside the reward.
"""
import json
import re
from pathlib import Path

from tlab_gradio import settings, tiny_model
from tlab_gradio.request_error import RequestError
from tlab_gradio.service import Service

SFT, GRPO = "llama_sft_multi_gpu", "grpo_multi_gpu"
TIMEOUT = 420
HELD_OUT = ["val_size", "eval_split", "max_eval_samples", "eval_steps", "early_stopping_patience",
            "load_best_model_at_end"]


def request(plugin=SFT, dataset=None, model=None, **params):
    out = {"plugin": plugin, "name": "held-out", "params": {"device": "cpu", **params}}
    if dataset is not None:
        out.update(dataset=str(dataset), template="", completion_template="")
    if model is not None:
        out["model"] = str(model)
    return out


def problems(svc, req) -> list[str]:
    try:
        svc.prepare(req)
    except RequestError as exc:
        return exc.problems
    return []


def sample_rows(name: str, count: int) -> list[dict]:
    path = settings.SAMPLES_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()[:count]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def metrics(job) -> list[dict]:
    return [json.loads(line) for line in (Path(job.job_dir) / "metrics.jsonl").read_text().splitlines()]


def test_every_plugin_has_the_held_out_parameters_in_a_closed_group():
    svc = Service()
    for plugin in (SFT, GRPO, "unsloth_grpo"):
        form = svc.plugin_form(plugin)
        group = next(g for g in form["parameter_groups"] if g["title"] == "Held-out evaluation")
        assert group["parameters"] == HELD_OUT and group["open"] is False, plugin
        defaults = {n: form["parameters"][n]["default"] for n in HELD_OUT}
        assert defaults == {"val_size": 0, "eval_split": "", "max_eval_samples": 0, "eval_steps": 0,
                            "early_stopping_patience": 0, "load_best_model_at_end": False}, plugin
        assert all(form["parameters"][n].get("help") for n in HELD_OUT), plugin


def test_held_out_settings_that_cannot_work_are_refused_naming_the_parameter(home, tmp_path):
    svc = Service()
    assert problems(svc, request(val_size=0.1, load_best_model_at_end=True, early_stopping_patience=2)) == []
    assert problems(svc, request(val_size=400)) == [
        "`val_size` 400 holds out 400 of the dataset's 320 rows, which leaves none to train on: give fewer rows, "
        "e.g. 32 or 0.1"]
    assert problems(svc, request(val_size=20, max_samples=20))[0].startswith(
        "`val_size` 20 holds out 20 of the dataset's 20 rows (max_samples 20), which leaves none to train on")
    assert problems(svc, request(val_size=2.5)) == [
        "`val_size` 2.5: give a fraction below 1 (0.1 = 10% of the rows) or a whole number of rows (e.g. 2)"]
    found = problems(svc, request(early_stopping_patience=2, load_best_model_at_end=True))
    assert [p.split(" ")[0] for p in found] == ["`early_stopping_patience`", "`load_best_model_at_end`"]
    assert all("set `val_size` (held-out rows, e.g. 0.1) or `eval_split`" in p for p in found)
    assert problems(svc, request(eval_split="validation")) == [
        "`eval_split` 'validation': dataset sample sft_instructions has no such split; its splits: train (a bundled "
        "sample or a single file is one `train` split: use `val_size` to hold out rows of it, or give a folder with "
        "a file per split, e.g. train.jsonl and test.jsonl)"]
    # A folder's splits are read (through datasets): a split it lacks, the split trained on, both sources at once
    folder = tmp_path / "splits"
    write_jsonl(folder / "train.jsonl", sample_rows("sft_instructions", 12))
    write_jsonl(folder / "test.jsonl", sample_rows("sft_instructions", 4))
    assert problems(svc, request(dataset=folder, eval_split="test")) == []
    assert problems(svc, request(dataset=folder, eval_split="validation")) == [
        f"`eval_split` 'validation': dataset file {folder} has no such split; its splits: train, test (use one of "
        "those, or `val_size`)"]
    assert problems(svc, request(dataset=folder, eval_split="train")) == [
        "`eval_split` 'train' is the split trained on: evaluating on it says nothing about held-out data; name "
        "another split (test), or use `val_size`"]
    assert problems(svc, request(dataset=folder, eval_split="test", val_size=2)) == [
        "`val_size` 2 and `eval_split` 'test' both name rows to evaluate on: give one (set the other to 0 / empty)"]
    assert problems(svc, request(GRPO, eval_split="test"))[0].startswith("`eval_split` 'test': dataset sample "
                                                                          "grpo_arithmetic has no such split")
    # The disk estimate counts the best checkpoint kept beside the latest (one is kept without the option)
    kept = {best: svc.memory_estimate(request(max_steps=20, save_total_limit=1, val_size=4,
                                              load_best_model_at_end=best))["disk"]["checkpoints"]
            for best in (False, True)}
    assert kept == {False: 1, True: 2}


def chat_model(folder: Path, template: str) -> Path:
    """A model folder as far as the check reads one: config.json and the tokenizer's chat template."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(tiny_model.config_dict()))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return folder


def test_assistant_only_loss_without_generation_markers_is_refused_before_launch(home, tmp_path):
    """TRL builds the assistant-only mask from {% generation %} markers, and stops at the job's start when the chat
    template has none (SmolLM2's) and is not one it ships a marked version of. The check reads the template from
    the model's files and refuses with the way out; the embedded model's template has the markers."""
    import importlib.util

    svc = Service()
    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "user", "content": f"What is {i} + 1?"},
                      {"role": "assistant", "content": str(i + 1)}]} for i in range(6)])
    plain = tiny_model.CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    unmarked = chat_model(tmp_path / "unmarked", plain)
    found = problems(svc, request(dataset=chats, model=unmarked, assistant_only_loss=True))
    assert len(found) == 1 and found[0].startswith(
        f"`assistant_only_loss` needs a chat template with {{% generation %}} markers (TRL finds the assistant's "
        f"tokens by them), and the chat template of {unmarked} has none"), found
    assert "use `completion_only_loss`" not in found[0] and "with `completion_only_loss`" in found[0]
    assert "turn `assistant_only_loss` off" in found[0].lower()
    assert problems(svc, request(dataset=chats, model=unmarked, assistant_only_loss=False)) == []
    assert problems(svc, request(dataset=chats, assistant_only_loss=True)) == []  # the embedded model: markers
    none = chat_model(tmp_path / "no-template", "")
    assert problems(svc, request(dataset=chats, model=none, assistant_only_loss=True)) == [
        f"`assistant_only_loss` needs the model's chat template, and {none} has none: turn `assistant_only_loss` "
        "off (the loss then covers the whole conversation), give the data as prompt and completion (a data template "
        "and a completion template) with `completion_only_loss`, or use a model or chat template whose assistant "
        "turns are wrapped in {% generation %} ... {% endgeneration %}"]
    # A template TRL swaps for its marked training version (Qwen2.5's) passes, as TRL then trains it
    shipped = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"
    qwen = chat_model(tmp_path / "qwen-like", (shipped / "qwen2_5.jinja").read_text(encoding="utf-8"))
    assert problems(svc, request(dataset=chats, model=qwen, assistant_only_loss=True)) == []
    # Data rendered through templates is not chat data: TRL's assistant-only loss does not apply to it
    assert problems(svc, request(model=unmarked, assistant_only_loss=True)) == []


def test_the_split_is_seeded_and_the_evaluation_settings_follow_the_form():
    """The same rows are held out on every rank and every rerun (the job's seed); eval_steps 0 is a tenth of the
    run; load_best_model_at_end saves a checkpoint at every evaluation; GRPO's eval batch holds whole groups."""
    from datasets import Dataset

    from tlab_gradio.trainers import common, grpo

    rows = Dataset.from_dict({"text": [f"row {i}" for i in range(50)]})
    first = common.held_out(rows, None, {"val_size": 0.1, "seed": 7}, False)
    again = common.held_out(rows, None, {"val_size": 0.1, "seed": 7}, False)
    other = common.held_out(rows, None, {"val_size": 0.1, "seed": 8}, False)
    assert len(first[0]) == 45 and len(first[1]) == 5 and first[1]["text"] == again[1]["text"] != other[1]["text"]
    assert not set(first[0]["text"]) & set(first[1]["text"])
    assert len(common.held_out(rows, None, {"val_size": 12, "seed": 7}, False)[1]) == 12
    assert common.held_out(rows, None, {"val_size": 0}, False) == (rows, None)

    assert common.eval_settings({"eval_steps": 0}, False, "eval_loss", 4, False) == {}
    auto = common.eval_settings({"eval_steps": 0, "save_steps": 500}, True, "eval_loss", 4, False)
    assert auto == {"eval_strategy": "steps", "eval_steps": 0.1, "per_device_eval_batch_size": 4,
                    "prediction_loss_only": True}
    best = common.eval_settings({"eval_steps": 5, "save_steps": 500, "load_best_model_at_end": True}, True,
                                "eval_reward", 4, False)
    assert best["save_steps"] == 5 and best["load_best_model_at_end"] is True
    assert best["metric_for_best_model"] == "eval_reward" and best["greater_is_better"] is True
    stop = common.eval_settings({"eval_steps": 5, "early_stopping_patience": 3}, True, "eval_loss", 4, False)
    assert stop["metric_for_best_model"] == "eval_loss" and stop["greater_is_better"] is False
    assert "save_steps" not in stop
    callbacks = common.eval_callbacks({"early_stopping_patience": 3}, True)
    assert [type(c).__name__ for c in callbacks] == ["EvaluateAtEnd", "EarlyStoppingCallback"]
    assert callbacks[1].early_stopping_patience == 3 and common.eval_callbacks({}, False) == []
    for processes, batch, gens, expected in ((1, 4, 4, 4), (2, 4, 4, 4), (3, 4, 4, 4), (2, 3, 4, 4), (1, 6, 4, 8)):
        eval_batch = grpo.eval_batch({"per_device_train_batch_size": batch, "num_generations": gens}, processes)
        assert eval_batch == expected and eval_batch * processes % gens == 0
    # On a GPU the held-out prompts are generated as many at a time as a training step's (GPU defaults: 32 x 8
    # accumulation = 256), not 32 at a time: 2 generate calls for 64 prompts x 8, not 16; capped by memory
    gpu = {"per_device_train_batch_size": 32, "gradient_accumulation_steps": 8, "num_generations": 8,
           "max_completion_length": 256}
    h200, card_24 = 130 * 2**30, 20 * 2**30
    assert grpo.eval_batch(gpu, 1) == 32  # without rows (a CPU, the Unsloth plugin): the micro-batch
    smol = grpo.eval_rows(gpu, 1, vocab=49152, free_bytes=h200)  # SmolLM2-135M on an H200
    assert smol == 256 and grpo.eval_batch(gpu, 1, smol) == 256
    assert grpo.eval_rows(gpu, 2, vocab=49152, free_bytes=h200) == 256  # per process: each generates its share
    big = {**gpu, "generation_batch_size": 1024}  # 512 a process: the H200's quarter holds 462 such rows
    assert grpo.eval_rows(big, 2, vocab=49152, free_bytes=h200) == 462
    assert grpo.eval_rows(big, 2, vocab=49152, free_bytes=2 * h200) == 512
    qwen = grpo.eval_rows(gpu, 1, vocab=151936, free_bytes=card_24)  # a 152k vocabulary on a 24 GiB card
    assert qwen < 32 and grpo.eval_batch(gpu, 1, qwen) == 32  # never below the training micro-batch
    assert grpo.eval_batch(gpu, 1, 50) == 56  # rounded up to whole groups


def chart_of(svc, job) -> str:
    """The job page's default chart (loss & reward), from the metrics the page reads."""
    from tlab_gradio.ui import jobs_view

    return jobs_view.chart_update(jobs_view.add_points({}, svc.job_view(job.id, 0, details=False)["metrics"]), None)


def drawn(chart: str) -> dict[str, tuple[list[int], bool]]:
    """Each drawn line: its steps, and whether it is drawn as a held-out (eval) series."""
    return {name: ([int(s) for s in steps.split(",")], "tl-eval" in cls)
            for cls, name, steps in re.findall(r'<g class="([^"]*)" data-series="([^"]*)" data-steps="([^"]*)"', chart)}


def test_a_dataset_with_only_a_test_split_trains_and_its_eval_loss_is_charted(home, tmp_path):
    """A folder with test.jsonl alone trains on that split; 8 of its rows are held out (val_size) and evaluated
    every 2 steps: eval_loss lands in metrics.jsonl at steps 2 and 4, the chart draws it beside the training loss
    (dashed, a ring per evaluation), and with load_best_model_at_end a checkpoint is kept at each evaluation."""
    svc = Service()
    folder = tmp_path / "only-test"
    write_jsonl(folder / "test.jsonl", sample_rows("sft_instructions", 24))
    job = svc.start_job(request(dataset=folder, val_size=8, eval_steps=2, max_steps=4, logging_steps=1,
                                load_best_model_at_end=True, per_device_train_batch_size=4, max_length=128,
                                gradient_checkpointing="off", report_to="none"))
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(done.id, 200))
    assert done.state == "COMPLETE", log
    assert "[tlab] held out 8 of 24 rows for evaluation (val_size 8, seed 42); training on 16" in log
    assert "[tlab] load_best_model_at_end: a checkpoint at every evaluation (save_steps 2 instead of 500)" in log
    records = metrics(done)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_loss"] > 0 for r in evals)
    assert not any("loss" in r for r in evals)  # an evaluation is a record of its own, at its step
    chart = chart_of(svc, done)
    assert drawn(chart) == {"loss": ([1, 2, 3, 4], False), "eval_loss": ([2, 4], True)}
    assert "stroke-dasharray" in chart and ">eval_loss</span>" in chart
    state = json.loads((Path(done.job_dir) / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{state['best_global_step']}")
    assert state["best_metric"] == min(r["eval_loss"] for r in evals)


def test_grpo_evaluates_the_datasets_test_split_and_charts_the_held_out_reward(home, tmp_path):
    svc = Service()
    folder = tmp_path / "qa"
    rows = sample_rows("grpo_arithmetic", 14)
    write_jsonl(folder / "train.jsonl", rows[:8])
    write_jsonl(folder / "test.jsonl", rows[8:])
    # GRPO generates for every evaluated row at every evaluation: a large split is capped (max_eval_samples)
    job = svc.start_job(request(GRPO, dataset=folder, eval_split="test", max_eval_samples=4, eval_steps=1, max_steps=2,
                                logging_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                                num_generations=4, max_completion_length=8, report_to="none"))
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(done.id, 200))
    assert done.state == "COMPLETE", log
    assert "[tlab] evaluating on the dataset's 'test' split: 6 rows" in log
    assert "[tlab] evaluating 4 of those 6 rows (max_eval_samples 4, seed 42)" in log
    evals = [r for r in metrics(done) if "eval_reward" in r]
    assert [r["step"] for r in evals] == [1, 2]
    assert all(f"eval_rewards/{name}/mean" in r for r in evals for name in ("correctness", "tag_count"))
    lines = drawn(chart_of(svc, done))
    assert lines["reward"] == ([1, 2], False) and lines["eval_reward"] == ([1, 2], True)


def test_early_stopping_ends_the_run_when_the_eval_loss_stops_improving(home):
    """Patience 1, an evaluation every step, a learning rate high enough that the eval loss soon stops falling:
    the run ends before its last step, at the first evaluation that is no better than the best, and says so."""
    svc = Service()
    job = svc.start_job(request(val_size=8, max_samples=40, eval_steps=1, max_steps=30, learning_rate=1.0,
                                early_stopping_patience=1, logging_steps=1, per_device_train_batch_size=4,
                                max_length=128, gradient_checkpointing="off", report_to="none"))
    done = svc.jobs.wait(job["id"], TIMEOUT)
    log = "\n".join(svc.job_log(done.id, 200))
    assert done.state == "COMPLETE", log
    evals = [(r["step"], r["eval_loss"]) for r in metrics(done) if "eval_loss" in r]
    last, losses = evals[-1][0], [loss for _, loss in evals]
    assert last < 30 and [s for s, _ in evals] == list(range(1, last + 1))
    assert losses[-1] >= min(losses[:-1]) and all(b < a for a, b in zip(losses, losses[1:-1]))  # fell until then
    best = min(range(len(losses)), key=losses.__getitem__)
    assert f"[tlab] stopped early at step {last} of 30: eval_loss did not improve for 1 evaluation; best " \
           f"eval_loss {losses[best]:.4g} at step {evals[best][0]}" in log
