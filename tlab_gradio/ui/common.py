"""Small helpers the tabs share: errors for the page and the API, formatting."""
from __future__ import annotations

import functools
import html
import threading
import time
from collections import OrderedDict
from typing import Callable

import gradio as gr

from ..service import JobError, RequestError, get_service

PRIVATE = {"api_visibility": "private"}  # page handlers stay out of the API the client sees


def progress_on(render_fn: Callable, target: gr.components.Component) -> None:
    """Show a gr.render's progress on `target` instead of its own column. The page's browser code copies every
    component of an event's progress targets at each later render and status change: with the render's column as
    its target, the whole Plugin Config was copied several times per plugin switch (about a second of the
    browser's time on 2 cores). gr.render takes no show_progress_on; its event is found by its function."""
    from gradio.context import get_blocks_context

    fns = [f for f in get_blocks_context().fns.values()
           if f.renderable is not None and f.renderable.fn is render_fn]
    if len(fns) != 1:
        raise RuntimeError(f"progress_on: {len(fns)} render events for {render_fn!r}")
    fns[0].show_progress_on = [target]


class LastSent:
    """What each page (a gradio session) was last sent by one timer, so a tick with nothing new sends nothing:
    every value sent is redrawn by the page, and every server call is a round of status messages there."""

    def __init__(self, pages: int = 2000):
        self._sent: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._pages = pages

    def changed(self, request: gr.Request | None, value) -> bool:
        """Whether `value` differs from what this page got last; it is noted as sent."""
        page = str(getattr(request, "session_hash", None) or "")
        digest = hash(repr(value))
        with self._lock:
            if page and self._sent.get(page) == digest:
                return False
            self._sent[page] = digest
            self._sent.move_to_end(page)
            while len(self._sent) > self._pages:
                self._sent.popitem(last=False)
        return True


def visitor(request: gr.Request | None) -> str | None:
    """Who is asking, for job ownership: the login name when TLAB_AUTH is on, else the browser's (or
    gradio_client's) session. gradio fills in a handler's gr.Request parameter; it is no API input."""
    if request is None:
        return None
    return (f"user:{request.username}" if request.username else
            f"session:{request.session_hash}" if request.session_hash else None)


# The core's errors about what a user asked for (anything else is a bug and stays a traceback)
USER_ERRORS = (RequestError, JobError, ValueError)


def problems_of(exc: Exception) -> list[str]:
    return exc.problems if isinstance(exc, RequestError) else [str(exc)]


def user_error(exc: Exception) -> gr.Error:
    """A gr.Error whose message a page user and a gradio_client script both see."""
    if isinstance(exc, RequestError):
        message = exc.problems[0] if len(exc.problems) == 1 else "\n".join(f"- {p}" for p in exc.problems)
    else:
        message = str(exc)
    return gr.Error(get_service().hide_paths(message), print_exception=False)  # hosted: no server path


def checked(fn: Callable) -> Callable:
    """Turn the core's input errors into gr.Error; anything else is a bug and stays a traceback."""
    @functools.wraps(fn)  # keeps the signature: gradio builds the API's parameters from it
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise user_error(exc) from None
    return wrapper


def refused(what: str, exc: Exception) -> str:
    """An action's refusal, said twice: a toast now, and the markdown returned to go under its button, where it
    stays (a toast alone was gone before a slow reader saw it). `what`: "Not evaluated"."""
    gr.Warning(f"{what}: " + "; ".join(get_service().hide_paths(p) for p in problems_of(exc)))
    return f"**{what}:**\n{problems_md(exc)}"


def problems_md(exc: Exception) -> str:
    hide = get_service().hide_paths  # hosted: no server path
    return "\n".join(f'- <span class="tl-warn">✗</span> {html.escape(hide(p))}' for p in problems_of(exc))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


STATE_COLORS = {
    "QUEUED": "#6b7280", "RUNNING": "#2563eb", "STOPPING": "#d97706", "COMPLETE": "#059669",
    "FAILED": "#dc2626", "STOPPED": "#d97706",
}


def state_badge(state: str) -> str:
    color = STATE_COLORS.get(state, "#6b7280")
    return f'<span class="tl-badge" style="background:{color}">{html.escape(state)}</span>'


def progress_bar(percent: float, label: str) -> str:
    percent = max(0.0, min(100.0, float(percent or 0)))
    return (
        f'<div class="tl-progress" role="progressbar" aria-valuenow="{percent:.0f}" aria-valuemin="0" '
        f'aria-valuemax="100"><div class="tl-progress-fill" style="width:{percent:.1f}%"></div></div>'
        f'<div class="tl-progress-label">{html.escape(label)}</div>'
    )
