"""Attacks on the data templates (issue 17, finding 2). A template is a visitor's text run by the app: each
attack here froze the web process, built a gigabyte, or was accepted and rendered nothing, before templates
rendered under bounds (integer size, sequence and output size, time) in a worker process.

The freezing attacks run in a child Python with a hard timeout, the web process's side measured there: how
long the call took and the longest pause of a thread that ticks every 10 ms (a pause is the GIL held)."""
import json
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from tlab_gradio.service import RequestError, Service

SFT = "llama_sft_multi_gpu"
SAMPLE = {"source": "sample", "name": "sft_instructions"}

ATTACKS = {
    # 9**4782969: 4.5 million digits, 59 s of the GIL in the issue
    "power": ("{{ (9**(9**7)) % 10 }}", "bits"),
    "repeat": ("{{ ('x' * 10**9)|length }}", "MiB"),  # 1 GB in 1.4 s
    # 10**10 empty iterations: nothing to bound but time
    "empty_loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than"),
    # `~` doubles a string 30 times through a macro: 1 GiB
    "doubling": ("{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}{% endif %}"
                 "{% endmacro %}{{ d('x', 30) }}", "MiB"),
    "padding": ("{{ 'x'|center(10**9) }}", "MiB"),  # a filter's width
    "printf": ("{{ '%*d' % (10**9, 1) }}", "MiB"),  # a width in %-formatting
}

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    from tlab_gradio import data
    from tlab_gradio.service import RequestError, Service

    template = sys.argv[1]
    gaps, stop = [0.0], threading.Event()

    def tick():  # a pause between ticks is the GIL held by the render
        last = time.monotonic()
        while not stop.wait(0.01):
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    svc = Service()
    svc.preview_data({"source": "sample", "name": "sft_instructions"}, "{{instruction}}", "", 3)  # warm
    threading.Thread(target=tick, daemon=True).start()
    out = {}

    def timed(name, fn, on_main_thread=False):
        # fn on a thread of its own, as gradio runs a handler (no alarm reaches it), or on the main thread as
        # a trainer runs
        gaps[:] = [0.0]
        start = time.monotonic()
        box = {}

        def call():
            try:
                box["result"] = fn()
            except (RequestError, data.DataError) as exc:
                box["result"] = "refused: " + str(exc)

        if on_main_thread:
            call()
        else:
            handler = threading.Thread(target=call)
            handler.start()
            handler.join()
        out[name] = {"seconds": time.monotonic() - start, "max_pause": max(gaps), "result": box.get("result")}

    timed("preview", lambda: svc.preview_data({"source": "sample", "name": "sft_instructions"}, template, "", 3
                                              ).get("template_error", "rendered"))
    timed("start", lambda: svc.prepare({"plugin": "llama_sft_multi_gpu", "device": "cpu", "template": template})
          and "accepted")
    row = {"instruction": "Add.", "input": "1 2", "output": "3"}
    timed("trainer", lambda: data.Templates(template, "").format_row(row) and "rendered", on_main_thread=True)
    timed("after", lambda: svc.preview_data({"source": "sample", "name": "sft_instructions"}, "{{instruction}}",
                                            "", 3).get("template_error", "rendered"))
    stop.set()
    print(json.dumps(out))
""")


def run_attack(template: str, home) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", CHILD, template], cwd=REPO, capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the attack held the process past 30 s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_template_cannot_freeze_or_bloat_the_web_process(home, attack):
    template, bound = ATTACKS[attack]
    out = run_attack(template, home)
    for phase in ("preview", "start", "trainer"):
        got = out[phase]
        assert got["seconds"] < 6, (phase, got)  # the render deadline (2 s) and a worker's restart
        assert str(got["result"]).startswith("refused") or phase == "preview", (phase, got)
        assert bound in str(got["result"]), (phase, got)  # the message says which bound
    for phase in ("preview", "start"):  # the web process: no pause beyond scheduling noise
        assert out[phase]["max_pause"] < 1.0, (phase, out[phase])
    assert out["after"]["result"] == "rendered"  # a killed worker is replaced: the next preview works


def test_a_template_the_sandbox_blocks_is_an_error_naming_the_blocked_part(home):
    svc = Service()
    out = svc.preview_data(SAMPLE, "{{ ''.__class__ }}", "", 3)  # raised a bare SecurityError
    assert "__class__" in out["template_error"] and "sandbox" in out["template_error"]
    for template in ("{{ ''.__class__ }}",
                     "{% set y = ''.__class__.__mro__ %}{{instruction}}",  # rendered the instruction, silently
                     "{{ instruction|attr('__class__') }}"):
        with pytest.raises(RequestError) as info:
            svc.prepare({"plugin": SFT, "device": "cpu", "template": template})
        assert any("__class__" in p and "sandbox" in p for p in info.value.problems), info.value.problems


def test_a_runtime_error_of_a_template_is_refused_at_start(home):
    """Start renders the first rows: a template that fails on the data is refused before a job fails on it."""
    with pytest.raises(RequestError) as info:
        Service().prepare({"plugin": SFT, "device": "cpu", "template": "{{ instruction }}{{ 1 // 0 }}"})
    assert any("data template" in p and "row 1" in p and "division" in p for p in info.value.problems)


@pytest.mark.parametrize("size", [64 * 1024 + 1, 10 * 2**20])
def test_a_template_longer_than_64_kib_is_refused_with_the_limit(home, size):
    svc = Service()
    template = "{{instruction}}" + "x" * (size - len("{{instruction}}"))
    with pytest.raises(RequestError) as info:
        svc.prepare({"plugin": SFT, "device": "cpu", "template": "{{instruction}}", "completion_template": template})
    assert any("completion template" in p and "64 KiB" in p for p in info.value.problems), info.value.problems
    assert "64 KiB" in svc.preview_data(SAMPLE, template, "", 3)["template_error"]


def test_a_deeply_nested_template_is_an_error_not_a_crash(home):
    with pytest.raises(RequestError) as info:  # a RecursionError escaped the check
        Service().prepare({"plugin": SFT, "device": "cpu", "template": "{{" + "(" * 5000 + "1" + ")" * 5000 + "}}"})
    assert any("data template" in p for p in info.value.problems)


def test_a_render_the_worker_does_not_stop_itself_is_killed_and_the_worker_replaced(home, monkeypatch):
    """The kill at the hard deadline, for what the worker's own alarm cannot stop (a long C-level call): here
    the parent's deadline is set below the worker's alarm, so the parent kills first."""
    import time

    from tlab_gradio import render_worker, templating

    monkeypatch.setattr(render_worker, "KILL_GRACE", 0.5 - templating.RENDER_SECONDS)  # the parent waits 0.5 s
    start = time.monotonic()
    with pytest.raises(templating.TemplateProblem, match="were stopped"):
        render_worker.run("render_batch", [("data template", ATTACKS["empty_loops"][0])], [{}])
    assert time.monotonic() - start < 3
    monkeypatch.undo()
    assert render_worker.run("render_batch", [("data template", "{{ a }}!")], [{"a": 1}]) == [["1!"]]
