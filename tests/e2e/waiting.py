"""Bounded waiting for the end-to-end tests.

Every wait in the harness goes through `wait_until`, so that none can hang a CI job and every failure
says what it was waiting for and what the world looked like when it gave up (the `dump` callback: pod
phases, container logs, component logs). An exception raised by the condition is treated as "not yet"
and shown in the timeout message, because API errors right after a create are normal (not found,
conflicts) and the last one is usually the explanation. A condition that knows the wait is hopeless
(the process it waits for has exited) raises `AbortWaitError` to fail at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitFailedError(RuntimeError):
    """A bounded wait failed (timed out or aborted); the message carries the diagnostics."""


class WaitTimeoutError(WaitFailedError, TimeoutError):
    """A bounded wait ran out of time."""


class AbortWaitError(Exception):
    """Raised by a condition to stop waiting at once: what it waits for can no longer happen."""


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    dump: Callable[[], str] | None = None,
) -> T:
    """Call `condition` until it returns something truthy, and return that.

    Raises `WaitTimeoutError` after `timeout` seconds, or `WaitFailedError` as soon as the condition
    raises `AbortWaitError`; either names `what`, the last error and the output of `dump()`.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = condition()
        except AbortWaitError as error:
            raise WaitFailedError(_message(f"gave up waiting for {what}", error, dump)) from error
        except Exception as error:  # "not yet"; see the module docstring
            last_error = error
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise WaitTimeoutError(_message(f"timed out after {timeout:.0f}s waiting for {what}", last_error, dump))


def _message(headline: str, error: BaseException | None, dump: Callable[[], str] | None) -> str:
    message = headline
    if error is not None:
        message += f"\nlast error: {type(error).__name__}: {error}"
    if dump is not None:
        try:
            message += "\n" + dump()
        except Exception as dump_error:  # a broken dump must not hide the failure
            message += f"\n(diagnostics failed: {dump_error!r})"
    return message


def tail(text: str, lines: int = 40) -> str:
    """The last `lines` lines of `text`, for log excerpts in error messages."""
    return "\n".join(text.splitlines()[-lines:])
