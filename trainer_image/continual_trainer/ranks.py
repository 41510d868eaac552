"""Which process of a training gang this is, and the few collectives the trainer's coordination needs.

A batch may be trained by several processes at once (``torchrun --nproc-per-node M``, or any launcher of
PyTorch's ``env://`` rendezvous: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
Global rank 0 is the **coordinator**: it alone takes the volume's lock, reads and writes the ledger,
validates and publishes checkpoints, exports adapters and reports progress. The other ranks train their
share of each step (:func:`continual_trainer.plan.rank_share`) and otherwise wait for the coordinator at the
collectives below.

Without those variables (or with ``WORLD_SIZE=1``) this is one process, exactly as before: nothing here
imports ``torch.distributed`` and every collective is a no-op.

Waiting is interruptible. A blocking ``barrier`` or ``broadcast`` in gloo/NCCL does not return to the
interpreter, so a SIGTERM that arrives while a rank waits would only be handled when the wait ends (which,
if the coordinator is gone, is never). Every wait here is an asynchronous collective polled every few
milliseconds, so Python runs the signal handler meanwhile (:mod:`continual_trainer.preemption`).
"""

from __future__ import annotations

import logging
import os
import pickle  # only between the ranks of one gang, which trust each other (same image, same job)
import time
from dataclasses import dataclass
from typing import Any

from continual_trainer.exitcodes import PermanentError, TransientError

log = logging.getLogger(__name__)

#: How often a waiting rank looks at its collective (and lets Python run a signal handler).
POLL_SECONDS = 0.005
#: How long a control collective may wait (the followers wait for the coordinator's first order while it
#: checks and downloads the batch's data and loads the model; a dead rank is noticed at once, not by this).
CONTROL_TIMEOUT_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Ranks:
    """This process's place in the gang (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_coordinator(self) -> bool:
        """Global rank 0: the only rank that writes the run's volume."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        """``rank 1 of 2`` (for messages and logs)."""
        return f"rank {self.rank} of {self.world_size}"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise PermanentError(
            f"environment variable {name}={raw!r} is not an integer: launch the trainer with torchrun (or an "
            "env:// launcher that sets RANK, WORLD_SIZE and LOCAL_RANK), or unset it for one process",
            reason="BadRankEnvironment",
        ) from None


def current() -> Ranks:
    """The ranks from the environment ``torchrun`` sets (none set: one process)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world:
        raise PermanentError(
            f"RANK={rank} and WORLD_SIZE={world} do not describe a process of a gang (0 <= RANK < WORLD_SIZE): "
            "launch the trainer with torchrun, or unset both for one process",
            reason="BadRankEnvironment",
        )
    return Ranks(rank=rank, world_size=world, local_rank=local)


@dataclass
class _Group:
    """The process group for control messages (gloo: works for CPU tensors whatever the training backend)."""

    handle: Any = None


_control = _Group()


def init(ranks: Ranks | None = None) -> Ranks:
    """Join the gang's process group (once): gloo on CPU, NCCL on CUDA; a no-op for one process.

    HF Trainer (accelerate) finds the group already initialised and trains DDP on it.
    """
    ranks = ranks or current()
    if not ranks.distributed:
        return ranks
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
        log.info("joined the gang as %s (%s)", ranks.describe(), dist.get_backend())
    if _control.handle is None:
        # A group of its own for control: gloo (NCCL's collectives want CUDA tensors and are not meant to be
        # polled), and a long timeout (the training group keeps its default one).
        from datetime import timedelta

        _control.handle = dist.new_group(backend="gloo", timeout=timedelta(seconds=CONTROL_TIMEOUT_SECONDS))
    return ranks


def joined() -> bool:
    """Whether this process is in a gang's process group (never true for one process)."""
    if not current().distributed:
        return False
    import torch.distributed as dist

    return bool(dist.is_initialized())


class RankLostError(TransientError):
    """Another rank of the gang is gone (killed, crashed): this attempt cannot go on; a fresh gang retries."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(
            f"{current().describe()}: another rank of the gang is gone ({type(cause).__name__}: {cause}); this "
            "attempt stops without a checkpoint and the retry (a fresh gang) resumes from the last published "
            "checkpoint; the failing rank's log says why it ended",
            reason="RankLost",
        )


def _wait(work: Any, timeout: float | None = None) -> None:
    """Poll an asynchronous collective until it is done (signal handlers run meanwhile)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not work.is_completed():
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"a collective of the gang did not complete within {timeout} s")
        time.sleep(POLL_SECONDS)
    try:
        work.wait()
    except RuntimeError as exc:  # gloo/NCCL: a peer closed its connection (it died)
        raise RankLostError(exc) from exc


def barrier(name: str) -> None:
    """Wait until every rank has reached the barrier called ``name`` (one process: return at once)."""
    if not current().distributed:
        return
    import torch.distributed as dist

    log.debug("barrier %s", name)
    _wait(dist.barrier(group=_control.handle, async_op=True))


def broadcast_object(obj: Any = None, src: int = 0, timeout: float | None = None) -> Any:
    """Rank ``src``'s ``obj``, on every rank (pickled; one process: ``obj`` itself)."""
    if not current().distributed:
        return obj
    import torch
    import torch.distributed as dist

    here = current().rank == src
    payload = pickle.dumps(obj) if here else b""
    size = torch.tensor([len(payload)], dtype=torch.int64)
    _wait(dist.broadcast(size, src=src, group=_control.handle, async_op=True), timeout)
    data = (
        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if here
        else torch.empty(int(size.item()), dtype=torch.uint8)
    )
    _wait(dist.broadcast(data, src=src, group=_control.handle, async_op=True), timeout)
    return obj if here else pickle.loads(data.numpy().tobytes())  # noqa: S301 - see the import


def all_reduce_sum(values: list[float]) -> list[float]:
    """The sum over all ranks of each value (float64; one process: the values themselves)."""
    if not current().distributed:
        return values
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    _wait(dist.all_reduce(tensor, group=_control.handle, async_op=True))
    return [float(v) for v in tensor.tolist()]


def shutdown() -> None:
    """Leave the process group (at exit; a no-op for one process or when never joined)."""
    if not current().distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    _control.handle = None
