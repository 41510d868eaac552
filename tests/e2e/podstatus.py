"""Pod and container status documents, shaped like the ones a kubelet writes (pure functions).

The pod runner patches these into `pods/status` with a JSON merge patch, which replaces lists whole:
every patch carries the complete `containerStatuses` and `conditions`, as a kubelet's status manager
does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .kubeapi import JSON

TERMINATION_MESSAGE_LIMIT = 4096  # bytes, as in the kubelet
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def now() -> str:
    """The current time as the API writes it (RFC 3339, seconds, UTC)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code_of(returncode: int) -> int:
    """A container exit code from `Popen.returncode`: death by signal N is 128 + N, as in a shell."""
    return 128 - returncode if returncode < 0 else returncode


def signal_of(returncode: int) -> int | None:
    return -returncode if returncode < 0 else None


def termination_message(message_file: bytes, log_text: str, *, failed: bool, fallback_to_logs: bool) -> str:
    """The `terminated.message`: the termination message file, or (policy FallbackToLogsOnError, failed
    container, empty file) the end of the log."""
    message = message_file[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
    if not message.strip() and failed and fallback_to_logs:
        lines = log_text.splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message


@dataclass
class ContainerState:
    """One container's status as the runner tracks it."""

    name: str
    image: str
    restart_count: int = 0
    state: JSON = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: JSON = field(default_factory=dict)
    pid: int | None = None

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> JSON | None:
        result = self.state.get("terminated")
        return result if isinstance(result, dict) else None

    def set_waiting(self, reason: str, message: str = "") -> None:
        self.state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def set_running(self, pid: int, started_at: str) -> None:
        if self.terminated is not None:
            self.last_state = {"terminated": self.terminated}
        self.pid = pid
        self.state = {"running": {"startedAt": started_at}}

    def set_terminated(self, returncode: int, message: str, finished_at: str) -> None:
        code = exit_code_of(returncode)
        terminated: JSON = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self.state.get("running", {}).get("startedAt", finished_at),
            "finishedAt": finished_at,
            "containerID": self.container_id,
        }
        if signal_of(returncode) is not None:
            terminated["signal"] = signal_of(returncode)
        if message:
            terminated["message"] = message
        self.state = {"terminated": terminated}

    @property
    def container_id(self) -> str:
        return f"e2e://{self.pid}" if self.pid else ""

    def status(self) -> JSON:
        document: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.running,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.pid:
            document["containerID"] = self.container_id
        return document


def _condition(kind: str, status: bool, since: str, reason: str | None = None) -> JSON:
    condition: JSON = {"type": kind, "status": "True" if status else "False", "lastTransitionTime": since}
    if reason and not status:
        condition["reason"] = reason
    return condition


def pod_status(
    phase: str,
    init_containers: list[ContainerState],
    containers: list[ContainerState],
    start_time: str,
    *,
    reason: str | None = None,
    message: str | None = None,
) -> JSON:
    """The pod status document for `phase` and the containers' current states."""
    initialized = all(c.terminated is not None and c.terminated["exitCode"] == 0 for c in init_containers)
    ready = phase == "Running" and all(c.running for c in containers)
    since = now()
    status: JSON = {
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": start_time,
        "conditions": [
            _condition("PodScheduled", status=True, since=start_time),
            _condition("Initialized", initialized, since, "ContainersNotInitialized"),
            _condition("ContainersReady", ready, since, "ContainersNotReady"),
            _condition("Ready", ready, since, "ContainersNotReady"),
        ],
        "containerStatuses": [c.status() for c in containers],
        # Merge patch: null removes a key the runner set earlier (e.g. a former waiting reason).
        "reason": reason,
        "message": message,
    }
    if init_containers:
        status["initContainerStatuses"] = [c.status() for c in init_containers]
    return status
