"""Generate the CustomResourceDefinitions from the API models.

    python -m continual_operator.crdgen --out crds/            # writes crds/ and the chart's copy
    python -m continual_operator.crdgen --out crds/ --check    # exit 1 when a committed file is stale

The models in :mod:`continual_operator.api` are the single source of truth; ``crds/*.yaml`` is their
output, committed so that ``kubectl apply -f crds/`` works from a checkout, and a test fails when the two
drift apart (the same check as ``--check``, for a pre-commit hook or CI).

CEL: the immutability of ``spec.baseModel``, ``spec.lora`` and ``spec.storage`` is expressed as
``x-kubernetes-validations`` transition rules (``self == oldSelf``), which API servers older than 1.25 do not
know: depending on the client they drop the field silently or a validating ``kubectl`` rejects the CRD as
having an unknown field. :func:`crd_manifests` can therefore leave the rules out (``include_cel=False``);
the committed files include them, and the end-to-end tests on a 1.20 control plane apply the variant
without. The only difference between the two is the ``x-kubernetes-validations`` keys: the length bounds
that keep the rules' estimated cost within the API server's budget are present in both, so that a
manifest accepted on one is accepted on the other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from continual_operator.api import GROUP, RESOURCES, VERSION, ResourceInfo
from continual_operator.schema import bound, describe, strip_defaults, structural_schema

DEFAULT_CHART_CRDS = Path("charts/continual-training/crds")
HEADER = "# Generated from continual_operator.api by `python -m continual_operator.crdgen`: do not edit.\n"
#: Bounds inside immutable fields (see :func:`continual_operator.schema.bound`): generous for paths and
#: names, small enough for the CEL cost estimate.
IMMUTABLE_MAX_LENGTH = 4096
IMMUTABLE_MAX_ITEMS = 256

_KEY_ORDER = (
    "type",
    "format",
    "nullable",
    "description",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "required",
    "oneOf",
    "properties",
    "items",
    "additionalProperties",
)


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    """Keys in a stable, readable order (type and description first, nested schemas last)."""

    def rank(key: str) -> tuple[int, str]:
        return (_KEY_ORDER.index(key) if key in _KEY_ORDER else len(_KEY_ORDER), key)

    out: dict[str, Any] = {}
    for key in sorted(schema, key=rank):
        value = schema[key]
        if key == "properties":
            value = {name: _ordered(prop) for name, prop in value.items()}
        elif key in {"items", "additionalProperties"} and isinstance(value, dict):
            value = _ordered(value)
        out[key] = value
    return out


def openapi_schema(info: ResourceInfo, *, include_cel: bool = True) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one kind."""
    spec = structural_schema(info.spec_model)
    for field in info.immutable:
        node = bound(
            spec["properties"][field.name], max_length=IMMUTABLE_MAX_LENGTH, max_items=IMMUTABLE_MAX_ITEMS
        )
        if include_cel:
            node["x-kubernetes-validations"] = [{"rule": "self == oldSelf", "message": field.message}]
        spec["properties"][field.name] = node
    status = strip_defaults(structural_schema(info.status_model))
    root = {
        "type": "object",
        "description": describe(info.model.__doc__ or info.kind),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "The API version: continual.dev/v1alpha1."},
            "kind": {"type": "string", "description": f"The kind: {info.kind}."},
            # The API server refuses anything but {type: object} here (name and generateName aside).
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return _ordered(root)


def crd_manifest(info: ResourceInfo, *, include_cel: bool = True) -> dict[str, Any]:
    """The ``apiextensions.k8s.io/v1`` CustomResourceDefinition of one kind."""
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            "description": c.description,
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in info.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "continual-training"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(info, include_cel=include_cel)},
                }
            ],
        },
    }


def crd_manifests(*, include_cel: bool = True) -> list[dict[str, Any]]:
    """Every CRD the operator needs, in install order."""
    return [crd_manifest(info, include_cel=include_cel) for info in RESOURCES]


def file_name(info: ResourceInfo) -> str:
    """``continual.dev_<plural>.yaml`` (the controller-gen convention)."""
    return f"{GROUP}_{info.plural}.yaml"


def render(manifest: dict[str, Any]) -> str:
    """Deterministic YAML text of one manifest, with the do-not-edit header."""
    return HEADER + yaml.safe_dump(manifest, sort_keys=False, width=110, allow_unicode=True)


def rendered_files(*, include_cel: bool = True) -> dict[str, str]:
    """File name -> content, for every CRD."""
    return {file_name(info): render(crd_manifest(info, include_cel=include_cel)) for info in RESOURCES}


def stale_files(folder: Path, *, include_cel: bool = True) -> list[Path]:
    """Files under ``folder`` that are missing or differ from what the models generate."""
    return [
        folder / name
        for name, text in rendered_files(include_cel=include_cel).items()
        if not (folder / name).is_file() or (folder / name).read_text() != text
    ]


def write(folder: Path, *, include_cel: bool = True) -> list[Path]:
    """Write every CRD into ``folder`` (created if needed); returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_files(include_cel=include_cel).items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m continual_operator.crdgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=Path("crds"), help="folder for the CRD files (default: crds)"
    )
    parser.add_argument(
        "--chart-crds",
        type=Path,
        default=DEFAULT_CHART_CRDS,
        help=f"also write the chart's copy here (default: {DEFAULT_CHART_CRDS}; '' to skip)",
    )
    parser.add_argument("--no-cel", action="store_true", help="leave out CEL rules (API servers before 1.25)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    folders = [args.out] + ([args.chart_crds] if str(args.chart_crds) not in {"", "."} else [])
    include_cel = not args.no_cel
    if args.check:
        stale = [path for folder in folders for path in stale_files(folder, include_cel=include_cel)]
        for path in stale:
            print(f"{path} is stale: run python -m continual_operator.crdgen", file=sys.stderr)
        return 1 if stale else 0
    for folder in folders:
        for path in write(folder, include_cel=include_cel):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
