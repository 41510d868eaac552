"""Talking to an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, GCS interop) through boto3.

Shared by the trainer's S3 batch source, the operator's S3 inbox and snapshots, so that every part of the
project reaches a store the same way and explains a failure the same way:

* :func:`parse_s3_uri` turns ``s3://bucket/key`` into an :class:`S3Location` (a key that is empty or ends
  with ``/`` is a *prefix*: every object below it);
* :func:`make_client` builds a client with bounded timeouts and botocore's own retries, from an
  :class:`~continual_trainer.config.ObjectStoreClientSpec` (endpoint, region, addressing style, CA bundle);
  credentials come from the standard boto3 chain unless :class:`Credentials` are given explicitly;
* :func:`classify` says whether an error is worth retrying, and :func:`describe` turns it into one sentence
  naming the URI and the fix, never the credentials;
* :func:`call_with_retries` is the bounded back-off around a whole operation (e.g. one object's download),
  on top of botocore's per-request retries.

boto3 is imported lazily: the operator and the config module import this for :func:`parse_s3_uri` alone.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from continual_trainer.config import ObjectStoreClientSpec

T = TypeVar("T")

ErrorClass = Literal["transient", "permanent"]

#: Per-request bounds. A read timeout is per socket read, not per object: a large object streams for as
#: long as bytes keep coming.
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 60.0
#: botocore's attempts per request (the first try included) unless AWS_MAX_ATTEMPTS says otherwise.
DEFAULT_MAX_ATTEMPTS = 5

#: Error codes the store returns that no retry can fix.
_NOT_FOUND = {"NoSuchBucket", "NoSuchKey", "404", "NotFound", "NoSuchVersion"}
_DENIED = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
}
_THROTTLED = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "429",
}
_TRANSIENT_CODES = {
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "500",
    "502",
    "503",
    "504",
}


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key (or a key prefix)."""

    bucket: str
    key: str

    @property
    def is_prefix(self) -> bool:
        """An empty key or one ending with ``/`` names every object below it."""
        return self.key == "" or self.key.endswith("/")

    @property
    def uri(self) -> str:
        """Back to ``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"

    def child(self, key: str) -> S3Location:
        """Another key in the same bucket (e.g. an object listed below this prefix)."""
        return S3Location(self.bucket, key)


_EXPECTED = "expected s3://bucket/key (one object) or s3://bucket/prefix/ (every object below the prefix)"


def parse_s3_uri(uri: str) -> S3Location:
    """Parse ``s3://bucket/key``; a ValueError names the URI and the expected form."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an S3 URI: {_EXPECTED}")
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    # Bucket names per the S3 rules (3-63 of lowercase letters, digits, '.', '-'); stores that allow more
    # (underscores, capitals on old AWS buckets) are rare enough to refuse with a clear message.
    if not 3 <= len(bucket) <= 63 or not all(c.islower() or c.isdigit() or c in ".-" for c in bucket):
        raise ValueError(
            f"{uri!r} has no valid bucket name ({bucket!r}: 3 to 63 lowercase letters, digits, '.' or '-'): "
            f"{_EXPECTED}"
        )
    if key.startswith("/") or "//" in key:
        raise ValueError(f"{uri!r} has an empty path segment ('//'): {_EXPECTED}")
    if any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"{uri!r} has a '.' or '..' segment, which stores treat inconsistently: {_EXPECTED}")
    return S3Location(bucket, key)


@dataclass(frozen=True)
class Credentials:
    """Explicit static credentials (most callers use the boto3 chain instead). The repr hides them."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        token = ", session_token=<hidden>" if self.session_token else ""
        return f"Credentials(access_key_id=<hidden>, secret_access_key=<hidden>{token})"

    __str__ = __repr__

    def secrets(self) -> list[str]:
        """The values that must never appear in a message."""
        return [v for v in (self.access_key_id, self.secret_access_key, self.session_token) if v]


def make_client(spec: ObjectStoreClientSpec | None, *, credentials: Credentials | None = None) -> Any:
    """A boto3 S3 client for the spec (None: AWS S3 with every boto3 default).

    Timeouts are bounded and botocore retries each request (``standard`` mode: exponential back-off with
    jitter on throttling, 5xx and connection errors). ``AWS_MAX_ATTEMPTS`` and ``AWS_RETRY_MODE`` in the
    environment override the attempts and mode, as they do for every boto3 program.
    """
    import boto3
    from botocore.config import Config

    addressing = spec.addressing_style if spec is not None else "auto"
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={
            "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
            "total_max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
        },
        s3={"addressing_style": addressing},
        # Checksums on every request (botocore >= 1.36's default) are not understood by every S3-compatible
        # store; ask for them only where an operation requires them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    kwargs: dict[str, Any] = {"config": config}
    if spec is not None:
        if spec.endpoint_url:
            kwargs["endpoint_url"] = spec.endpoint_url
        if spec.region:
            kwargs["region_name"] = spec.region
        if spec.ca_bundle_path:
            kwargs["verify"] = spec.ca_bundle_path
    if credentials is not None:
        kwargs["aws_access_key_id"] = credentials.access_key_id
        kwargs["aws_secret_access_key"] = credentials.secret_access_key
        kwargs["aws_session_token"] = credentials.session_token
    session = boto3.session.Session()
    if "region_name" not in kwargs and session.region_name is None:
        # S3 works from any region for path requests to custom endpoints; without one boto3 would refuse.
        kwargs["region_name"] = "us-east-1"
    return session.client("s3", **kwargs)


def error_code(exc: BaseException) -> str | None:
    """The store's error code of a ClientError (``NoSuchKey``, ``403``, ...), else None."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    if code:
        return str(code)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(status) if status else None


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    return None


def classify(exc: BaseException) -> ErrorClass:
    """Whether retrying later can help.

    Transient: timeouts, dropped connections, an endpoint that is down, throttling, 5xx. Permanent: a
    missing bucket or key, refused credentials, a bad TLS certificate, no credentials at all, other 4xx.
    Anything unknown that is not a client error (an OSError while writing, say) is transient, so that it
    gets retried a bounded number of times rather than failing a batch for good.
    """
    from botocore import exceptions as bex

    if isinstance(exc, bex.SSLError | bex.NoCredentialsError | bex.PartialCredentialsError):
        return "permanent"
    if isinstance(exc, bex.ParamValidationError):
        return "permanent"
    if isinstance(exc, bex.ClientError):
        code = error_code(exc) or ""
        status = _http_status(exc) or 0
        if code in _THROTTLED or code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return "transient"
        return "permanent"
    return "transient"


def describe(exc: BaseException, uri: str, *, secrets: list[str] | None = None) -> str:
    """One sentence naming the URI, what went wrong and the fix; credentials are scrubbed out.

    ``secrets`` are extra values to scrub (explicit :class:`Credentials`); the AWS credential variables of
    the environment are always scrubbed.
    """
    from botocore import exceptions as bex

    code = error_code(exc) if isinstance(exc, bex.ClientError) else None
    if isinstance(exc, bex.ClientError):
        if code == "NoSuchBucket":
            text = f"{uri}: the bucket does not exist: check the bucket name in the URI and the objectStore endpointURL/region"
        elif code in _NOT_FOUND:
            text = f"{uri}: no such object (or the bucket does not exist): check the key in the URI; a batch's objects must exist until the batch has trained"
        elif code in _DENIED:
            text = f"{uri}: access denied ({code}): check the credentials (spec.objectStore.credentialsSecretRef, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and that they may read this bucket"
        elif code in _THROTTLED or _http_status(exc) == 429:
            text = f"{uri}: the store is throttling requests ({code}); retried with back-off"
        else:
            status = _http_status(exc)
            text = f"{uri}: the store answered {code or 'an error'} (HTTP {status})"
            if classify(exc) == "transient":
                text += "; a server-side error, retried with back-off"
            else:
                text += ": check the URI and the objectStore settings"
    elif isinstance(exc, bex.SSLError):
        text = f"{uri}: TLS verification of the endpoint failed: set spec.objectStore.caBundleSecretRef (caBundlePath) to the CA that signed the endpoint's certificate, or check endpointURL"
    elif isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        text = f"{uri}: no credentials found: set spec.objectStore.credentialsSecretRef (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or give the pod an IAM role"
    elif isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError):
        text = f"{uri}: the endpoint cannot be reached ({_exc_line(exc)}): check spec.objectStore.endpointURL and the network; retried with back-off"
    elif isinstance(exc, bex.ReadTimeoutError | bex.ConnectionClosedError | bex.IncompleteReadError):
        text = f"{uri}: the connection to the store broke off ({type(exc).__name__}); retried with back-off"
    else:
        text = f"{uri}: {type(exc).__name__}: {_exc_line(exc)}"
    return scrub(text, secrets)


def _exc_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_ENV_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """Replace every known credential value in the text by ``<hidden>``."""
    values = [os.environ.get(name, "") for name in _ENV_SECRETS] + list(secrets or [])
    for value in sorted({v for v in values if len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, "<hidden>")
    return text


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off around a whole operation (botocore already retries each request)."""

    attempts: int = 3
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure (full jitter, so that many clients spread out)."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def call_with_retries(
    op: Callable[[], T],
    policy: RetryPolicy,
    *,
    retryable: Callable[[BaseException], bool] = lambda exc: classify(exc) == "transient",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``op``; retry it while it fails retryably, at most ``policy.attempts`` times in all."""
    failures = 0
    while True:
        try:
            return op()
        except Exception as exc:
            failures += 1
            if failures >= policy.attempts or not retryable(exc):
                raise
            sleep(policy.delay(failures))
