"""Evaluate (issue 20, items 2 and 5): a finished job's model scored on exactly the rows its trainer held out, the
scores the same when run again; GRPO's accuracy and each reward per example; a dataset the user picks; refusals
that name the problem; the API through gradio_client on the real app, whose process never loads torch.

Real jobs (`accelerate launch` on the embedded tiny model, CPU), trained once for the module, side by side: an SFT
LoRA job holding out 8 rows (val_size 8) and a one-step GRPO job holding out 6 prompts."""
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from test_app import start_app

SFT, GRPO = "llama_sft_multi_gpu", "grpo_multi_gpu"
OWNER = "session:alice"
SFT_PARAMS = {"device": "cpu", "cpu_processes": 1, "logging_steps": 1, "per_device_train_batch_size": 4,
              "max_length": 128, "gradient_checkpointing": "off", "max_steps": 2, "save_steps": 1,
              "learning_rate": 0.01, "use_lora": True, "val_size": 8}
GRPO_PARAMS = {"device": "cpu", "cpu_processes": 1, "max_steps": 1, "per_device_train_batch_size": 4,
               "gradient_accumulation_steps": 1, "num_generations": 4, "max_completion_length": 8, "val_size": 6,
               "logging_steps": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workspace with a finished SFT job (8 held-out rows), a finished GRPO job (6 held-out prompts) and a job
    without a held-out split stopped while it waited behind them (TLAB_MAX_CONCURRENT_JOBS=2)."""
    from tlab_gradio.service import RequestError, Service

    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        home = root / "ws"
        (root / "hf").mkdir()
        env = {"TLAB_HOME": str(home), "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TLAB_STOP_GRACE": "5", "TLAB_MAX_CONCURRENT_JOBS": "2"}
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("TLAB_HOSTED", raising=False)
        svc = Service(home)
        sft = svc.start_job({"plugin": SFT, "name": "sft held out", "params": SFT_PARAMS}, OWNER)
        grpo = svc.start_job({"plugin": GRPO, "name": "grpo held out", "dataset": "grpo_arithmetic",
                              "params": GRPO_PARAMS}, OWNER)
        waiting = svc.start_job({"plugin": SFT, "name": "no held-out", "params": {**SFT_PARAMS, "val_size": 0}},
                                OWNER)
        assert svc.job(waiting["id"])["state"] == "QUEUED"
        with pytest.raises(RequestError) as unfinished:
            svc.evaluate_job(waiting["id"], owner=OWNER)
        svc.stop_job(waiting["id"])
        for job in (sft, grpo):
            done = svc.jobs.wait(job["id"], 420)
            assert done.state == "COMPLETE", "\n".join(svc.job_log(job["id"], 60))
        yield {"svc": svc, "home": home, "env": env, "sft": sft["id"], "grpo": grpo["id"], "waiting": waiting["id"],
               "unfinished": unfinished.value.problems, "mp": mp}
        svc.jobs.close()


@pytest.fixture(scope="module")
def sft_first(trained):
    """The SFT job's held-out rows evaluated once (the API test evaluates them again and compares)."""
    return trained["svc"].evaluate_job(trained["sft"], owner=OWNER)


def held_out_rows(n: int, seed: int) -> list[dict]:
    """The sample's rows the SFT trainer held out, derived here with datasets alone: split of the formatted
    rows, test_size n, the job's seed."""
    from datasets import Dataset

    from tlab_gradio import data

    rows = [json.loads(line) for line in (Path(data.settings.SAMPLES_DIR) / "sft_instructions.jsonl").read_text()
            .splitlines() if line.strip()]
    sample = data.SAMPLES["sft_instructions"]
    formatted = Dataset.from_list([{"prompt": data.render(sample["template"], r),
                                    "completion": data.render(sample["completion_template"], r)} for r in rows])
    return list(formatted.train_test_split(test_size=n, seed=seed, shuffle=True)["test"])


def scores(result: dict) -> tuple:
    return (result["rows"], result["metrics"], [(e["prompt"], e["answer"], e["score"]) for e in result["examples"]])


def test_sft_scores_exactly_the_held_out_rows_and_again_the_same(trained, sft_first):
    svc = trained["svc"]
    svc_job = svc.job(trained["sft"])
    out = sft_first
    log = "\n".join(svc.job_log(trained["sft"], 400))
    assert "held out 8 of 320 rows for evaluation (val_size 8, seed 42)" in log
    assert out["rows"] == 8 and out["checkpoint"] == "final" and out["dataset_label"] == "held-out"
    assert out["dataset"]["kind"] == "held_out" and out["dataset"]["seed"] == 42
    expected = held_out_rows(8, 42)
    assert [e["prompt"] for e in out["examples"]] == [r["prompt"] for r in expected]
    assert [e["reference"] for e in out["examples"]] == [r["completion"] for r in expected]
    m = out["metrics"]
    assert m["eval_loss"] > 0 and math.isclose(m["perplexity"], math.exp(m["eval_loss"]))
    # the trainer's own last evaluation of the same rows (its loss averaged per batch, ours per token)
    last = [json.loads(line) for line in (Path(svc_job["job_dir"]) / "metrics.jsonl").read_text().splitlines()
            if "eval_loss" in line][-1]
    assert abs(m["eval_loss"] - last["eval_loss"]) < 0.05, (m["eval_loss"], last["eval_loss"])
    assert m["generated"] == 8 and 0 <= m["exact_match"] <= 1
    assert all(isinstance(e["answer"], str) and e["score"] in (0.0, 1.0) for e in out["examples"])
    saved = Path(svc_job["job_dir"]) / "evaluations" / f"{out['name']}.json"
    assert json.loads(saved.read_text())["metrics"] == m
    assert out["name"] in [e["name"] for e in svc.evaluations(trained["sft"], owner=OWNER)]


def test_grpo_scores_accuracy_and_each_reward_per_example_reproducibly(trained, sft_first):
    from tlab_gradio import rewards

    svc = trained["svc"]
    with ThreadPoolExecutor(2) as pool:  # two at once: each its own file, the same scores
        first, again = pool.map(lambda _: svc.evaluate_job(trained["grpo"], owner=OWNER), range(2))
    assert scores(first) == scores(again) and first["name"] != again["name"]
    assert first["rows"] == 6 and len(first["examples"]) == 6
    m = first["metrics"]
    names = ["correctness", "integer", "strict_format", "soft_format", "tag_count"]
    assert set(m["reward_weights"]) == set(names) and 0 <= m["accuracy"] <= 1
    for e in first["examples"]:
        assert set(e["rewards"]) == set(names)
        assert math.isclose(e["reward"], sum(m["reward_weights"][n] * e["rewards"][n] for n in names), abs_tol=1e-5)
        right = rewards.answers_match(e["extracted"], e["reference"], m["correctness_method"])
        assert e["score"] == (1.0 if right else 0.0)
        assert "<reasoning>" not in e["reference"] and e["prompt"]
    assert math.isclose(m["accuracy"], sum(e["score"] for e in first["examples"]) / 6)
    assert math.isclose(m["eval_reward"], sum(e["reward"] for e in first["examples"]) / 6, abs_tol=1e-5)
    # the two jobs side by side: one row per evaluation, the headline metrics as columns
    table = svc.compare_evaluations([trained["sft"], trained["grpo"]], OWNER)
    sft_row = next(r for r in table if r["evaluation"] == sft_first["name"])
    assert sft_row["eval_loss"] == sft_first["metrics"]["eval_loss"] and "accuracy" not in sft_row
    grpo_rows = [r for r in table if r["job_id"] == trained["grpo"]]
    assert {r["evaluation"] for r in grpo_rows} == {first["name"], again["name"]}
    assert grpo_rows[0]["accuracy"] == m["accuracy"] and grpo_rows[0]["eval_reward"] == m["eval_reward"]


def test_a_dataset_the_user_picks_goes_through_the_jobs_templates_on_a_checkpoint(trained, tmp_path):
    svc = trained["svc"]
    rows = [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(1, 6)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = svc.evaluate_job(trained["sft"], "checkpoint-1", dataset=str(path), limit=3, owner=OWNER)
    assert out["checkpoint"] == "checkpoint-1" and out["step"] == 1
    assert out["rows"] == 3 and out["rows_available"] == 5 and out["dataset_label"] == "mine.jsonl"
    assert out["dataset"]["kind"] == "dataset" and out["dataset"]["dataset"]["name"] == str(path)
    assert [e["reference"] for e in out["examples"]] == ["2", "4", "6"]
    assert out["examples"][0]["prompt"].startswith("### Instruction:\nAdd 1 and 1.")
    assert out["metrics"]["eval_loss"] > 0 and out["metrics"]["generated"] == 3
    assert svc.evaluations(trained["sft"], owner=OWNER)[0]["name"] == out["name"]  # newest first


def test_refusals_name_the_problem(trained, tmp_path):
    from tlab_gradio.service import JobError, RequestError

    svc = trained["svc"]
    assert trained["unfinished"] == [f"job {trained['waiting']} is QUEUED: evaluate it once it has finished"]
    with pytest.raises(RequestError) as exc:
        svc.evaluate_job(trained["waiting"], owner=OWNER)
    assert f"job {trained['waiting']} has no held-out split: give a dataset or train with val_size" in exc.value.problems
    assert svc.has_held_out(trained["sft"]) and not svc.has_held_out(trained["waiting"])  # the page's label
    assert any("no model to evaluate" in p for p in exc.value.problems)
    cases = [({"checkpoint": "checkpoint-99"}, "has no checkpoint 'checkpoint-99'; it has: final, checkpoint-1"),
             ({"dataset": str(tmp_path / "missing.jsonl")}, "file not found"),
             ({"limit": -1}, "`limit` must be a whole number"), ({"device": "tpu"}, "must be auto, cpu or cuda")]
    for kwargs, said in cases:
        with pytest.raises(RequestError) as exc:
            svc.evaluate_job(trained["sft"], owner=OWNER, **kwargs)
        assert said in str(exc.value), (kwargs, str(exc.value))
    mp = trained["mp"]
    mp.setenv("TLAB_HOSTED", "1")
    try:
        with pytest.raises(JobError, match=f"no job with id {trained['sft']}"):
            svc.evaluate_job(trained["sft"], owner="session:bob")
        with pytest.raises(JobError, match=f"no job with id {trained['sft']}"):
            svc.evaluations(trained["sft"], owner="session:bob")
    finally:
        mp.delenv("TLAB_HOSTED")


def test_the_api_evaluates_and_lists_side_by_side_without_torch_in_the_web_process(trained, sft_first, tmp_path):
    from gradio_client import Client

    proc, url = start_app(trained["env"], tmp_path)
    try:
        client = Client(url, verbose=False)
        again = client.predict(trained["sft"], "final", None, 0, "auto", api_name="/evaluate_job")
        assert scores(again) == scores(sft_first)  # the same numbers as the first run, through the page's path
        side = client.predict(f"{trained['sft']}, {trained['grpo']}", False, api_name="/job_evaluations")
        assert {e["job_id"] for e in side} == {trained["sft"], trained["grpo"]}
        assert all("examples" not in e for e in side)
        assert any(e["name"] == again["name"] for e in side)
        with pytest.raises(Exception, match="has no held-out split: give a dataset or train with val_size"):
            client.predict(trained["waiting"], api_name="/evaluate_job")
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "torch/lib" not in maps
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_page_evaluates_a_job_and_keeps_a_refusal_under_the_button(trained, sft_first, tmp_path, chromium):
    """A person's path: the SFT job picked in the jobs table, Evaluate opened, its held-out rows scored (the note
    names the metrics, the examples table fills, the earlier evaluation is listed); then a dataset that does not
    exist: the refusal names it under the button and stays there (it was a toast alone, gone in seconds)."""
    import re

    playwright = pytest.importorskip("playwright.sync_api")
    from test_browser import opened_page

    expect = playwright.expect
    with opened_page(trained["env"], tmp_path, chromium) as page:
        page.get_by_role("tab", name="Train").click()
        page.locator("#jobs-table").get_by_text("sft held out").locator("visible=true").first.click()
        expect(page.locator("#job-header")).to_contain_text("COMPLETE")
        page.locator("#job-evaluate").get_by_text("Evaluate the model").click()
        expect(page.locator("#evaluate-dataset")).to_contain_text("empty: the job's held-out rows")
        expect(page.locator("#evaluate-history")).to_contain_text(sft_first["name"])
        page.locator("#evaluate-job").click()
        note = page.locator("#evaluate-note")
        expect(note).to_contain_text(re.compile(r"final on .*8 rows.*eval loss", re.S), timeout=180_000)
        expect(page.locator("#evaluate-examples")).to_contain_text("reference")
        page.locator("#evaluate-dataset textarea, #evaluate-dataset input").first.fill(str(tmp_path / "none.jsonl"))
        page.locator("#evaluate-job").click()
        expect(note).to_contain_text("Not evaluated")
        expect(note).to_contain_text("file not found")
        page.wait_for_timeout(6_000)  # longer than a toast stays
        expect(note).to_contain_text("file not found")
        # Export's push likewise: refused under its button, the token kept in its box for another try
        page.locator("#job-export").get_by_text("Export the model").click()
        page.locator("#push-token input").fill("hf_not_a_real_token")
        page.locator("#push-job").click()
        expect(page.locator("#export-note")).to_contain_text("Not pushed")
        expect(page.locator("#export-note")).to_contain_text("give the Hub repo to push to")
        expect(page.locator("#push-token input")).to_have_value("hf_not_a_real_token")
