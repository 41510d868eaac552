"""SIGTERM before training is "preempted, nothing trained" (exit 85) from the entry point's first line.

Kubernetes sends SIGTERM whenever it likes: during the imports, while the config is parsed, while the model
loads. Python's default action would end the process with 143 (or a traceback, exit 1); the operator would
count a failure. So the CLI installs :func:`install` before it imports anything heavy, and start-up moves
through named phases (:func:`phase`); a SIGTERM in any of them raises :class:`Preempted`, which the CLI
turns into exit 85 with outcome ``Preempted`` in the result record. Once training runs, the engine's own
handler takes over (checkpoint at the end of the step, then exit 85) and hands back to this one after.

Raising from the handler is safe here because every write the trainer makes is atomic and crash-safe (it
survives SIGKILL at any point); :class:`Preempted` derives from ``BaseException`` so that no library's
``except Exception`` swallows it, and a swallowed one is raised again at the next phase.

Tests pick the moment with a failpoint: ``CONTINUAL_TRAINER_FAILPOINTS=phase@config=term`` sends the process
SIGTERM when it enters the phase ``config`` (``=stop``: SIGSTOP, to act on a process frozen there; no
action: SIGKILL). The phases, in order: ``entry``, ``imports``, ``config``, ``gang`` (several ranks
only: joining their process group), ``lock``, ``checks``, ``model``, ``training`` (until the engine's handler
is installed), ``finishing``. ``CONTINUAL_TRAINER_FAILPOINT_RANK=<r>`` limits failpoints to rank ``r``.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from types import FrameType

PHASE_TEXT = {
    "entry": "starting",
    "imports": "importing its libraries",
    "config": "reading its config",
    "gang": "joining the other ranks of its gang",
    "lock": "taking the volume's lock",
    "checks": "checking the config, the run record and the data",
    "model": "loading the model",
    "training": "starting to train",
}


class Preempted(BaseException):  # BaseException on purpose: see the module docstring
    """A SIGTERM arrived outside training: nothing was trained; a retry goes on where the volume is."""

    def __init__(self, phase: str) -> None:
        self.phase = phase
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The result record's message."""
        if self.phase == "finishing":
            return (
                "SIGTERM after the batch's last step, while finishing it: retry; the batch completes from its "
                "final checkpoint without training again"
            )
        doing = PHASE_TEXT.get(self.phase, self.phase)
        return f"SIGTERM while {doing}, before training: nothing was trained; retry to train the batch"


@dataclass
class _State:
    phase: str = "entry"
    requested: bool = False


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    _state.requested = True
    # A second SIGTERM must not interrupt the orderly exit that the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Preempted(_state.phase)


def install() -> None:
    """Make SIGTERM raise :class:`Preempted` (call it first thing: it imports nothing heavy)."""
    signal.signal(signal.SIGTERM, _handler)


def phase(name: str) -> None:
    """Enter a named start-up phase: the message names it; a SIGTERM swallowed by a library counts here."""
    _state.phase = name
    _failpoint(name)
    if _state.requested:
        raise Preempted(name)


def raise_if_requested(cause: BaseException) -> None:
    """Raise :class:`Preempted` if a SIGTERM arrived before ``cause``: a library turned ours into its own error.

    transformers' lazy imports, for one, re-raise whatever an import raised as ``ModuleNotFoundError``; a
    SIGTERM during such an import must still end as "preempted" (85), not as an unexpected error.
    """
    if _state.requested:
        raise Preempted(_state.phase) from cause


def _failpoint(name: str) -> None:
    spec = os.environ.get("CONTINUAL_TRAINER_FAILPOINTS")
    if not spec:
        return
    only = os.environ.get("CONTINUAL_TRAINER_FAILPOINT_RANK")  # one rank of a gang (torchrun sets RANK)
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    for item in spec.split(","):
        point, _, rest = item.partition("@")
        at, _, action = rest.partition("=")
        if point == "phase" and at == name:
            signum = {"term": signal.SIGTERM, "stop": signal.SIGSTOP}.get(action, signal.SIGKILL)
            print(f"failpoint phase@{name}: {signum.name}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)
