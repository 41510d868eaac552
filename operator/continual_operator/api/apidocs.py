"""Generate the API reference (``docs/api.md``) from the API models, like :mod:`continual_operator.api.crdgen`.

    python -m continual_operator.apidocs            # writes docs/api.md
    python -m continual_operator.apidocs --check    # exit 1 when the committed file is stale

The reference is rendered from the same OpenAPI schema as the CRDs (so ``kubectl explain`` and the page
say the same thing): one row per field of both kinds, with its path, type, default, description and
whether it is immutable. Pure: no Kubernetes client, no torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from continual_operator.api import RESOURCES, ResourceInfo
from continual_operator.api.crdgen import openapi_schema

DEFAULT_OUT = Path("docs/api.md")
COMMAND = "python -m continual_operator.apidocs"
HEADER = f"<!-- Generated from continual_operator.api by `{COMMAND}`: do not edit. -->\n"


@dataclass(frozen=True)
class FieldRow:
    """One documented field."""

    path: str
    type: str
    default: str
    description: str
    immutable: bool


def type_of(node: dict[str, Any]) -> str:
    """A short human type: ``string``, ``integer``, ``[]object``, ``map[string]string``, ``enum: A | B``."""
    if "enum" in node:
        return "enum: " + " \\| ".join(str(v) for v in node["enum"])
    kind = node.get("type", "object")
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return "object (free-form)"
    if kind == "array":
        return "[]" + type_of(node.get("items", {}))
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + type_of(node["additionalProperties"])
    if "format" in node:
        return f"{kind} ({node['format']})"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    """Bounds and pattern, as a short suffix (OpenAPI 3.0: exclusiveMinimum/Maximum are booleans)."""
    bounds = []
    if "minimum" in node:
        bounds.append(f"{'>' if node.get('exclusiveMinimum') is True else '>='} {node['minimum']}")
    if "maximum" in node:
        bounds.append(f"{'<' if node.get('exclusiveMaximum') is True else '<='} {node['maximum']}")
    bounds += [
        f"{label} {node[key]}"
        for key, label in (("minLength", "min length"), ("minItems", "min items"))
        if key in node
    ]
    if "pattern" in node:
        bounds.append(f"pattern `{node['pattern']}`".replace("|", "\\|"))  # a table cell
    return f" ({', '.join(bounds)})" if bounds else ""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def rows(info: ResourceInfo) -> Iterator[FieldRow]:
    """Every field under spec and status of one kind, depth first, in schema order."""
    schema = openapi_schema(info, include_cel=False)
    immutable = {f"spec.{field.name}" for field in info.immutable}

    def walk(node: dict[str, Any], path: str, *, frozen: bool) -> Iterator[FieldRow]:
        frozen = frozen or path in immutable
        default = json.dumps(node["default"]) if "default" in node else ""
        yield FieldRow(
            path,
            type_of(node),
            f"`{default}`" if default else "",
            _cell(node.get("description", "")) + _constraints(node),
            frozen,
        )
        children = node.get("properties", {})
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            children = node["items"].get("properties", {})
            path = f"{path}[]"
        for name, child in children.items():
            yield from walk(child, f"{path}.{name}", frozen=frozen)

    for part in ("spec", "status"):
        for name, child in schema["properties"][part].get("properties", {}).items():
            yield from walk(child, f"{part}.{name}", frozen=False)


def render_kind(info: ResourceInfo) -> str:
    """The section of one kind: its description, names, and a table of fields."""
    schema = openapi_schema(info, include_cel=False)
    lines = [
        f"## {info.kind}",
        "",
        _cell(schema.get("description", "")),
        "",
        (
            f"`kubectl get {info.plural}` (short name: {', '.join(info.short_names)}). Immutable fields "
            "are enforced by CEL rules on Kubernetes 1.25+ and by the operator everywhere."
        ),
        "",
        "| Field | Type | Default | Immutable | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{r.path}` | {r.type} | {r.default} | {'yes' if r.immutable else ''} | {r.description} |"
        for r in rows(info)
    ]
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole of ``docs/api.md``."""
    intro = (
        "# API reference (continual.dev/v1alpha1)\n\n"
        "Every field of both kinds, generated from the pydantic models in `continual_operator.api` (the same "
        "source as the CRDs in `crds/`). Paths use the YAML names; `[]` marks a list element. Regenerate "
        f"with `{COMMAND}` after changing a model; a test fails when this file is stale.\n"
    )
    return HEADER + intro + "".join("\n" + render_kind(info) for info in RESOURCES)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the file (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
