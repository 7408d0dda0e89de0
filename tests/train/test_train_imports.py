"""The training add-on's modules import one another one way only (issue 15): no import circle.

A circle (``output`` needed ``callbacks`` for ``fit``, ``callbacks`` needed ``output`` for the step log)
works or breaks depending on which module a program imports first, so both checks below look at every
module: the graph of ``lm_eval_calib_train`` imports read from the source (module-level and in-function
imports alike) has no cycle, and every module imports on its own in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from helpers import REPO

PACKAGE = "lm_eval_calib_train"
SOURCE = REPO / "train" / PACKAGE
MODULES = sorted(path.stem for path in SOURCE.glob("*.py") if path.stem not in ("__init__", "__main__"))


def _imports(module: str) -> set[str]:
    """The modules of the package that ``module`` imports anywhere in its source (``__init__`` for the
    package itself)."""
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            if node.module == PACKAGE:  # `from lm_eval_calib_train import x`: a submodule or a package name
                found |= {a.name if a.name in MODULES else "__init__" for a in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found - {module}


def test_the_package_import_graph_has_no_cycle():
    graph = {module: _imports(module) for module in [*MODULES, "__init__"]}
    assert graph["callbacks"] >= {"output"} and graph["recipe"] >= {"callbacks", "output"}  # the old circle
    assert "callbacks" not in graph["output"] and "recipe" not in graph["output"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-c", f"import {PACKAGE}.{module}"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
