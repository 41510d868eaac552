"""Child processes of the harness die with it.

If the test process is killed (CI timeout, Ctrl-C twice) before `stop()` runs, etcd, the API server and
the containers' processes would live on and keep ports and files busy. `die_with_parent` is a
`preexec_fn` that asks the kernel to kill the child when the thread that started it exits
(`PR_SET_PDEATHSIG`). The `prctl` symbol is resolved at import time: a `preexec_fn` runs between fork
and exec in a multi-threaded process, where loading a library could deadlock.
"""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when its parent thread exits."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
