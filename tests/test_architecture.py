"""The layering of docs/architecture.md ("Layers"), enforced on every import.

Every module under ``llm_governor`` is parsed with ``ast``: module-level imports,
imports inside functions (lazy) and ``if TYPE_CHECKING:`` imports all count. A
unit (a top-level module or subpackage) may import only units of a lower layer;
the few imports that break that today are listed in ``KNOWN`` with their reason,
so a new one fails here until it is fixed or argued for. The module-level
imports between units (what runs at import time) must also form no cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "llm_governor"
PKG = "llm_governor"

LAYERS: list[tuple[str, ...]] = [
    ("_version", "errors", "redaction", "media", "accounts", "presets", "context"),
    ("policies",),
    ("backends",),
    ("config",),
    ("pricing", "scoping"),
    ("reservations", "admission_queue", "retry_budget", "events"),
    ("governor",),
    ("exporters",),
    ("instrumentation",),
    ("api",),
    (PKG,),  # llm_governor/__init__.py: the public names
    ("testing",),
    ("cli",),
    ("__main__", "demo"),
]
"""Lowest first. A unit imports units of lower layers only (never its own layer's
neighbours: those are independent of each other)."""

RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

KNOWN: dict[tuple[str, str, str], str] = {
    # (importing module, imported module, kind) -> why it is allowed
    ("llm_governor.governor", "llm_governor.exporters.otel", "lazy"):
        "the governor builds its Telemetry at start-up; otel reads Governor state, "
        "so the import is deferred (and opentelemetry loads only with a governor)",
    ("llm_governor.instrumentation", "llm_governor.api", "lazy"):
        "the OpenTelemetry instrumentor's default governor getter is api.get_governor, "
        "which itself imports instrumentation",
    ("llm_governor.reservations", "llm_governor.governor", "type"):
        "annotations only: LearnedReservations takes the Governor's Ticket",
    ("llm_governor.events", "llm_governor.governor", "type"):
        "annotations only: a Call record carries the adapter's CallSpec",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a submodule when `from pkg import submodule`)
    kind: str  # "module" (runs at import time), "lazy" (inside a function), "type"
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PKG


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[Import]:
    is_pkg = path.name == "__init__.py"
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            mod = ".".join([*base, node.module] if node.module else base)
        else:
            mod = node.module or ""
        # `from pkg import submodule` depends on the submodule, not on all of pkg
        return [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(module, t, kind, child.lineno) for t in targets(child)
                             if t == PKG or t.startswith(PKG + "."))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "lazy" if kind == "module" else kind)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "type")
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                visit(child, kind)

    visit(ast.parse(path.read_text("utf-8"), str(path)), "module")
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def test_every_unit_has_a_layer() -> None:
    units = {_unit(m) for m in MODULES}
    assert units - set(RANK) == set(), "give each new module a layer in LAYERS (and the doc)"
    assert set(RANK) - units == set(), "LAYERS names a unit that no longer exists"


def test_the_scan_sees_lazy_and_type_only_imports() -> None:
    kinds = {(i.source, i.target): i.kind for i in IMPORTS}
    assert kinds[("llm_governor.governor", "llm_governor.exporters.otel")] == "lazy"
    assert kinds[("llm_governor.exporters.export", "llm_governor.governor")] == "type"
    assert kinds[("llm_governor.cli.scrub", "llm_governor.redaction")] == "module"


def _breaks(imp: Import) -> bool:
    source, target = _unit(imp.source), _unit(imp.target)
    return source != target and RANK[target] >= RANK[source]


def test_imports_follow_the_layers() -> None:
    bad = [f"{i.source}:{i.line} imports {i.target} ({i.kind}): layer "
           f"{RANK[_unit(i.source)]} -> {RANK[_unit(i.target)]}"
           for i in IMPORTS if _breaks(i) and (i.source, i.target, i.kind) not in KNOWN]
    assert bad == [], "imports against the layering (docs/architecture.md):\n" + "\n".join(bad)


def test_known_exceptions_still_exist() -> None:
    seen = {(i.source, i.target, i.kind) for i in IMPORTS if _breaks(i)}
    gone = [k for k in KNOWN if k not in seen]
    assert gone == [], f"fixed: drop these from KNOWN: {gone}"


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := dfs(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := dfs(node)) is not None:
            return found
    return None


def test_no_import_cycles_between_units_at_import_time() -> None:
    edges: dict[str, set[str]] = {}
    for i in IMPORTS:
        if i.kind == "module" and _unit(i.source) != _unit(i.target):
            edges.setdefault(_unit(i.source), set()).add(_unit(i.target))
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("unit", ["policies", "backends", "exporters", "instrumentation"])
def test_the_seams_named_in_the_issue(unit: str) -> None:
    """The rules the layers imply, spelled out: the pure core knows nothing above it."""
    forbidden = {
        "policies": {"backends", "instrumentation", "exporters", "cli", "governor", "config"},
        "backends": {"instrumentation", "exporters", "cli", "governor", "config", "api"},
        "exporters": {"instrumentation", "cli", "api"},
        "instrumentation": {"exporters", "cli"},
    }[unit]
    bad = [f"{i.source}:{i.line} -> {i.target}" for i in IMPORTS
           if _unit(i.source) == unit and _unit(i.target) in forbidden]
    assert bad == []
