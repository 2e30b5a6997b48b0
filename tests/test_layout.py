"""The package's shape, read from its source: folders by role, imports that run one way.

Every `import` and `from ... import` of the package's modules is read with `ast` (those inside functions
too: a lazy import is still a dependency; those under `if TYPE_CHECKING:` are not), and the graph is
checked: no module imports itself back through others, each layer imports only the layers below it, no
task module reaches the modules that pick the task, the package root holds only the command lines, and only
the heads ask which head runs.
"""
import ast
import pathlib
import re

import pytest

from tests.subprocesses import REPO

PACKAGE = REPO / "lgmm_jax"
ENTRY_POINTS = {"__init__", "main", "evaluate", "export", "predict", "segmentation_figures"}
# What each folder may import besides itself: the layers below it.
LAYERS = {
    "models": set(),
    "data": set(),
    "ood": set(),
    "pretrained": {"models"},
    "method": {"models"},
    "runtime": {"data"},
    "heads": {"data", "method", "models", "ood"},
    "deploy": {"heads", "models", "ood", "runtime", "data", "tasks"},  # an export loads through its task's exported.py
    "tasks": {"data", "deploy", "heads", "method", "models", "ood", "runtime"},
    "training": {"data", "deploy", "heads", "method", "models", "ood", "pretrained", "runtime", "tasks"},
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers inside `if TYPE_CHECKING:` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for inner in node.body:
                lines.update(range(inner.lineno, inner.end_lineno + 1))
    return lines


def known(name: str) -> str:
    """The package module a dotted name lives in (the longest prefix that is a module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(name: str) -> set[str]:
    """The package modules `name` imports."""
    tree = ast.parse(MODULES[name].read_text())
    skipped = type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lgmm_jax"):
            found.update(known(f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(known(alias.name) for alias in node.names if alias.name.startswith("lgmm_jax"))
    return found - {name, "lgmm_jax"}


GRAPH = {name: imports_of(name) for name in MODULES}


def folder(name: str) -> str:
    """The package's top-level folder (or root module) a module belongs to: 'training' for
    lgmm_jax.training.train, 'main' for lgmm_jax.main."""
    return name.split(".")[1] if "." in name else ""


def test_the_package_root_holds_only_the_command_lines():
    root = {path.stem for path in PACKAGE.glob("*.py")}
    assert root == ENTRY_POINTS, f"modules at the root beyond the command lines: {sorted(root - ENTRY_POINTS)}"
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(LAYERS)


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    return found


def test_no_import_runs_in_a_circle():
    assert cycles() == []


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_folder_imports_only_the_layers_below_it(layer):
    reaching = {f"{name} -> {other}" for name in GRAPH if folder(name) == layer
                for other in GRAPH[name] if folder(other) != layer and folder(other) not in LAYERS[layer]}
    assert not reaching, sorted(reaching)


def test_no_task_module_imports_what_picks_the_task():
    """`lgmm_jax.tasks` (the name -> task table) and the training run (which asks it) stay above every task."""
    pickers = {"lgmm_jax.tasks", "lgmm_jax.training.experiment"}
    reaching = {f"{name} -> {other}" for name in GRAPH if name.startswith("lgmm_jax.tasks.")
                for other in GRAPH[name] if other in pickers or other.startswith("lgmm_jax.training")}
    assert not reaching, sorted(reaching)


def test_the_layout_the_docs_describe_is_the_tree():
    for document in ("README.md", "docs/design.md"):
        text = (REPO / document).read_text()
        missing = [name for name in LAYERS if f"{name}/" not in text]
        assert not missing, f"{document} does not describe {missing}"


# Asking which head runs: what `heads/` answers for everyone else.
ASKS_WHICH_HEAD = re.compile(r"head (==|!=)|gmm_update\(.*\) ==")


def test_only_the_heads_ask_which_head_runs():
    asking = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
              for path in sorted(PACKAGE.rglob("*.py")) if path.relative_to(PACKAGE).parts[0] != "heads"
              for number, line in enumerate(path.read_text().splitlines(), 1) if ASKS_WHICH_HEAD.search(line)]
    assert not asking, asking
    inside = [path for path in (PACKAGE / "heads").glob("*.py") if ASKS_WHICH_HEAD.search(path.read_text())]
    assert inside, "the pattern no longer finds the heads' own questions: it has gone stale"


def test_the_task_interface_names_no_head():
    """What a task gives the train steps (`StepLosses`) and the `Task` interface name no update rule: GMMSeg's
    is the heads' (`heads/gmmseg.py`), fed by what the task says its examples are."""
    from lgmm_jax.heads.base import StepLosses
    from lgmm_jax.tasks.base import Task

    members = list(StepLosses._fields) + [name for name in vars(Task) if not name.startswith("_")]
    assert not [name for name in members if "gmmseg" in name.lower()], members
