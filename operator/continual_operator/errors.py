"""The operator's own errors: what went wrong talking to the Kubernetes API, in terms a handler can act on.

:mod:`continual_operator.cluster.k8s` turns every failed API call (an ``ApiException``, an HTTP error status, a
refused connection) into one of these with :func:`error_for_status`, so that nothing above it needs the
Kubernetes client to tell a missing permission from a busy API server. Each error says what the operator
was doing, in the terms of an RBAC rule (``create jobs.batch ml/demo-b1-a1``), what the API server
answered, and -- where there is one -- what to do about it; ``retry_after`` is how long the handler layer
waits before the next reconcile of the same run.

No Kubernetes client imports here: the mapping is plain data, tested without a server.
"""

from __future__ import annotations

import json


class KubernetesApiError(Exception):
    """A Kubernetes API call failed."""

    #: Seconds before a reconcile that failed with this error is tried again.
    retry_after: float = 30.0

    def __init__(self, doing: str, status: int | None, reason: str, message: str, hint: str = "") -> None:
        self.doing = doing
        self.status = status
        self.reason = reason
        self.message = message
        self.hint = hint
        code = f"HTTP {status} " if status is not None else ""
        text = f"{doing} failed: {code}{reason}: {message}"
        super().__init__(f"{text}. {hint}" if hint else text)


class NotFoundError(KubernetesApiError):
    """404: the object (or its namespace, or its CRD) is gone; the next reconcile sees the new state."""

    retry_after = 2.0


class ConflictError(KubernetesApiError):
    """409: the object exists already, or changed under us (optimistic concurrency)."""

    retry_after = 1.0


class ForbiddenError(KubernetesApiError):
    """401/403: RBAC, a ResourceQuota or an admission webhook said no. Retried slowly: someone must act."""

    retry_after = 60.0


class InvalidObjectError(KubernetesApiError):
    """400/422: the API server rejected an object or a patch the operator sent."""

    retry_after = 300.0


class RejectedObjectError(InvalidObjectError):
    """The API server refused an object built from a run's spec (its Job, ConfigMap or volume claim).

    The spec passed the operator's own validation, yet a value in it is not acceptable to the cluster
    (e.g. a label value, a quantity, a storage class name): the run needs a corrected spec, so this is
    reported on the run like an invalid spec instead of being retried.
    """


class TransientApiError(KubernetesApiError):
    """410, 429, 5xx, timeouts and broken connections: the API server is busy or unreachable; retry soon."""

    retry_after = 5.0


_MESSAGE_LIMIT = 2000
_FORBIDDEN_HINT = (
    "The operator's ServiceAccount needs this permission (see the chart's ClusterRole), or a ResourceQuota "
    "or an admission webhook refused the request"
)


def error_for_status(
    status: int | None, reason: str | None, body: str | bytes | None, doing: str
) -> KubernetesApiError:
    """The project's error for an API answer (``status`` None or 0: no answer at all).

    The message is the API server's own ``Status.message`` when there is one (it names the offending
    field or the missing permission), else the raw body.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        parsed = {}
    if isinstance(parsed, dict) and parsed.get("kind") == "Status":
        reason = str(parsed.get("reason") or reason or "")
        text = str(parsed.get("message") or text)
    reason = reason or "Error"
    message = " ".join(text.split())[:_MESSAGE_LIMIT] or "(no message)"
    if not status:
        return TransientApiError(doing, None, reason, message, "The API server could not be reached")
    if status == 401:
        return ForbiddenError(
            doing, status, reason, message, "The API server refused the operator's credentials"
        )
    if status == 403:
        return ForbiddenError(doing, status, reason, message, _FORBIDDEN_HINT)
    if status == 404:
        return NotFoundError(doing, status, reason, message)
    if status == 409:
        return ConflictError(doing, status, reason, message)
    if status in {400, 422}:
        return InvalidObjectError(doing, status, reason, message)
    if status in {410, 429} or status >= 500:
        return TransientApiError(doing, status, reason, message, "The API server is busy")
    return KubernetesApiError(doing, status, reason, message)
