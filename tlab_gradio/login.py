"""The page's login (TLAB_AUTH) with failed attempts throttled: a password cannot be guessed at the speed
of the network. After LIMIT failures for one user name within WINDOW seconds, or 4 x LIMIT for all names
together (a spray over many names), every attempt for that name (or for all) is refused for LOCK seconds,
the right password too; each failure also waits a moment before the answer.

Gradio calls the check for its /login route; an async one runs on the event loop, so it never sleeps
the loop (asyncio.sleep) and keeps only counters.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections import deque
from typing import Callable


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds") from None


class ThrottledLogin:
    LIMIT = 5

    def __init__(self, users: list[tuple[str, str]], *, window: float | None = None, lock: float | None = None,
                 delay: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.users = dict(users)
        self.window = _seconds("TLAB_LOGIN_WINDOW_SECONDS", 300) if window is None else window
        self.lock = _seconds("TLAB_LOGIN_LOCK_SECONDS", 60) if lock is None else lock
        self.delay = _seconds("TLAB_LOGIN_FAIL_DELAY_SECONDS", 0.5) if delay is None else delay
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}
        self.locked_until: dict[str, float] = {}  # user name, or "" for everyone

    def _locked(self, name: str, now: float) -> bool:
        return self.locked_until.get(name, 0) > now or self.locked_until.get("", 0) > now

    def _fail(self, name: str, now: float) -> None:
        for key, limit in ((name, self.LIMIT), ("", 4 * self.LIMIT)):
            times = self.failures.setdefault(key, deque())
            times.append(now)
            while times and times[0] < now - self.window:
                times.popleft()
            if len(times) >= limit:
                self.locked_until[key] = now + self.lock
                times.clear()

    def check(self, username: str, password: str) -> bool:
        now = self.clock()
        if self._locked(username, now):
            return False
        expected = self.users.get(username)
        ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
        if not ok:
            self._fail(username, now)
        return ok

    async def login(self, username: str, password: str) -> bool:
        """What gradio calls: a coroutine function (gradio tells one by inspect.iscoroutinefunction; an object
        with an async __call__ would be called without await, and its coroutine taken as a yes)."""
        ok = self.check(username, password)
        if not ok and self.delay:
            await asyncio.sleep(self.delay)
        return ok
