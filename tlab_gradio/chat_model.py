"""The chat worker: a process of its own that loads models and streams their answers, so the web process never
imports torch. One prompt by hand:

    python -m tlab_gradio.chat_model --model HUB_ID_FOLDER_OR_GGUF --prompt "Hello"  (no --model: the embedded model)
    python -m tlab_gradio.chat_model --job JOB_FOLDER [--checkpoint checkpoint-20] [--base] --prompt "Hello"

The app runs it as `python -m tlab_gradio.chat_model --serve`: one JSON object a line on stdin, answers as JSON
lines on stdout (nothing else is written there: libraries' prints go to stderr).

    in:  {"op": "generate", "id": "7", "source": SOURCE, "messages": [{"role": "user", "content": "hi"}],
          "max_new_tokens": 256, "temperature": 0.7, "top_p": 0.9, "label": "how to name the model", "key": ...}
         {"op": "cancel", "id": "7"}          (the answer ends where it got to)
    out: {"event": "ready", "device": "cpu", "pid": 123}
         {"id": "7", "event": "loading", "model": "..."} then "loaded" (once per model), "token" {"text": "..."} as
         tokens come, and "done" {"text", "tokens", "first_token_s", "tokens_per_s", "seconds"} or "error" {"message"}
         {"event": "exit", "reason": "..."} before it exits

SOURCE is {"model": folder or Hub id, "embedded": bool} or {"job_dir": JOB, "checkpoint": "final" | "checkpoint-N",
"base": bool}: a job's final model or checkpoint (a LoRA adapter applied on its base with PEFT; a full fine-tune
loaded as it is, with its base's generation config), or with "base" the model the job started from. The chat
template of the model's tokenizer is applied; a model without one gets plain "role: text" lines.

It keeps the last TLAB_CHAT_MAX_MODELS models (default 2: a base and its tuned model side by side) and exits after
--idle seconds without a request (TLAB_CHAT_IDLE_SECONDS, default 600), or when its stdin closes (the app ended).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):  # run as a plain script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DEFAULT_IDLE_S = 600.0


def idle_seconds() -> float:
    raw = os.environ.get("TLAB_CHAT_IDLE_SECONDS", "").strip()
    return float(raw) if raw else DEFAULT_IDLE_S


class Loaded:
    def __init__(self, model, tokenizer, label: str):
        self.model, self.tokenizer, self.label = model, tokenizer, label
        self.users = 0  # generations running on it (never evicted meanwhile)


def describe(source: dict) -> str:
    if source.get("job_dir"):
        name = Path(source["job_dir"]).name
        return f"job {name}'s base model" if source.get("base") else f"job {name} ({source.get('checkpoint') or 'final'})"
    return "the embedded model" if source.get("embedded") else str(source.get("model"))


def load(source: dict, device: str) -> Loaded:
    """Model and tokenizer for a source (see the module's doc), on `device`, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tlab_gradio import export, export_model, tiny_model
    from tlab_gradio.job_spec import JobSpec

    adapter = None
    if source.get("job_dir"):
        job_dir = Path(source["job_dir"])
        spec = JobSpec.read(job_dir)
        base = export_model.base_path(spec)
        path, tokenizer_from, config_from = base, base, None
        if not source.get("base"):
            found = export.choose(job_dir, spec.job_id, None, source.get("checkpoint"))
            if found.kind == "lora":
                adapter = str(found.folder)
            else:
                path, config_from = str(found.folder), base
            if any((found.folder / f).is_file() for f in TOKENIZER_FILES):
                tokenizer_from = str(found.folder)
        dtype = export_model.base_dtype(base, spec)
    else:
        path = str(tiny_model.ensure(Path(source["model"]))) if source.get("embedded") else source["model"]
        tokenizer_from, config_from, dtype = path, None, "auto"
    if device == "cpu":
        dtype = torch.float32  # bf16/fp16 matmuls are slow or missing on CPUs
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()  # merged: generates at base speed
    if config_from:
        try:
            model.generation_config = GenerationConfig.from_pretrained(config_from)
        except OSError:
            pass
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    model.to(device).eval()
    return Loaded(model, tokenizer, describe(source))


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The conversation through the model's chat template, ending where the assistant's answer starts. A template
    that refuses a system turn gets it in front of the first user turn; no template: "role: text" lines."""
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - e.g. "System role not supported" (Gemma's)
            if not messages or messages[0]["role"] != "system":
                raise
            system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
            first = next((m for m in rest if m["role"] == "user"), None)
            if first is not None:
                first["content"] = f"{system}\n\n{first['content']}"
            return tokenizer.apply_chat_template(rest, add_generation_prompt=True, tokenize=False)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines + ["assistant:"])


def token_streamer(base):
    """transformers' TextIteratorStreamer handing out each token's text as it comes (its own waits for the end of
    a word); only a character whose bytes have not all come yet (a byte-level tokenizer's) waits for the rest."""
    class TokenStreamer(base):
        def put(self, value):
            if len(value.shape) > 1:
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd") and len(self.token_cache) < 8:
                return
            piece, self.print_len = text[self.print_len:], len(text)
            if text.endswith("\n"):  # as transformers' own: a line's tokens are decoded again, not the answer's
                self.token_cache, self.print_len = [], 0
            if piece:
                self.on_finalized_text(piece)

    return TokenStreamer


def generate(loaded: Loaded, request: dict, emit, cancelled) -> dict:
    """Stream one answer: emit(text) for each piece as transformers' TextIteratorStreamer gives it; returns the
    summary (text, tokens, first_token_s, tokens_per_s, seconds)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    model, tokenizer = loaded.model, loaded.tokenizer
    text = prompt_text(tokenizer, request["messages"])
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    max_new = int(request.get("max_new_tokens") or 256)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and ids["input_ids"].shape[1] + max_new > limit:  # the oldest turns go first
        keep = max(limit - max_new, 1)
        ids = {k: v[:, -keep:] for k, v in ids.items()}
    ids = {k: v.to(model.device) for k, v in ids.items()}
    streamer = token_streamer(TextIteratorStreamer)(tokenizer, skip_prompt=True, skip_special_tokens=True)

    class Cancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return cancelled()

    temperature = float(request.get("temperature") or 0.0)
    kwargs = dict(**ids, max_new_tokens=max_new, streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancel()]),
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=float(request.get("top_p") or 1.0))
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    result: dict = {}

    def run():
        try:
            with torch.inference_mode():
                result["out"] = model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - said to the app; the streamer must end either way
            result["error"] = exc
            streamer.end()

    started = time.monotonic()
    first = None
    pieces = []
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    for piece in streamer:
        if piece:
            if first is None:
                first = time.monotonic() - started
            pieces.append(piece)
            emit(piece)
    worker.join()
    if "error" in result:
        raise result["error"]
    seconds = time.monotonic() - started
    tokens = int(result["out"].shape[1] - ids["input_ids"].shape[1])
    decode = seconds - (first or 0.0)
    return {"text": "".join(pieces), "tokens": tokens, "first_token_s": round(first or seconds, 4),
            "tokens_per_s": round((tokens - 1) / decode, 2) if tokens > 1 and decode > 0 else None,
            "seconds": round(seconds, 3)}


class Server:
    """The --serve loop: requests on stdin, each generation in a thread of its own, answers on stdout."""

    def __init__(self, device: str, idle: float, max_models: int, out):
        self.device, self.idle, self.max_models, self.out = device, idle, max_models, out
        self.models: OrderedDict[str, Loaded] = OrderedDict()
        self.load_lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.cancelled: set[str] = set()
        self.running = 0
        self.last = time.monotonic()

    def send(self, event: dict) -> None:
        with self.write_lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()

    def model(self, key: str, source: dict, rid: str, label: str | None = None) -> Loaded:
        with self.load_lock:
            if key in self.models:
                self.models.move_to_end(key)
            else:
                label = label or describe(source)
                self.send({"id": rid, "event": "loading", "model": label})
                started = time.monotonic()
                idle = [k for k, m in self.models.items() if m.users == 0]
                while idle and len(self.models) >= self.max_models:
                    del self.models[idle.pop(0)]
                self.models[key] = load(source, self.device)
                self.models[key].label = label
                self.send({"id": rid, "event": "loaded", "model": label,
                           "seconds": round(time.monotonic() - started, 3)})
            loaded = self.models[key]
            loaded.users += 1
            return loaded

    def handle(self, request: dict) -> None:
        rid = str(request.get("id"))
        loaded = None
        try:
            source = request["source"]
            loaded = self.model(json.dumps(request.get("key") or source, sort_keys=True), source, rid,
                                request.get("label"))
            summary = generate(loaded, request, lambda text: self.send({"id": rid, "event": "token", "text": text}),
                               lambda: rid in self.cancelled)
            self.send({"id": rid, "event": "done", "model": loaded.label, "device": self.device, **summary})
        except Exception as exc:  # noqa: BLE001 - the app says it to the user
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.send({"id": rid, "event": "error", "message": f"{type(exc).__name__}: {message}"[:2000]})
        finally:
            if loaded is not None:
                with self.load_lock:
                    loaded.users -= 1
            with self.state_lock:
                self.running -= 1
                self.cancelled.discard(rid)
                self.last = time.monotonic()

    def serve(self, lines) -> str:
        inbox: queue.Queue = queue.Queue()

        def read():
            for line in lines:
                inbox.put(line)
            inbox.put(None)

        threading.Thread(target=read, daemon=True).start()
        self.send({"event": "ready", "device": self.device, "pid": os.getpid()})
        while True:
            with self.state_lock:
                quiet = time.monotonic() - self.last if self.running == 0 else 0.0
            if quiet >= self.idle:
                return f"no request for {self.idle:g} s"
            try:
                line = inbox.get(timeout=max(0.05, min(1.0, self.idle - quiet)))
            except queue.Empty:
                continue
            if line is None:
                return "stdin closed"
            try:
                request = json.loads(line)
            except ValueError:
                continue
            op = request.get("op")
            with self.state_lock:
                self.last = time.monotonic()
                if op == "generate":
                    self.running += 1
                elif op == "cancel":
                    self.cancelled.add(str(request.get("id")))
            if op == "generate":
                threading.Thread(target=self.handle, args=(request,), daemon=True).start()
            elif op == "exit":
                return "asked to exit"


def pick_device(asked: str) -> str:
    if asked != "auto":
        return asked
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tlab_gradio.chat_model", description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="answer JSON lines on stdin (how the app runs it)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--idle", type=float, default=None, help="--serve: exit after this many quiet seconds")
    parser.add_argument("--model", default="", help="a Hub id or a model folder; empty: the embedded tiny model")
    parser.add_argument("--job", type=Path, help="a job folder: its final model (or --checkpoint), or with --base "
                                                 "the model it started from")
    parser.add_argument("--checkpoint", default="final")
    parser.add_argument("--base", action="store_true")
    parser.add_argument("--prompt", help="one user message to answer")
    parser.add_argument("--system", default="", help="a system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args(argv)
    protocol = sys.stdout
    if args.serve:  # stdout carries the protocol only: whatever a library prints goes to stderr
        protocol = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    device = pick_device(args.device)
    if args.serve:
        server = Server(device, args.idle if args.idle is not None else idle_seconds(),
                        int(os.environ.get("TLAB_CHAT_MAX_MODELS", "2") or 2), protocol)
        reason = server.serve(sys.stdin)
        server.send({"event": "exit", "reason": reason})
        os._exit(0)  # generation threads of a closed app are not waited for
    if not args.prompt:
        parser.error("give --prompt (or --serve)")
    if args.job:
        source = {"job_dir": str(args.job.resolve()), "checkpoint": args.checkpoint, "base": args.base}
    elif args.model:
        from tlab_gradio import gguf_model

        model = Path(args.model).expanduser()
        if model.is_file() and gguf_model.is_gguf(model):  # converted once into a folder (gguf_model.py)
            model = gguf_model.ensure(model)
        source = {"model": str(model) if model.exists() else args.model, "embedded": False}
    else:
        from tlab_gradio import tiny_model

        source = {"model": str(tiny_model.default_path()), "embedded": True}
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    loaded = load(source, device)
    summary = generate(loaded, {"messages": messages, "max_new_tokens": args.max_new_tokens,
                                "temperature": args.temperature, "top_p": args.top_p},
                       lambda text: print(text, end="", flush=True), lambda: False)
    print(f"\n[{summary['tokens']} tokens, first after {summary['first_token_s']} s, "
          f"{summary['tokens_per_s']} tokens/s]", file=sys.stderr)


if __name__ == "__main__":
    main()
