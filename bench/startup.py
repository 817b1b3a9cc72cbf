"""Time from `python app.py` to the page answering HTTP 200, on this machine.

Compares the app with a bare gradio Blocks page (the floor: importing gradio and
starting its server) and reports which heavy training libraries the web process
imported. Run: python bench/startup.py [--runs 3] [--out bench/results/startup-DATE-MACHINE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BARE = "import gradio as gr\nwith gr.Blocks() as d:\n    gr.Markdown('hi')\nd.launch()\n"
PROBE = ("import sys, json; from tlab_gradio.ui import build_app; build_app(); "
         "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_answer(argv: list[str], env: dict) -> float:
    port = free_port()
    env = {**env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                return time.perf_counter() - start
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv} exited with {proc.returncode}")
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TLAB_HOME": str(Path(tmp) / "ws"), "GRADIO_ANALYTICS_ENABLED": "False"}
        bare = Path(tmp) / "bare.py"
        bare.write_text(BARE)
        # One untimed start of each warms the OS file cache and writes .pyc files.
        time_to_answer([sys.executable, "app.py"], env)
        time_to_answer([sys.executable, str(bare)], env)
        app_times = [time_to_answer([sys.executable, "app.py"], env) for _ in range(args.runs)]
        bare_times = [time_to_answer([sys.executable, str(bare)], env) for _ in range(args.runs)]
        heavy = json.loads(subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "app_seconds": app_times, "app_median_s": sorted(app_times)[len(app_times) // 2],
        "bare_gradio_seconds": bare_times, "bare_gradio_median_s": sorted(bare_times)[len(bare_times) // 2],
        "heavy_modules_imported_by_web_process": heavy,
        "reference": "LLaMA-Factory web UI: about 13 s to answer on a 2-core machine (issue 4)",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
