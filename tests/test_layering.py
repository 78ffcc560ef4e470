"""The layering holds: the PEFT method imports nothing of the pipeline, stages import only downward, no import loop.

Imports are read with ``ast`` from every module of the package, at module level and inside functions (lazy
imports are imports too). ARCHITECTURE.md draws the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peft_cca"

# modules at the package root that import nothing of ours but each other: errors, JSON reading, the pipeline's
# default settings, the deprecated-path aliases and the hook that loads the method when peft loads
FOUNDATION = (
    "peft_cca.errors",
    "peft_cca.jsonfiles",
    "peft_cca.defaults",
    "peft_cca.documented",
    "peft_cca._moved",
    "peft_cca._peft_hook",
)
# bottom to top; a module may import its own layer and the layers below it, never one above
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        FOUNDATION,
    ),
    ("method", ("peft_cca.method",)),
    ("runtime", ("peft_cca.runtime",)),
    ("tasks", ("peft_cca.tasks",)),
    ("evaluation", ("peft_cca.evaluation",)),
    ("localize", ("peft_cca.localize",)),
    ("dcm", ("peft_cca.dcm",)),
    ("sweep", ("peft_cca.sweep",)),  # the lr-by-step sweep every arm shares, below both arms
    ("amplify", ("peft_cca.amplify",)),
    ("baselines", ("peft_cca.baselines",)),
    ("reports", ("peft_cca.reports",)),
    ("cli", ("peft_cca.cli",)),
    ("surface", ("peft_cca",)),  # the package's own __init__: public names, loaded lazily
)


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name (a package by its own name)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # "from a import b" imports the module a.b when there is one, else a name of a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific layer prefix that holds ``module``."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for source, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(source)
    )


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return loops


GRAPH = import_graph(PACKAGE, "peft_cca")


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


def test_nothing_imports_a_layer_above_it():
    assert upward_imports(GRAPH) == []


def test_the_method_package_imports_only_the_foundation():
    method = LAYERS.index(next(layer for layer in LAYERS if layer[0] == "method"))
    for source, targets in GRAPH.items():
        if layer_of(source) == method:
            assert all(layer_of(t) <= method for t in targets), (source, targets)


def test_the_arms_share_the_sweep_and_not_each_other():
    """The LoRA baseline trains through peft_cca.sweep, as CCA does, and imports nothing of CCA's stage 3."""
    from_baselines = {t for s, targets in GRAPH.items() if s.startswith("peft_cca.baselines") for t in targets}
    assert not [t for t in from_baselines if t.startswith("peft_cca.amplify")]
    assert "peft_cca.sweep.runs" in from_baselines and "peft_cca.sweep.runs" in GRAPH["peft_cca.amplify.trainer"]


def test_command_line_flags_live_in_the_cli():
    """Only peft_cca.cli builds parsers: the library takes settings dataclasses, never an argparse Namespace."""
    outside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if "argparse" in names:
                outside.append(path.relative_to(PACKAGE).as_posix())
    assert outside == []


def test_there_is_no_import_loop():
    assert import_loops(GRAPH) == []


def test_the_checks_catch_an_upward_import_and_a_loop(tmp_path):
    """The rules above can fail: a method module importing a stage, and two modules importing each other."""
    root = tmp_path / "peft_cca"
    for folder in ("method", "amplify", "tasks"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "method" / "model.py").write_text("def f():\n    from peft_cca.amplify.trainer import amplify\n")
    (root / "amplify" / "trainer.py").write_text("from ..tasks import sources\n")
    (root / "tasks" / "sources.py").write_text("from peft_cca.tasks.prompts import build\n")
    (root / "tasks" / "prompts.py").write_text("import peft_cca.tasks.sources\n")
    graph = import_graph(root, "peft_cca")
    assert graph["peft_cca.amplify.trainer"] == {"peft_cca.tasks.sources"}  # the relative import resolved
    assert upward_imports(graph) == [
        "peft_cca.method.model (method) imports peft_cca.amplify.trainer (amplify)"  # found inside a function
    ]
    assert import_loops(graph) == [["peft_cca.tasks.prompts", "peft_cca.tasks.sources"]]


@pytest.mark.parametrize("module", ["peft_cca.method", "peft_cca.method.model", "peft_cca.method.layer"])
def test_a_training_script_needs_only_the_method_package(module):
    """Importing the method loads nothing of the pipeline (checked in a fresh interpreter)."""
    import subprocess
    import sys

    pipeline = [p for _, prefixes in LAYERS[2:-1] for p in prefixes]
    code = (
        f"import sys, {module}\n"
        f"loaded = [m for m in sys.modules if m.startswith({tuple(pipeline)!r})]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
