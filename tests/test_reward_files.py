"""Your own GRPO reward functions: upload, listing, the checks before launch (each function called on a
sample completion in a child process), hosted refusal, and a real CPU GRPO job that logs a custom reward."""
import json
import math
from pathlib import Path

import pytest

from tlab_gradio import reward_files
from tlab_gradio.service import RequestError, Service

GRPO = "grpo_multi_gpu"
REWARDS = '''
def brevity(prompts, completions, **kwargs):
    """Shorter completions score higher."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 / (1.0 + len(t) / 50) for t in texts]


def mentions_answer(prompts, completions, answer, **kwargs):
    return [float(str(a) in str(c)) for c, a in zip(completions, answer)]


def boom(prompts, completions, **kwargs):
    return [1 / 0 for _ in completions]


def one_value(prompts, completions, **kwargs):
    return [1.0]


def not_a_list(prompts, completions, **kwargs):
    return 1.0


def words(prompts, completions, **kwargs):
    return ["good" for _ in completions]


def slow(prompts, completions, **kwargs):
    import time
    time.sleep(30)
    return [0.0 for _ in completions]


def _helper(x):
    return x
'''
TINY = {"device": "cpu", "max_steps": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1,
        "num_generations": 4, "max_completion_length": 16, "report_to": "none"}


def grpo(custom, **params):
    return {"plugin": GRPO, "name": "custom-rewards", "params": {**TINY, **params, "custom_rewards": custom}}


@pytest.fixture
def svc(home):
    service = Service()
    service.save_reward_file("myrewards.py", REWARDS)
    return service


def refused(svc, request, owner: str | None = None) -> str:
    with pytest.raises(RequestError) as err:
        svc.start_job(request, owner)
    assert svc.list_jobs() == []  # nothing made, nothing launched
    return "\n".join(err.value.problems)


def test_upload_lists_the_reward_functions_only(svc, home):
    listing = svc.reward_functions()
    assert listing["builtin"] == ["correctness", "integer", "strict_format", "soft_format", "tag_count"]
    assert listing["files"] == [{"file": "myrewards.py", "error": None, "functions": [
        "brevity", "mentions_answer", "boom", "one_value", "not_a_list", "words", "slow"]}]  # not _helper
    assert (home / "rewards" / "myrewards.py").read_text() == REWARDS

    bad = {"../evil.py": "use a Python module name", "my-rewards.py": "use a Python module name",
           "notes.txt": "use a Python module name"}
    for name, expected in bad.items():
        with pytest.raises(RequestError, match=expected):
            svc.save_reward_file(name, REWARDS)
    with pytest.raises(RequestError, match=r"broken.py: syntax error on line 1"):
        svc.save_reward_file("broken.py", "def f(:\n")
    with pytest.raises(RequestError, match="defines no reward function"):
        svc.save_reward_file("empty.py", "def helper(x):\n    return x\n")
    assert [f["file"] for f in svc.reward_functions()["files"]] == ["myrewards.py"]


@pytest.mark.parametrize("choice, expected", [
    ("myrewards.py:boom", "reward function myrewards.py:boom raised on a sample completion: "
                          "ZeroDivisionError: division by zero (line "),
    ("myrewards.py:one_value", "reward function myrewards.py:one_value returned 1 values for 2 completions"),
    ("myrewards.py:not_a_list", "reward function myrewards.py:not_a_list returned float, not a list of numbers"),
    ("myrewards.py:words", "reward function myrewards.py:words returned str 'good' at position 0, not a number"),
    ("myrewards.py:nope", "reward file myrewards.py has no function `nope` (it has: brevity, mentions_answer"),
    ("gone.py:brevity", "reward file gone.py is not in the rewards folder (files: myrewards.py); upload it first"),
    ("myrewards.py", "`custom_rewards` entry 1: `function` must be file.py:function_name"),
])
def test_a_bad_reward_function_is_refused_before_launch(svc, choice, expected):
    assert expected in refused(svc, grpo([{"function": choice, "weight": 1.0}]))


def test_an_import_error_names_the_file_and_line(svc):
    svc.save_reward_file("needs.py", "import not_installed_pkg\n\ndef f(prompts, completions, **kw):\n"
                                     "    return [0.0] * len(completions)\n")
    assert refused(svc, grpo(["needs.py:f"])) == (
        "reward file needs.py: import failed: ModuleNotFoundError: No module named 'not_installed_pkg' (line 1)")


def test_weights_names_and_time_are_checked(svc, monkeypatch):
    got = refused(svc, grpo([{"function": "myrewards.py:brevity", "weight": -1},
                             {"function": "myrewards.py:brevity", "weight": True, "wieght": 2}]))
    assert "entry 1 (myrewards.py:brevity): weight must be a number from 0 to 100, got -1" in got
    assert "entry 2: unknown key 'wieght'" in got
    svc.save_reward_file("other.py", "def correctness(prompts, completions, **kw):\n    return [0.0] * len(completions)\n"
                                     "def brevity(completions, **kw):\n    return [0.0] * len(completions)\n")
    got = refused(svc, grpo(["other.py:correctness", "other.py:brevity", "myrewards.py:brevity"]))
    assert "other.py:correctness has the name of the built-in reward `correctness`" in got
    assert "reward functions other.py:brevity and myrewards.py:brevity share the name `brevity`" in got
    monkeypatch.setattr(reward_files, "PROBE_TIMEOUT", 2)
    assert "took longer than 2 s" in refused(svc, grpo(["myrewards.py:slow"]))
    # Only GRPO takes them
    assert "unknown parameter `custom_rewards`" in refused(svc, {"plugin": "llama_sft_multi_gpu", "params": {
        "device": "cpu", "custom_rewards": ["myrewards.py:brevity"]}})


def test_the_live_check_probes_once_per_file_version(svc):
    request = grpo(["myrewards.py:brevity"])
    assert "grpo.py" in svc.launch_preview(request)["command"]
    svc.save_reward_file("myrewards.py", REWARDS.replace("1.0 / (1.0 + len(t) / 50)", "len(t) / 0"))
    assert "myrewards.py:brevity raised on a sample completion: ZeroDivisionError" in "\n".join(
        pytest.raises(RequestError, svc.launch_preview, request).value.problems)


def test_hosted_mode_refuses_code_from_a_visitor(svc, monkeypatch):
    monkeypatch.setenv("TLAB_HOSTED", "1")
    with pytest.raises(RequestError, match=r"Python code from a visitor .* \(hosted mode\)"):
        svc.save_reward_file("more.py", REWARDS)
    assert "Python code from a visitor" in refused(svc, grpo(["myrewards.py:brevity"]), owner="visitor-1")
    assert svc.reward_functions() == {"builtin": ["correctness", "integer", "strict_format", "soft_format",
                                                  "tag_count"], "custom_allowed": False, "files": []}


def test_math_verify_chosen_but_missing_is_an_error(svc, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    got = refused(svc, {"plugin": GRPO, "params": {**TINY, "correctness_method": "math_verify"}})
    assert "`correctness_method` math_verify needs the math-verify package: pip install math-verify" in got
    svc.launch_preview({"plugin": GRPO, "params": {**TINY, "correctness_method": "auto"}})  # auto falls back


def test_a_cpu_grpo_job_trains_with_a_custom_reward(svc, home):
    job = svc.start_job(grpo([{"function": "myrewards.py:brevity", "weight": 0.5}, "myrewards.py:mentions_answer"],
                             correctness_method="numbers"))
    job_dir = Path(job["job_dir"])
    # The job's own copy: replacing the workspace's file now changes nothing for this job.
    assert (job_dir / "rewards" / "myrewards.py").read_text() == REWARDS
    svc.save_reward_file("myrewards.py", "def brevity(prompts, completions, **kw):\n    raise SystemExit(3)\n")
    config = json.loads((job_dir / "config.json").read_text())
    assert config["params"]["custom_rewards"] == [{"function": "myrewards.py:brevity", "weight": 0.5},
                                                  {"function": "myrewards.py:mentions_answer", "weight": 1.0}]
    done = svc.jobs.wait(job["id"], 420)
    log = "\n".join(svc.job_log(job["id"], 300))
    assert done.state == "COMPLETE", log
    assert "'brevity': 0.5, 'mentions_answer': 1.0} (correctness: numbers)" in log
    records = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "reward" in r]
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert 0 < r["rewards/brevity/mean"] <= 1 and math.isfinite(r["rewards/mentions_answer/mean"])
        assert math.isfinite(r["rewards/correctness/mean"])


def test_a_script_uploads_lists_and_is_refused_through_the_app(home, tmp_path):
    from gradio_client import Client

    from test_app import start_app

    proc, url = start_app({}, tmp_path)
    try:
        client = Client(url, verbose=False)
        saved = client.predict("myrewards.py", REWARDS, api_name="/upload_reward_file")
        assert saved["file"] == "myrewards.py" and saved["functions"][:2] == ["brevity", "mentions_answer"]
        listing = client.predict(api_name="/list_rewards")
        assert listing["custom_allowed"] and listing["files"][0]["file"] == "myrewards.py"
        with pytest.raises(Exception, match="defines no reward function"):
            client.predict("empty.py", "x = 1\n", api_name="/upload_reward_file")
        with pytest.raises(Exception, match=r"myrewards.py:boom raised on a sample completion: ZeroDivisionError"):
            client.predict(grpo([{"function": "myrewards.py:boom", "weight": 1.0}]), api_name="/start_job")
        assert client.predict(api_name="/list_jobs") == []
    finally:
        proc.terminate()
        proc.wait(20)


def test_the_forms_table_becomes_the_requests_custom_rewards(svc):
    from tlab_gradio.ui import form_request, reward_table

    rows = reward_table.reward_rows(svc, [{"function": "myrewards.py:brevity", "weight": 0.5}, "gone.py:f"])
    assert rows[0] == [True, "myrewards.py:brevity", 0.5] and rows[1] == [False, "myrewards.py:mentions_answer", 1.0]
    assert rows[-1] == [True, "gone.py:f", 1.0]  # chosen in a preset, its file since removed: the check names it
    rows[1][0], rows[1][2] = True, "2"
    chosen = reward_table.chosen_rewards(rows)
    assert chosen == [{"function": "myrewards.py:brevity", "weight": 0.5},
                      {"function": "myrewards.py:mentions_answer", "weight": 2.0}, {"function": "gone.py:f", "weight": 1.0}]
    static = {"plugin": GRPO, "name": "", "model": "", "source": "Bundled sample", "sample": "grpo_arithmetic",
              "upload": None, "path": "", "hub": "", "subset": "", "split": "", "template": "{{question}}",
              "completion_template": "{{answer}}", "custom_rewards": chosen[:2]}
    request = form_request.build_request(svc, static, {"device": "cpu"})
    assert request["params"] == {"device": "cpu", "custom_rewards": chosen[:2]}
    assert "grpo.py" in svc.launch_preview(request)["command"]
    seed = {"plugin": GRPO, "values": request["params"], "version": 1}  # a preset or a cloned job
    assert reward_table.seeded_rewards(svc, GRPO, seed) == chosen[:2]
    assert reward_table.seeded_rewards(svc, "llama_sft_multi_gpu", {**seed, "plugin": "llama_sft_multi_gpu"}) == []
