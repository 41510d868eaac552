"""A container's environment, resolved the way a kubelet does it.

Order and precedence follow Kubernetes: `envFrom` sources first (in order, with their `prefix`), then
`env` entries (which override them); `value`s may reference earlier variables as `$(NAME)` (`$$`
escapes a `$`), and `command`/`args` are expanded the same way. A missing Secret, ConfigMap or key that
is not `optional` is a `PodNotReadyError` with the kubelet's reason, `CreateContainerConfigError`: the
pod stays Pending until the object appears, as on a real node.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from .kubeapi import JSON, RawApi, is_status

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class PodNotReadyError(Exception):
    """The pod cannot start yet; `reason` is what a kubelet would show as the waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class UnsupportedPodError(Exception):
    """The pod uses a feature the pod runner does not implement (a harness limit, not a pod error)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, undefined ones left as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def field_value(pod: JSON, field_path: str) -> str:
    """The value of a downward-API `fieldRef` (the paths Kubernetes supports for env and volumes)."""
    metadata, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple: dict[str, Any] = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.podIP": status.get("podIP", "127.0.0.1"),
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    if field_path in ("metadata.labels", "metadata.annotations"):
        values = metadata.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    match = _FIELD_LABEL.match(field_path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise UnsupportedPodError(f"fieldRef {field_path!r} is not supported by the e2e pod runner")


class ObjectSource:
    """Reads the Secrets and ConfigMaps a pod refers to, decoding Secret values."""

    def __init__(self, api: RawApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def data(self, kind: str, name: str, *, optional: bool) -> dict[str, bytes] | None:
        """All keys of ConfigMap/Secret `name` as bytes; None if it is missing and `optional`."""
        plural = {"ConfigMap": "configmaps", "Secret": "secrets"}[kind]
        try:
            obj = self.api.get(f"/api/v1/namespaces/{self.namespace}/{plural}/{name}")
        except Exception as error:
            if not is_status(error, 404):
                raise
            if optional:
                return None
            raise PodNotReadyError(
                "CreateContainerConfigError", f'{kind.lower()} "{name}" not found'
            ) from error
        if kind == "Secret":
            return {key: base64.b64decode(value) for key, value in (obj.get("data") or {}).items()}
        result = {key: value.encode() for key, value in (obj.get("data") or {}).items()}
        result.update({key: base64.b64decode(value) for key, value in (obj.get("binaryData") or {}).items()})
        return result

    def key(self, kind: str, ref: JSON) -> str | None:
        """The value of a `secretKeyRef` / `configMapKeyRef`; None when optional and missing."""
        optional = bool(ref.get("optional", False))
        data = self.data(kind, ref["name"], optional=optional)
        if data is None or ref["key"] not in data:
            if optional:
                return None
            raise PodNotReadyError(
                "CreateContainerConfigError",
                f"couldn't find key {ref['key']} in {kind} {self.namespace}/{ref['name']}",
            )
        return data[ref["key"]].decode()


def container_env(
    source: ObjectSource, pod: JSON, container: JSON, base: Mapping[str, str]
) -> dict[str, str]:
    """The environment of `container`: `base` (service variables, PATH...), then envFrom, then env."""
    env = dict(base)
    for entry in container.get("envFrom") or []:
        prefix = entry.get("prefix", "")
        for kind, ref_key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = entry.get(ref_key)
            if ref is None:
                continue
            data = source.data(kind, ref["name"], optional=bool(ref.get("optional", False))) or {}
            for key, raw in data.items():
                if _ENV_NAME.match(prefix + key):  # invalid names are skipped, as the kubelet does
                    env[prefix + key] = raw.decode()
    for entry in container.get("env") or []:
        value = _env_value(source, pod, entry, env)
        if value is not None:
            env[entry["name"]] = value
    return env


def _env_value(source: ObjectSource, pod: JSON, entry: JSON, env: Mapping[str, str]) -> str | None:
    value_from = entry.get("valueFrom")
    if value_from is None:
        return expand(entry.get("value", ""), env)
    if "secretKeyRef" in value_from:
        return source.key("Secret", value_from["secretKeyRef"])
    if "configMapKeyRef" in value_from:
        return source.key("ConfigMap", value_from["configMapKeyRef"])
    if "fieldRef" in value_from:
        return field_value(pod, value_from["fieldRef"]["fieldPath"])
    raise UnsupportedPodError(
        f"env {entry['name']}: valueFrom {sorted(value_from)} is not supported by the e2e pod runner"
    )


def container_argv(container: JSON, env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The container's `command` and `args` with `$(VAR)` references expanded."""
    command = [expand(part, env) for part in container.get("command") or []]
    args = [expand(part, env) for part in container.get("args") or []]
    return command, args
