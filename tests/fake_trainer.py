"""A trainer program for real `accelerate launch` runs in the job lifecycle tests: each rank writes rank-N.pid in
the job folder, then acts as its job's params say (`mode`):
- hang: rank 0 ignores SIGTERM, rank 1 stops itself with SIGSTOP (a hung rank);
- killed: rank 1 is killed by SIGKILL (as the kernel's OOM killer does), rank 0 waits;
- raises: the trainers' start (common.begin: process group, error file), then rank 1's log output is lost (its
  stderr goes nowhere, as on a full disk) and it raises OSError ENOSPC; rank 0 waits.
"""
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

job_dir = Path(sys.argv[sys.argv.index("--job-dir") + 1])
mode = json.loads((job_dir / "config.json").read_text())["params"]["mode"]
rank = int(os.environ["RANK"])

if mode == "raises":
    from tlab_gradio.trainers import common

    common.begin("fake trainer")
(job_dir / f"rank-{rank}.pid").write_text(str(os.getpid()))
if mode == "hang":
    if rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        os.kill(os.getpid(), signal.SIGSTOP)
elif mode == "killed" and rank == 1:
    time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "raises" and rank == 1:
    time.sleep(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.dup2(devnull, 1)
    raise OSError(28, "No space left on device")
while True:
    time.sleep(1)
