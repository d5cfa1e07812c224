"""Which source files a piece of the project runs: the import closure, read from the code itself.

One source of truth for two things that used to be lists kept by hand (and had drifted apart):
- the training code digest in a Ray Train run's name (:func:`stargan.training.ray_train.run_name_for`):
  the files the training worker imports, so a changed loss or model starts a new run instead of
  "resuming" the finished run of the old code, and a changed CLI does not;
- the ``deps`` of each stage in dvc.yaml, which tests/test_dvc_deps.py checks cover the closure of
  the stage's script, so editing code a stage runs always makes DVC re-run it.

Imports inside functions count (the AST is walked whole): they run too.
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: The modules whose closure is "the training code": the loop and what each model's trainer runs.
TRAINING_ENTRY = ("stargan.training.worker", "stargan.training.v1_trainer", "stargan.training.v2_trainer")


def _modules(package: Path) -> dict[str, Path]:
    out = {}
    for f in package.rglob("*.py"):
        parts = (package.name, *f.relative_to(package).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only: never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``module -> the package's modules it imports`` (a module importing its own package's
    ``__init__`` implicitly is not an edge)."""
    known = _modules(package)
    return {m: {d for d in _imports(f, known) if d != m and not m.startswith(d + ".")} for m, f in known.items()}


def closure(entries: list[str] | tuple[str, ...], package: Path = PACKAGE, extra: list[Path] = ()) -> list[Path]:
    """Source files of ``entries`` (module names) and of ``extra`` scripts, and of everything they
    import from the package, transitively (each package's ``__init__`` included)."""
    known = _modules(package)
    graph = import_graph(package)
    todo = list(entries) + [m for f in extra for m in _imports(Path(f), known)]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(graph[m])
    return sorted(known[m] for m in seen)


def digest(files: list[Path], package: Path = PACKAGE) -> str:
    """sha256 over (path relative to the package's parent, bytes) of ``files``, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(package.parent).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def training_code_digest(package: Path = PACKAGE) -> str:
    return digest(closure(TRAINING_ENTRY, package), package)
