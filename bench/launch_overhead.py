"""Launch overhead: time from `/start_job` to the first training step, against the same
`accelerate launch` command run by hand, on CPU with the embedded tiny model.

Each round (interleaved, so drift hits every path alike) runs one 2-step SFT job each way:
  hand     the job's own argv (job.command, as in command.txt) with subprocess, from a copy of a job folder
           (same config.json and accelerate.yaml, fresh outputs, a new port): Popen -> first step
  app      a real `python app.py` (started fresh each round) driven through gradio_client:
           the round's first job (`app_cold`: the web process has not checked a dataset yet)
           and a second one (`app_warm`)
  service  `Service().start_job` in a fresh python process, timed step by step
           (`service_cold`, then `service_warm` in the same process)
The first step is the first line with "loss" in the job's metrics.jsonl; its "time" is written by
the trainer's callback, so polling the file adds no error. Overhead = median(path) - median(hand);
since the same command's own time spreads over seconds, the part the app adds before the process
exists (`to_spawn`) is also measured directly, and the Service's steps are timed one by one.
Each sample records the CPU other processes took meanwhile (`others_cpu_s`): the machine may be shared.

Run: python bench/launch_overhead.py [--runs 5] [--out bench/results/launch-overhead-DATE-MACHINE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REQUEST = {"plugin": "llama_sft_multi_gpu", "name": "launch-overhead", "device": "cpu", "cpu_processes": 1,
           "params": {"max_steps": 2, "logging_steps": 1, "report_to": "none", "max_length": 128,
                      "per_device_train_batch_size": 4, "save_steps": 1000}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_step_time(job_dir: Path, timeout: float = 300) -> float:
    """The wall-clock time of the first loss record in the job's metrics.jsonl."""
    path, deadline = job_dir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            for line in path.read_text().splitlines():
                if '"loss"' in line and line.endswith("}"):
                    return json.loads(line)["time"]
        time.sleep(0.02)
    raise TimeoutError(f"no training step in {path} after {timeout} s:\n{(job_dir / 'log.txt').read_text()[-3000:]}")


def _stat(pid) -> tuple[int, float]:
    """(parent pid, user + system CPU seconds so far) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """What a process (the web server) has taken from the job's cores so far."""
    return _stat(pid)[1]


def snapshot() -> dict[int, tuple[int, float]]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = _stat(entry.name)
            except (OSError, IndexError, ValueError):
                pass
    return found


def others_cpu(before: dict, after: dict) -> float:
    """CPU seconds taken between two snapshots by processes that are not this benchmark's: on a shared
    2-core machine another session's tests slow a job down by seconds; each sample records it."""
    mine, grew = {os.getpid()}, True
    while grew:
        new = {pid for pid, (ppid, _) in after.items() if ppid in mine} - mine
        mine |= new
        grew = bool(new)
    return sum(cpu - before.get(pid, (0, 0.0))[1] for pid, (_, cpu) in after.items() if pid not in mine)


# --- the Service path, in a process of its own ---------------------------------------------

SPANS = [  # (module[.class], function, label): the steps of Service.start_job, outermost first
    ("service.Service", "prepare", "prepare: every request check"),
    ("service.Service", "plugin", "  load the manifests, pick the plugin"),
    ("manifests", "readiness", "  plugin readiness (installed packages)"),
    ("gpus", "list_gpus", "  list GPUs"),
    ("params", "validate", "  parameter checks"),
    ("models", "resolve", "  model: resolve"),
    ("data", "check", "  dataset: read and check"),
    ("jobs.JobManager", "create", "create: job row, folder, config.json, schedule"),
    ("jobs.JobManager", "_schedule", "  scheduler: pick the job (synchronous, no poll)"),
    ("jobs.JobManager", "_launch", "    launch"),
    ("launcher", "write_launch_files", "      write accelerate.yaml and command.txt"),
    ("launcher", "spawn", "      spawn (Popen)"),
]


def timed(spans: dict, owner, name: str, label: str) -> None:
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spans[label] = spans.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapper)


def service_worker() -> None:
    """Read a line per job from stdin; start it through Service().start_job with each step timed and
    print a JSON line, then wait for the job to end and print its end state. The product's functions
    are wrapped here, not edited."""
    from tlab_gradio import data, gpus, jobs, launcher, manifests, models, params, service

    modules = {"service": service, "manifests": manifests, "gpus": gpus, "params": params, "models": models,
               "data": data, "jobs": jobs, "launcher": launcher}
    spans: dict[str, float] = {}
    for owner, name, label in SPANS:
        module, _, cls = owner.partition(".")
        timed(spans, getattr(modules[module], cls) if cls else modules[module], name, label)
    svc = service.Service()
    for _ in sys.stdin:
        spans.clear()
        t_call = time.time()
        start = time.perf_counter()
        job = svc.start_job(REQUEST)
        returned = time.perf_counter() - start
        row = svc.jobs.get(job["id"])
        print(json.dumps({"t_call": t_call, "start_job_s": returned, "job_dir": str(row.job_dir),
                          "command": row.command, "started": row.started, "spans_s": dict(spans)}), flush=True)
        print(json.dumps({"state": svc.jobs.wait(job["id"], 300).state}), flush=True)


# --- the three ways --------------------------------------------------------------------------

class App:
    """`python app.py` on a free port, and a gradio_client Client made before any timing."""

    def __init__(self, env: dict, log: Path):
        from gradio_client import Client

        port = free_port()
        env = {**env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=open(log, "w"),
                                     stderr=subprocess.STDOUT)
        url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start: {log.read_text()[-2000:]}")
                time.sleep(0.2)
        self.client = Client(url, verbose=False)
        time.sleep(2)  # let the freshly started server go idle

    def run(self, home: Path) -> dict:
        cpu, before = cpu_seconds(self.proc.pid), snapshot()
        t_call = time.time()
        job = self.client.predict(REQUEST, api_name="/start_job")
        t_return = time.time()
        job_dir = home / "jobs" / str(job["job_id"])
        step = first_step_time(job_dir)
        cpu, others = cpu_seconds(self.proc.pid) - cpu, others_cpu(before, snapshot())
        while (status := self.client.predict(job["job_id"], api_name="/job_status"))["state"] not in (
                "COMPLETE", "FAILED"):
            time.sleep(0.5)
        assert status["state"] == "COMPLETE", status
        return {"seconds": step - t_call, "to_spawn_s": status["started"] - t_call,
                "spawned_to_first_step_s": step - status["started"], "response_s": t_return - t_call,
                "to_row_created_s": status["created"] - t_call,
                "row_created_to_spawned_s": status["started"] - status["created"],
                "server_cpu_s_until_first_step": cpu, "others_cpu_s": others, "job_dir": str(job_dir)}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def run_service(worker: subprocess.Popen) -> dict:
    cpu, before = cpu_seconds(worker.pid), snapshot()
    worker.stdin.write("go\n")
    worker.stdin.flush()
    out = json.loads(worker.stdout.readline())
    step = first_step_time(Path(out["job_dir"]))
    cpu, others = cpu_seconds(worker.pid) - cpu, others_cpu(before, snapshot())
    end = json.loads(worker.stdout.readline())
    assert end["state"] == "COMPLETE", end
    return {"seconds": step - out["t_call"], "to_spawn_s": out["started"] - out["t_call"],
            "spawned_to_first_step_s": step - out["started"], "start_job_s": out["start_job_s"],
            "worker_cpu_s_until_first_step": cpu, "others_cpu_s": others, "spans_s": out["spans_s"],
            "job_dir": out["job_dir"], "command": out["command"]}


def run_by_hand(template: dict, scratch: Path) -> dict:
    """The template job's argv with its folder swapped for a fresh copy (same config.json and
    accelerate.yaml, no outputs) and a new port."""
    import yaml

    from tlab_gradio.launcher import child_env

    source, job_dir, port = Path(template["job_dir"]), Path(tempfile.mkdtemp(prefix="hand-", dir=scratch)), free_port()
    shutil.copy(source / "config.json", job_dir / "config.json")
    accelerate = {**yaml.safe_load((source / "accelerate.yaml").read_text()), "main_process_port": port}
    (job_dir / "accelerate.yaml").write_text(yaml.safe_dump(accelerate))
    argv = [a.replace(str(source), str(job_dir)) for a in template["command"]]
    argv[argv.index("--main_process_port") + 1] = str(port)
    before = snapshot()
    with open(job_dir / "log.txt", "wb") as log:
        t_call = time.time()
        proc = subprocess.Popen(argv, cwd=job_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=child_env())
        spawned = time.time()
    step = first_step_time(job_dir)
    others = others_cpu(before, snapshot())
    assert proc.wait(300) == 0, (job_dir / "log.txt").read_text()[-3000:]
    return {"seconds": step - t_call, "to_spawn_s": spawned - t_call, "spawned_to_first_step_s": step - spawned,
            "others_cpu_s": others, "job_dir": str(job_dir)}


def summary(samples: list[dict]) -> dict:
    values = [s["seconds"] for s in samples]
    return {"seconds": values, "median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
            "stdev_s": statistics.stdev(values) if len(values) > 1 else 0.0,
            "to_spawn_median_s": statistics.median(s["to_spawn_s"] for s in samples),
            "spawned_to_first_step_median_s": statistics.median(s["spawned_to_first_step_s"] for s in samples),
            "others_cpu_s": [round(s["others_cpu_s"], 2) for s in samples]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--service-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.service_worker:
        return service_worker()

    tmp = Path(tempfile.mkdtemp(prefix="launch-overhead-"))
    home = tmp / "ws"
    env = {**os.environ, "TLAB_HOME": str(home), "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(REPO)}
    os.environ.update(env)
    # The embedded model is built once, outside any timing, by the module the trainer uses.
    subprocess.run([sys.executable, "-m", "tlab_gradio.tiny_model"], cwd=REPO, env=env, check=True,
                   capture_output=True)

    def new_worker():
        return subprocess.Popen([sys.executable, __file__, "--service-worker"], cwd=REPO, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    # Warm-up (untimed): a job through the Service writes the .pyc files and the datasets cache,
    # and leaves the template job folder the by-hand runs copy.
    worker = new_worker()
    template = run_service(worker)
    worker.stdin.close()
    worker.wait(60)
    run_by_hand(template, tmp)

    results: dict[str, list[dict]] = {k: [] for k in ("hand", "app_cold", "app_warm", "service_cold", "service_warm")}
    for r in range(args.runs):
        results["hand"].append(run_by_hand(template, tmp))
        app = App(env, tmp / f"app-{r}.log")
        try:
            results["app_cold"].append(app.run(home))
            results["app_warm"].append(app.run(home))
        finally:
            app.close()
        worker = new_worker()
        results["service_cold"].append(run_service(worker))
        results["service_warm"].append(run_service(worker))
        worker.stdin.close()
        worker.wait(60)
        results["hand"].append(run_by_hand(template, tmp))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f} (others {v[-1]['others_cpu_s']:.1f})"
                                             for k, v in results.items()), flush=True)

    paths = {k: summary(v) for k, v in results.items()}
    hand = paths["hand"]
    for k in paths:
        # End to end (noisy: the same command's own spread is seconds), and the part the app adds
        # before the process exists (measured directly) plus the process's own difference (noise).
        paths[k]["overhead_vs_hand_s"] = paths[k]["median_s"] - hand["median_s"]
        paths[k]["process_difference_vs_hand_s"] = (paths[k]["spawned_to_first_step_median_s"]
                                                     - hand["spawned_to_first_step_median_s"])

    def median_of(key, samples):
        return statistics.median(s[key] for s in samples)

    breakdown = {
        kind: {
            "service_start_job_s": median_of("start_job_s", results[f"service_{kind}"]),
            "service_to_spawn_s": median_of("to_spawn_s", results[f"service_{kind}"]),
            "service_steps_s": {label: statistics.median(s["spans_s"].get(label, 0.0)
                                                         for s in results[f"service_{kind}"])
                                for _, _, label in SPANS},
            "service_worker_cpu_s_until_first_step": median_of("worker_cpu_s_until_first_step",
                                                               results[f"service_{kind}"]),
            "app_to_spawn_s": median_of("to_spawn_s", results[f"app_{kind}"]),
            "app_response_s": median_of("response_s", results[f"app_{kind}"]),
            "app_call_to_row_created_s": median_of("to_row_created_s", results[f"app_{kind}"]),
            "app_row_created_to_spawned_s": median_of("row_created_to_spawned_s", results[f"app_{kind}"]),
            "app_spawned_to_first_step_s": median_of("spawned_to_first_step_s", results[f"app_{kind}"]),
            "app_server_cpu_s_until_first_step": median_of("server_cpu_s_until_first_step", results[f"app_{kind}"]),
        } for kind in ("cold", "warm")
    }
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip() or None,
        "request": REQUEST,
        "runs": args.runs,
        "paths": paths,
        "breakdown_median": breakdown,
        "command_template": template["command"],
        "samples": {k: [{kk: vv for kk, vv in s.items() if kk not in ("job_dir", "command")} for s in v]
                    for k, v in results.items()},
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {kk: round(vv, 3) for kk, vv in v.items() if isinstance(vv, float)}
                      for k, v in paths.items()}, indent=2))
    print(json.dumps(breakdown, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
