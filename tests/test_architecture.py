"""The import graph DESIGN.md asks for, checked on the source: leaf packages, no circles, CLI last."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("valle", "evaluation", "detection", "watermark", "reports")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def project_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a project module in ``path``, local imports included; a
    ``from pkg import name`` counts as ``pkg.name`` when that is a module."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                is_module = (ROOT / Path(*full.split("."))).with_suffix(".py").is_file() or (
                    ROOT / Path(*full.split(".")) / "__init__.py"
                ).is_file()
                out.append((node.lineno, full if is_module else node.module))
    return [(line, m) for line, m in out if m.split(".")[0] in PACKAGES]


GRAPH = {module_name(p): project_imports(p) for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


@pytest.mark.parametrize("leaf", ["detection", "watermark", "reports"])
def test_leaf_packages_import_no_other_project_package(leaf):
    """Leaves take arrays and files in and give numbers out; they may use third-party libraries only."""
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, targets in GRAPH.items()
        if mod.split(".")[0] == leaf
        for line, target in targets
        if target.split(".")[0] != leaf
    ]
    assert not bad, bad


def test_no_import_circles():
    edges = {mod: {t for _, t in targets if t in GRAPH and t != mod} for mod, targets in GRAPH.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for nxt in sorted(edges[mod]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[mod] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, cycles


def is_cli(mod: str) -> bool:
    """``evaluation.cli`` and everything in it, and the command modules of the leaf packages."""
    return mod == "evaluation.cli" or mod.startswith("evaluation.cli.") or mod.endswith((".cli", "_cli"))


def test_library_code_never_imports_a_command_line_module():
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, targets in GRAPH.items()
        if not is_cli(mod)
        for line, target in targets
        if is_cli(target)
    ]
    assert not bad, bad


def test_imports_point_one_way_between_packages():
    """evaluation -> valle -> watermark, evaluation -> detection (README's Layout)."""
    allowed = {
        "evaluation": {"valle", "detection", "watermark", "reports"},
        "valle": {"watermark"},
        "detection": set(),
        "watermark": set(),
        "reports": set(),
    }
    bad = [
        f"{mod}:{line} imports {target}"
        for mod, targets in GRAPH.items()
        for line, target in targets
        if (src := mod.split(".")[0]) != (dst := target.split(".")[0]) and dst not in allowed[src]
    ]
    assert not bad, bad


def test_no_private_name_is_imported_from_another_module():
    """A leading underscore means "this file only": another module (tests included) that needs the name
    needs a public one."""
    bad = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.parts[len(ROOT.parts)] not in (*PACKAGES, "tests", "benchmarks"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                bad += [
                    f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not bad, bad
