"""The tree's boundaries, read statically from the source: the pipeline (worker, api_shim) never imports the
tooling (cli), the bench or the sandbox, nothing installed imports the bench, the sandbox stands alone,
and no two project modules import each other."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "api_shim", "sandbox", "cli", "bench")
# package -> the packages it must not import, at module level or inside a function alike
FORBIDDEN = {
    "worker": {"cli", "sandbox", "bench"},
    "api_shim": {"cli", "sandbox", "bench"},
    "sandbox": {"worker", "api_shim", "cli", "bench"},
    # the bench is not installed: nothing installed may need it
    "cli": {"bench"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _imported_names(node: ast.Import | ast.ImportFrom, module: str) -> Iterator[str]:
    """Every dotted name the statement may load: `from a import b` may load module `a.b` or just `a`."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        is_package = project_modules()[module].name == "__init__.py"
        package = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join([*package, base] if base else package)
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)


def _project_module(name: str) -> str | None:
    """The project module `name` is, or lies in; None when it is not ours."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in project_modules():
            return candidate
    return None


def _imports(tree: ast.AST, module: str, *, in_functions: bool) -> set[str]:
    """The project modules `tree` imports; `in_functions=False` keeps only what runs when the module is
    loaded (its top level, `if`/`try` blocks and class bodies included, functions excluded)."""
    found: set[str] = set()
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if not in_functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported_names(node, module):
                target = _project_module(name)
                if target is not None and target != module:
                    found.add(target)
        stack.extend(ast.iter_child_nodes(node))
    return found


@cache
def import_graph(in_functions: bool) -> dict[str, set[str]]:
    return {
        module: _imports(ast.parse(path.read_text(), str(path)), module, in_functions=in_functions)
        for module, path in project_modules().items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(groups)


def test_the_layout_finds_every_package() -> None:
    tops = {module.split(".")[0] for module in project_modules()}
    assert tops == set(PACKAGES)
    assert "cli.main" in project_modules()
    assert "worker.keys" in project_modules()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_from_what_it_must_not_know(package: str) -> None:
    crossings = {
        f"{module} imports {target}"
        for module, targets in import_graph(in_functions=True).items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    }
    assert not crossings, sorted(crossings)


def test_no_two_project_modules_import_each_other() -> None:
    # What runs when a module is loaded: its top level, `if TYPE_CHECKING:` blocks included (a cycle
    # there is the same tangle, even if only the type checker follows it). Imports inside functions are
    # left out: one runs when the function is called, after both modules have finished loading, so it
    # cannot see a half-initialised module; it is how a module defers a heavy or optional import (the
    # `oktopost-connect` sub-commands, `worker`'s lazily loaded Celery app).
    assert import_cycles(import_graph(in_functions=False)) == []


def test_the_cycle_check_counts_type_checking_imports_and_not_those_in_functions() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from worker.keys import RedisNames\n"
    assert _imports(ast.parse(source), "worker.events", in_functions=False) == {"worker.keys"}
    inside = "def f():\n    from worker.keys import RedisNames\n"
    assert _imports(ast.parse(inside), "worker.events", in_functions=False) == set()
    assert _imports(ast.parse(inside), "worker.events", in_functions=True) == {"worker.keys"}


# worker's stages, bottom to top: a stage may import the stages listed for it (and the shared leaves
# worker.keys, worker.replies, worker.threads, worker.clock, worker.events, worker.scripts), never one
# above it. Each subpackage's __init__ docstring says the same in words.
WORKER_LEAVES = {
    "worker",
    "worker.keys",
    "worker.replies",
    "worker.threads",
    "worker.clock",
    "worker.events",
    "worker.scripts",
}
WORKER_STAGES = {
    "queueing": set(),
    "config": set(),
    "observing": {"queueing"},
    "oktopost": {"config", "observing"},
    "follow": set(),
    "flows": {"config", "queueing", "observing"},
    "upstream": {"config", "flows", "oktopost", "observing"},
    "webhooks": {"config", "observing", "follow", "oktopost"},
    "connections": {"config", "observing", "oktopost", "upstream"},
    "tasks": {
        "queueing",
        "config",
        "observing",
        "oktopost",
        "follow",
        "flows",
        "upstream",
        "webhooks",
        "connections",
    },
}


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "worker" and len(parts) > 2 else None


def test_worker_keeps_few_modules_at_its_top_and_groups_the_rest_by_stage() -> None:
    top = [m for m in project_modules() if m.count(".") == 1 and m.startswith("worker.")]
    stages = {
        module.split(".")[1] for module in project_modules() if _stage(module) or module.count(".") == 1
    }
    assert len([m for m in top if m.split(".")[1] not in WORKER_STAGES]) <= 12, top
    assert set(WORKER_STAGES) <= stages


@pytest.mark.parametrize("stage", sorted(WORKER_STAGES))
def test_a_worker_stage_imports_only_the_stages_below_it(stage: str) -> None:
    allowed = WORKER_STAGES[stage] | {stage}
    crossings = {
        f"{module} imports {target}"
        for module, targets in import_graph(in_functions=True).items()
        if _stage(module) == stage
        for target in targets
        if target.startswith("worker") and target not in WORKER_LEAVES and target.split(".")[1] not in allowed
    }
    assert not crossings, sorted(crossings)


def test_every_worker_stage_says_what_it_holds_and_may_import() -> None:
    for stage in sorted({*WORKER_STAGES, "webhooks"}):
        docstring = ast.get_docstring(ast.parse((ROOT / "worker" / stage / "__init__.py").read_text()))
        assert docstring, stage
        assert "May import" in docstring, stage
