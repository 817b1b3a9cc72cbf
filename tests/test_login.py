"""The login throttle, with a clock of its own (the real server is attacked in test_app.py)."""
import asyncio
import inspect

from tlab_gradio.login import ThrottledLogin


def test_a_name_is_locked_after_its_failures_and_a_spray_locks_everyone():
    now = [0.0]
    gate = ThrottledLogin([("demo", "secret"), ("ops", "pw")], window=60, lock=30, delay=0, clock=lambda: now[0])
    assert gate.check("demo", "secret")
    for _ in range(ThrottledLogin.LIMIT):
        assert not gate.check("demo", "wrong")
    assert not gate.check("demo", "secret") and gate.check("ops", "pw")
    now[0] += 31
    assert gate.check("demo", "secret")  # the lock ends
    for i in range(4 * ThrottledLogin.LIMIT):  # a spray: one try per made-up name
        gate.check(f"user{i}", "x")
    assert not gate.check("ops", "pw")  # everyone waits
    now[0] += 31
    assert gate.check("ops", "pw")


def test_failures_spread_over_more_than_the_window_do_not_lock():
    now = [0.0]
    gate = ThrottledLogin([("demo", "secret")], window=60, lock=30, delay=0, clock=lambda: now[0])
    for _ in range(3 * ThrottledLogin.LIMIT):
        assert not gate.check("demo", "typo")
        now[0] += 61 / (ThrottledLogin.LIMIT - 1)  # fewer than LIMIT failures in any window
    assert gate.check("demo", "secret")
    assert asyncio.run(gate.login("demo", "secret")) is True
    assert inspect.iscoroutinefunction(gate.login)  # how gradio decides to await it


def test_each_failure_waits_before_the_answer():
    """A guess costs the guesser time (TLAB_LOGIN_FAIL_DELAY_SECONDS), on the event loop without blocking it;
    the right password is answered at once."""
    import time

    gate = ThrottledLogin([("demo", "secret")], window=60, lock=30, delay=0.3)
    started = time.monotonic()
    assert asyncio.run(gate.login("demo", "wrong")) is False
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert asyncio.run(gate.login("demo", "secret")) is True
    assert time.monotonic() - started < 0.3
