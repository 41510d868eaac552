"""Start a container's command as a local process that sees its volumes at their real mount paths.

The process gets a private mount namespace (`unshare --mount --propagation private`), in which a short
shell script bind-mounts each volume at its `mountPath` (read-only where asked), changes to the
working directory and `exec`s the command, through `setpriv` when the container runs as another user.
The exec chain (unshare → sh → setpriv → command) keeps one PID, so the runner's signals reach the
command itself; the process leads its own session, so the runner can signal its children too.

Three details of running on a shared host rather than in an image:

* Mount points must exist. Top-level ones (e.g. `/etc/continual`, `/dev/termination-log`) are created
  on the host by `MountPoints` and removed again when the runner stops; nested ones (a mount inside
  another volume) are created inside the namespace, inside the outer volume, as a container runtime
  does.
* A mount can hide the source of another (an emptyDir at /tmp hides a claim folder under /tmp/pytest-*),
  so every source is first bind-mounted into a staging folder, while all are visible, and then moved
  to its target (parents first). The staging folder is the container's scratch folder, or, if a
  target would cover that, a folder under `/.e2e-stage` (which nothing can cover but `/`).
* A non-root process must reach the Python interpreter, which may live under a folder it cannot
  traverse (e.g. pyenv under /root, mode 0700). For each such "exposed" path the script hides the
  blocking folder behind an empty tmpfs and bind-mounts the exposed path back into it: only inside the
  namespace, and just like an image whose interpreter is world-readable while /root is not.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .lifetime import die_with_parent
from .volumes import Mount


@dataclass(frozen=True)
class Identity:
    """The user a container runs as; None fields mean "as the runner" (root)."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False

    @property
    def is_root(self) -> bool:
        return not self.uid


FALLBACK_STAGE = Path("/.e2e-stage")


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one container process.

    `stage_dir` is a scratch folder for staging mounts; use `stage_dir_for` to pick one that no mount
    covers. `mounts` must be ordered parents first (`volumes.parents_first`).
    """

    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    working_dir: str
    identity: Identity
    stage_dir: Path
    exposed_paths: tuple[Path, ...] = field(default=())

    def blockers(self) -> list[Path]:
        """The folders the interpreter-exposing step hides behind a tmpfs (none when running as root)."""
        if self.identity.is_root:
            return []
        return [b for b in {blocking_ancestor(path) for path in self.exposed_paths} if b is not None]


def _covers(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def stage_dir_for(preferred: Path, mounts: list[Mount], hidden: list[Path]) -> Path:
    """`preferred` unless a mount target or a hidden folder covers it; then a folder under /.e2e-stage."""
    covering = [Path(m.target) for m in mounts] + hidden
    if not any(_covers(path, preferred) for path in covering):
        return preferred
    return FALLBACK_STAGE / hashlib.sha256(str(preferred).encode()).hexdigest()[:16]


def blocking_ancestor(path: Path) -> Path | None:
    """The topmost ancestor of `path` that others cannot traverse (no o+x), if any."""
    for ancestor in reversed(path.parents):
        if ancestor == Path("/"):
            continue
        if not ancestor.stat().st_mode & 0o001:
            return ancestor
    return None


def _expose_lines(launch: Launch) -> list[str]:
    """Shell lines that make `launch.exposed_paths` reachable for a non-root user (see module doc)."""
    if launch.identity.is_root:
        return []
    by_blocker: dict[Path, list[Path]] = {}
    for path in launch.exposed_paths:
        blocker = blocking_ancestor(path)
        if blocker is not None:
            by_blocker.setdefault(blocker, []).append(path)
    lines = []
    for index, (blocker, paths) in enumerate(by_blocker.items()):
        staged = []
        for number, path in enumerate(paths):
            stage = launch.stage_dir / f"expose-{index}-{number}"
            lines += [f"mkdir -p {_q(stage)}", f"mount --bind {_q(path)} {_q(stage)}"]
            staged.append((stage, path))
        lines.append(f"mount -t tmpfs -o mode=0755 e2e-shadow {_q(blocker)}")
        for stage, path in staged:
            lines += [f"mkdir -p {_q(path)}", f"mount --move {_q(stage)} {_q(path)}"]
    return lines


def _stage_lines(launch: Launch) -> list[str]:
    """Bind every volume source into the staging folder, while no mount hides any of them."""
    lines = []
    for index, mount in enumerate(launch.mounts):
        stage = _q(launch.stage_dir / f"mount-{index}")
        lines.append(f"mkdir -p {stage}" if mount.source.is_dir() else f"[ -e {stage} ] || : > {stage}")
        lines.append(f"mount --bind {_q(mount.source)} {stage}")
    return lines


def _mount_lines(launch: Launch) -> list[str]:
    """Move each staged source to its target (creating the mount point inside the namespace)."""
    lines = []
    for index, mount in enumerate(launch.mounts):
        target = _q(mount.target)
        if mount.source.is_dir():
            lines.append(f"mkdir -p {target}")
        else:
            lines.append(f"mkdir -p {_q(Path(mount.target).parent)}; [ -e {target} ] || : > {target}")
        lines.append(f"mount --move {_q(launch.stage_dir / f'mount-{index}')} {target}")
        if mount.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    return lines


def _covered_exposed(launch: Launch) -> list[Path]:
    """Exposed paths that a volume would hide (an emptyDir at /tmp over a checkout or venv under /tmp)."""
    targets = [Path(m.target) for m in launch.mounts]
    return [p for p in launch.exposed_paths if any(_covers(t, p) for t in targets)]


def _restage_lines(launch: Launch) -> list[str]:
    """Before the mounts: bind the exposed paths a volume will cover into the staging folder."""
    lines = []
    for index, path in enumerate(_covered_exposed(launch)):
        stage = _q(launch.stage_dir / f"reexpose-{index}")
        lines += [f"mkdir -p {stage}", f"mount --bind {_q(path)} {stage}"]
    return lines


def _reexpose_lines(launch: Launch) -> list[str]:
    """After the mounts: put the covered exposed paths back (the interpreter and the project's sources
    are part of the "image"; a scratch volume over their host folder must not hide them)."""
    lines = []
    for index, path in enumerate(_covered_exposed(launch)):
        lines += [
            f"mkdir -p {_q(path)}",
            f"mount --move {_q(launch.stage_dir / f'reexpose-{index}')} {_q(path)}",
        ]
    return lines


def _q(path: Path | str) -> str:
    return shlex.quote(str(path))


def launch_script(launch: Launch) -> str:
    """The shell script run inside the new mount namespace; it ends by exec'ing the command."""
    lines = [
        "set -eu",
        "umask 022",
        f"mkdir -p {_q(launch.stage_dir)}",
        *_stage_lines(launch),
        *_restage_lines(launch),
        *_expose_lines(launch),
        *_mount_lines(launch),
        *_reexpose_lines(launch),
        f"cd {_q(launch.working_dir)}",
    ]
    exec_argv = list(launch.argv)
    identity = launch.identity
    if not identity.is_root:
        # --pdeathsig: the credential change clears the parent-death signal (lifetime.py); set it again.
        setpriv = ["setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid or 0}", "--pdeathsig=KILL"]
        groups = ",".join(str(group) for group in identity.groups)
        setpriv.append(f"--groups={groups}" if groups else "--clear-groups")
        if identity.no_new_privs:
            setpriv.append("--no-new-privs")
        exec_argv = [*setpriv, "--", *exec_argv]
    elif identity.no_new_privs:
        exec_argv = ["setpriv", "--no-new-privs", "--", *exec_argv]
    lines.append("exec " + shlex.join(exec_argv))
    return "\n".join(lines) + "\n"


def spawn(launch: Launch, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start the container process; stdout and stderr both go to `log` (like `kubectl logs`)."""
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", launch_script(launch)],
        env=launch.env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - async-signal-safe: see lifetime.py
    )


def probe() -> str | None:
    """None if this machine can run pods (root, unshare and bind mounts work), else why not."""
    if os.geteuid() != 0:
        return "the e2e pod runner must run as root (it bind-mounts volumes in a private mount namespace)"
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "mount --bind / /mnt"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unshare/mount are unusable: {error}"
    if result.returncode != 0:
        return f"unshare --mount + mount --bind failed: {result.stderr.strip()}"
    return None


#: Every live pod runner on the machine holds a shared lock on this file; only one that can take it
#: exclusively (no other runner, of any test session, is alive) removes host mount points.
HOST_MOUNTS_LOCK = Path("/tmp/continual-e2e-mountpoints.lock")


class MountPoints:
    """Creates top-level mount points on the host and removes the ones it created (if still empty).

    Several test sessions may run pod runners on one machine at once (two checkouts, two developers). Since
    Linux 3.18, removing a folder that is a mount point in another mount namespace detaches that mount
    there: one session's clean-up would pull ``/data`` out from under the other's running trainer. So the
    folders are removed only by a runner that finds itself alone (see :data:`HOST_MOUNTS_LOCK`); otherwise
    they stay, empty, for the last one to leave.
    """

    def __init__(self) -> None:
        self._created: list[Path] = []
        self._fallback_created = False
        self._lock = threading.Lock()
        self._alive: IO[str] | None = HOST_MOUNTS_LOCK.open("a")
        fcntl.flock(self._alive, fcntl.LOCK_SH)

    def _alone(self) -> bool:
        """Whether no other live runner holds the host lock (then this one leaves it: it is done)."""
        if self._alive is None:
            return False
        try:
            fcntl.flock(self._alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _leave(self) -> None:
        if self._alive is not None:
            self._alive.close()  # releases the lock
            self._alive = None

    def ensure(self, launch: Launch) -> None:
        """Create the launch's top-level mount points and its staging folder on the host."""
        with self._lock:
            if FALLBACK_STAGE in launch.stage_dir.parents and not FALLBACK_STAGE.exists():
                FALLBACK_STAGE.mkdir()
                self._fallback_created = True
            launch.stage_dir.mkdir(parents=True, exist_ok=True)
            self._ensure_targets(launch.mounts)

    def _ensure_targets(self, mounts: list[Mount]) -> None:
        targets = [Path(mount.target) for mount in mounts]
        for mount, target in zip(mounts, targets, strict=True):
            if any(other != target and other in target.parents for other in targets):
                continue  # nested: created inside the outer volume by the launch script
            self._ensure(target, is_dir=mount.source.is_dir())

    def _ensure(self, target: Path, *, is_dir: bool) -> None:
        missing = [parent for parent in reversed(target.parents) if not parent.exists()]
        for parent in missing:
            parent.mkdir()
            self._created.append(parent)
        if target.exists():
            return
        if is_dir:
            target.mkdir()
        else:
            target.touch()
        self._created.append(target)

    def cleanup(self) -> None:
        """Remove what `ensure` created, deepest first; keep anything that is not empty.

        Call it only once no container process runs: removing a folder that is a mount point in a
        live mount namespace would unmount it there.
        """
        if not self._alone():
            self._created.clear()  # another session's runner may have pods on these mount points
            self._leave()
            return
        if self._fallback_created:
            shutil.rmtree(FALLBACK_STAGE, ignore_errors=True)
            self._fallback_created = False
        for path in reversed(self._created):
            try:
                if path.is_dir():
                    path.rmdir()
                elif path.stat().st_size == 0:
                    path.unlink()
            except OSError:
                continue
        self._created.clear()
        self._leave()
