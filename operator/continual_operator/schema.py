"""pydantic models -> *structural* OpenAPI v3 schemas, the kind a CustomResourceDefinition accepts.

pydantic writes JSON Schema (draft 2020-12); the API server wants a structural OpenAPI v3.0 subset. The
differences handled here, each because the API server would reject or mis-handle the CRD otherwise:

* ``$ref``/``$defs`` are inlined: CRD schemas cannot reference anything;
* ``anyOf: [X, {type: null}]`` (an ``Optional``) becomes ``X`` with ``nullable: true``: a structural schema
  must give every node a type outside of ``anyOf``;
* ``title`` goes (noise in ``kubectl explain``), ``const`` becomes a one-value ``enum``, and numeric
  ``exclusiveMinimum``/``exclusiveMaximum`` become OpenAPI 3.0's boolean flags next to ``minimum``/``maximum``;
* ``additionalProperties`` stays only where a map is meant (``dict[str, str]``); models drop it, since
  ``properties`` and ``additionalProperties`` are mutually exclusive in a CRD and pruning already drops
  unknown fields; a free-form object (``dict[str, Any]``) gets ``x-kubernetes-preserve-unknown-fields``;
* defaults: the models' defaults are written into the schema, so that the API server stores them and a
  stored run keeps its meaning when a later version changes a default. ``None`` and empty collections are
  left out (the same as absent), and a nested model whose default is its own defaults becomes ``{}``, which
  the API server then fills in from the nested schema.

Anything else pydantic might emit (unions, tuples, sets) raises :class:`SchemaError` instead of producing a
schema the API server would reject at install time: a model change that needs more support fails the tests.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

#: Keywords a structural CRD schema may carry (OpenAPI v3.0 value validation + Kubernetes extensions).
_ALLOWED = frozenset(
    {
        "type",
        "format",
        "description",
        "properties",
        "required",
        "items",
        "additionalProperties",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "nullable",
        "default",
        "oneOf",
    }
)
_NULL = {"type": "null"}


class SchemaError(ValueError):
    """The model uses a construct that has no structural-schema equivalent here."""


class _DefaultsFromFactories(GenerateJsonSchema):
    """Also emits defaults that come from ``default_factory`` (pydantic leaves those out)."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        if "default_factory" in schema and not schema.get("default_factory_takes_data"):
            value = schema["default_factory"]()  # type: ignore[call-arg]
        else:
            value = schema.get("default", NoDefault)
        if value is None or (isinstance(value, list | dict) and not value):
            return NoDefault
        if isinstance(value, BaseModel) and value == type(value)():
            return {}
        return value


def describe(text: str) -> str:
    """Docstring -> ``kubectl explain`` text: paragraphs kept, lines joined, RST literals unquoted."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(p for p in paragraphs if p).replace("``", "")


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's validation schema (camelCase names) as a structural OpenAPI v3 schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_DefaultsFromFactories)
    defs: dict[str, Any] = raw.pop("$defs", {})
    return _convert(raw, defs, ())


def _resolve(node: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    """Inline ``$ref`` and single-element ``allOf``; keys next to them (description, default) win."""
    node = dict(node)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"allOf with {len(parts)} parts is not supported")
        node = {**parts[0], **node}
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        if name in seen:
            raise SchemaError(f"recursive model {name} cannot be expressed in a CRD schema")
        target = _resolve(defs[name], defs, (*seen, name))
        node = {**target, **node}
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...]) -> dict[str, Any]:
    node = _resolve(node, defs, seen)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b != _NULL]
        if len(branches) != 1:
            raise SchemaError(f"unions are not supported (only Optional): {branches}")
        node = {**_resolve(branches[0], defs, seen), **node, "nullable": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in {"title", "examples"}:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in {"exclusiveMinimum", "exclusiveMaximum"} and not isinstance(value, bool):
            out[key.replace("exclusiveM", "m")] = value
            out[key] = True
        elif key == "description":
            out[key] = describe(value)
        elif key == "properties":
            out[key] = {name: _convert(prop, defs, seen) for name, prop in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, seen)
        elif key == "additionalProperties":
            if isinstance(value, dict) and "properties" not in node:
                out[key] = _convert(value, defs, seen)
        elif key in _ALLOWED or key.startswith("x-kubernetes-"):
            out[key] = value
        else:
            raise SchemaError(f"JSON Schema keyword {key!r} has no structural equivalent here")
    if "type" not in out:
        raise SchemaError(f"every schema node needs a type: {node}")
    if out["type"] == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def strip_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without defaults (for status: the API server must not invent observed state)."""
    out = {k: v for k, v in schema.items() if k != "default"}
    if "properties" in out:
        out["properties"] = {k: strip_defaults(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = strip_defaults(out[key])
    return out


def bound(schema: dict[str, Any], *, max_length: int, max_items: int) -> dict[str, Any]:
    """The schema with a maxLength on every string and a maxItems on every array.

    A CEL rule such as ``self == oldSelf`` must fit a cost budget that the API server estimates from the
    largest possible value: an unbounded list of unbounded strings makes the CRD itself rejected.
    """
    out = dict(schema)
    if out.get("type") == "string" and "maxLength" not in out:
        # The estimator does not read enums: an enum string still needs its bound (its longest value).
        out["maxLength"] = max(map(len, out["enum"])) if "enum" in out else max_length
    if out.get("type") == "array" and "maxItems" not in out:
        out["maxItems"] = max_items
    if "properties" in out:
        out["properties"] = {
            k: bound(v, max_length=max_length, max_items=max_items) for k, v in out["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = bound(out[key], max_length=max_length, max_items=max_items)
    return out
