"""Pure helpers of the page, without a browser (the browser tests drive the same paths end to end)."""
from pathlib import Path

from tlab_gradio.ui import jobs_view


def test_every_metric_is_charted_and_a_long_run_is_thinned_not_cut():
    records = [{"step": s, "epoch": s / 100, "time": 1.0, "loss": 5 - s / 10000, "learning_rate": 1e-4,
                "grad_norm": 0.5, "world_size": 2, "flag": True} for s in range(1, 12001)]
    records.append({"step": 12000, "train_loss": 4.2, "train_runtime": 99.0})  # the end-of-run summary
    series = {}
    for first in range(0, len(records), 1000):  # read in pieces, as the page's timer does
        series = jobs_view.add_points(series, records[first:first + 1000])
    assert set(series) == {"loss", "learning_rate", "grad_norm"}
    assert all(len(points) <= jobs_view.MAX_POINTS for points in series.values())
    assert series["loss"][0][0] == 1 and series["loss"][-1][0] > 11000  # from the start to (nearly) the end
    assert jobs_view.chart_choices(series) == ["loss & reward", "grad_norm", "learning_rate"]
    assert set(jobs_view.chart_frame(series, "loss & reward")["series"]) == {"loss"}
    assert set(jobs_view.chart_frame(series, "grad_norm")["series"]) == {"grad_norm"}
    assert jobs_view.chart_frame({}, None).empty


def test_compared_runs_are_named_by_job_and_the_legend_follows():
    mine = {"loss": [[1, 2.0], [2, 1.5]], "reward": [[1, 0.1]], "grad_norm": [[1, 0.3]]}
    other = {"7": {"label": "7 · baseline", "series": {"loss": [[1, 2.1]], "grad_norm": [[1, 0.9]]}}}
    frame = jobs_view.chart_frame(mine, "grad_norm", other, "8 · new")
    assert list(frame["series"]) == ["8 · new", "7 · baseline"]
    both = jobs_view.chart_frame(mine, "loss & reward", other, "8 · new")
    assert list(dict.fromkeys(both["series"])) == ["8 · new: loss", "8 · new: reward", "7 · baseline: loss"]
    drawn = jobs_view.chart_update(mine, "grad_norm", other, "8 · new")
    assert legend(drawn) == ["8 · new", "7 · baseline"] and 'class="tl-chart-title"' in drawn
    assert ">grad_norm</div>" in drawn
    assert legend(jobs_view.chart_update(mine, None)) == ["loss", "reward"]


def legend(drawn: str) -> list[str]:
    import html
    import re

    return [html.unescape(m) for m in re.findall(r'<span class="tl-legend-item"[^>]*><span[^>]*></span>([^<]*)</span>',
                                                 drawn)]


def drawn_steps(drawn: str) -> dict[str, list[int]]:
    """Each drawn line's steps, as the chart's markup holds them (what the browser shows)."""
    import html
    import re

    return {html.unescape(name): [int(s) for s in steps.split(",")]
            for name, steps in re.findall(r'<g class="tl-series[^"]*" data-series="([^"]*)" data-steps="([^"]*)"', drawn)}


def test_the_chart_draws_every_point_it_is_given_with_round_ticks():
    """Every point the page holds is in the markup sent (gradio's LinePlot drew the previous update's rows: a
    live chart one logged point behind), a single point gets round ticks (it read 5.577897 / 1.000000), and
    the smoothed line goes over the raw points, which stay."""
    import re

    from tlab_gradio.ui import chart

    series = {}
    for step in range(1, 11):  # one record per refresh, as a running job's are read
        series = jobs_view.add_points(series, [{"step": step, "loss": 5.577897 - step / 100}])
        drawn = jobs_view.chart_update(series, None)
        assert drawn_steps(drawn) == {"loss": list(range(1, step + 1))}
        assert drawn.count('class="tl-point"') == step
    one = jobs_view.chart_update({"loss": [[1, 5.577897]]}, None)
    assert re.findall(r'class="tl-ytick"[^>]*>([^<]*)<', one) == ["5.0", "5.5", "6.0", "6.5"]
    assert re.findall(r'class="tl-xtick"[^>]*>([^<]*)<', one) == ["0", "1", "2"]
    assert "5.577897" not in re.sub(r"<title>.*?</title>", "", one)
    assert "No points yet" in jobs_view.chart_update({}, None)

    smooth = jobs_view.chart_update(series, None, smoothing=0.6)
    assert smooth.count('class="tl-point"') == 10 and smooth.count('class="tl-smoothed"') == 1
    assert 'class="tl-smoothed"' not in jobs_view.chart_update(series, None, smoothing=0)
    assert chart.ema([1.0, 1.0, 1.0], 0.9) == [1.0, 1.0, 1.0]  # debiased: no pull towards 0
    assert chart.ema([0.0, 10.0], 0.5) == [0.0, 10 * 0.5 / 0.75]
    assert chart.ema([3.0, 1.0], 0) == [3.0, 1.0]



def test_a_sweep_of_sixteen_jobs_draws_sixteen_colours():
    """A sweep may queue 16 jobs; compared in one chart, each line has a colour of its own (8 colours repeated
    drew job 9 as job 1), the legend's swatch the same as its line."""
    import re

    from tlab_gradio.ui import chart

    lines = [chart.Line(f"job {i}", [(1, i), (2, i + 0.5)]) for i in range(16)]
    drawn = chart.render(lines, "loss")
    strokes = re.findall(r'<polyline points="[^"]*" fill="none" stroke="([^"]+)"', drawn)
    swatches = re.findall(r'border-top:3px solid ([^;]+);', drawn)
    assert len(strokes) == 16 and len(set(strokes)) == 16, strokes
    assert swatches == strokes


def test_the_held_out_curves_are_drawn_beside_the_training_ones():
    """A job with a held-out split logs eval_loss (GRPO: eval_reward) at each evaluation, in records of their own:
    the default chart draws them with loss and reward, each in its own colour, dashed, with a ring per evaluation
    and a dashed legend swatch; compared with another job, each curve is named by job and metric."""
    import re

    records = [{"step": s, "loss": 3 - s / 10, "reward": s / 10} for s in range(1, 7)]
    records += [{"step": s, "eval_loss": 3.1 - s / 20, "eval_reward": s / 20, "eval_runtime": 0.1} for s in (3, 6)]
    series = jobs_view.add_points({}, records)
    assert jobs_view.chart_choices(series) == ["loss & reward", "eval_runtime"]
    drawn = jobs_view.chart_update(series, None)
    assert drawn_steps(drawn) == {"loss": [1, 2, 3, 4, 5, 6], "eval_loss": [3, 6], "reward": [1, 2, 3, 4, 5, 6],
                                  "eval_reward": [3, 6]}
    assert legend(drawn) == ["loss", "eval_loss", "reward", "eval_reward"]
    groups = re.findall(r'<g class="([^"]*)" data-series="([^"]*)"[^>]*>(.*?)</g>', drawn, re.S)
    colours = {name: re.search(r'stroke="(#[0-9a-f]{6})"', body).group(1) for _, name, body in groups}
    assert len(set(colours.values())) == 4
    for cls, name, body in groups:
        evaluated = name.startswith("eval_")
        assert ("tl-eval" in cls.split()) is evaluated and ("stroke-dasharray" in body) is evaluated, name
        assert body.count('class="tl-point"') == (2 if evaluated else 6)
    assert drawn.count("border-top:3px dashed") == 2 and drawn.count("border-top:3px solid") == 2
    other = {"7": {"label": "7 · base", "series": {"loss": [[1, 3.0]], "eval_loss": [[3, 2.9]]}}}
    assert legend(jobs_view.chart_update(series, None, other, "8 · new")) == [
        "8 · new: loss", "8 · new: eval_loss", "8 · new: reward", "8 · new: eval_reward", "7 · base: loss",
        "7 · base: eval_loss"]
    assert drawn_steps(jobs_view.chart_update(series, None, smoothing=0.5))["eval_loss"] == [3, 6]

def test_a_compared_job_that_still_runs_keeps_growing(home, monkeypatch):
    """The page follows a compared job through the service (job_metrics from an offset), not its files; a job
    deleted meanwhile keeps the curve it had."""
    import json

    from tlab_gradio import jobs as jobs_mod
    from tlab_gradio.service import Service

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", lambda job_dir, launch: ["true"])
    svc = Service()
    job = svc.start_job({"plugin": "llama_sft_multi_gpu", "device": "cpu", "name": "run"})
    svc.jobs.wait(job["id"], 30)
    metrics = Path(job["job_dir"]) / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    others = {str(job["id"]): {"label": f"{job['id']} · run", "series": {}, "offset": 0}}
    others, grew = jobs_view.follow_others(svc, others)
    assert grew and others[str(job["id"])]["series"]["loss"] == [[1, 2.0]]
    assert jobs_view.follow_others(svc, others)[1] is False  # nothing new: the chart is not re-sent
    with metrics.open("a") as fh:
        fh.write(json.dumps({"step": 2, "loss": 1.5}) + "\n")
    others, grew = jobs_view.follow_others(svc, others)
    assert grew and others[str(job["id"])]["series"]["loss"] == [[1, 2.0], [2, 1.5]]
    svc.delete_job(job["id"])
    kept, grew = jobs_view.follow_others(svc, others)
    assert not grew and kept[str(job["id"])]["series"]["loss"] == [[1, 2.0], [2, 1.5]]


def test_a_job_view_is_one_snapshot_through_the_service(home, monkeypatch):
    """What a job's page shows comes from Service.job_view: its row without folders or config, the log's
    tail, the metrics appended since an offset, and the files once it has finished."""
    import json

    from tlab_gradio import jobs as jobs_mod
    from tlab_gradio.service import Service

    monkeypatch.setattr(jobs_mod.launcher, "write_launch_files", lambda job_dir, launch: ["true"])
    svc = Service()
    job = svc.start_job({"plugin": "llama_sft_multi_gpu", "device": "cpu", "cpu_processes": 2, "name": "v"})
    svc.jobs.wait(job["id"], 30)
    folder = Path(job["job_dir"])
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3 - s}) + "\n" for s in (1, 2)))
    view = svc.job_view(job["id"], 0, log_lines=5)
    assert view["job"]["processes"] == 2 and view["job"]["gpus"] == [] and view["job"]["state"] == "COMPLETE"
    assert not {"job_dir", "config", "output_dir", "command"} & set(view["job"])
    assert [r["step"] for r in view["metrics"]] == [1, 2] and view["log"] and len(view["log"]) <= 5
    assert str(folder / "log.txt") in view["files"] and view["status"]["state"] == "COMPLETE"
    again = svc.job_view(job["id"], view["metrics_offset"])
    assert again["metrics"] == [] and again["metrics_offset"] == view["metrics_offset"]
    assert [r["processes"] for r in svc.job_rows()] == [2]
    assert jobs_view.job_rows(svc)[0][4] == "cpu×2"


def test_the_memory_line_adds_up_to_the_total_it_shows():
    """The form's memory line: its parts sum to the total (gradients and activations share their room, and the
    estimate counts the larger), for a full fine-tune and for LoRA, where the other one is the larger."""
    import re

    from tlab_gradio import memory
    from tlab_gradio.ui import previews

    shape = memory.Shape(layers=24, hidden=896, intermediate=4864, heads=14, kv_heads=2, vocab=151936, tied=True)
    for kwargs in ({"batch": 8, "seq": 1024}, {"batch": 1, "seq": 64}, {"use_lora": True, "batch": 8, "seq": 1024}):
        est = memory.estimate(shape, processes=1, **kwargs).as_dict() | {"gpus": []}
        line = previews.memory_md(est)
        total = float(re.search(r"\*\*([\d.]+) GiB\*\*", line).group(1))
        inside = re.search(r"GiB\*\* \((.*)\)", line).group(1)
        counted, reused = inside.split("; ")
        assert re.fullmatch(r"(gradients|activations) [\d.<]+ [MG]iB reuse the (activations|gradients)' room", reused)
        sizes = re.findall(r"(<?[\d.]+) ([MG]iB)", counted)
        assert len(sizes) == 4, line  # weights, optimizer, the larger of the two, overhead
        gib = sum(0.0 if n.startswith("<") else float(n) / (1024 if unit == "MiB" else 1) for n, unit in sizes)
        assert abs(gib - total) <= 0.25, line
