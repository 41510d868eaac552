"""A pod's volumes, materialised as host folders the way a kubelet would mount them.

* `persistentVolumeClaim` → one host folder per claim, `<claims_root>/<namespace>/<claim>`, shared by
  every pod that mounts the claim and kept across pods (that is what lets a retried Job resume). The
  claim object must exist (and not be terminating), otherwise the pod stays Pending, as a kubelet
  could not mount it either. Binding to a PersistentVolume is not modelled.
* `emptyDir` → a fresh folder per pod. `hostPath` → the host path itself.
* `configMap`, `secret`, `downwardAPI`, `projected` (with `serviceAccountToken` sources: a bound token
  from the TokenRequest API) → files written once when the pod starts (no live updates).

`service_account_volume` adds the projected volume that Kubernetes >= 1.21 injects into every pod
(token, `ca.crt` from the `kube-root-ca.crt` ConfigMap, `namespace`): the control plane runs without
the 1.20 ServiceAccount admission plugin, so the pod runner does its job.

When the pod runs as a non-root user, writable volumes are chowned (recursively) to that user and the
pod's group (`fsGroup`, else `runAsGroup`, else 0) and the files of the other volumes too: the effect
of `fsGroup` on a real node, simplified to "the pod's user can use its volumes".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kubeapi import JSON, RawApi, is_status
from .podenv import ObjectSource, PodNotReadyError, UnsupportedPodError, field_value

SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_VOLUME = "kube-api-access-e2e"
_DEFAULT_TOKEN_SECONDS = 3607  # what the kubelet asks for


@dataclass(frozen=True)
class Owner:
    """Who must be able to use the pod's volumes (None: the pod runs as root, nothing to change).

    With `fs_group`, `gid` is the pod's fsGroup and volumes get what the kubelet gives them: group
    ownership, group read/write, and the setgid bit on folders so that new files inherit the group.
    """

    uid: int
    gid: int
    fs_group: bool = False


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted at `target` inside the container's mount namespace."""

    source: Path
    target: str
    read_only: bool


@dataclass
class VolumeContext:
    """What materialising a pod's volumes needs; `pod_dir` is the pod's private scratch folder."""

    api: RawApi
    pod: JSON
    pod_dir: Path
    claims_root: Path
    owner: Owner | None

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])


def service_account_volume() -> JSON:
    """The projected token volume that ServiceAccount admission adds on Kubernetes >= 1.21."""
    return {
        "name": SERVICE_ACCOUNT_VOLUME,
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": _DEFAULT_TOKEN_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {
                    "downwardAPI": {
                        "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                    }
                },
            ],
        },
    }


def claim_folder(claims_root: Path, namespace: str, claim: str) -> Path:
    """Where the pod runner keeps the contents of claim `namespace/claim`."""
    return claims_root / namespace / claim


def materialize(context: VolumeContext, volumes: list[JSON]) -> dict[str, Path]:
    """Create every volume on the host; return volume name → host path."""
    paths: dict[str, Path] = {}
    for volume in volumes:
        path = _materialize_one(context, volume)
        if context.owner is not None and path.exists() and not _is_host_path(volume):
            _chown_tree(path, context.owner)
        paths[volume["name"]] = path
    return paths


def container_mounts(container: JSON, volume_paths: dict[str, Path]) -> list[Mount]:
    """The container's `volumeMounts` as host → target bind mounts (`subPath` included), parents first."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volume_paths:
            raise UnsupportedPodError(f"volumeMount {mount['name']!r} names no volume of the pod")
        source = volume_paths[mount["name"]]
        if mount.get("subPath"):
            source = source / mount["subPath"]
            if not source.exists():  # the kubelet creates a missing subPath as a folder
                source.mkdir(parents=True)
        mounts.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly", False))))
    return parents_first(mounts)


def parents_first(mounts: list[Mount]) -> list[Mount]:
    """`mounts` ordered so that a mount comes after every mount whose target contains its target."""
    return sorted(mounts, key=lambda m: m.target.rstrip("/").count("/"))


def _is_host_path(volume: JSON) -> bool:
    return "hostPath" in volume


def _materialize_one(context: VolumeContext, volume: JSON) -> Path:
    name = volume["name"]
    folder = context.pod_dir / "volumes" / name
    source = ObjectSource(context.api, context.namespace)
    if "persistentVolumeClaim" in volume:
        return _claim(context, volume["persistentVolumeClaim"]["claimName"])
    if "emptyDir" in volume:
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if "hostPath" in volume:
        path = Path(volume["hostPath"]["path"])
        if volume["hostPath"].get("type") == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            raise PodNotReadyError("ContainerCreating", f"hostPath {path} does not exist")
        return path
    mode = int(volume.get(_kind_of(volume), {}).get("defaultMode", 0o644))
    files: dict[str, tuple[bytes, int]] = {}
    if "configMap" in volume:
        files = _object_files(source, "ConfigMap", volume["configMap"], mode)
    elif "secret" in volume:
        spec = {**volume["secret"], "name": volume["secret"]["secretName"]}
        files = _object_files(source, "Secret", spec, mode)
    elif "downwardAPI" in volume:
        files = _downward_files(context.pod, volume["downwardAPI"], mode)
    elif "projected" in volume:
        sa_name = context.pod["spec"].get("serviceAccountName") or "default"
        for projection in volume["projected"].get("sources") or []:
            files.update(_projection_files(context, source, projection, mode, sa_name))
    else:
        raise UnsupportedPodError(
            f"volume {name!r}: type {_kind_of(volume)!r} is not supported by the e2e pod runner"
        )
    _write_files(folder, files)
    return folder


def _kind_of(volume: JSON) -> str:
    return next((key for key in volume if key != "name"), "?")


def _claim(context: VolumeContext, claim: str) -> Path:
    try:
        pvc = context.api.get(f"/api/v1/namespaces/{context.namespace}/persistentvolumeclaims/{claim}")
    except Exception as error:
        if is_status(error, 404):
            raise PodNotReadyError(
                "ContainerCreating", f'persistentvolumeclaim "{claim}" not found'
            ) from error
        raise
    if pvc["metadata"].get("deletionTimestamp"):
        raise PodNotReadyError("ContainerCreating", f'persistentvolumeclaim "{claim}" is being deleted')
    folder = claim_folder(context.claims_root, context.namespace, claim)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _object_files(source: ObjectSource, kind: str, spec: JSON, mode: int) -> dict[str, tuple[bytes, int]]:
    data = source.data(kind, spec["name"], optional=bool(spec.get("optional", False)))
    if data is None:
        return {}
    items = spec.get("items")
    if not items:
        return {key: (value, mode) for key, value in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            if spec.get("optional"):
                continue
            raise PodNotReadyError(
                "ContainerCreating", f'configmap/secret "{spec["name"]}": key {item["key"]!r} not found'
            )
        files[item["path"]] = (data[item["key"]], int(item.get("mode", mode)))
    return files


def _downward_files(pod: JSON, spec: JSON, mode: int) -> dict[str, tuple[bytes, int]]:
    files = {}
    for item in spec.get("items") or []:
        if "fieldRef" not in item:
            raise UnsupportedPodError("downwardAPI resourceFieldRef is not supported by the e2e pod runner")
        files[item["path"]] = (
            field_value(pod, item["fieldRef"]["fieldPath"]).encode(),
            int(item.get("mode", mode)),
        )
    return files


def _projection_files(
    context: VolumeContext, source: ObjectSource, projection: JSON, mode: int, sa_name: str
) -> dict[str, tuple[bytes, int]]:
    if "serviceAccountToken" in projection:
        spec = projection["serviceAccountToken"]
        token = request_token(context.api, context.pod, sa_name, spec)
        return {spec["path"]: (token.encode(), mode)}
    if "configMap" in projection:
        return _object_files(source, "ConfigMap", projection["configMap"], mode)
    if "secret" in projection:
        return _object_files(source, "Secret", projection["secret"], mode)
    if "downwardAPI" in projection:
        return _downward_files(context.pod, projection["downwardAPI"], mode)
    raise UnsupportedPodError(f"projected source {sorted(projection)} is not supported by the e2e pod runner")


def request_token(api: RawApi, pod: JSON, service_account: str, spec: JSON) -> str:
    """A token for `service_account`, bound to the pod (invalid once the pod is deleted).

    A pod that names no ServiceAccount gets an unbound token for `default`: the API server refuses to
    bind a token to a pod whose `serviceAccountName` differs, and without ServiceAccount admission
    (see controlplane.py) nothing fills in `default`.
    """
    metadata = pod["metadata"]
    token_spec: dict[str, Any] = {
        # Empty audiences: the API server fills in its own (--api-audiences).
        "audiences": [spec["audience"]] if spec.get("audience") else [],
        "expirationSeconds": int(spec.get("expirationSeconds", _DEFAULT_TOKEN_SECONDS)),
    }
    if pod["spec"].get("serviceAccountName"):
        token_spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": metadata["name"],
            "uid": metadata["uid"],
        }
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": token_spec}
    path = f"/api/v1/namespaces/{metadata['namespace']}/serviceaccounts/{service_account}/token"
    try:
        answer = api.create(path, body)
    except Exception as error:
        if is_status(error, 404):
            raise PodNotReadyError(
                "ContainerCreating", f'serviceaccount "{service_account}" not found (token request failed)'
            ) from error
        raise
    return str(answer["status"]["token"])


def _write_files(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for relative, (content, mode) in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)


def _chown_tree(path: Path, owner: Owner) -> None:
    paths = [path]
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            paths += [Path(root) / entry for entry in [*dirs, *files]]
    for entry in paths:
        if entry.is_symlink():
            continue
        try:
            os.chown(entry, owner.uid, owner.gid)
            if owner.fs_group:
                extra = 0o2070 if entry.is_dir() else 0o060
                entry.chmod(entry.stat().st_mode & 0o7777 | extra)
        except FileNotFoundError:
            continue  # renamed away meanwhile by a pod writing to the shared claim (a temp file, say)
