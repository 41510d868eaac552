"""Names and label values of the objects the operator creates: deterministic, valid, collision-free.

Why deterministic: every object the operator creates is named after what it is for (the run, the batch,
the attempt), never with a random suffix. Creating it is then idempotent: a duplicated event, a retried
handler or a restarted operator computes the same name, and the API server answers 409 AlreadyExists
instead of creating a second Job that would write to the same volume (the run's single-writer rule).

Why hashed when needed: Kubernetes bounds names and label values (a Job's name becomes the value of its
pods' ``job-name`` label, so it must fit in 63 characters) and restricts their characters. Plain truncation
could map two different runs or batches to one name, so a value that had to be shortened or cleaned up
keeps a readable prefix and ends in a short hash of the original parts.

Batches from sources (a file in a folder inbox, an object under an S3 inbox prefix) are named by
:func:`source_batch_name` (always a readable slug plus a hash of the full key, so that two keys never share
a name) or, in a folder inbox, by :func:`plain_source_name` when the file name already is a readable name
(``batch-001.jsonl`` -> ``batch-001``); the caller keeps the plain names injective (see the function).
"""

from __future__ import annotations

import hashlib
import re

from continual_trainer.config import is_valid_batch_id

#: Labels on every object created for a run (selectors); values go through :func:`label_value`.
LABEL_RUN = "continual.dev/run"
LABEL_BATCH = "continual.dev/batch"
LABEL_ATTEMPT = "continual.dev/attempt"
#: The workload kind of a Job (:mod:`continual_operator.workloads`); Jobs of operators before it have none: train.
LABEL_KIND = "continual.dev/kind"
#: What an artifact Job (snapshot, restore, consolidate) is about: ``s<step>``, or a hash of its source.
LABEL_ARTIFACT = "continual.dev/artifact"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
MANAGED_BY = "continual-training-operator"
#: Annotations with the full names (label values may have been shortened).
ANNOTATION_RUN = "continual.dev/run"
ANNOTATION_BATCH = "continual.dev/batch"
#: A coalesced train Job: the batches it trains after its first one, comma-separated, in order.
ANNOTATION_NEXT_BATCHES = "continual.dev/next-batches"
#: A Job's pod template: the trainer config (rendered YAML), read by the container as a file.
ANNOTATION_TRAINER_CONFIG = "continual.dev/trainer-config"
#: A Job whose config is in its pod template (``pod-annotation``), not in a ConfigMap of its name.
ANNOTATION_CONFIG_SOURCE = "continual.dev/trainer-config-source"
CONFIG_IN_POD_ANNOTATION = "pod-annotation"
#: The label Kueue reads to queue a Job.
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

#: DNS-1123 labels: Job names (their pods' ``job-name`` label) and label values.
DNS_LABEL_MAX = 63
#: DNS-1123 subdomains: most other object names.
DNS_SUBDOMAIN_MAX = 253

_HASH_LENGTH = 8
_NOT_DNS_LABEL = re.compile(r"[^a-z0-9-]+")
_NOT_DNS_SUBDOMAIN = re.compile(r"[^a-z0-9.-]+")
_NOT_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")
#: Hex digits of the SHA-256 of a source key in :func:`source_batch_name`: 48 bits, so that even an S3 inbox
#: of a million objects has a chance of about 2e-3 of any two sharing a suffix (callers still check).
SOURCE_HASH_LENGTH = 12
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
#: A DNS-1123 subdomain that is also a trainer batch id (at most 63 characters, no ``_``).
_PLAIN_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:_HASH_LENGTH]


def _bounded(
    base: str, parts: tuple[str, ...], *, limit: int, invalid: re.Pattern[str], suffix: str = ""
) -> str:
    """``base + suffix`` when valid and short enough, else a cleaned prefix, a hash of ``parts``, the suffix."""
    cleaned = invalid.sub("-", base).strip("-._")
    if cleaned == base and len(base) + len(suffix) <= limit:
        return base + suffix
    digest = _digest(*parts)
    head = cleaned[: limit - len(suffix) - len(digest) - 1].rstrip("-._")
    return f"{head}-{digest}{suffix}" if head else f"{digest}{suffix}"


def job_name(run: str, batch: str, attempt: int) -> str:
    """``{run}-{batch}-a{attempt}``, a DNS label (hashed when too long or when names contain dots).

    The trainer's ConfigMap of that attempt has the same name, so that the two are found (and deleted)
    together.
    """
    return _bounded(
        f"{run}-{batch}", (run, batch), limit=DNS_LABEL_MAX, invalid=_NOT_DNS_LABEL, suffix=f"-a{attempt}"
    )


def artifact_job_name(run: str, kind: str, key: str, attempt: int) -> str:
    """``{run}-{kind}-{key}-a{attempt}`` (e.g. ``demo-snapshot-s40-a1``), a DNS label like :func:`job_name`.

    Deterministic like a batch's Job name: a snapshot of the same step, or a restore of the same source,
    is the same Job, so a repeated plan never starts a second one.
    """
    return _bounded(
        f"{run}-{kind}-{key}",
        (run, kind, key),
        limit=DNS_LABEL_MAX,
        invalid=_NOT_DNS_LABEL,
        suffix=f"-a{attempt}",
    )


def trainer_account_name(run: str) -> str:
    """The per-run ServiceAccount, Role and RoleBinding: ``{run}-trainer``."""
    return _bounded(f"{run}-trainer", (run, "trainer"), limit=DNS_SUBDOMAIN_MAX, invalid=_NOT_DNS_SUBDOMAIN)


def claim_name(run: str) -> str:
    """The volume claim created from ``spec.storage.claimTemplate``: ``{run}-data``.

    Deterministic on purpose: a run deleted with its claim retained and then re-created under the same
    name finds its volume (and its checkpoints) again.
    """
    return _bounded(f"{run}-data", (run, "data"), limit=DNS_SUBDOMAIN_MAX, invalid=_NOT_DNS_SUBDOMAIN)


def label_value(value: str) -> str:
    """A label value for a name (at most 63 characters); the full name goes into an annotation as well."""
    return _bounded(value, (value,), limit=DNS_LABEL_MAX, invalid=_NOT_LABEL_VALUE)


def batch_id(batch_name: str) -> str:
    """The trainer's batch id for a TrainingBatch: its name, unless that is not a valid batch id.

    Object names are DNS subdomains (up to 253 characters) while batch ids are at most 63: a longer name
    gets a stable shortened id, so that the trainer's ledger still has exactly one record per batch.
    """
    if is_valid_batch_id(batch_name):
        return batch_name
    return _bounded(batch_name, (batch_name,), limit=DNS_LABEL_MAX, invalid=_NOT_DNS_SUBDOMAIN)


def _strip_extension(segment: str) -> str:
    """``data.2024-01.jsonl`` -> ``data.2024-01``; a name without an extension (or a dotfile) is kept."""
    stem, dot, _ = segment.rpartition(".")
    return stem if dot and stem else segment


def source_batch_name(key: str) -> str:
    """The batch name (TrainingBatch name and trainer batch id) of a source key: slug + hash of the key.

    ``key`` is a file name in a folder inbox or an object key relative to an S3 inbox prefix
    (``2024/01/part-0001.jsonl`` -> ``2024-01-part-0001-<12 hex>``). The slug is the key, lowercased, with
    the last extension dropped and every run of other characters turned into ``-``, cut so that the whole
    name fits in 63 characters; the suffix is the first 12 hex digits of the SHA-256 of the full key.
    Deterministic (the same key always gets the same name) and injective in practice: keys that differ
    only in case, punctuation, extension or beyond the cut still get different suffixes. The result is a
    DNS-1123 label, hence a valid object name, Job-name part and batch id.
    """
    if not key:
        raise ValueError("a source key must not be empty")
    digest = hashlib.sha256(key.encode()).hexdigest()[:SOURCE_HASH_LENGTH]
    head, _, last = key.rstrip("/").rpartition("/")
    readable = f"{head}/{_strip_extension(last)}" if head else _strip_extension(last)
    slug = _NOT_SLUG.sub("-", readable.lower()).strip("-")
    slug = slug[: DNS_LABEL_MAX - SOURCE_HASH_LENGTH - 1].rstrip("-")
    return f"{slug}-{digest}" if slug else digest


def plain_source_name(file_name: str, *, is_file: bool = True) -> str | None:
    """The plain readable batch name of a folder-inbox entry, or ``None`` when it has none.

    A file's name without its last extension (a folder's whole name) is its plain name when that already
    is a valid TrainingBatch name and batch id: lowercase letters, digits, ``-`` and ``.`` between them,
    at most 63 characters (``batch-001.jsonl`` -> ``batch-001``, ``x-data.2024-01.jsonl`` ->
    ``x-data.2024-01``). Nothing is rewritten, so two entries share a plain name only when they differ in
    the extension alone (``b1.jsonl`` and ``b1.txt``, or a folder ``b1``): the folder inbox gives the plain
    name to the entry it saw first and :func:`source_batch_name` to the other (see docs/local.md). Any other
    name (``Batch 001.jsonl``, ``My_Batch.txt``) gets :func:`source_batch_name`.
    """
    stem = _strip_extension(file_name) if is_file else file_name
    return stem if _PLAIN_NAME.match(stem) and is_valid_batch_id(stem) else None


#: A DNS-1123 subdomain: what the API server accepts as the name of a run or a batch.
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def object_name_problem(name: str) -> str | None:
    """Why a cluster would refuse ``name`` as an object name (with a fix), or ``None`` when it is valid."""
    if _DNS_SUBDOMAIN.match(name) and len(name) <= DNS_SUBDOMAIN_MAX:
        return None
    cleaned = re.sub(r"\.{2,}", ".", _NOT_DNS_SUBDOMAIN.sub("-", name.lower()))
    suggestion = cleaned[:DNS_SUBDOMAIN_MAX].strip("-.") or "batch-1"
    return (
        f"{name!r} is not a valid Kubernetes object name (lowercase letters, digits, '-' and '.', starting "
        f"and ending with a letter or digit, at most {DNS_SUBDOMAIN_MAX} characters): rename it, e.g. "
        f"{suggestion!r}"
    )
