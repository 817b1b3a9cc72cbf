"""What the form shows before Start, kept fresh: a verdict, a command or a preview is shown only for the values
the fields hold now, and each problem is shown at the field it names.

How: every change of a field bumps a counter in the page (window.tlLive[key]) before anything is sent; a check
sends the counter's value with the fields' values (SEND_JS), and its answer goes, with that number, into a hidden
JSON (`raw`), from which SHOW_JS copies it into the shown components only when no change came since (else the
answer is dropped: a newer one is on its way). While a value is being typed (not yet checked: checks run when a
field is left, on Enter, or on a pick) the verdict and the command say so instead of showing the old ones.

The problems are attributed to fields generically (field_problems): a parameter a problem names (`name` or the
bare name), the template a data problem names, the dataset, the model. SHOW_JS marks each such field (a red
border, `data-tl-invalid`) and puts its messages right under it (`#<elem_id>-error`)."""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from typing import Any

# The static fields' elem_ids (train_tab, dataset_picker); the Plugin Config's are param-<name>.
STATIC_IDS = {"plugin": "plugin", "name": "task-name", "model": "model", "template": "template",
              "completion_template": "completion-template", "data_format": "ds-format"}
DATASET_IDS = {"Bundled sample": "ds-sample", "Upload": "ds-upload", "Local path": "ds-path",
               "Hugging Face Hub": "ds-hub"}

CHECKING = '<span class="tl-muted">⋯ checking the settings…</span>'
TYPING = '<span class="tl-muted">⋯ changed: checked when you leave the field or press Enter</span>'
PREVIEWING = '<span class="tl-muted">⋯ reading the data…</span>'
RENDER_TYPING = "⋯ rendered when you leave the template box"
NO_COMMAND = "# Start runs nothing until the problems above are fixed"
COMMAND_WAITS = "# ⋯ the command follows once the settings are checked"  # never empty: an empty box is taller


def _js(text: str) -> str:
    return json.dumps(text)


def send_js(key: str, ids: list[str | None] | None = None) -> str:
    """A check's preprocessing in the page: note the text fields' values it sends (`ids`: the inputs' elem_ids),
    count this change and send the count as the last input. It counts a moment later: a text box may report its
    last key (an `input`) just after the Enter or blur that commits it, which typing_js then sees as sent."""
    note = (f"const ids = {json.dumps(ids)}; w.sent = w.sent || {{}}; "
            "ids.forEach((id, i) => { if (id) w.sent[id] = String(args[i] ?? ''); }); " if ids else "")
    return ("async (...args) => { const w = window.tlLive = window.tlLive || {}; " + note +
            "await new Promise(r => setTimeout(r, 80)); "
            f"w[{_js(key)}] = (w[{_js(key)}] || 0) + 1; args[args.length - 1] = String(w[{_js(key)}]); "
            "return args; }")


def pack_js(names: list[str], ids: list[str | None]) -> str:
    """The Plugin Config's fields packed in the page into one value, {name: what the field shows}, for the check
    that follows (train_tab.wire); the text fields' values noted as sent, as send_js does. The fields go to no
    server call themselves: gradio's page then keeps a loading status for each input of a server call it ever
    made and walks its whole page tree for every one of them at each status message of any event (a plugin
    switch took 2.3 s once the fields of both plugins had been sent)."""
    return (f"(...v) => {{ const w = window.tlLive = window.tlLive || {{}}; const ids = {json.dumps(ids)}; "
            "w.sent = w.sent || {}; ids.forEach((id, i) => { if (id) w.sent[id] = String(v[i] ?? ''); }); "
            f"const names = {json.dumps(names)}; return Object.fromEntries(names.map((n, i) => [n, v[i]])); }}")


def set_js(names: list[str]) -> str:
    """Fields' values into the packed values (inputs: the packed values, then those fields), in the page."""
    return (f"(vals, ...v) => {{ const names = {json.dumps(names)}; const out = {{...(vals || {{}})}}; "
            "names.forEach((n, i) => { out[n] = v[i]; }); return out; }")


def typing_js(key: str, elem_id: str, texts: list[str], ids: list[str]) -> str:
    """A key typed in text field `elem_id`: as pending_js, unless the text is what the last check sent (the
    field's last key reported after its Enter or blur), when what is shown stays. Inputs: the field, then the
    shown outputs."""
    values = ", ".join(_js(t) for t in texts)
    return (f"(value, ...shown) => {{ const w = window.tlLive = window.tlLive || {{}}; "
            f"if (w.sent && w.sent[{_js(elem_id)}] === String(value ?? '')) return shown; "
            f"w[{_js(key)}] = (w[{_js(key)}] || 0) + 1; "
            "document.querySelectorAll('.tl-field-error').forEach(e => e.classList.add('tl-stale')); "
            f"{_hold(ids, True)}return [{values}]; }}")


def _hold(ids: list[str], keep: bool) -> str:
    """Keep the outputs' height while they wait (else what is below, Start, moves under a click that left a
    field), or let it go with the answer."""
    if keep:
        return (f"for (const id of {json.dumps(ids)}) {{ const e = document.getElementById(id); "
                "if (e && !e.style.minHeight) e.style.minHeight = e.offsetHeight + 'px'; } ")
    return (f"for (const id of {json.dumps(ids)}) {{ const e = document.getElementById(id); "
            "if (e) e.style.minHeight = ''; } ")


def pending_js(key: str, texts: list[str], ids: list[str]) -> str:
    """A change seen in the page, at once and with no server call: it is counted (an answer still on its way,
    asked for before it, is then dropped), the fields' marks fade, and the shown outputs (elem_ids `ids`) say
    what is coming, at their height. A check asked for on the same change counts again a moment later
    (send_js), so its own answer is current."""
    values = ", ".join(_js(t) for t in texts)
    return (f"() => {{ const w = window.tlLive = window.tlLive || {{}}; w[{_js(key)}] = (w[{_js(key)}] || 0) + 1; "
            "document.querySelectorAll('.tl-field-error').forEach(e => e.classList.add('tl-stale')); "
            f"{_hold(ids, True)}return [{values}]; }}")


# Fields in a section that starts closed, whose contents the page builds only once it is opened: a problem at one
# opens it (and the mark follows once the field is there).
CLOSED_SECTIONS = {"template": "data-template", "completion-template": "data-template"}

MARK_JS = """
function tlMark(fields, seq, tries) {
  tries = tries || 0;
  if (tries && String((window.tlLive || {})['check:answered']) !== String(seq)) return;  // a newer verdict is shown
  document.querySelectorAll('.tl-field-error').forEach(e => e.remove());
  document.querySelectorAll('[data-tl-invalid]').forEach(e => e.removeAttribute('data-tl-invalid'));
  const sections = %s;
  let missing = false;
  for (const [id, messages] of Object.entries(fields || {})) {
    const el = document.getElementById(id);
    if (!el) {
      const section = sections[id] && document.getElementById(sections[id]);
      const button = section && section.querySelector('button.label-wrap');
      if (button && !button.classList.contains('open')) button.click();
      missing = true;
      continue;
    }
    el.setAttribute('data-tl-invalid', '1');
    const note = document.createElement('div');
    note.className = 'tl-field-error'; note.id = id + '-error'; note.setAttribute('role', 'alert');
    note.textContent = messages.join(' · ');
    (el.querySelector(':scope > .container') || el).appendChild(note);  // a dropdown's block is clipped below it
    // A field in a closed section (the data template, a plugin's group): the section opens, so it is seen.
    for (let acc = el.closest('.gr-accordion'); acc; acc = acc.parentElement && acc.parentElement.closest('.gr-accordion')) {
      const button = acc.querySelector(':scope button.label-wrap');
      if (button && !button.classList.contains('open')) button.click();
    }
  }
  if (missing && tries < 20) setTimeout(() => tlMark(fields, seq, tries + 1), 100);
}""" % json.dumps(CLOSED_SECTIONS)


def show_js(key: str, ids: list[str], marks: bool = False) -> str:
    """raw -> the shown outputs, when raw answers the latest change (else they stay as they are). The inputs are
    raw then the shown outputs (elem_ids `ids`), in the order raw['shown'] holds their new values."""
    mark = "tlMark(raw.fields, raw.seq); " if marks else ""
    return (f"(raw, ...shown) => {{ {MARK_JS if marks else ''}\n"
            f"const w = window.tlLive = window.tlLive || {{}}; "
            f"if (!raw || !raw.shown || String(raw.seq) !== String(w[{_js(key)}] || 0)) return shown; "
            f"w[{_js(key + ':answered')}] = String(raw.seq); {mark}{_hold(ids, False)}"
            f"return raw.shown.slice(0, {len(ids)}); }}")


# Start and Save preset: wait until the latest change of the form is checked (a click first leaves the field
# being typed in, which asks for its check), then name that check: the server takes the request it checked.
START_JS = """async (...args) => {
  const w = window.tlLive = window.tlLive || {};
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  await sleep(200);
  for (let i = 0; i < 300 && String(w['check:answered']) !== String(w.check || 0); i++) await sleep(100);
  args[args.length - 1] = String(w.check || 0);
  return args;
}"""


def answer(seq: Any, shown: list[Any], fields: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """What a check puts into `raw`: its change number, the shown outputs' new values and the fields' marks."""
    return {"seq": str(seq or ""), "shown": list(shown), "fields": fields or {}}


# --- which field a problem is about ------------------------------------------------------

_PREFIX = re.compile(r"^`(?P<name>[A-Za-z0-9_]+)`(?: \((?:[^()]|\([^()]*\))*\))?: ")  # `name` (Its Title): 
_TYPES = {"number": "is not a number", "integer": "is not a whole number", "boolean": "is not true or false",
          "string": "is not text"}


def _plain(problem: str) -> str:
    """The problem as said under its own field: without the field's name in front, plainer type errors."""
    text = _PREFIX.sub("", problem)
    return re.sub(r"is not of type '(\w+)'", lambda m: _TYPES.get(m.group(1), m.group(0)), text)


def field_problems(problems: list[str], names: list[str], source: str | None) -> dict[str, list[str]]:
    """Each problem under every field it names, by elem_id: the plugin's parameters (`name` or the bare name,
    as a word), the templates a data problem names, the dataset (under the chosen source's input), the model,
    the task name. A problem naming no field is shown only in the list under the form."""
    out: dict[str, list[str]] = {}

    def add(elem_id: str, text: str) -> None:
        out.setdefault(elem_id, [])
        if text not in out[elem_id]:
            out[elem_id].append(text)

    for problem in problems:
        low = problem.lower()
        found = [n for n in names if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", problem)]
        for name in found:
            add(f"param-{name}", _plain(problem))
        templates = []
        if re.search(r"\b(data|input) template\b|`template`|needs an input template", low):
            templates.append("template")
        if re.search(r"\b(completion|answer) template\b|`completion_template`", low):
            templates.append("completion_template")
        for t in templates:
            add(STATIC_IDS[t], _plain(problem))
        if not templates and re.match(r"(`?dataset`?\b|no bundled sample|could not load dataset)", low):
            add(DATASET_IDS.get(source or "", "ds-source"), _plain(problem))
        if re.match(r"`?model`?\b", low) or "local model folders" in low or "of hub model" in low:
            add(STATIC_IDS["model"], _plain(problem))
        if low.startswith("`name`"):
            add(STATIC_IDS["name"], _plain(problem))
        if low.startswith("`data_format`"):
            add(STATIC_IDS["data_format"], _plain(problem))
    return out


def _number(seq: Any) -> int:
    """A page's change number (they count up from 1 per page); anything else as 0."""
    try:
        return int(str(seq or "0"))
    except ValueError:
        return 0


class Checked:
    """Each page's last checked request, by the change number it answers (a page is a gradio session): Start and
    Save preset take it, so what starts is what the shown verdict describes."""

    def __init__(self, pages: int = 2000):
        self._last: OrderedDict[str, tuple[str, Any, list[str] | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._pages = pages

    @staticmethod
    def _page(visit: Any) -> str:
        return str(getattr(visit, "session_hash", None) or getattr(visit, "username", None) or "")

    def keep(self, visit: Any, seq: Any, request: dict[str, Any] | None, problems: list[str] | None) -> None:
        """Keep the check of change `seq`, unless a newer change's check is already kept: checks run on several
        threads, and an older one finishing last would leave Start refused for the change the page shows."""
        with self._lock:
            kept = self._last.get(self._page(visit))
            if kept is not None and _number(kept[0]) > _number(seq):
                return
            self._last[self._page(visit)] = (str(seq or ""), request, problems)
            self._last.move_to_end(self._page(visit))
            while len(self._last) > self._pages:
                self._last.popitem(last=False)

    def request(self, visit: Any, seq: Any) -> dict[str, Any]:
        """The request checked for change `seq`; RequestError when the check of that change is not in (the form
        changed again) or the form did not make a request (its problems)."""
        from ..service import RequestError

        with self._lock:
            last = self._last.get(self._page(visit))
        if last is None or last[0] != str(seq or ""):
            raise RequestError(["the settings changed while they were being checked: press the button again"])
        _, request, problems = last
        if request is None:
            raise RequestError(problems or ["the form is not complete"])
        return request
