"""The house's structure, checked from the code itself: no import cycle inside the package, the
tracking server reached from tracking.py (and the registry) only, and every stage's dvc.yaml deps
covering the code the stage's script runs (so an edit always makes DVC re-run the stage)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from stargan.codedeps import PACKAGE, closure, import_graph

REPO = PACKAGE.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert graph["stargan.registry"] and "stargan.inference" in graph["stargan.registry"], "the graph is read"
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_tracking_and_registry_talk_to_mlflow():
    talking = set()
    for f in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "mlflow" or n.startswith("mlflow.") for n in names):
                talking.add(f.relative_to(REPO).as_posix())
    assert talking == {"stargan/tracking.py", "stargan/registry.py"}


def _script(stage: dict) -> Path:
    cmd = stage["cmd"].split()
    assert cmd[0] == "python" and cmd[1].startswith("pipelines/"), stage["cmd"]
    return REPO / cmd[1]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_the_code_its_script_runs(name):
    stage = STAGES[name]
    deps = [REPO / d for d in stage.get("deps", []) if isinstance(d, str)]
    for d in deps:
        if d.relative_to(REPO).parts[0] in ("stargan", "pipelines"):
            assert d.exists(), f"{name}: dep {d.relative_to(REPO)} does not exist"
    script = _script(stage)
    assert script in deps, f"{name}: its script {script.relative_to(REPO)} is not a dep"
    missing = [f.relative_to(REPO).as_posix() for f in closure([], extra=[script])
               if f.name != "__init__.py" and not any(f == d or d in f.parents for d in deps)]
    assert not missing, f"dvc.yaml stage {name}: the code it runs is not in its deps: {missing}"
