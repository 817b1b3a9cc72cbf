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
    assert "accelerate launch" in plugin["command"] or "accelerate.commands.launch" in plugin["command"]
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
