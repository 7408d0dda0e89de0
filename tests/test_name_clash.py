"""No name clash with lm-eval's own metric registry (issue 26): importing us after an lm-eval that registers
``ece`` and ``rms_ce`` itself (upstream PR #3913) works, our tasks report OUR ``ece`` (their own aggregation),
and a plain lm-eval task that names ``ece`` in its ``metric_list`` gets the registry's (upstream's).

Each scenario runs in a fresh interpreter (the registries are process-global): the real lm-eval 0.4.13 with
our start-up hook, PR #3913's registrations made the way it makes them (``register_aggregation`` and
``register_metric`` when ``lm_eval.api.metrics`` has executed), and a real evaluation with lm-eval's own
``dummy`` model (random log-likelihoods: a real lm-eval component, no model to load).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import OFFLINE_ENV, tiny_mc_config

from lm_eval_calib.lm_eval_patches import MODELS

# PR #3913's two metrics, reproduced minimally with its functions' semantics (items are (gold in {0, 1},
# confidence) pairs; 10 equal-width bins, the last one closed; ECE the count-weighted mean |acc - conf| of
# the non-empty bins, RMS-CE the square root of the count-weighted mean squared gap), named as the PR's
# stand-ins, and registered as the PR registers them.
UPSTREAM_3913 = textwrap.dedent(
    """
    import numpy as np
    import lm_eval.api.metrics  # PR #3913 registers in this module, when it executes
    from lm_eval.api.registry import register_aggregation, register_metric

    def _bin_gaps(items, n_bins=10):
        gold, prob = (np.asarray(column, dtype=float) for column in zip(*items))
        prob = np.clip(prob, 0.0, 1.0)
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        for lo, hi in zip(edges[:-1], edges[1:]):
            mask = (prob >= lo) & ((prob <= hi) if hi == 1.0 else (prob < hi))
            if mask.any():
                yield mask.mean(), gold[mask].mean() - prob[mask].mean()

    from lm_eval.api.registry import aggregation_registry

    REAL_3913 = "ece" in aggregation_registry  # an lm-eval with PR #3913 merged: its own functions stay

    def upstream_3913_ece(items, n_bins=10):
        return float(sum(weight * abs(gap) for weight, gap in _bin_gaps(items, n_bins)))

    def upstream_3913_rms_ce(items, n_bins=10):
        return float(np.sqrt(sum(weight * gap**2 for weight, gap in _bin_gaps(items, n_bins))))

    def upstream_3913_ece_fn(items):
        return items

    def upstream_3913_rms_ce_fn(items):
        return items

    if not REAL_3913:
        register_aggregation("ece")(upstream_3913_ece)
        register_aggregation("rms_ce")(upstream_3913_rms_ce)
        register_metric(
            metric="ece", higher_is_better=False, output_type=["multiple_choice"], aggregation="ece"
        )(upstream_3913_ece_fn)
        register_metric(
            metric="rms_ce", higher_is_better=False, output_type=["multiple_choice"], aggregation="rms_ce"
        )(upstream_3913_rms_ce_fn)
    """
)

# A plain lm-eval task (no class of ours) that names upstream's `ece`: its process_results gives the
# (correct, confidence) pair PR #3913's aggregation reads; the aggregation comes from the registry.
PLAIN_UTILS = textwrap.dedent(
    """
    import numpy as np

    def correct_and_confidence(doc, results):
        lls = np.array([ll for ll, _ in results])
        probs = np.exp(lls - lls.max())
        probs /= probs.sum()
        pred = int(np.argmax(lls))
        correct = int(pred == int(doc["gold"]))
        return {"ece": (correct, float(probs[pred])), "acc": correct}
    """
)


def _python(code: str, cwd: Path, data_root: Path | None = None) -> subprocess.CompletedProcess:
    data = {"LM_EVAL_CALIB_DATA": str(data_root)} if data_root else {}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV, **data},
        timeout=600,
        cwd=cwd,  # not the checkout: the installed package, as a user imports it
    )


def _plain_task_folder(folder: Path) -> Path:
    folder.mkdir()
    docs = [
        {"q": f"Question {i}: which option is right?", "choices": ["alpha", "beta", "gamma"], "gold": i % 3}
        for i in range(24)
    ]
    config = tiny_mc_config(folder / "docs.jsonl", docs) | {"task": "plain_upstream_ece"}
    (folder / "plain_upstream_ece.yaml").write_text(
        yaml.safe_dump(config)
        + "process_results: !function utils.correct_and_confidence\n"
        + "metric_list:\n  - metric: ece\n"
        + "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (folder / "utils.py").write_text(PLAIN_UTILS)
    return folder


def test_upstream_ece_registered_first_ours_and_upstreams_each_where_named(tmp_path: Path, data_root: Path):
    """lm-eval with PR #3913's `ece`/`rms_ce` registered, then us: nothing raises or warns about a duplicate,
    we add nothing to the metric, aggregation or filter registries, calib_mmlu_anatomy's `ece` is computed by
    our aggregation from our records, and the plain task's `ece` by upstream's from its pairs."""
    tasks = _plain_task_folder(tmp_path / "plain")
    code = UPSTREAM_3913 + textwrap.dedent(
        f"""
        import json, logging, warnings
        from lm_eval.api import registry

        import inspect, os
        from importlib.metadata import EntryPoint
        import lm_eval_calib
        from lm_eval_calib.task_folder import task_dir
        OURS = (os.path.dirname(lm_eval_calib.__file__) + os.sep, str(task_dir()) + os.sep)

        def is_ours(value):  # a lazy placeholder naming our package, or an object defined in our files
            if isinstance(value, (str, EntryPoint)):
                target = value if isinstance(value, str) else value.value
                return target.startswith(("lm_eval_calib.", "lm_eval_calib:"))
            try:
                return os.path.realpath(inspect.getfile(value)).startswith(OURS)
            except TypeError:  # a plain value (higher_is_better's booleans)
                return False

        def entries_of_ours():
            out = {{}}
            for name in dir(registry):
                reg = getattr(registry, name)
                if isinstance(reg, registry.Registry) and name.islower():
                    out[name] = sorted(k for k, v in reg.items() if is_ours(v))
            return out

        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        logging.getLogger().addHandler(Keep())
        logging.getLogger().setLevel(logging.WARNING)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import lm_eval.models, lm_eval.evaluator
            from lm_eval.tasks import TaskManager, get_task_dict
            from lm_eval_calib.metrics import compute_metric
            from lm_eval_calib.records import records_to_data
            manager = TaskManager(include_path={str(tasks)!r})
            names = ["calib_mmlu_anatomy", "plain_upstream_ece"]
            built = get_task_dict(names, manager)
            results = lm_eval.evaluator.simple_evaluate(
                model="dummy", tasks=names, task_manager=manager, limit=12, log_samples=True,
                bootstrap_iters=0,
            )
        our_task, plain = built["calib_mmlu_anatomy"], built["plain_upstream_ece"]
        samples = results["samples"]
        our_records = [s["ece"] for s in samples["calib_mmlu_anatomy"]]
        plain_items = [tuple(s["ece"]) for s in samples["plain_upstream_ece"]]
        print(json.dumps({{
            "ours": {{name: keys for name, keys in entries_of_ours().items() if keys}},
            "real_3913": REAL_3913,
            "registry_ece": registry.get_aggregation("ece").__name__,
            "registry_rms_ce": registry.get_aggregation("rms_ce").__name__,
            "ours_agg": our_task.aggregation()["ece"].__name__,
            "plain_agg": plain.aggregation()["ece"].__name__,
            "ours_hib": our_task.higher_is_better()["ece"], "plain_hib": plain.higher_is_better()["ece"],
            "ours_ece": results["results"]["calib_mmlu_anatomy"]["ece,none"],
            "ours_recomputed": compute_metric("ece", records_to_data(our_records)),
            "plain_ece": results["results"]["plain_upstream_ece"]["ece,none"],
            "plain_recomputed": registry.get_aggregation("ece")(plain_items),
            "plain_by_stand_in": upstream_3913_ece(plain_items),
            "n": [len(our_records), len(plain_items)],
            "complaints": [m for m in records + [str(w.message) for w in caught]
                           if "already registered" in m or "lm-eval-calib" in m or "overrides" in m],
        }}))
        """
    )
    proc = _python(code, tmp_path, data_root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["complaints"] == []
    # Of lm-eval's registries we add to the model registry only (docs/plugin.md, "What we register")
    assert got["ours"] == {"model_registry": sorted(MODELS)}
    # The registry keeps upstream's metrics (PR #3913's own where it is merged, else the stand-ins) ...
    upstream = (
        ("ece", "rms_calibration_error")
        if got["real_3913"]
        else ("upstream_3913_ece", "upstream_3913_rms_ce")
    )
    assert (got["registry_ece"], got["registry_rms_ce"]) == upstream
    # ... a plain task naming `ece` gets upstream's aggregation, ours keep theirs
    assert got["plain_agg"] == upstream[0] and got["plain_hib"] is False
    assert got["ours_agg"] == "calib_ece" and got["ours_hib"] is False
    # ... and the reported numbers are what each aggregation computes from its own per-document values
    assert got["n"] == [12, 12]
    assert got["ours_ece"] == got["ours_recomputed"]
    assert got["plain_ece"] == got["plain_recomputed"] == pytest.approx(got["plain_by_stand_in"], abs=1e-12)


def test_upstream_ece_registered_after_us_still_registers(tmp_path: Path):
    """The other order: our hook, patches and task classes loaded first (a run that imports lm-eval-calib
    before lm-eval's metrics module got PR #3913's names), then upstream registers `ece` and `rms_ce`: no
    ValueError (lm-eval's registry raises on a taken name), since we took neither name. Where PR #3913 is
    merged, lm-eval's metrics module registers them before anything of ours runs: the first test's order."""
    probe = "import lm_eval.api.metrics, lm_eval.api.registry as r; print('ece' in r.aggregation_registry)"
    if _python(probe, tmp_path).stdout.strip() == "True":  # asked in a fresh interpreter, as the test runs
        pytest.skip("this lm-eval registers `ece` itself when its metrics module loads (PR #3913 merged)")
    code = textwrap.dedent(
        """
        import lm_eval.models, lm_eval.tasks.manager, lm_eval.evaluator
        import lm_eval_calib.harness.base, lm_eval_calib.harness.wrapped_task
        import lm_eval_calib.harness.generation
        from lm_eval.api import registry
        print(sorted(n for n in ("ece", "rms_ce") if n in registry.metric_registry or n in
                     registry.aggregation_registry))
        """
    )
    code += UPSTREAM_3913
    code += 'print(registry.get_aggregation("ece").__name__, registry.get_metric("rms_ce").__name__)\n'
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.splitlines() == ["[]", "upstream_3913_ece upstream_3913_rms_ce_fn"]


def test_what_we_register_page_names_every_model_entry_point_patch_and_task():
    """docs/plugin.md's "What we register" names each thing we put into a global place: every model name,
    the task entry point, every patch of lm_eval_patches (by name), and every name of our task folder's index
    (subjects counted)."""
    import tomllib

    from lm_eval_calib.lm_eval_patches import PATCHES, TASK_ENTRY_POINT
    from lm_eval_calib.task_folder import task_dir

    repo = Path(__file__).resolve().parents[1]
    page = (repo / "docs" / "plugin.md").read_text()
    section = page[page.index("## What we register") :]
    section = section[: section.index("\n## ", 1)]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]
    assert set(entry_points) == {"lm_eval.tasks", "lm_eval.models"}
    assert entry_points["lm_eval.models"] == MODELS
    for name in [*MODELS, *project["scripts"], TASK_ENTRY_POINT, *(patch.name for patch in PATCHES)]:
        assert name in section.replace("`", ""), name
    # the task folder's index: every name that is not a subject, and the count of subjects
    names = {
        line.split(":", 1)[1].strip()
        for path in task_dir().rglob("*.yaml")
        for line in path.read_text().splitlines()
        if line.startswith(("task:", "tag:", "group:"))
    }
    subjects = {name for name in names if name.startswith("calib_mmlu_") and name not in ("calib_mmlu_val",)}
    subjects.discard("calib_mmlu_subjects")
    for name in names - subjects:
        assert f"`{name}`" in section, name
    assert f"`calib_mmlu_<subject>` ({len(subjects)})" in section
    assert f"({len(names)} names)" in section
