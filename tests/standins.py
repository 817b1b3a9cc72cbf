"""Stand-in jobs for the job lifecycle tests: small programs in place of training, started by the real scheduler.

`launch_files` replaces launcher.write_launch_files: the job's command becomes `python -c <program> <job dir>
<params>`, and launcher.spawn starts it as it starts `accelerate launch` (its session, its environment). The
programs do to their processes what torch's elastic launcher does (each rank in a session of its own) and what
breaks jobs (a rank that ignores SIGTERM, one stopped with SIGSTOP, a launcher killed, no progress, a full disk).
Every process of a stand-in job has its job folder in its command line, so a test finds what is left of it
without the app's own means.

Run as a script, it is an app that an operator kills: `python standins.py <home> <spec json>...` starts the
jobs with a JobManager, prints their ids and waits to be killed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlab_gradio.job_spec import DataRef, JobSpec, Launch, ModelRef  # noqa: E402

PROGRAMS = {
    # A launcher starting ranks in sessions of their own (torch's elastic agent does); each writes rank-N.pid once
    # ready. "ignore_term": SIGTERM ignored; "stopped": SIGSTOPs itself, and on SIGTERM writes rank-N.terminated
    # (a rank saving its state) and exits; anything else: sleeps.
    "ranks": """
import json, os, signal, subprocess, sys, time
job_dir, params = sys.argv[1], json.loads(sys.argv[2])
RANK = '''
import os, signal, sys, time
job_dir, rank, kind = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.path.join(job_dir, "rank-%s.pid" % rank), "w").write(str(os.getpid()))
if kind == "stopped":
    def terminated(*_):
        open(os.path.join(job_dir, "rank-%s.terminated" % rank), "w").write("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, terminated)
    os.kill(os.getpid(), signal.SIGSTOP)
while True:
    time.sleep(1)
'''
for rank, kind in enumerate(params["ranks"]):
    subprocess.Popen([sys.executable, "-c", RANK, job_dir, str(rank), kind], start_new_session=True)
if params.get("launcher_ignores_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(1)
""",
    # A trainer writing progress.json as the MetricsCallback does: `steps` steps `every` seconds apart, then
    # hanging (hang) or finishing (result.json and output written).
    "progress": """
import json, os, sys, time
job_dir, params = sys.argv[1], json.loads(sys.argv[2])
def progress(step):
    tmp = os.path.join(job_dir, ".progress.tmp")
    open(tmp, "w").write(json.dumps({"step": step, "max_steps": 100, "updated": time.time()}))
    os.replace(tmp, os.path.join(job_dir, "progress.json"))
for step in range(1, params["steps"] + 1):
    time.sleep(params["every"])
    progress(step)
while params.get("hang"):
    time.sleep(1)
os.makedirs(os.path.join(job_dir, "output", "model"), exist_ok=True)
open(os.path.join(job_dir, "output", "model", "weights.bin"), "wb").write(b"w")
open(os.path.join(job_dir, "result.json"), "w").write(json.dumps({"global_step": params["steps"]}))
""",
    # Ends after `seconds`: with its output and result.json (finish), or with `error` raised (exit 1)
    "finish": """
import json, os, sys, time
job_dir, params = sys.argv[1], json.loads(sys.argv[2])
time.sleep(params["seconds"])
if params.get("error"):
    raise ValueError(params["error"])
os.makedirs(os.path.join(job_dir, "output", "model"), exist_ok=True)
open(os.path.join(job_dir, "output", "model", "weights.bin"), "wb").write(b"w")
open(os.path.join(job_dir, "result.json"), "w").write(json.dumps({"global_step": 1}))
""",
    # Waits until the file `go` exists, then exits with `exit`
    "wait_for": """
import json, os, sys, time
job_dir, params = sys.argv[1], json.loads(sys.argv[2])
while not os.path.exists(params["go"]):
    time.sleep(0.1)
sys.exit(params.get("exit", 0))
""",
    # Fills its disk (a checkpoint too big for it), then dies of it. Its log is first padded to a whole page, so
    # that not a byte of its traceback can be written either (as when the disk filled while a real job wrote)
    "fill_disk": """
import os, sys
job_dir = sys.argv[1]
pad = -os.fstat(1).st_size % 4096
os.write(1, b" " * (pad - 1) + b"\\n" if pad else b"")
with open(os.path.join(job_dir, "checkpoint.bin"), "wb", buffering=0) as f:
    while True:
        f.write(b"\\0" * 65536)
""",
    "sleep": "import sys, time; time.sleep(3600)",
}


def spec(name: str, program: str, gpus: list[str] | None = None, **params) -> JobSpec:
    """A job whose command runs PROGRAMS[program] with `params`."""
    gpus = gpus or []
    return JobSpec(name=name, plugin="p", model=ModelRef(path="m", source="local"), data=DataRef(dataset={}),
                   launch=Launch(trainer="x.py", device="cuda" if gpus else "cpu", gpu_ids=gpus,
                                 num_processes=max(len(gpus), 1)),
                   params={"program": program, **params})


def launch_files(job_dir: Path, launch) -> list[str]:
    params = json.loads((job_dir / "config.json").read_text())["params"]
    return [sys.executable, "-c", PROGRAMS[params["program"]], str(job_dir), json.dumps(params)]


def left_of(job_dir: Path) -> list[psutil.Process]:
    """The live processes (zombies are ended) with the job folder in their command line."""
    folder, found = str(job_dir), []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and folder in (proc.info["cmdline"] or []):
            found.append(proc)
    return found


def app(home: str, *specs: str) -> None:
    """An app process that starts jobs and waits to be killed (an operator's kill -9, a crash)."""
    import time

    from tlab_gradio import jobs

    jobs.launcher.write_launch_files = launch_files
    manager = jobs.JobManager(Path(home))
    ids = [manager.create(JobSpec.model_validate_json(s)).id for s in specs]
    print(json.dumps(ids), flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    app(*sys.argv[1:])
