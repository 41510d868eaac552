"""Object-store failures of the snapshot jobs as the trainer's errors: 75 when a retry can help, else 64.

The message names the URI, what went wrong and the field or flag to fix (never a credential).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from continual_trainer.exitcodes import PermanentError, TrainerError, TransientError
from continual_trainer.objectstore import RetryPolicy, call_with_retries, classify, describe, error_code

T = TypeVar("T")


def store_error(exc: BaseException, uri: str, field: str) -> TrainerError:
    """The error for a failed store call on ``uri``; ``field`` names where the URI is set."""
    code = error_code(exc)
    if code == "NoSuchBucket":
        return PermanentError(
            f"{uri}: the bucket does not exist: create it, or fix {field} (and the objectStore "
            "endpointURL/region); nothing was changed",
            reason="SnapshotBucketNotFound",
        )
    text = describe(exc, uri)
    if classify(exc) == "transient":
        return TransientError(f"{text} (gave up after retries)", reason="SnapshotStoreUnavailable")
    if "denied" in text:
        text += (
            " (snapshots need s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the prefix)"
        )
        return PermanentError(text, reason="SnapshotAccessDenied")
    return PermanentError(text, reason="SnapshotStoreError")


def with_store_errors(op: Callable[[], T], policy: RetryPolicy, uri: str, field: str) -> T:
    """Run ``op`` with bounded retries of transient failures; what remains becomes a :class:`TrainerError`."""
    try:
        return call_with_retries(op, policy, retryable=_retryable)
    except TrainerError:
        raise
    except Exception as exc:
        raise store_error(exc, uri, field) from exc


def _retryable(exc: BaseException) -> bool:
    return not isinstance(exc, TrainerError) and classify(exc) == "transient"
