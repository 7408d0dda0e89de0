"""The import layers of lm_eval_calib (docs/architecture.md), checked from the source.

The graph holds every import of every module, those inside functions included (a function-level import is
still a dependency, only a later one), resolved to modules of this package; imports under ``if
TYPE_CHECKING:`` are left out (they never run), and ``importlib.import_module(NAME)`` with ``NAME`` a
module-level string constant counts like an import. It must have no cycle, and the core (the record, the
metrics, the options, the metric of records) must reach neither lm-eval nor the lm-eval glue.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import lm_eval_calib

PACKAGE = "lm_eval_calib"
ROOT = Path(lm_eval_calib.__file__).resolve().parent

CORE = ("records", "metrics", "options", "record_metrics", "paths", "atomic", "plain_records")
"""Modules (or packages) that must reach neither lm-eval nor the glue (harness/, lm_eval_patches,
registration, models/)."""
GLUE = ("harness", "lm_eval_patches", "registration", "models")
READERS = ("records_io", "report.runs")
"""Reading a finished run (the report, the study): core only, no lm-eval."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


@cache
def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "task_folder" in path.relative_to(ROOT).parts[:1] and path.name != "__init__.py":
            continue
        found[_module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node that can run (the bodies of ``if TYPE_CHECKING:`` left out)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _string_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


@cache
def _imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(modules of this package, top-level names of other packages) that ``module`` imports anywhere."""
    path = _modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    constants = _string_constants(tree)
    targets: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                targets.add(child if child in _modules() else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            name = arg.value if isinstance(arg, ast.Constant) else constants.get(getattr(arg, "id", ""))
            if isinstance(name, str):
                targets.add(name)
    ours = frozenset(t for t in targets if t in _modules() and t != module)
    others = frozenset(t.split(".")[0] for t in targets if not t.startswith(PACKAGE + ".") and t != PACKAGE)
    return ours, others


def _cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(_imports(node)[0]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(_modules()):
        if module not in index:
            visit(module)
    return found


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _reach(start: str) -> set[str]:
    """Every module of this package that importing ``start`` can run (its imports' packages included)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [*_imports(module)[0], *(p for p in _parents(module) if p in _modules())]
    return seen


def _under(module: str, names: tuple[str, ...]) -> bool:
    return any(module == f"{PACKAGE}.{n}" or module.startswith(f"{PACKAGE}.{n}.") for n in names)


def test_the_graph_sees_function_level_and_late_imports():
    """The checks below mean something only if the graph holds what runs later, not just module tops."""
    patches = _imports(f"{PACKAGE}.lm_eval_patches")[0]
    assert f"{PACKAGE}.harness.preflight" in patches  # imported inside patch_evaluate
    assert f"{PACKAGE}.record_metrics" in patches  # imported inside _wrap_stderr_for_metric
    wrap = _imports(f"{PACKAGE}.harness.wrap_rules")[0]
    assert f"{PACKAGE}.harness.generation" in wrap  # importlib.import_module(GENERATION_MODULE)
    assert f"{PACKAGE}.harness.wrap" in _imports(f"{PACKAGE}.registration")[0]  # inside _load_wrapper


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles (function-level imports included): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_core_reaches_neither_lm_eval_nor_the_glue():
    for name in CORE:
        start = f"{PACKAGE}.{name}"
        if start not in _modules():
            continue
        reached = _reach(start)
        glue = sorted(m for m in reached if _under(m, GLUE))
        assert not glue, f"{start} reaches the lm-eval glue: {glue}"
        lm_eval = sorted(m for m in reached if "lm_eval" in _imports(m)[1])
        assert not lm_eval, f"{start} reaches lm-eval through {lm_eval}"


def test_reading_a_finished_run_needs_no_lm_eval_and_no_task_code():
    for name in READERS:
        reached = _reach(f"{PACKAGE}.{name}")
        assert not sorted(m for m in reached if _under(m, GLUE)), name
        assert not sorted(m for m in reached if "lm_eval" in _imports(m)[1]), name
    # and at run time: importing them loads no lm_eval module (the start-up hook is installed here too)
    code = (
        "import json, sys; import lm_eval_calib.records_io, lm_eval_calib.report.runs; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'lm_eval' or m.startswith(('lm_eval.', "
        "'lm_eval_calib.harness', 'lm_eval_calib.lm_eval_patches')))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []


def test_the_patches_module_imports_no_task_class():
    """lm_eval_patches sits below the task classes (they apply its patches when they load): the
    ``calib_<task>`` builder is plugged in by registration, not imported here."""
    reached = _reach(f"{PACKAGE}.lm_eval_patches")
    task_classes = ("harness.base", "harness.task", "harness.token_task", "harness.generation")
    task_classes += ("harness.wrap", "harness.wrap_rules", "harness.wrapped_task", "harness.wrap_refusal")
    assert not sorted(m for m in reached if _under(m, task_classes))


def test_the_mean_stderr_that_replaced_lm_eval_s_gives_the_same_float():
    """report/runs.py computed a plain task's acc_stderr with lm-eval's ``mean_stderr``; the core's copy must
    give the very same number (same operations, same order)."""
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    from lm_eval_calib.record_metrics import mean_stderr

    for values in ([0, 1], [1, 1, 0, 1, 0, 0, 1], [0.1 * i for i in range(97)], [1] * 13 + [0] * 7):
        assert mean_stderr(values) == lm_eval_mean_stderr(values)
