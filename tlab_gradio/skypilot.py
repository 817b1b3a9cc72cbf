"""A job as a SkyPilot task, for clouds and Kubernetes: exported here, launched by `sky launch` (never by the app).

`python -m tlab_gradio.skypilot request.json --nodes 2 --accelerators H100:8 --out DIR` checks the request as Start
does (the same /start_job request) and writes DIR/task.yaml, DIR/job/config.json (the job's spec) and
DIR/job/accelerate.yaml. The task syncs this repository as its workdir, mounts DIR/job on every node at
/tlab/job, installs the app's pinned packages in `setup`, and `run`s the job's accelerate launch on each node with
--machine_rank $SKYPILOT_NODE_RANK, --main_process_ip the first of $SKYPILOT_NODE_IPS and --num_machines
$SKYPILOT_NUM_NODES. The model and the dataset must be reachable from the nodes: Hub ids, or the bundled samples
(they are in the workdir); a folder on this machine is not there.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

import yaml

from . import gpus, job_request, launcher, settings
from .job_spec import JobSpec, Launch
from .request_error import RequestError

JOB = "/tlab/job"  # where the job folder is mounted on every node
PORT = 29500
ACCELERATORS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9]+)?$")


def _gpus(accelerators: str) -> int:
    return int(accelerators.partition(":")[2] or 1)


def _launch(spec: JobSpec, nodes: int, accelerators: str) -> Launch:
    """The job's launch on the task's nodes: NAME:COUNT GPUs each (CUDA_VISIBLE_DEVICES is SkyPilot's), `nodes`
    machines meeting at the first node, the trainer by its path in the workdir, the nodes' own python."""
    if spec.launch.device != "cuda":
        raise ValueError("a SkyPilot task runs on the nodes' GPUs: device must be cuda")
    dist = spec.launch.distributed.model_copy(update={"num_machines": nodes, "machine_rank": 0,
                                                      "main_process_ip": "MAIN_IP", "main_process_port": PORT})
    trainer = Path(spec.launch.trainer)
    try:
        trainer = trainer.relative_to(settings.REPO_DIR)
    except ValueError:
        pass
    return spec.launch.model_copy(update={"gpu_ids": [], "num_processes": _gpus(accelerators), "distributed": dist,
                                          "trainer": str(trainer), "python": None, "slurm": None})


def task(spec: JobSpec, nodes: int, accelerators: str, name: str | None = None) -> dict:
    """The SkyPilot task (YAML's dict) for the job, run from the repository's root as workdir."""
    if nodes < 1:
        raise ValueError(f"nodes {nodes}: must be at least 1")
    if not ACCELERATORS.match(accelerators or ""):
        raise ValueError(f"accelerators {accelerators!r}: SkyPilot's NAME or NAME:COUNT, e.g. H100:8")
    launch = _launch(spec, nodes, accelerators)
    argv = launcher.build_argv(launch, Path(JOB), PORT)
    argv = ["accelerate", "launch"] + argv[argv.index("--config_file"):]
    words = []
    for i, word in enumerate(argv):
        before = argv[i - 1] if i else ""
        words.append({"--machine_rank": '"$SKYPILOT_NODE_RANK"', "--main_process_ip": '"$MAIN_IP"',
                      "--num_machines": '"$SKYPILOT_NUM_NODES"'}.get(before, shlex.quote(word)))
    run = "\n".join([
        "set -eu",
        "# the main process: the first node's address; each node launches its GPUs' processes with its rank",
        'MAIN_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
        " ".join(words),
        "",
    ])
    setup = "pip install torch==2.13.0 -r requirements.txt -c constraints.txt\n"
    return {
        "name": name or re.sub(r"[^a-z0-9-]+", "-", f"tlab-{spec.name}".lower()).strip("-")[:60],
        "num_nodes": nodes,
        "resources": {"accelerators": accelerators},
        "workdir": str(settings.REPO_DIR),
        "file_mounts": {JOB: "job"},
        "envs": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
        "setup": setup,
        "run": run,
    }


def export(spec: JobSpec, out: Path, nodes: int, accelerators: str) -> Path:
    """Write out/task.yaml and the job folder it mounts (out/job: config.json, accelerate.yaml); the task's path."""
    found = task(spec, nodes, accelerators)
    job = Path(out) / "job"
    job.mkdir(parents=True, exist_ok=True)
    launch = _launch(spec, nodes, accelerators)
    spec.model_copy(update={"job_dir": JOB, "job_id": None, "launch": launch}).write(job)  # what the trainer reads
    (job / "accelerate.yaml").write_text(yaml.safe_dump(launcher.accelerate_config(launch, PORT)))
    found["file_mounts"] = {JOB: str(job.resolve())}
    head = "# SkyPilot task written by tlab-gradio: sky launch -c NAME task.yaml (nothing was launched)\n"
    if spec.model.source != "hub":
        head += (f"# The model is a folder on the machine that wrote this ({spec.model.path}): copy it to the same "
                 "path on the nodes, or export with a Hub id\n")
    path = Path(out) / "task.yaml"
    path.write_text(head + yaml.dump(found, Dumper=_Literal, sort_keys=False))
    return path


class _Literal(yaml.SafeDumper):
    """Scripts as YAML's literal blocks (`run: |`), as people write SkyPilot tasks."""


_Literal.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a job request as a SkyPilot task (nothing is launched).")
    parser.add_argument("request", help="a JSON file holding the /start_job request")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--accelerators", default="H100:8", help="SkyPilot's NAME:COUNT per node")
    parser.add_argument("--out", required=True, help="the folder to write task.yaml and job/ into")
    args = parser.parse_args(argv)
    try:
        spec = prepare(json.loads(Path(args.request).read_text()), args.accelerators)
        print(export(spec, Path(args.out), args.nodes, args.accelerators))
    except (RequestError, ValueError) as exc:
        print("\n".join(getattr(exc, "problems", [str(exc)])), file=sys.stderr)
        return 2
    return 0


def prepare(request: dict, accelerators: str) -> JobSpec:
    """The request checked as Start checks it, on one node's GPUs (`accelerators`, NAME:COUNT) instead of this
    machine's: a cuda job is checked for COUNT GPUs of a kind with bf16 (an H100-class node)."""
    if not ACCELERATORS.match(accelerators or ""):
        raise ValueError(f"accelerators {accelerators!r}: SkyPilot's NAME or NAME:COUNT, e.g. H100:8")
    node = [gpus.GPU(i, str(i), accelerators.partition(":")[0], 80 * 1024, 0, None, None, (9, 0))
            for i in range(_gpus(accelerators))]
    return job_request.prepare(settings.home(), {"device": "cuda", **request}, available=node)


if __name__ == "__main__":
    sys.exit(main())
