"""Chat tab: talk to a finished job's model (its final model or a checkpoint) or to any model the Train form
accepts, answers streamed token by token, with the generation settings; side by side, the same prompt goes to
the job's base model and to the tuned one, two chatbots streaming at once. Everything goes through
Service.chat (a worker process holds the model: this process never imports torch)."""
from __future__ import annotations

import functools
import queue
import threading
import time
from typing import Any, Callable

import gradio as gr

from ..service import RequestError, Service
from .common import PRIVATE, USER_ERRORS, refused, user_error, visitor

JOB, MODEL = "A finished job", "A model"
FINAL_LABEL = "final model"
YIELD_EVERY_S = 0.05  # the page gets the answers so far at most this often (a tiny model makes 1000 tokens/s)


def checked_stream(fn: Callable) -> Callable:
    """common.checked for a generator: the core's input errors, raised before or while it streams, become
    gr.Error (gradio_client raises AppError with the message)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
    return wrapper


def said_under_chats(fn: Callable) -> Callable:
    """The page's answer: the core's input errors, raised before or while it streams, said under the chats (the
    status line, where it stays) and as a toast; the typed message stays in its box. (Outputs: prompt, base,
    tuned, status, conversations.)"""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except USER_ERRORS as exc:
            yield gr.skip(), gr.skip(), gr.skip(), refused("Not sent", exc), gr.skip()
    return wrapper


def text_of(content: Any) -> str:
    """A chatbot message's content as text (gradio may hand back a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content)
    return "" if content is None else str(content)


def shown(text: str) -> str:
    """An answer as its chatbot shows it: one of only line breaks or spaces (an untrained model's) would be an empty
    bubble, so it says what it is."""
    if text and not text.strip():
        breaks = text.count("\n")
        return f"*(whitespace only: {breaks} line break{'s' * (breaks != 1)})*" if breaks else "*(whitespace only)*"
    return text


def conversation(history: list | None) -> list[dict]:
    """The chatbot's turns as the model's messages (user and assistant text only)."""
    turns = []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if role in ("user", "assistant"):
            turns.append({"role": role, "content": text_of(content)})
    return turns


def summary(label: str, out: dict | None) -> str:
    if not out:
        return ""
    if not out.get("done"):
        return f"**{label}**: loading {out.get('model')}…" if out.get("loading") else f"**{label}**: answering…"
    speed = f", {out['tokens_per_s']:g} tokens/s" if out.get("tokens_per_s") else ""
    return (f"**{label}** ({out.get('model')}, {out.get('device')}): {out.get('tokens')} tokens, first after "
            f"{out.get('first_token_s')} s{speed}")


def merged(streams: dict[str, Any], stop: threading.Event):
    """Run several answer streams at once (each in a thread) and yield {name: latest output} as they grow, at most
    every YIELD_EVERY_S; an error of one stream comes back as {name: exception}. Setting `stop` ends them."""
    inbox: queue.Queue = queue.Queue()

    def pump(name: str, stream) -> None:
        try:
            for out in stream:
                inbox.put((name, out))
                if stop.is_set():
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the page
            inbox.put((name, exc))
        finally:
            stream.close()  # a stream left early cancels its generation in the worker
            inbox.put((name, None))

    for name, stream in streams.items():
        threading.Thread(target=pump, args=(name, stream), daemon=True, name=f"chat-{name}").start()
    running = set(streams)
    while running:
        latest: dict[str, Any] = {}
        deadline = None
        while running:
            try:
                name, out = inbox.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if out is None:
                running.discard(name)
            else:
                latest[name] = out
            deadline = deadline or time.monotonic() + YIELD_EVERY_S
        if latest:
            yield latest


def build(svc: Service, demo: gr.Blocks, hosted: bool) -> None:
    from gradio.context import Context

    tab = Context.block  # the Tab this is built in: its sources are read again each time it is opened
    gr.Markdown("Talk to a finished job's model, or to any model, with answers streamed as they are generated. "
                "**Side by side** sends each prompt to the job's base model and to the tuned one. The model runs in a "
                "process of its own (on a free GPU, which training jobs then wait for, or on the CPU) and is "
                "unloaded after a quiet period.", elem_classes="tl-muted")
    with gr.Row(equal_height=False):
        kind = gr.Radio([JOB, MODEL], value=MODEL, label="Chat with", scale=1, min_width=220, elem_id="chat-kind")
        job = gr.Dropdown(choices=[], value=None, label="Job", scale=2, visible=False, elem_id="chat-job",
                          info="finished jobs that saved a model")
        checkpoint = gr.Dropdown(choices=[], value=None, label="Model of the job", scale=1, visible=False,
                                 elem_id="chat-checkpoint", info="the final model, or one of its checkpoints")
        side = gr.Checkbox(True, label="Side by side with the base model", scale=1, visible=False,
                           elem_id="chat-side")
        model = gr.Textbox(label="Model", scale=3, elem_id="chat-model",
                           placeholder="empty: the embedded tiny model" + (
                               "; or a Hub id" if hosted else "; a Hub id, a local folder or a .gguf file"))
        refresh = gr.Button("↻ Jobs", size="sm", scale=0, min_width=90, elem_id="chat-refresh")
    with gr.Accordion("Generation settings", open=False, elem_id="chat-settings"):
        system = gr.Textbox(label="System prompt", lines=2, placeholder="optional: sent first, as the system turn",
                            elem_id="chat-system")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", info="0: greedy, the same answer "
                                    "every time", elem_id="chat-temperature")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id="chat-top-p")
            max_new = gr.Slider(1, 512 if hosted else 2048, value=256, step=1, label="Max new tokens",
                                elem_id="chat-max-new")
            device = gr.Radio(["auto", "cpu", "cuda"], value="auto", label="Device",
                              info="auto: a free GPU if this machine has one, else the CPU", elem_id="chat-device")
    with gr.Row(equal_height=True):
        base_bot = gr.Chatbot(label="Base model", visible=False, height=420, elem_id="chat-base")
        tuned_bot = gr.Chatbot(label="Model", height=420, elem_id="chat-tuned")
    with gr.Row(equal_height=True):
        prompt = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", scale=6,
                            elem_id="chat-prompt", autofocus=False)
        send = gr.Button("Send", variant="primary", scale=0, min_width=100, elem_id="chat-send")
        stop = gr.Button("Stop", scale=0, min_width=90, elem_id="chat-stop")
        clear = gr.Button("Clear", scale=0, min_width=90, elem_id="chat-clear")
        unload = gr.Button("Unload model", scale=0, min_width=130, visible=not hosted, elem_id="chat-unload")
    status = gr.Markdown(elem_id="chat-status")
    said = gr.State({"base": [], "tuned": []})  # each side's conversation as the models said it (the bots show it)

    def job_choices(owner: str | None) -> list[tuple[str, int]]:
        return [(f"#{s['job_id']} {s['name']} ({s['state'].lower()})", s["job_id"]) for s in svc.chat_sources(owner)]

    def load(current_kind, current_job, request: gr.Request):
        choices = job_choices(visitor(request))
        ids = [c[1] for c in choices]
        picked = current_job if current_job in ids else (ids[0] if ids else None)
        first_time = current_job is None and current_kind == MODEL and picked is not None
        new_kind = JOB if first_time else current_kind
        return gr.update(value=new_kind), gr.update(choices=choices, value=picked)

    def show(kind_value, side_value):
        is_job = kind_value == JOB
        both = is_job and bool(side_value)
        return (gr.update(visible=is_job), gr.update(visible=is_job), gr.update(visible=is_job),
                gr.update(visible=not is_job), gr.update(visible=both),
                gr.update(label="Tuned model" if both else ("Job's model" if is_job else "Model")))

    def checkpoints(job_id, request: gr.Request):
        if job_id is None:
            return gr.update(choices=[], value=None)
        try:
            labels = [FINAL_LABEL if c == "final" else c for c in svc.export_choices(job_id, visitor(request))]
        except USER_ERRORS:
            labels = []
        return gr.update(choices=labels, value=labels[0] if labels else None)

    refresh_inputs = [kind, job]
    demo.load(load, refresh_inputs, [kind, job], **PRIVATE)
    refresh.click(load, refresh_inputs, [kind, job], **PRIVATE)
    if tab is not None and hasattr(tab, "select"):
        tab.select(load, refresh_inputs, [kind, job], show_progress="hidden", **PRIVATE)
    visibility = [job, checkpoint, side, model, base_bot, tuned_bot]
    kind.change(show, [kind, side], visibility, show_progress="hidden", **PRIVATE)
    side.change(show, [kind, side], visibility, show_progress="hidden", **PRIVATE)
    job.change(checkpoints, job, checkpoint, show_progress="hidden", **PRIVATE)

    @said_under_chats
    def answer(kind_value, job_id, checkpoint_label, model_text, side_value, system_text, temp, top_p_value,
               max_new_value, device_value, text, said_before, request: gr.Request):
        owner = visitor(request)
        text = (text or "").strip()
        if not text:
            raise RequestError(["type a message first"])
        settings = {"system_prompt": system_text or None, "temperature": float(temp), "top_p": float(top_p_value),
                    "max_new_tokens": int(max_new_value), "device": device_value or "auto"}
        if kind_value == JOB:
            if job_id is None:
                raise RequestError(["pick a finished job (none yet? train one in the Train tab, or chat with a "
                                    "model)"])
            target = {"job_id": job_id, "checkpoint": "final" if checkpoint_label in (None, "", FINAL_LABEL)
                      else checkpoint_label}
        else:
            target = {"model": model_text or ""}
        sides = {"tuned": target}
        if kind_value == JOB and side_value:
            sides["base"] = {"job_id": job_id, "base": True}
        said_before = said_before if isinstance(said_before, dict) else {}
        said_now = {n: conversation(said_before.get(n)) for n in ("base", "tuned")}
        streams = {}
        for name, where in sides.items():  # both checked before either starts
            turns = said_now[name] + [{"role": "user", "content": text}]
            streams[name] = svc.chat({**settings, **where, "messages": turns}, owner)
            said_now[name] = turns + [{"role": "assistant", "content": ""}]
        last: dict[str, Any] = {}
        errors: dict[str, str] = {}
        stopped = threading.Event()

        def bot(name: str) -> list[dict]:
            shown_turns = [{**m, "content": shown(m["content"]) if m["role"] == "assistant" else m["content"]}
                           for m in said_now[name]]
            if name in errors:
                shown_turns[-1] = {"role": "assistant", "content": f"⚠ {errors[name]}"}
            return shown_turns

        def view():
            lines = [summary("Base" if n == "base" else "Tuned" if "base" in sides else "Model", last.get(n))
                     for n in ("base", "tuned") if n in sides]
            kept = {n: turns[:-2] if n in errors else turns for n, turns in said_now.items()}  # a failed turn goes
            return ("", bot("base") if "base" in sides else gr.skip(), bot("tuned"),
                    "  \n".join([line for line in lines if line] + [f"⚠ {e}" for e in errors.values()]), kept)

        yield view()
        try:
            for latest in merged(streams, stopped):
                for name, out in latest.items():
                    if isinstance(out, Exception):
                        errors[name] = out.problems[0] if isinstance(out, RequestError) else str(out)
                    else:
                        last[name] = out
                        said_now[name][-1] = {"role": "assistant", "content": out["text"]}
                yield view()
        finally:
            stopped.set()  # Stop pressed, or the page left: the generations end in the worker too
        if errors:
            raise gr.Error("\n".join(errors.values()), print_exception=False)

    inputs = [kind, job, checkpoint, model, side, system, temperature, top_p, max_new, device, prompt, said]
    outputs = [prompt, base_bot, tuned_bot, status, said]
    sent = gr.on([send.click, prompt.submit], answer, inputs, outputs, show_progress="minimal",
                 show_progress_on=[status], concurrency_limit=None, **PRIVATE)
    stop.click(None, None, None, cancels=[sent], **PRIVATE)
    clear.click(lambda: ([], [], "", {"base": [], "tuned": []}), None, [base_bot, tuned_bot, status, said],
                cancels=[sent], **PRIVATE)

    def do_unload():
        try:
            count = svc.chat_unload()["unloaded"]
        except RequestError as exc:
            return exc.problems[0]
        return f"Unloaded ({count} chat worker{'s' * (count != 1)} ended)." if count else "No model was loaded."

    unload.click(do_unload, None, status, cancels=[sent], **PRIVATE)
