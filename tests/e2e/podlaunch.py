"""From a pod's spec to the processes to start: volumes, environment, user, mounts, command.

`plan_launches` does for every container of a pod what a kubelet and a container runtime do before
starting it: materialise the pod's volumes (`volumes.py`), add the ServiceAccount token volume the way
ServiceAccount admission would on Kubernetes >= 1.21, resolve the environment (`podenv.py`), decide the
user from the security contexts, map the command to a local one (the runner's command map), and
collect the bind mounts, including the termination message file. It raises `PodNotReadyError` while
something the pod refers to is missing, which keeps the pod Pending.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kubeapi import JSON, ApiError, RawApi
from .podenv import ObjectSource, PodNotReadyError, UnsupportedPodError, container_argv, container_env
from .sandbox import Identity, Launch, stage_dir_for
from .volumes import (
    SERVICE_ACCOUNT_MOUNT,
    SERVICE_ACCOUNT_VOLUME,
    Mount,
    Owner,
    VolumeContext,
    container_mounts,
    materialize,
    parents_first,
    service_account_volume,
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


@dataclass(frozen=True)
class ContainerCommand:
    """What the pod asks to run, after `$(VAR)` expansion; input of the runner's command map."""

    namespace: str
    pod: str
    container: str
    image: str
    command: list[str]
    args: list[str]

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


CommandMap = Callable[[ContainerCommand], Sequence[str]]


#: Registries under this top-level domain cannot exist (RFC 2606): their images fail to pull.
UNPULLABLE_DOMAIN = ".invalid"


def image_pull_error(image: str) -> PodNotReadyError:
    """What a kubelet reports for an image whose registry does not resolve (containerd's wording)."""
    registry = image.split("/", 1)[0]
    return PodNotReadyError(
        "ErrImagePull",
        f'rpc error: code = Unknown desc = failed to pull and unpack image "{image}": failed to resolve '
        f'reference "{image}": failed to do request: dial tcp: lookup {registry}: no such host',
    )


def local_command(request: ContainerCommand) -> list[str]:
    """The default command map: run `command + args` as is (found on PATH inside the pod).

    An image from a registry under :data:`UNPULLABLE_DOMAIN` (``registry.invalid/trainer:1``) is one a
    node could not pull: the pod stays Pending with ``ErrImagePull``, as on a node. A command map of
    one's own raises :func:`image_pull_error` for whatever images it does not know.
    """
    registry = request.image.split("/", 1)[0] if "/" in request.image else ""
    if registry.endswith(UNPULLABLE_DOMAIN):
        raise image_pull_error(request.image)
    if not request.command:
        raise UnsupportedPodError(
            f"container {request.container!r} has no command (the image entrypoint of {request.image!r} "
            "is unknown to the pod runner): pass a command_map that supplies one"
        )
    return request.argv


@dataclass(frozen=True)
class LaunchSettings:
    """How the runner turns containers into processes (see `PodRunner` for each knob)."""

    api: RawApi
    claims_root: Path
    service_host: str
    service_port: int
    command_map: CommandMap
    image_env: Mapping[str, str]
    path_prefix: tuple[str, ...]
    exposed_paths: tuple[Path, ...]
    image_uid: int | None


@dataclass(frozen=True)
class PlannedContainer:
    """One container, ready to start: its launch, and where its termination message will be."""

    launch: Launch
    termination_file: Path
    fallback_to_logs: bool


def plan_launches(
    settings: LaunchSettings, pod: JSON, pod_dir: Path, containers: list[JSON]
) -> list[PlannedContainer]:
    """Prepare `containers` (init containers first, as the pod lists them) of `pod` for launch."""
    volumes = list(pod["spec"].get("volumes") or [])
    token = automount(settings.api, pod)
    if token:
        volumes.append(service_account_volume())
    identities = [identity(pod, container, settings.image_uid) for container in containers]
    owner = volume_owner(pod, identities)
    volume_paths = materialize(
        VolumeContext(settings.api, pod, pod_dir, settings.claims_root, owner), volumes
    )
    source = ObjectSource(settings.api, pod["metadata"]["namespace"])
    planned = []
    for container, user in zip(containers, identities, strict=True):
        env = container_env(source, pod, container, base_env(settings, pod, user))
        command, args = container_argv(container, env)
        request = ContainerCommand(
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            container["name"],
            container.get("image", ""),
            command,
            args,
        )
        argv = list(settings.command_map(request))
        if not argv:
            raise UnsupportedPodError(f"the command map returned no argv for {request}")
        mounts = container_mounts(container, volume_paths)
        if token and not any(m.target.rstrip("/") == SERVICE_ACCOUNT_MOUNT for m in mounts):
            mounts.append(Mount(volume_paths[SERVICE_ACCOUNT_VOLUME], SERVICE_ACCOUNT_MOUNT, read_only=True))
        termination_file = _termination_file(pod_dir, container["name"], user)
        target = container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH
        mounts = parents_first([*mounts, Mount(termination_file, target, read_only=False)])
        launch = Launch(
            argv=argv,
            env=env,
            mounts=mounts,
            working_dir=container.get("workingDir") or "/",
            identity=user,
            stage_dir=pod_dir / "stage" / container["name"],
            exposed_paths=settings.exposed_paths,
        )
        launch = dataclasses.replace(
            launch, stage_dir=stage_dir_for(launch.stage_dir, mounts, launch.blockers())
        )
        planned.append(
            PlannedContainer(
                launch, termination_file, container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
            )
        )
    return planned


def _termination_file(pod_dir: Path, container: str, user: Identity) -> Path:
    path = pod_dir / "termination" / container
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    if not user.is_root:
        os.chown(path, user.uid or 0, user.gid or 0)
    return path


def automount(api: RawApi, pod: JSON) -> bool:
    """Whether the pod gets a ServiceAccount token, as ServiceAccount admission would decide."""
    spec = pod["spec"]
    if spec.get("automountServiceAccountToken") is not None:
        return bool(spec["automountServiceAccountToken"])
    name = spec.get("serviceAccountName") or "default"
    try:
        account = api.get(f"/api/v1/namespaces/{pod['metadata']['namespace']}/serviceaccounts/{name}")
    except ApiError as error:
        if error.status == 404:
            raise PodNotReadyError("ContainerCreating", f'serviceaccount "{name}" not found') from error
        raise
    return account.get("automountServiceAccountToken") is not False


def identity(pod: JSON, container: JSON, image_uid: int | None) -> Identity:
    """The user, group and groups the container runs as (container securityContext over the pod's).

    Without `runAsUser` the image's user applies (`image_uid`; None: root), and `runAsNonRoot` then
    refuses to start, as the kubelet does for an image that runs as root.
    """
    pod_context = pod["spec"].get("securityContext") or {}
    context = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return context[key] if context.get(key) is not None else pod_context.get(key)

    uid = pick("runAsUser")
    uid = image_uid if uid is None else uid
    if pick("runAsNonRoot") and not uid:
        raise PodNotReadyError(
            "CreateContainerConfigError", "container has runAsNonRoot and image will run as root"
        )
    gid = pick("runAsGroup")
    groups = [pod_context["fsGroup"]] if pod_context.get("fsGroup") is not None else []
    groups += list(pod_context.get("supplementalGroups") or [])
    return Identity(
        uid=int(uid) if uid is not None else None,
        gid=int(gid) if gid is not None else (0 if uid else None),
        groups=tuple(int(group) for group in groups),
        no_new_privs=context.get("allowPrivilegeEscalation") is False,
    )


def volume_owner(pod: JSON, identities: Sequence[Identity]) -> Owner | None:
    """Who should own the pod's writable volumes: its first non-root user, group fsGroup if set."""
    for user in identities:
        if not user.is_root:
            fs_group = (pod["spec"].get("securityContext") or {}).get("fsGroup")
            if fs_group is not None:
                return Owner(uid=user.uid or 0, gid=int(fs_group), fs_group=True)
            return Owner(uid=user.uid or 0, gid=user.gid or 0)
    return None


def base_env(settings: LaunchSettings, pod: JSON, user: Identity) -> dict[str, str]:
    """The environment before the container's own: PATH, HOSTNAME, HOME, image env, service env."""
    host, port = settings.service_host, str(settings.service_port)
    return {
        "PATH": ":".join([*settings.path_prefix, DEFAULT_PATH]),
        "HOSTNAME": pod["metadata"]["name"],
        "HOME": "/root" if user.is_root else "/",
        **settings.image_env,
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port,
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
    }
