"""Data templates rendered for the web process in a child process, under a hard deadline.

templating bounds what it can in-process, but a render in the web process could still stall every visitor:
its alarm only works on the main thread (gradio's handlers run on others) and cannot interrupt a long C-level
call. So the web process (previews, the check at Start, the reward check's sample) hands templates and rows to
a worker process: started once and reused, so a preview costs a round trip of about a millisecond, not a
Python start; limited to WORKER_MEMORY of address space; killed when it does not answer within RENDER_SECONDS
plus KILL_GRACE, and replaced at the next call. At most WORKERS render at once; a caller waits its turn at most
WAIT_SECONDS. A worker whose memory grew past RECYCLE_RSS after a render exits, and is replaced.

The rows go to the worker pickled (the parent's own data); only JSON (strings, or an error's text) comes back.
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import templating

WORKERS = 2  # renders at once (the machine this app targets has few cores to spare for previews)
WORKER_MEMORY = 1 << 30  # address space of a worker: a template that allocates past it gets a MemoryError
RECYCLE_RSS_KB = 256 * 1024  # a worker that grew past this after a render is replaced
KILL_GRACE = 1.5  # after RENDER_SECONDS: the worker's own alarm answers first; the kill is for what it cannot stop
START_SECONDS = 30.0  # a worker's start (a Python with jinja2), generous for a loaded machine
WAIT_SECONDS = 10.0  # a caller's wait for a free worker
FUNCTIONS = {"render_batch": templating.render_batch, "fields": lambda text: sorted(templating.fields(text))}
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class _Worker:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        with theirs:
            self.proc = subprocess.Popen([sys.executable, "-m", "tlab_gradio.render_worker", str(theirs.fileno())],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, env=env, cwd=_PACKAGE_ROOT)
        self.conn = Connection(ours.detach())
        if not self.conn.poll(START_SECONDS) or self.conn.recv_bytes() != b"ready":
            self.kill()
            raise templating.TemplateProblem("the template renderer did not start; try again")

    def call(self, name: str, args: tuple) -> dict[str, Any]:
        self.conn.send_bytes(pickle.dumps((name, args)))
        if not self.conn.poll(templating.RENDER_SECONDS + KILL_GRACE):
            raise TimeoutError
        return json.loads(self.conn.recv_bytes())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


_idle: list[_Worker] = []
_idle_lock = threading.Lock()
_turns = threading.BoundedSemaphore(WORKERS)


def run(name: str, *args: Any) -> Any:
    """FUNCTIONS[name](*args) in a worker; its TemplateProblem comes back as one, a timeout as one too."""
    if not _turns.acquire(timeout=WAIT_SECONDS):
        raise templating.TemplateProblem("the template renderer is busy with other renders; try again in a moment")
    try:
        with _idle_lock:
            worker = _idle.pop() if _idle else None
        if worker is not None and not worker.alive():
            worker.kill()
            worker = None
        worker = worker or _Worker()
        try:
            reply = worker.call(name, args)
        except TimeoutError:
            worker.kill()
            raise templating.TemplateProblem(
                f"the templates took longer than {templating.RENDER_SECONDS + KILL_GRACE:g} s to render and were "
                "stopped (a loop that runs too long?)") from None
        except (OSError, EOFError):  # it died during the render (past its memory limit, or killed)
            worker.kill()
            raise templating.TemplateProblem("the template renderer stopped while rendering these templates "
                                             "(they need too much memory?)") from None
        if reply.get("recycle"):
            worker.kill()
        else:
            with _idle_lock:
                _idle.append(worker)
    finally:
        _turns.release()
    if "error" in reply:
        raise templating.TemplateProblem(reply["error"])
    return reply["ok"]


def _serve(fd: int) -> None:
    """The worker: answer (name, args) requests until the parent closes its end."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    conn = Connection(fd)
    conn.send_bytes(b"ready")
    while True:
        try:
            name, args = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        try:
            reply: dict[str, Any] = {"ok": FUNCTIONS[name](*args)}
        except templating.TemplateProblem as exc:
            reply = {"error": str(exc)}
        except MemoryError:
            reply = {"error": f"needs more than the renderer's {WORKER_MEMORY >> 20} MiB of memory"}
        reply["recycle"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > RECYCLE_RSS_KB
        conn.send_bytes(json.dumps(reply).encode())
        if reply["recycle"]:
            return


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
