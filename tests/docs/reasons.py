"""Collect every reason string the code can write into a status, a condition or an Event (AST-based)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = (ROOT / "operator" / "continual_operator", ROOT / "trainer_image" / "continual_trainer")
CAMEL = re.compile(r"^[A-Z][a-z]+(?:[A-Z0-9][A-Za-z0-9]*)*$")
#: Strings that sit beside reasons but are not reasons: Event types and condition statuses.
NOT_REASONS = frozenset({"Normal", "Warning", "True", "False", "Unknown"})


def _files() -> Iterator[Path]:
    for folder in SOURCES:
        yield from sorted(folder.rglob("*.py"))


def _constants(trees: list[ast.Module]) -> dict[str, str]:
    """Module-level NAME = "CamelCase" constants of the whole code base."""
    found: dict[str, str] = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        found[target.id] = node.value.value
    return found


def _strings(expr: ast.AST, constants: dict[str, str]) -> Iterator[str]:
    """The reason literals an expression can evaluate to (literals, constants, `a or "X"`, `x if c else "Y"`)."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        yield expr.value
    elif isinstance(expr, ast.Name) and expr.id in constants:
        yield constants[expr.id]
    elif isinstance(expr, ast.BoolOp):
        for value in expr.values:
            yield from _strings(value, constants)
    elif isinstance(expr, ast.IfExp):
        yield from _strings(expr.body, constants)
        yield from _strings(expr.orelse, constants)


def _reason_positions(trees: list[ast.Module]) -> dict[str, set[int]]:
    """Callable name -> positional index of its ``reason`` parameter (functions and dataclass-like classes)."""
    positions: dict[str, set[int]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                names = [a.arg for a in node.args.posonlyargs + node.args.args]
                if names and names[0] in {"self", "cls"}:
                    names = names[1:]
            elif isinstance(node, ast.ClassDef):
                names = [
                    f.target.id
                    for f in node.body
                    if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)
                ]
            else:
                continue
            if "reason" in names:
                positions.setdefault(node.name, set()).add(names.index("reason"))
    return positions


def _condition_tuple(node: ast.Tuple) -> bool:
    """``(status, reason, message)`` with a literal condition status first."""
    first = node.elts[0] if len(node.elts) == 3 else None
    return isinstance(first, ast.Constant) and first.value in {"True", "False", "Unknown"}


def _is_reason_target(target: ast.AST) -> bool:
    return (isinstance(target, ast.Name) and target.id == "reason") or (
        isinstance(target, ast.Attribute) and target.attr == "reason"
    )


def _assigns_reason(node: ast.AST) -> bool:
    """``reason=...`` (keyword), ``reason = ...`` / ``x.reason = ...`` (a class attribute or a variable)."""
    if isinstance(node, ast.keyword):
        return node.arg == "reason"
    if isinstance(node, ast.Assign):
        return any(_is_reason_target(t) for t in node.targets)
    return isinstance(node, ast.AnnAssign) and node.value is not None and _is_reason_target(node.target)


def reasons() -> set[str]:
    """Every CamelCase reason the operator or the trainer can write (conditions, phases' reasons, Events)."""
    trees = [ast.parse(path.read_text(), str(path)) for path in _files()]
    constants = _constants(trees)
    positions = _reason_positions(trees)
    found: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            exprs: list[ast.AST] = []
            if _assigns_reason(node):
                exprs.append(node.value)  # type: ignore[attr-defined]
            elif isinstance(node, ast.Dict):
                exprs += [
                    v
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "reason"
                ]
            elif isinstance(node, ast.FunctionDef) and "reason" in node.name:
                # a helper that computes a reason: everything it returns
                exprs += [
                    r.value for r in ast.walk(node) if isinstance(r, ast.Return) and r.value is not None
                ]
            elif isinstance(node, ast.Tuple) and _condition_tuple(node):
                exprs.append(node.elts[1])
            elif isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None) or ""
                exprs += [node.args[i] for i in positions.get(name, ()) if i < len(node.args)]
            for expr in exprs:
                found.update(s for s in _strings(expr, constants) if CAMEL.match(s) and s not in NOT_REASONS)
    return found
