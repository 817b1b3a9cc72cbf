"""Chat with a model from the web process, which never imports torch: the model runs in a worker process
(`python -m tlab_gradio.chat_model --serve`, chat_model.py) that this module starts on first use, talks to over
JSON lines on its stdin/stdout, and that exits by itself after TLAB_CHAT_IDLE_SECONDS without a request (default
600), when Unload is asked, or when the app ends (its stdin closes).

One worker per device kind: "cpu", or "cuda" on one GPU chosen like a job's GPUs are: a GPU no running job uses
and no queued job waits for, the one with the most free memory. The job scheduler counts the worker's GPU as
taken (JobManager.claim_gpu) until the worker is gone, so a job that needs it waits QUEUED, and chat and training
never share a GPU; with no GPU free, chat says which jobs hold them (or chat on the CPU).
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from . import gpus, settings

HOLDER = "chat"  # the name the worker's GPU is held under in the job scheduler
START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 1800.0  # a first load may download a model from the Hub
TOKEN_TIMEOUT_S = 600.0  # the longest wait for the next piece of an answer
_QUIET = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1",
          "PYTHONUNBUFFERED": "1"}


LOCK = threading.Lock()  # Service.chats: one manager per Service, made at first use
ROLES = ("system", "user", "assistant")
MAX_CHARS = 100_000  # the whole conversation's text
MAX_NEW_TOKENS, HOSTED_MAX_NEW_TOKENS = 4096, 512
DEFAULTS = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256}
REQUEST_KEYS = {"messages", "prompt", "system_prompt", "temperature", "top_p", "max_new_tokens", "model", "job_id",
                "checkpoint", "base", "device"}


class ChatError(ValueError):
    """Why a chat cannot go on, for the page and the API."""


def _number(problems: list[str], request: dict, key: str, low: float, high: float, low_open: bool = False):
    value = request.get(key)
    if value is None:
        return DEFAULTS[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and (low < value if low_open else low <= value) and value <= high
    if not ok:
        problems.append(f"`{key}` must be a number from {low:g}{' (not included)' if low_open else ''} to {high:g}, "
                        f"got {value!r}"[:200])
    return value


def parse(request: Any, hosted: bool) -> tuple[list[dict], dict, list[str]]:
    """A chat request's conversation and generation settings, checked: (messages, options, problems). `messages`
    ([{role, content}], ending on the user's turn) or `prompt` (one user turn); `system_prompt` goes first
    unless the messages start with a system turn; temperature 0-2 (0: greedy), top_p (0-1], max_new_tokens."""
    problems: list[str] = []
    if not isinstance(request, dict):
        return [], {}, [f"a chat request is an object like {{\"prompt\": \"Hello\"}}, got {type(request).__name__}"]
    unknown = sorted(set(request) - REQUEST_KEYS)
    if unknown:
        problems.append(f"unknown keys {unknown}; a chat request takes {', '.join(sorted(REQUEST_KEYS))}")
    messages: list[dict] = []
    raw = request.get("messages")
    if raw is not None and request.get("prompt") is not None:
        problems.append("give `messages` or `prompt`, not both")
    elif raw is None:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append("`prompt` (the user's message) or `messages` is needed")
        else:
            messages = [{"role": "user", "content": prompt}]
    elif not isinstance(raw, list) or not raw:
        problems.append("`messages` must be a list of {role, content} turns")
    else:
        for i, turn in enumerate(raw):
            if not (isinstance(turn, dict) and turn.get("role") in ROLES and isinstance(turn.get("content"), str)):
                problems.append(f"`messages[{i}]` must be {{role: system|user|assistant, content: text}}, "
                                f"got {str(turn)[:80]}")
                break
            messages.append({"role": turn["role"], "content": turn["content"]})
        if messages and messages[-1]["role"] != "user":
            problems.append("`messages` must end with the user's turn (the one to answer)")
    system = request.get("system_prompt")
    if system is not None and not isinstance(system, str):
        problems.append("`system_prompt` must be text")
    elif system and system.strip() and not (messages and messages[0]["role"] == "system"):
        messages = [{"role": "system", "content": system}] + messages
    if sum(len(m["content"]) for m in messages) > MAX_CHARS:
        problems.append(f"the conversation is over {MAX_CHARS:,} characters: clear it and start again")
    cap = HOSTED_MAX_NEW_TOKENS if hosted else MAX_NEW_TOKENS
    options = {"temperature": _number(problems, request, "temperature", 0, 2),
               "top_p": _number(problems, request, "top_p", 0, 1, low_open=True)}
    tokens = request.get("max_new_tokens", DEFAULTS["max_new_tokens"])
    if isinstance(tokens, float) and tokens.is_integer():
        tokens = int(tokens)
    if not (isinstance(tokens, int) and not isinstance(tokens, bool) and 1 <= tokens <= cap):
        problems.append(f"`max_new_tokens` must be a whole number from 1 to {cap}"
                        f"{' (this server caps it: hosted mode)' if hosted else ''}, got {tokens!r}"[:200])
    options["max_new_tokens"] = tokens
    return messages, options, problems


class Worker:
    """One chat_model process and the thread that reads its answers into each request's queue."""

    def __init__(self, device: str, gpu: str | None, log_path: Path, on_exit):
        self.device, self.gpu = device, gpu
        env = {**os.environ, **_QUIET}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        argv = [sys.executable, "-m", "tlab_gradio.chat_model", "--serve", "--device", device]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=settings.REPO_DIR, env=env, bufsize=1, start_new_session=True)
        self.started = time.time()
        self.last_used = time.time()
        self.models: list[str] = []  # loaded, as the worker named them
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.finished = threading.Event()  # set once its end is handled (its GPU given back)
        self._on_exit = on_exit
        self.exit_reason: str | None = None
        threading.Thread(target=self._read, daemon=True, name=f"chat-worker-{self.proc.pid}").start()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.exit_reason is None

    def wait_ready(self) -> None:
        if not self._ready.wait(START_TIMEOUT_S) or not self.alive:
            self.stop()
            raise ChatError(f"the chat worker did not start ({self.exit_reason or 'no answer'}); "
                            f"its log: $TLAB_HOME/chat/worker.log")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "ready":
                self._ready.set()
            elif kind == "exit":
                self.exit_reason = event.get("reason")
            elif kind == "loaded" and event.get("model") not in self.models:
                self.models.append(event["model"])
            rid = event.get("id")
            if rid is not None:
                with self._lock:
                    target = self._queues.get(str(rid))
                if target is not None:
                    target.put(event)
        self.proc.wait()
        self.exit_reason = self.exit_reason or f"exited with code {self.proc.returncode}"
        self._ready.set()
        self.log.close()
        self._on_exit(self)  # its GPU is free before anyone waiting hears of the end (and starts another worker)
        self.finished.set()
        with self._lock:
            waiting = list(self._queues.values())
        for target in waiting:  # requests in flight end with the reason, not a hang
            target.put({"event": "error", "ended": True, "message": f"the chat worker ended: {self.exit_reason}"})

    def send(self, message: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise ChatError(f"the chat worker cannot be reached: {exc}") from None

    def request(self, rid: str, message: dict) -> queue.Queue:
        answers: queue.Queue = queue.Queue()
        with self._lock:
            self._queues[rid] = answers
        self.last_used = time.time()
        self.send(message)
        return answers

    def forget(self, rid: str) -> None:
        with self._lock:
            self._queues.pop(rid, None)
        self.last_used = time.time()

    def stop(self, grace: float = 5.0) -> None:
        """Ask it to exit (closing its stdin), then end it."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class ChatManager:
    """The app's chat workers (at most one per device kind), and the GPU each holds in the job scheduler."""

    def __init__(self, home: Path, scheduler):
        self.home = Path(home)
        self.scheduler = scheduler  # jobs.JobManager: claim_gpu / release_gpus / gpu_users
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        atexit.register(self.close)

    # --- the worker for a device ------------------------------------------------------------------------------
    def device_for(self, asked: str | None) -> str:
        asked = (asked or "auto").strip().lower()
        if asked not in ("auto", "cpu", "cuda"):
            raise ChatError(f"device {asked!r}: must be auto, cpu or cuda")
        if asked == "auto":
            return "cuda" if gpus.list_gpus() else "cpu"
        if asked == "cuda" and not gpus.list_gpus():
            raise ChatError("device cuda: this machine has no CUDA GPU; chat on the cpu")
        return asked

    def worker(self, device: str) -> Worker:
        ending = self._workers.get(device)
        if ending is not None and not ending.alive:  # exiting (its quiet period over): let it give its GPU back
            ending.finished.wait(10)
        with self._lock:
            found = self._workers.get(device)
            if found is not None and found.alive:
                return found
            gpu = self._claim_gpu() if device == "cuda" else None
            try:
                found = Worker(device, gpu, self.home / "chat" / "worker.log", self._gone)
            except BaseException:
                if gpu is not None:
                    self.scheduler.release_gpus(self._holder(device))
                raise
            self._workers[device] = found
        found.wait_ready()
        return found

    @staticmethod
    def _holder(device: str) -> str:
        return f"{HOLDER}:{device}"

    def _claim_gpu(self) -> str:
        """A GPU for the worker, held in the scheduler from now on: the free one with the most free memory."""
        found = sorted(gpus.list_gpus(refresh=True), key=lambda g: g.memory_used_mb - g.memory_total_mb)
        index = {g.physical: g.index for g in found}
        claimed = self.scheduler.claim_gpu(self._holder("cuda"), [g.physical for g in found])
        if claimed is None:
            users = self.scheduler.gpu_users()
            held = "; ".join(f"GPU {index.get(g, g)}: {', '.join(who)}" for g, who in sorted(users.items()))
            raise ChatError(f"no GPU is free for chat: every GPU is used by a training job or waited for by a queued "
                            f"one ({held}). Chat on the cpu, or try again when a job has finished")
        return claimed

    def _gone(self, worker: Worker) -> None:
        """A worker ended (quiet period, Unload, a crash): its GPU goes back to the scheduler."""
        with self._lock:
            if self._workers.get(worker.device) is worker:
                del self._workers[worker.device]
        if worker.gpu is not None:
            self.scheduler.release_gpus(self._holder(worker.device))

    # --- chatting -----------------------------------------------------------------------------------------------
    def stream(self, source: dict, key: Any, messages: list[dict], options: dict, device: str,
               label: str | None = None) -> Iterator[dict]:
        """One answer, as the worker's events: {"event": "loading" | "loaded" | "token" | "done", ...}. ChatError
        when the worker fails or says why it cannot answer. Leaving the loop early cancels the generation. `key`:
        what makes the loaded model the same one (the source, with its files' dates); `label`: its name. A worker
        that was exiting (its quiet period over) as the request came is started again, once."""
        for attempt in (1, 2):
            events = self._stream(source, key, messages, options, device, label)
            first = next(events, None)
            if first is None:
                return
            if first.get("ended") and attempt == 1:
                continue
            if first.get("event") == "error":
                raise ChatError(first.get("message") or "the chat worker failed")
            yield first
            yield from events
            return

    def _stream(self, source, key, messages, options, device, label) -> Iterator[dict]:
        worker = self.worker(device)
        rid = str(next(self._ids))
        answers = worker.request(rid, {"op": "generate", "id": rid, "source": source, "key": key, "label": label,
                                       "messages": messages, **options})
        finished = False
        first = True
        try:
            timeout = LOAD_TIMEOUT_S
            while True:
                try:
                    event = answers.get(timeout=timeout)
                except queue.Empty:
                    raise ChatError(f"the chat worker gave nothing for {timeout:g} s") from None
                kind = event.get("event")
                if kind == "error":
                    finished = True
                    if event.get("ended") and first:
                        yield event  # stream() starts a worker again
                        return
                    raise ChatError(event.get("message") or "the chat worker failed")
                first = False
                if kind == "loaded":
                    timeout = TOKEN_TIMEOUT_S
                if kind == "token":
                    timeout = TOKEN_TIMEOUT_S
                yield event
                if kind == "done":
                    finished = True
                    return
        finally:
            if not finished and worker.alive:
                try:
                    worker.send({"op": "cancel", "id": rid})
                except ChatError:
                    pass
            worker.forget(rid)

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            found = [w for w in self._workers.values() if w.alive]
        idle = idle_seconds()
        return [{"device": w.device, "gpu": w.gpu, "pid": w.proc.pid, "models": list(w.models),
                 "started": w.started, "last_used": w.last_used, "unloads_in_s": max(0.0, idle - (time.time() - w.last_used))}
                for w in found]

    def unload(self) -> int:
        """End every worker now (their GPUs go back to the scheduler); how many there were."""
        with self._lock:
            found = list(self._workers.values())
        for worker in found:
            worker.stop()
        for worker in found:  # the reader thread releases the GPU as it sees the end; wait for that
            deadline = time.monotonic() + 10
            while worker.device in self._workers and self._workers.get(worker.device) is worker \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        return len(found)

    def close(self) -> None:
        with self._lock:
            found = list(self._workers.values())
        for worker in found:
            worker.stop(grace=2.0)


def idle_seconds() -> float:
    """TLAB_CHAT_IDLE_SECONDS (default 600): a chat worker with no request for this long exits, freeing its GPU."""
    from .chat_model import idle_seconds as read

    return read()
