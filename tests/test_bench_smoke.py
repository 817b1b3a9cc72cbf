"""The SFT benchmark must not rot: a tiny CPU run of it, plain TRL against the plugin through the
launcher, with the figures and curves it reports on a GPU (speed itself is measured on the GPU, not here)."""
import json
import subprocess
import sys

from conftest import REPO


def test_sft_bench_runs_on_cpu(tmp_path, home):
    out = tmp_path / "sft.json"
    subprocess.run([sys.executable, "bench/sft_bench.py", "--shape", "tiny", "--device", "cpu", "--steps", "4",
                    "--seq", "128", "--settings", "trl_defaults,plugin", "--no-warmup", "--out", str(out)],
                   cwd=REPO, check=True, timeout=600, capture_output=True)
    report = json.loads(out.read_text())
    plain, plugin = report["settings"]["trl_defaults"], report["settings"]["plugin"]
    assert plain["tokens_per_s"] > 0 and plugin["tokens_per_s"] > 0
    assert "-m accelerate.commands.launch" in plugin["command"]
    assert plugin["plan"].startswith("[tlab] speed: attention sdpa, packing off, padding-free")
    assert len(plugin["curve"]) == 4 and plugin["x_trl_defaults"] > 0
    assert plugin["loss_vs_trl"]["points"] >= 1
    # the defaults learn what plain TRL's defaults learn: the same examples per step, the same losses
    assert [t for t, _ in plugin["curve"]] == [t for t, _ in plain["curve"]]
    assert plugin["loss_vs_trl"]["max_abs_diff"] < 1e-3

    # a run cut short by its call's time limit is finished from its JSON: ratios, comparisons, table
    expected = plugin["x_trl_defaults"], plugin["loss_vs_trl"]
    for r in report["settings"].values():
        r.pop("x_trl_defaults", None), r.pop("loss_vs_trl", None)
    out.write_text(json.dumps(report))
    table = subprocess.run([sys.executable, "bench/sft_bench.py", "--recompute", str(out)], cwd=REPO, check=True,
                           timeout=120, capture_output=True, text=True).stdout
    again = json.loads(out.read_text())["settings"]["plugin"]
    assert (again["x_trl_defaults"], again["loss_vs_trl"]) == expected
    assert "| plugin |" in table


def test_grpo_learning_bench_runs_on_cpu(tmp_path, home):
    """The learning benchmark: the plugin through the app's service and plain TRL on the problem the plugin's
    job config describes, each step's reward, the rise against the spread, and the curves compared."""
    out = tmp_path / "learning.json"
    subprocess.run([sys.executable, "bench/grpo_learning_bench.py", "--model", "", "--device", "cpu", "--steps", "2",
                    "--seed", "7", "--out", str(out)], cwd=REPO, check=True, timeout=600, capture_output=True)
    report = json.loads(out.read_text())
    assert report["params"]["seed"] == report["plain_trl"]["settings"]["seed"] == 7
    assert [r["step"] for r in report["plugin"]["curve"]] == [1, 2]
    assert [r["step"] for r in report["plain_trl"]["curve"]] == [1, 2]
    same = report["plain_trl"]["settings"]
    for key in ("learning_rate", "num_generations", "max_completion_length", "beta", "loss_type", "seed"):
        assert same[key] == report["params"][key], key
    assert set(same["reward_weights"]) == {"correctness", "integer", "strict_format", "soft_format", "tag_count"}
    assert "need 20" in report["summary"]["plugin"]["error"]  # 2 steps cannot show a rise; 60 do on the GPU


def test_app_gpu_check_runs_on_cpu(tmp_path, home):
    """The every-plugin check drives a real `python app.py` through gradio_client only."""
    out = tmp_path / "app.json"
    subprocess.run([sys.executable, "bench/app_gpu_check.py", "--device", "cpu", "--steps", "1",
                    "--gpu-choices", "omitted", "--out", str(out)], cwd=REPO, check=True, timeout=600,
                   capture_output=True)
    report = json.loads(out.read_text())
    ran = {j["plugin"]: j for j in report["jobs"] if "skipped" not in j}
    assert set(ran) == {"llama_sft_multi_gpu", "grpo_multi_gpu"}
    assert all(j["state"] == "COMPLETE" and j["metrics_finite"] for j in ran.values()), ran
    assert report["summary"]["missing_gpu_ids_refused"]
    assert all("does not exist" in r["message"] for r in report["refusals"])


def test_grpo_learning_bench_tells_drift_between_seeds_from_a_gap(tmp_path):
    """--compare: the curves' gap per 10 steps against the seeds' own spread. Seeds that scatter around the
    same curve follow; a plugin below plain TRL on every seed does not."""
    def report(seed, plugin_shift, plain_shift):
        curve = lambda shift: [{"step": i + 1, "reward": 0.2 + 0.01 * i + shift} for i in range(30)]  # noqa: E731
        return {"params": {"seed": seed}, "plugin": {"curve": curve(plugin_shift)},
                "plain_trl": {"curve": curve(plain_shift)}}

    def compare(reports):
        paths = []
        for i, r in enumerate(reports):
            paths.append(tmp_path / f"seed{i}.json")
            paths[-1].write_text(json.dumps(r))
        out = tmp_path / "seeds.json"
        subprocess.run([sys.executable, "bench/grpo_learning_bench.py", "--compare", *map(str, paths),
                        "--out", str(out)], cwd=REPO, check=True, timeout=120, capture_output=True)
        return json.loads(out.read_text())

    drift = compare([report(1, 0.05, -0.05), report(2, -0.05, 0.05), report(3, 0.0, 0.0)])
    assert drift["plugin_seeds"] == drift["plain_trl_seeds"] == [1, 2, 3]
    assert drift["follows"] and len(drift["windows"]) == 3
    assert drift["plugin_rose_every_seed"] and drift["plain_trl_rose_every_seed"]
    behind = compare([report(1, -0.1, 0.0), report(2, -0.11, 0.01), report(3, -0.09, -0.01)])
    assert not behind["follows"] and all(w["gap"] < -0.05 for w in behind["windows"])
    assert all(abs(w["paired_gaps"]["1"] + 0.1) < 1e-9 for w in behind["windows"])
    # a run cut short after its plugin side: that seed counts for the plugin's mean and spread only
    cut = report(4, 0.12, 0.0)
    del cut["plain_trl"]
    ahead = compare([report(1, 0.0, 0.0), cut])
    assert ahead["plugin_seeds"] == [1, 4] and ahead["plain_trl_seeds"] == [1]
    assert all(abs(w["gap"] - 0.06) < 1e-9 and abs(w["seed_spread"] - 0.06 / 2 ** 0.5) < 1e-9
               for w in ahead["windows"]) and not ahead["follows"]
