"""Exit codes of the trainer: the contract between the trainer and whoever retries it.

Kubernetes (and the operator) only see a process's exit status, so the trainer says *why* it stopped with
distinct codes, and never exits 0 before the batch's target step is reached and checkpointed.

======  ==============  ==========================================================================
code    name            what the caller should do
======  ==============  ==========================================================================
0       SUCCESS         the batch is complete (now, or already before: a re-run is a no-op)
1       UNCLASSIFIED    an unexpected error (a bug?): retry a few times, then treat as failed
64      PERMANENT       bad config, bad data, configuration drift, broken invariants: do not retry;
                        the message names the field or file:line and the fix
75      TRANSIENT       I/O trouble and the like: retry with back-off
85      PREEMPTED       SIGTERM: a checkpoint was saved at the current step; retry, not a failure
======  ==============  ==========================================================================
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit statuses (see the module docstring)."""

    SUCCESS = 0
    UNCLASSIFIED = 1
    PERMANENT = 64
    TRANSIENT = 75
    PREEMPTED = 85


class TrainerError(Exception):
    """An error with a known exit code and a message meant for the user."""

    exit_code: ExitCode = ExitCode.UNCLASSIFIED
    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class PermanentError(TrainerError):
    """Retrying cannot help: the input (config or data) or the volume's state must be fixed."""

    exit_code = ExitCode.PERMANENT
    reason = "PermanentError"


class BadConfigError(PermanentError):
    """The config is invalid or unsafe."""

    reason = "InvalidConfig"


class BadDataError(PermanentError):
    """The batch's data cannot be read (the message names file and line)."""

    reason = "InvalidData"


class ConfigDriftError(PermanentError):
    """The config differs from the one the run's checkpoints were made with."""

    reason = "ConfigDrift"


class IntegrityError(PermanentError):
    """The volume's state breaks an invariant (e.g. steps would go backwards)."""

    reason = "IntegrityViolation"


class TransientError(TrainerError):
    """Worth retrying with back-off."""

    exit_code = ExitCode.TRANSIENT
    reason = "TransientError"
