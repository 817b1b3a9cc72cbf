"""Issue 21 item 5: a job request exported as a SkyPilot task (tlab_gradio/skypilot.py), checked against SkyPilot's
own task loader where SkyPilot is installed (this environment, or the python named by TLAB_SKYPILOT_PYTHON: its
packages conflict with the app's pins, so it lives in a venv of its own); nothing is launched."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tlab_gradio import skypilot

REQUEST = {"plugin": "llama_sft_multi_gpu", "name": "sky run", "params": {"max_steps": 20}}


def skypilot_python():
    for python in (os.environ.get("TLAB_SKYPILOT_PYTHON"), sys.executable):
        if python and shutil.which(python) and subprocess.run(
                [python, "-c", "import sky"], capture_output=True).returncode == 0:
            return python
    return None


def test_a_request_exported_as_a_two_node_skypilot_task(home, tmp_path):
    spec = skypilot.prepare(REQUEST, "H100:8")  # checked on an 8-GPU node's terms, not this CPU machine's
    path = skypilot.export(spec, tmp_path / "sky", nodes=2, accelerators="H100:8")
    text = path.read_text()
    task = yaml.safe_load(text)
    assert task["num_nodes"] == 2 and task["resources"] == {"accelerators": "H100:8"}
    assert task["file_mounts"] == {"/tlab/job": str((tmp_path / "sky" / "job").resolve())}
    assert "copy it to the same path on the nodes" in text  # the embedded model is a folder here
    run = task["run"]
    assert 'MAIN_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)' in run
    for part in ('--machine_rank "$SKYPILOT_NODE_RANK"', '--num_machines "$SKYPILOT_NUM_NODES"',
                 '--main_process_ip "$MAIN_IP"', "--num_processes 16", "--multi_gpu",
                 "tlab_gradio/trainers/sft.py --job-dir /tlab/job"):
        assert part in run, run
    assert subprocess.run(["bash", "-n"], input=run, text=True).returncode == 0
    config = json.loads((tmp_path / "sky" / "job" / "config.json").read_text())
    assert config["launch"]["device"] == "cuda" and config["launch"]["num_processes"] == 8
    assert config["launch"]["distributed"]["num_machines"] == 2 and config["params"]["max_steps"] == 20
    accelerate = yaml.safe_load((tmp_path / "sky" / "job" / "accelerate.yaml").read_text())
    assert accelerate["num_machines"] == 2 and accelerate["num_processes"] == 16
    assert accelerate["mixed_precision"] == "bf16"

    python = skypilot_python()
    if python is None:
        pytest.skip("SkyPilot is not installed here (pip install skypilot in a venv of its own, and set "
                    "TLAB_SKYPILOT_PYTHON to its python): the task was checked without SkyPilot's loader")
    loaded = subprocess.run([python, "-c", (
        "import json, sys, sky; t = sky.Task.from_yaml(sys.argv[1]); r = list(t.resources)[0]; "
        "print(json.dumps({'nodes': t.num_nodes, 'accelerators': r.accelerators, 'mounts': t.file_mounts, "
        "'workdir': t.workdir, 'run': t.run}))"), str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    got = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert got["nodes"] == 2 and got["accelerators"] == {"H100": 8} and got["run"] == run
    assert got["mounts"] == task["file_mounts"]


def test_refusals(home, tmp_path):
    with pytest.raises(ValueError, match="NAME:COUNT"):
        skypilot.prepare(REQUEST, "8 GPUs")
    spec = skypilot.prepare({**REQUEST, "device": "cpu"}, "H100:8")
    with pytest.raises(ValueError, match="device must be cuda"):
        skypilot.export(spec, tmp_path, nodes=2, accelerators="H100:8")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**REQUEST, "params": {"max_steps": "many"}}))
    assert skypilot.main([str(bad), "--out", str(tmp_path / "out")]) == 2  # the problems on stderr, nothing written
    assert not (tmp_path / "out").exists()
