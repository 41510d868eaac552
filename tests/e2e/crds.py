"""Install CustomResourceDefinitions from a folder of YAML files and wait until they are served.

The e2e control plane is Kubernetes 1.20 (built from Debian's source package: nothing newer can be
had where only package registries are reachable). It predates CEL validation rules, so
`x-kubernetes-validations` (1.25+) and a version's `selectableFields` (1.30+) are removed before the
CRDs are applied. Left in, the 1.20 API server would drop them silently (unknown fields of built-in
types are pruned), and `kubectl apply` would reject the file as invalid; stripping them explicitly is
the honest version of the same, and `install_crds` reports what was stripped. Consequence: the e2e
tier cannot test CEL rules (e.g. immutable fields); those need a newer API server (kmock tests or a
newer control plane). Structural schemas, defaults, enums, patterns, printer columns and the status
subresource all work on 1.20.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .kubeapi import JSON, ApiError, RawApi
from .waiting import wait_until

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
UNSUPPORTED_SCHEMA_KEYS = frozenset({"x-kubernetes-validations"})


@dataclass
class InstalledCrds:
    """What `install_crds` did: the CRD names, and the JSON paths of what it had to strip."""

    names: list[str] = field(default_factory=list)
    stripped: list[str] = field(default_factory=list)


def strip_unsupported(node: Any, path: str = "$", stripped: list[str] | None = None) -> Any:
    """A copy of `node` without `x-kubernetes-validations` at any depth; `stripped` collects their paths."""
    if isinstance(node, dict):
        result = {}
        for key, value in node.items():
            if key in UNSUPPORTED_SCHEMA_KEYS:
                if stripped is not None:
                    stripped.append(f"{path}.{key}")
                continue
            result[key] = strip_unsupported(value, f"{path}.{key}", stripped)
        return result
    if isinstance(node, list):
        return [strip_unsupported(item, f"{path}[{index}]", stripped) for index, item in enumerate(node)]
    return node


def prepare_crd(document: JSON, stripped: list[str]) -> JSON:
    """The CRD as the 1.20 API server can take it (see the module docstring)."""
    crd: JSON = strip_unsupported(document, document["metadata"]["name"], stripped)
    name = crd["metadata"]["name"]
    versions = crd.get("spec", {}).get("versions", [])
    stripped += [
        f"{name}.spec.versions[{v.get('name')}].selectableFields" for v in versions if "selectableFields" in v
    ]
    for version in versions:
        version.pop("selectableFields", None)
    return crd


def load_crds(folder: Path) -> list[JSON]:
    """Every CustomResourceDefinition document in `folder/*.yaml`, sorted by file name."""
    documents = []
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            if document.get("kind") != "CustomResourceDefinition":
                raise ValueError(
                    f"{path}: expected only CustomResourceDefinitions, found {document.get('kind')}"
                )
            documents.append(document)
    return documents


def apply_crd(api: RawApi, crd: JSON) -> None:
    """Create the CRD, or replace the existing one (so a session can re-install after regeneration)."""
    try:
        api.create(CRD_PATH, crd)
    except ApiError as error:
        if error.status != 409:
            raise
        name = crd["metadata"]["name"]
        current = api.get(f"{CRD_PATH}/{name}")
        replacement = {
            **crd,
            "metadata": {**crd["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        api.request("PUT", f"{CRD_PATH}/{name}", body=replacement)


def established(api: RawApi, name: str) -> bool:
    conditions = api.get(f"{CRD_PATH}/{name}").get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def install_crds(api: RawApi, folder: Path, timeout: float = 60) -> InstalledCrds:
    """Apply every CRD in `folder/*.yaml` (CEL rules stripped) and wait until each is Established."""
    result = InstalledCrds()
    for document in load_crds(folder):
        crd = prepare_crd(document, result.stripped)
        apply_crd(api, crd)
        result.names.append(crd["metadata"]["name"])
    for name in result.names:
        _wait_established(api, name, timeout)
    return result


def _wait_established(api: RawApi, name: str, timeout: float) -> None:
    wait_until(
        lambda: established(api, name),
        timeout=timeout,
        what=f"CRD {name} Established",
        dump=lambda: f"CRD {name} status: {api.get(f'{CRD_PATH}/{name}').get('status')}",
    )
