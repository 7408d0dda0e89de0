"""The training add-on's packaging: ``train/lm_eval_calib_train`` installs as the top-level package
``lm_eval_calib_train`` (never a bare ``train``), from a wheel and from an editable install alike."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from helpers import REPO


def test_installed_distribution_ships_the_add_on_under_a_prefixed_name():
    dist = importlib.metadata.distribution("lm-eval-calib")
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    files = [str(f) for f in dist.files or []]
    if direct_url.get("dir_info", {}).get("editable"):
        # editable: a .pth puts train/ on sys.path, so the package is the one in the source tree
        pth = next(f for f in files if f.startswith("_editable_impl_") and f.endswith(".pth"))
        paths = Path(dist.locate_file(pth)).read_text().split()
        assert str(REPO / "train") in paths
    else:
        # a wheel: top-level names are the plugin, the add-on, the start-up hook and metadata; no `train`
        top = {f.split("/")[0] for f in files if not f.startswith("..")} - {"__pycache__"}
        assert "lm_eval_calib_train" in top and "train" not in top and "tasks" not in top
        assert {f for f in files if f.startswith("lm_eval_calib_train/") and f.endswith(".py")} >= {
            "lm_eval_calib_train/__init__.py",
            "lm_eval_calib_train/ppo.py",
            "lm_eval_calib_train/rloo.py",
        }


def test_the_add_on_imports_from_outside_the_checkout_without_torch():
    code = (
        "import sys, lm_eval_calib_train, lm_eval_calib_train.cli, lm_eval_calib_train.data\n"
        "print(lm_eval_calib_train.__file__)\nprint('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir()
    )
    assert proc.returncode == 0, proc.stderr
    origin, torch_loaded = proc.stdout.split()
    assert Path(origin).parent.name == "lm_eval_calib_train" and torch_loaded == "False"
